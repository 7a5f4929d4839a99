//! The bad-input corpus (`tests/corpus/`, one README line per input): campaign files,
//! configs and CSVs go through the real binary, which must exit non-zero with an
//! error naming the file and what is wrong, and leave every table as it was; API
//! answers are served by a tiny axum stub to the real client inside a real run,
//! which must record a reason, send nothing and not panic. Plus bounded proptest
//! fuzzing of the campaign-file and CSV parsers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reverify::sandbox::Faults;
use reverify::store::testing::TestDb;
use sqlx::Row as _;

use crate::common::{Rig, dump, text};
use crate::summary::{Counts, report};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// One README line: `| \`dir/file\` | what is wrong | \`what the error says\` |`.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    expect: String,
}

fn entries(kind: &str) -> Vec<Entry> {
    let readme = std::fs::read_to_string(corpus().join("README.md")).unwrap();
    let mut out = Vec::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 {
            continue;
        }
        let path = cells[1].trim_matches('`');
        if !path.starts_with(&format!("{kind}/")) {
            continue;
        }
        out.push(Entry { path: path.to_owned(), expect: cells[3].trim_matches('`').to_owned() });
    }
    assert!(!out.is_empty(), "no {kind} entries in tests/corpus/README.md");
    // every file on disk has its line, and every line (but generated ones) its file
    let listed: Vec<&str> = out.iter().map(|e| e.path.as_str()).collect();
    for f in std::fs::read_dir(corpus().join(kind)).unwrap() {
        let name = format!("{kind}/{}", f.unwrap().file_name().to_string_lossy());
        assert!(listed.contains(&name.as_str()), "{name} has no line in tests/corpus/README.md");
    }
    out
}

/// Where an entry's input is: the corpus file, or one the test generates (too big
/// to keep in the repository).
fn materialise(e: &Entry, scratch: &Path) -> PathBuf {
    let on_disk = corpus().join(&e.path);
    if on_disk.exists() {
        return on_disk;
    }
    let name = e.path.rsplit('/').next().unwrap();
    let p = scratch.join(name);
    let body: Vec<u8> = match name {
        "huge.toml" if e.path.starts_with("configs/") => {
            let mut s = String::from("lease_seconds = 30\n");
            while s.len() < 4 << 20 {
                s.push_str("# padding padding padding padding padding padding padding padding\n");
            }
            s.into_bytes()
        }
        "huge.toml" => {
            let mut s = String::from("name = \"huge\"\n[delivery]\nfrom = \"Compliance <compliance@example.com>\"\n");
            while s.len() < 8 << 20 {
                s.push_str("# padding padding padding padding padding padding padding padding\n");
            }
            s.into_bytes()
        }
        "long_line.csv" => {
            let mut s = String::from(
                "user_id,email,region,verification_state,first_name\n\
                 0b9c7c43-3d5e-4b8e-9a0c-6f1d2e3a4b5c,ana@example.com,intl,UNVERIFIED,",
            );
            s.push_str(&"A".repeat(10 << 20));
            s.push('\n');
            s.into_bytes()
        }
        "verification_huge.json" => {
            let mut s = String::from("200 application/json\n\n{\"sessionUrl\": \"https://stub.example/session/");
            s.push_str(&"a".repeat(20 << 20));
            s.push_str("\"}");
            s.into_bytes()
        }
        other => panic!("{other} is listed in the README but neither on disk nor generated"),
    };
    std::fs::write(&p, body).unwrap();
    p
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Campaign files, configs and CSVs: a located error, exit 1, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_refused_with_a_located_error_and_change_nothing() {
    let rig = Rig::new(TestDb::sqlite().await, 5, 41, Faults::default()).await;
    let scratch = tempfile::tempdir().unwrap();
    let mut tried = 0u64;
    let mut wrong: Vec<String> = Vec::new();
    for kind in ["campaigns", "configs", "csv"] {
        for e in entries(kind) {
            let path = materialise(&e, scratch.path());
            let p = path.to_str().unwrap();
            let before = dump(&rig.db).await;
            let runs: Vec<Vec<&str>> = match kind {
                "campaigns" => vec![vec!["campaign", "validate", p], vec!["campaign", "apply", p]],
                "configs" => vec![vec!["--config", p, "campaign", "list"]],
                _ => vec![vec!["users", "import", p, "--strict", "--format", "csv"]],
            };
            for args in runs {
                let mut c = rig.command(&args);
                // the file's values must not be hidden by the rig's environment
                c.env_remove("REVERIFY_REQUESTS_PER_SECOND").env_remove("REVERIFY_BURST");
                let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
                let err = stderr(&o);
                assert!(!err.contains("panicked"), "{}: {}", e.path, text(&o));
                if e.expect == "accepted" {
                    assert_eq!(o.status.code(), Some(0), "{}: {}", e.path, text(&o));
                    continue;
                }
                let name = path.file_name().unwrap().to_string_lossy();
                if o.status.code() != Some(1)
                    || !err.contains(name.as_ref())
                    || !err.contains(&e.expect)
                    || err.len() > 4000
                {
                    wrong.push(format!(
                        "{} {args:?}: wanted exit 1 naming the file and {:?}: {}",
                        e.path,
                        e.expect,
                        text(&o)
                    ));
                }
            }
            if e.expect != "accepted" {
                if before != dump(&rig.db).await {
                    wrong.push(format!("{}: the database changed", e.path));
                }
            } else {
                // formula-looking names are data: stored verbatim, never evaluated
                let o = rig.run(&["users", "list", "--json", "--limit", "0"]).await;
                assert!(String::from_utf8_lossy(&o.stdout).contains("=HYPERLINK("), "{}", text(&o));
            }
            tried += 1;
        }
    }
    assert!(wrong.is_empty(), "{} inputs not refused as they should be:\n{}", wrong.len(), wrong.join("\n---\n"));
    report(
        format!("corpus: files={tried} refused_cleanly={tried} (campaigns, configs, csv)"),
        Counts { bad_inputs: tried, ..Counts::default() },
    );
}

/// What the stub answers on each endpoint: (status, content type, body).
type Answers = Arc<Mutex<BTreeMap<&'static str, (u16, String, Vec<u8>)>>>;

async fn answer(answers: Answers, endpoint: &'static str) -> Response {
    let (status, ctype, body) = answers.lock().unwrap().get(endpoint).cloned().unwrap();
    let mut r = (StatusCode::from_u16(status).unwrap(), body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(&ctype).unwrap());
    r
}

const USER: &str = "0b9c7c43-3d5e-4b8e-9a0c-6f1d2e3a4b5c";

fn good_answers() -> BTreeMap<&'static str, (u16, String, Vec<u8>)> {
    let json = |s: String| (200, "application/json".to_owned(), s.into_bytes());
    BTreeMap::from([
        ("token", json(r#"{"access_token":"at-good","expires_in":21600,"refresh_token":"rt-rotated"}"#.to_owned())),
        ("user", json(format!(r#"{{"id":"{USER}","verificationState":"UNVERIFIED"}}"#))),
        ("verification", json(r#"{"sessionUrl":"https://stub.example/session/good"}"#.to_owned())),
    ])
}

/// Malformed API answers, served to the real client in a real run: the target gets
/// a reason, nobody is notified, nothing panics, the run's exit code is 0 or 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_api_answers_are_recorded_not_trusted() {
    let answers: Answers = Arc::new(Mutex::new(good_answers()));
    let app = {
        let (a, b, c) = (answers.clone(), answers.clone(), answers.clone());
        axum::Router::new()
            .route("/v1/auth/oauth/token", axum::routing::post(move || answer(a.clone(), "token")))
            .route("/v1/user", axum::routing::get(move || answer(b.clone(), "user")))
            .route("/v1/user/verification", axum::routing::get(move || answer(c.clone(), "verification")))
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stub = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let scratch = tempfile::tempdir().unwrap();
    let mut tried = 0u64;
    // a control first: with every answer good, the user is notified (so a bad answer
    // below is what makes the difference)
    let control = Entry { path: "api/control".into(), expect: "notified/".into() };
    for e in std::iter::once(control).chain(entries("api")) {
        if e.path == "api/control" {
            let mut a = answers.lock().unwrap();
            *a = good_answers();
        } else {
            let raw = std::fs::read(materialise(&e, scratch.path())).unwrap();
            let split = raw.windows(2).position(|w| w == b"\n\n").expect("STATUS TYPE, a blank line, the body");
            let head = String::from_utf8_lossy(&raw[..split]).into_owned();
            let (status, ctype) = head.split_once(' ').unwrap();
            let endpoint = match e.path.split('/').nth(1).unwrap().split('_').next().unwrap() {
                "token" => "token",
                "user" => "user",
                _ => "verification",
            };
            {
                let mut a = answers.lock().unwrap();
                *a = good_answers();
                a.insert(endpoint, (status.parse().unwrap(), ctype.to_owned(), raw[split + 2..].to_vec()));
            }
        }

        let db = TestDb::sqlite().await;
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("u.csv");
        std::fs::write(
            &users,
            format!("user_id,email,region,verification_state,refresh_token\n{USER},ana@example.com,intl,UNVERIFIED,rt-first\n"),
        )
        .unwrap();
        let camp = dir.path().join("c.toml");
        std::fs::write(&camp, crate::common::campaign("api", 100, 1)).unwrap();
        let key = reverify::crypto::TokenCipher::generate_key();
        let bin = |args: &[&str]| {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_reverify"));
            c.args(args)
                .current_dir(dir.path())
                .env_clear()
                .env("REVERIFY_DATABASE_URL", &db.url)
                .env("REVERIFY_BAANX_BASE_URL", &stub)
                .env("REVERIFY_BAANX_CLIENT_KEY", "stub-key")
                .env("REVERIFY_TOKEN_KEY", &key)
                .env("REVERIFY_HTTP_REQUEST_TIMEOUT_MS", "5000")
                .env("REVERIFY_OUTBOX_DIR", dir.path().join("outbox"))
                .env("REVERIFY_LOG_LEVEL", "warn");
            c
        };
        let run = |args: &'static [&'static str]| {
            let mut c = bin(args);
            async move { tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap() }
        };
        let mut c = bin(&["users", "import", users.to_str().unwrap()]);
        assert!(c.output().unwrap().status.success());
        let mut c = bin(&["campaign", "apply", camp.to_str().unwrap()]);
        assert!(c.output().unwrap().status.success());
        let o = run(&["run", "api", "--progress", "none"]).await;
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{}: {}", e.path, text(&o));
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}: {}", e.path, text(&o));
        let sent = std::fs::read_dir(dir.path().join("outbox")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(sent, usize::from(e.path == "api/control"), "{}: {}", e.path, text(&o));
        if e.path == "api/control" {
            assert_eq!(o.status.code(), Some(0), "control: {}", text(&o));
        }
        let row = sqlx::query("SELECT status, reason FROM campaign_targets").fetch_one(db.pool()).await.unwrap();
        let (status, reason): (String, Option<String>) =
            (row.try_get("status").unwrap(), row.try_get("reason").unwrap());
        let got = format!("{status}/{}", reason.unwrap_or_default());
        assert_eq!(got, e.expect, "{}: {}", e.path, text(&o));
        // the body of a bad answer is not echoed whole
        assert!(err.len() < 4000, "{}: stderr of {} bytes", e.path, err.len());
        tried += u64::from(e.path != "api/control");
    }
    report(
        format!("corpus: api_answers={tried} recorded_cleanly={tried}"),
        Counts { bad_inputs: tried, ..Counts::default() },
    );
}

mod fuzz {
    use proptest::prelude::*;
    use reverify::directory::{Format, open_file};
    use reverify::domain::CampaignSpec;
    use reverify::domain::userfile::{Fields, Missing, parse_fields};

    fn config() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// Campaign-file-shaped text: real keys and sections, broken values and bytes.
    fn spec_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("name = \"fuzz\"\n".to_owned()),
            Just("[delivery]\nfrom = \"A <a@example.com>\"\n".to_owned()),
            Just("[throttle]\n".to_owned()),
            Just("[audience]\n".to_owned()),
            Just("schedule = \"".to_owned()),
            Just("timezone = \"".to_owned()),
            Just("requests_per_second = ".to_owned()),
            Just("states = [\"".to_owned()),
            "[a-z_]{1,12} = [0-9\"'\\[\\]{}.,=-]{0,10}\n",
            any::<String>(),
        ];
        prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn campaign_files_parse_or_fail_with_a_location(text in spec_text()) {
            match CampaignSpec::from_toml(&text, "fuzz.toml") {
                Ok(_) => {}
                Err(e) => prop_assert!(e.to_string().starts_with("fuzz.toml"), "{e}"),
            }
        }

        #[test]
        fn csv_rows_parse_or_fail_with_a_line(body in prop::collection::vec(any::<u8>(), 0..400), header in 0usize..3) {
            let headers = [
                "user_id,email,region,verification_state\n",
                "user_id,email,region,verification_state,first_name,tags,rejected_at\n",
                "",
            ];
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("f.csv");
            let mut bytes = headers[header].as_bytes().to_vec();
            bytes.extend_from_slice(&body);
            std::fs::write(&p, &bytes).unwrap();
            match open_file(&p, Format::Csv) {
                Err(e) => prop_assert!(e.to_string().contains("f.csv"), "{e}"),
                Ok(mut src) => {
                    let mut fields: Fields = Default::default();
                    loop {
                        match src.next_row(&mut fields) {
                            Ok(None) => break,
                            Ok(Some(r)) => {
                                prop_assert!(r.line >= 2);
                                if r.problem.is_none() {
                                    let _ = parse_fields(&fields, Missing::Refused);
                                }
                            }
                            Err(e) => {
                                prop_assert!(e.to_string().contains("f.csv:"), "{e}");
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fuzz_counts_are_reported() {
        let cases = config().cases;
        crate::summary::report(
            format!("fuzz: campaign_files={cases} csv_files={cases} (proptest, PROPTEST_CASES)"),
            crate::summary::Counts { bad_inputs: u64::from(cases) * 2, ..Default::default() },
        );
    }
}
