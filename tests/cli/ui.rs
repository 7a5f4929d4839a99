//! `reverify ui hash-password`, and the dashboard's settings checked before
//! anything listens: a malformed users file, no way in, the listener kept apart.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

fn reverify(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_reverify"));
    c.args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REVERIFY_DATABASE_URL", format!("sqlite://{}", dir.path().join("db.sqlite").display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn hash_password_reads_standard_input_and_makes_an_argon2id_hash() {
    let o = reverify(&["ui", "hash-password"], &[], "correct horse battery\n");
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let hash = String::from_utf8(o.stdout).unwrap();
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(reverify::ui::auth::verify_password(hash, "correct horse battery"), "the line end is not part of it");
    assert!(!reverify::ui::auth::verify_password(hash, "correct horse battery\n"));
    assert!(!hash.contains("correct"), "{hash}");

    let o = reverify(&["ui", "hash-password"], &[], "");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no password on standard input"));
    // never on the command line
    let o = reverify(&["ui", "hash-password", "secret"], &[], "");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_malformed_users_file_stops_serve_naming_the_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ui-users");
    let hash = reverify::ui::auth::hash_password("pw").unwrap();
    std::fs::write(&file, format!("# people\nalice:operator:{hash}\nbob:admin:{hash}\n")).unwrap();
    let path = file.display().to_string();
    let env = [("REVERIFY_UI_LISTEN", "127.0.0.1:0"), ("REVERIFY_UI_USERS_FILE", path.as_str())];
    let o = reverify(&["serve"], &env, "");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("ui_users_file {path}, line 3: role")) && err.contains("\"admin\""), "{err}");

    std::fs::write(&file, "carol:viewer:hunter2\n").unwrap();
    let o = reverify(&["daemon"], &env, "");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 1: hash") && !err.contains("hunter2"), "{err}");

    let o = reverify(&["serve"], &[("REVERIFY_UI_LISTEN", "127.0.0.1:0")], "");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nobody can log in") && err.contains("REVERIFY_UI_USERS_FILE"), "{err}");
}

/// A `reverify serve` with the dashboard only, its address, and its log (standard
/// error) collected as it comes.
struct Dashboard {
    child: std::process::Child,
    url: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Dashboard {
    fn start(users: &str, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().unwrap();
        let users_file = dir.path().join("ui-users");
        std::fs::write(&users_file, users).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_reverify"));
        c.arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REVERIFY_DATABASE_URL", format!("sqlite://{}", dir.path().join("db.sqlite").display()))
            .env("REVERIFY_UI_LISTEN", "127.0.0.1:0")
            .env("REVERIFY_UI_USERS_FILE", &users_file)
            .env("REVERIFY_LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let addr = first
            .split("dashboard on http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("no dashboard address in {first:?}: {}", log.lock().unwrap()))
            .to_owned();
        Self { child, url: format!("http://{addr}"), log, _dir: dir }
    }

    /// The process's resident set now and at its peak (VmRSS, VmHWM), in MiB.
    fn rss_mib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap()
        };
        (kib("VmRSS:") / 1024, kib("VmHWM:") / 1024)
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One login POST (the CSRF cookie and field agree, as the login page sets them).
async fn login(client: &reqwest::Client, url: &str, user: String, password: &str, forwarded: Option<String>) -> u16 {
    let body = format!("user={user}&password={password}&csrf=burst");
    let mut req = client
        .post(format!("{url}/login"))
        .header("cookie", "reverify_login=burst")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(f) = forwarded {
        req = req.header("x-forwarded-for", f);
    }
    req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// Issue 24: 200 wrong passwords sent at once. For one name, only 5 are hashed
/// (the attempt is counted before the hash); for 200 names from 200 addresses
/// behind a trusted proxy, at most 4 hashes run at once. Either way the process
/// stays under 150 MB (it went to 880 MB before).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_burst_stays_inside_its_memory_bound() {
    let hash = reverify::ui::auth::hash_password("the right one").unwrap();
    let users: String = std::iter::once(format!("alice:approver:{hash}\n"))
        .chain((0..200).map(|i| format!("user{i}:viewer:{hash}\n")))
        .collect();
    let d = Dashboard::start(&users, &[("REVERIFY_UI_TRUSTED_PROXIES", "127.0.0.1/32")]);
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let (before, _) = d.rss_mib();

    let codes =
        futures::future::join_all((0..200).map(|_| login(&client, &d.url, "alice".into(), "guess", None))).await;
    let hashed = codes.iter().filter(|c| **c == 401).count();
    let refused = codes.iter().filter(|c| **c == 429).count();
    assert_eq!((hashed, refused), (5, 195), "{codes:?}");

    let codes = futures::future::join_all(
        (0..200).map(|i| login(&client, &d.url, format!("user{i}"), "guess", Some(format!("198.51.100.{i}")))),
    )
    .await;
    assert!(codes.iter().all(|c| *c == 401 || *c == 429), "{codes:?}");
    let (now, peak) = d.rss_mib();
    eprintln!("dashboard RSS: {before} MiB before, {now} MiB after, {peak} MiB at peak");
    assert!(peak < 150, "the dashboard peaked at {peak} MiB (before: {before} MiB)");
    // the right password still works for a name nobody guessed at
    let o = login(&client, &d.url, "user0".into(), "the+right+one", Some("203.0.113.1".into())).await;
    assert!(o == 303 || o == 429, "{o}");
}

/// Issue 24: the user header is believed only from a trusted proxy; from anyone
/// else it is ignored (one warning), and twice in one request it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_header_from_a_peer_that_is_not_a_proxy_is_ignored() {
    let hash = reverify::ui::auth::hash_password("pw").unwrap();
    let d = Dashboard::start(
        &format!("carol:approver:{hash}\n"),
        &[("REVERIFY_UI_TRUSTED_USER_HEADER", "X-Forwarded-User"), ("REVERIFY_UI_TRUSTED_PROXIES", "10.0.0.0/8")],
    );
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for _ in 0..3 {
        let r = client.get(format!("{}/", d.url)).header("x-forwarded-user", "carol").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 303, "carol is not logged in by a header from 127.0.0.1");
    }
    let r = client
        .get(format!("{}/", d.url))
        .header("x-forwarded-user", "carol")
        .header("x-forwarded-user", "dave")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = d.log.lock().unwrap().clone();
    assert_eq!(log.matches("outside ui_trusted_proxies and was ignored").count(), 1, "{log}");
    // a header with no proxy to trust it from is a settings error
    let o = reverify(
        &["serve"],
        &[("REVERIFY_UI_LISTEN", "127.0.0.1:0"), ("REVERIFY_UI_TRUSTED_USER_HEADER", "X-Forwarded-User")],
        "",
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ui_trusted_proxies"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
