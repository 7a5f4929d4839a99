//! Bounces through the binary (issue 27): `bounces ingest` as an MTA's pipe, and
//! `reverify serve` reading a real Dovecot mailbox, with `/readyz` saying when the
//! mailbox is down, and Postmark's route refusing a post without its password.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use reverify::both_engines;
use reverify::bounces::testing::{DovecotServer, PASSWORD, dsn_for};
use reverify::store::testing::TestDb;

use crate::common::{Bin, campaign, text};

/// A campaign with the VERP return path, applied and run through the binary; the
/// outbox's messages.
async fn sent(bin: &Bin, name: &str) -> Vec<String> {
    let extra = "[audience]\nstates = [\"UNVERIFIED\", \"REJECTED\"]";
    let toml = campaign(name, extra, 200, 4)
        .replace("[delivery]\n", "[delivery]\nreturn_path = \"bounces+{token}@example.com\"\n");
    let f = bin.write(&format!("{name}.toml"), &toml);
    for args in
        [vec!["users", "import", "users.csv"], vec!["campaign", "apply", f.to_str().unwrap()], vec!["run", name]]
    {
        let o = bin.run(&args).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    }
    bin.outbox_messages().iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
}

/// The `To` address and the VERP return path (the Message-ID's token) of a message.
fn addresses(message: &str) -> (String, String) {
    let header =
        |name: &str| message.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).expect(name);
    let to = header("To: ");
    let to = to.rsplit_once('<').map_or(to.clone(), |(_, a)| a.trim_end_matches('>').to_owned());
    let id = header("Message-ID: ");
    let token = reverify::domain::bounce::token_in_plus_address(id.trim_matches(['<', '>'])).expect("a token");
    (to, format!("bounces+{token}@example.com"))
}

both_engines!(bounces_ingest_records_a_piped_dsn_once, |db: TestDb| async move {
    let bin = Bin::new(&db, 12, None).await;
    let messages = sent(&bin, "piped").await;
    assert!(!messages.is_empty());
    let (to, return_path) = addresses(&messages[0]);
    let dsn = dsn_for(messages[0].as_bytes(), &to, "5.1.1", "550 5.1.1 <someone@example.com>: no such user", "x@y.z");
    let file = bin.path("dsn.eml");
    std::fs::write(&file, &dsn).unwrap();

    // as Postfix's pipe runs it: the envelope recipient on the command line
    let ingest = ["bounces", "ingest", file.to_str().unwrap(), "--recipient", &return_path];
    let o = bin.run(&ingest).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("recorded (hard)"), "{}", text(&o));
    let o = bin.run(&ingest).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("recorded before"), "{}", text(&o));

    // a token nobody made, with the Message-ID stripped: ignored, exit 0
    let forged_dsn = String::from_utf8(dsn.clone()).unwrap().replace("Message-ID:", "X-Old-Message-ID:");
    let forged = bin.write("forged.eml", &forged_dsn);
    let bad = return_path.replacen("bounces+s", "bounces+s9", 1);
    let o = bin.run(&["bounces", "ingest", forged.to_str().unwrap(), "--recipient", &bad]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing changed"), "{}", text(&o));
    // not a report at all
    let junk = bin.write("junk.eml", "hello\n");
    let o = bin.run(&["bounces", "ingest", junk.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // where it shows
    let o = bin.run(&["users", "list", "--undeliverable"]).await;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&to) && out.contains("5.1.1") && !out.contains("someone@example.com"), "{out}");
    assert!(out.contains("(1 shown of 1)"), "{out}");
    let o = bin.run(&["campaign", "status", "piped", "--json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(status["bounced"], 1, "{status}");
    assert_eq!(status["funnel"]["bounced"], 1);
    let o = bin.run(&["campaign", "status", "piped"]).await;
    assert!(String::from_utf8_lossy(&o.stdout).contains("bounced                  1"), "{}", text(&o));
    let o = bin.run(&["campaign", "report", "piped", "--format", "json"]).await;
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let bounced: Vec<_> = rows.iter().filter(|r| r["bounced_at"].is_string()).collect();
    assert_eq!(bounced.len(), 1, "{rows:?}");
    assert_eq!(bounced[0]["reason"], "bounced");
    let diagnostic = bounced[0]["bounce_diagnostic"].as_str().unwrap();
    assert!(diagnostic.starts_with("5.1.1") && diagnostic.contains("<address>"), "{diagnostic}");
});

async fn wait_for(what: &str, child: &mut Child, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(child.try_wait().unwrap().is_none(), "serve exited early");
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_the_mailbox_and_readyz_says_when_it_is_down() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 6, None).await;
    let messages = sent(&bin, "mailed").await;
    let (to, return_path) = addresses(&messages[0]);
    let mut imap = DovecotServer::start();
    let ops = reverify::notify::testing::free_port();
    let public = reverify::notify::testing::free_port();
    let mut child = bin
        .command(&["serve", "--listen", &format!("127.0.0.1:{public}")])
        .env("REVERIFY_METRICS_LISTEN", format!("127.0.0.1:{ops}"))
        .env("REVERIFY_BOUNCE_MAILBOX", format!("imaps://bounces@127.0.0.1:{}/INBOX", imap.port()))
        .env("REVERIFY_BOUNCE_MAILBOX_PASSWORD", PASSWORD)
        .env("REVERIFY_BOUNCE_MAILBOX_CA_FILE", imap.ca_file())
        .env("REVERIFY_BOUNCE_MAILBOX_POLL", "1s")
        .env("REVERIFY_BOUNCE_WEBHOOK_SECRET", "postmark-secret-for-the-test")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let readyz = || async {
        match http.get(format!("http://127.0.0.1:{ops}/readyz")).send().await {
            Ok(r) => Some((r.status().as_u16(), r.text().await.unwrap_or_default())),
            Err(_) => None,
        }
    };
    wait_for("the mailbox is read", &mut child, async || {
        readyz().await.is_some_and(|(s, b)| s == 200 && b.contains("bounce mailbox: up"))
    })
    .await;

    // a DSN arrives: the user becomes undeliverable, the message is flagged
    imap.deliver(&dsn_for(messages[0].as_bytes(), &to, "5.1.1", "550 no such user", &return_path));
    let store = reverify::store::Store::open(&db.url).await.unwrap();
    wait_for("the DSN is recorded", &mut child, async || {
        let user = reverify::store::users::UserFilter { undeliverable: true, ..Default::default() };
        store.user_count(&user).await.unwrap() == 1
    })
    .await;
    wait_for("the message is flagged", &mut child, async || imap.messages("INBOX").iter().all(|m| m.is_done())).await;

    // Postmark's route is served, and refuses a post without its password
    let r = http.post(format!("http://127.0.0.1:{public}/bounces/postmark")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);

    // the mailbox goes down: /readyz says so, and stays 200 (the links keep working)
    imap.stop();
    wait_for("readyz says the mailbox is down", &mut child, async || {
        readyz().await.is_some_and(|(s, b)| s == 200 && b.contains("bounce mailbox: down"))
    })
    .await;
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}
