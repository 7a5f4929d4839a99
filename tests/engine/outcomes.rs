//! Outcomes end to end (issue 6): a message, the user completing the session on the
//! sandbox's page, the signed webhook into `reverify serve`'s router, and the
//! conversion in `campaign status`, `report` and `audit`; reminders across days on a
//! manual clock; `users sync` through the binary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use assert_cmd::Command;
use chrono::Utc;
use reverify::Secret;
use reverify::both_engines;
use reverify::domain::{Clock as _, ManualClock, VerificationState};
use reverify::engine::Progress;
use reverify::sandbox::{SandboxConfig, SessionOutcome, UserSource, WebhookTarget};
use reverify::store::testing::TestDb;
use tokio_util::sync::CancellationToken;

use crate::common::{Env, campaign_toml};

/// (recipient email, session URL) of each message.
fn links(env: &Env) -> Vec<(String, String)> {
    let base = env.sandbox.base_url().to_string();
    env.messages()
        .iter()
        .map(|m| {
            let to = m
                .lines()
                .find_map(|l| l.strip_prefix("To: "))
                .map(|to| to.rsplit('<').next().unwrap_or(to).trim_end_matches('>').trim().to_owned())
                .expect("a To: header");
            let line = m.lines().find(|l| l.contains("/session/")).expect("the message carries the link");
            let id: String = line
                .split("/session/")
                .nth(1)
                .unwrap()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            (to, format!("{}session/{id}", base))
        })
        .collect()
}

fn user_of(env: &Env, email: &str) -> String {
    env.sandbox.users().into_iter().find(|u| u.email.as_str() == email).expect("a sandbox user").user_id.to_string()
}

pub(crate) fn reverify(env: &Env) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reverify"));
    let s = &env.settings;
    cmd.env_clear()
        .env("USER", "auditor")
        .env("REVERIFY_DATABASE_URL", &env.db.url)
        .env("REVERIFY_BAANX_BASE_URL", s.baanx_base_url.as_str())
        .env("REVERIFY_BAANX_CLIENT_KEY", s.baanx_client_key.as_ref().unwrap().expose())
        .env("REVERIFY_TOKEN_KEY", s.token_key.as_ref().unwrap().expose());
    cmd
}

pub(crate) fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Waits (bounded: 15 s of real time) until `check` holds, re-reading the store.
pub(crate) async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

both_engines!(a_user_who_verifies_shows_as_converted, |db: TestDb| async move {
    const KEY: &str = "whsec_full_loop";
    // reverify serve's router on a free port, then the sandbox posting to it
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = reverify::webhooks::webhook_router(db.store.clone(), Secret::new(KEY));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let webhook = WebhookTarget {
        url: url::Url::parse(&format!("http://{addr}/webhooks/baanx")).unwrap(),
        key: Secret::new(KEY),
    };
    let cfg = SandboxConfig { users: UserSource::Generate(30), seed: 7, webhook: Some(webhook), ..Default::default() };
    let env = Env::with_sandbox(db, cfg).await;
    let c = env.apply(&campaign_toml("kyc", "")).await;
    env.run(&c).await;

    let sent = links(&env);
    assert!(sent.len() >= 3, "the generated mix has users to notify");
    let (email, url) = &sent[0];
    let user = user_of(&env, email);
    // the user opens the link from the .eml and completes the check
    let page = reqwest::get(format!("{url}?outcome=verified")).await.unwrap();
    assert!(page.status().is_success(), "{}", page.status());
    // a second user abandons: no outcome, no conversion
    let page = reqwest::get(format!("{}?outcome=abandoned", sent[1].1)).await.unwrap();
    assert!(page.status().is_success());

    let store = env.store().clone();
    until("the webhook to convert the target", || {
        let store = store.clone();
        async move { store.campaign_funnel(c.campaign_id, Utc::now()).await.unwrap().verified == 1 }
    })
    .await;
    until("both webhooks (pending, completed)", || async { env.sandbox.stats().await.webhooks_delivered >= 2 }).await;
    let u = store.user_get(&reverify::domain::UserId::parse(&user).unwrap()).await.unwrap().unwrap();
    assert_eq!(u.verification_state, VerificationState::Verified);

    // campaign status --json shows the conversion
    let status: serde_json::Value =
        serde_json::from_str(&stdout_of(reverify(&env).args(["campaign", "status", "kyc", "--json"]))).unwrap();
    assert_eq!(status["converted"], 1, "{status}");
    let f = &status["funnel"];
    assert_eq!((f["verified"].as_i64(), f["started"].as_i64()), (Some(1), Some(1)), "{status}");
    assert_eq!(f["notified"].as_i64(), Some(sent.len() as i64));
    assert!(f["median_seconds_to_verify"].as_f64().is_some_and(|s| s >= 0.0), "{status}");
    assert_eq!(status["notified"].as_i64(), Some(sent.len() as i64 - 1));
    let text = stdout_of(reverify(&env).args(["campaign", "status", "kyc"]));
    assert!(text.contains("verified 1"), "{text}");

    // the report: one row per target, the conversion, and no secrets
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("kyc.csv");
    reverify(&env).args(["campaign", "report", "kyc", "--format", "csv", "--output"]).arg(&csv_path).assert().success();
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let mut rows = csv::Reader::from_reader(csv.as_bytes());
    let header = rows.headers().unwrap().clone();
    assert_eq!(header.iter().collect::<Vec<_>>(), reverify::report::COLUMNS);
    let records: Vec<csv::StringRecord> = rows.records().map(|r| r.unwrap()).collect();
    assert_eq!(records.len() as i64, status["targeted"].as_i64().unwrap());
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let mine = records.iter().find(|r| &r[col("user_id")] == user.as_str()).expect("the user's row");
    assert_eq!(&mine[col("status")], "converted");
    assert_eq!(&mine[col("outcome")], "verified");
    assert!(!mine[col("verified_at")].is_empty() && !mine[col("started_at")].is_empty());
    assert_eq!((&mine[col("sessions")], &mine[col("notifications")]), ("1", "1"));
    assert!(!csv.contains("/session/") && !csv.contains('@'), "no link and no email in the report");
    let jsonl = stdout_of(reverify(&env).args(["campaign", "report", "kyc", "--format", "json"]));
    assert_eq!(jsonl.lines().count(), records.len());
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert!(first.get("verified_at").is_some() && first.get("email").is_none());

    // the audit trail tells the user's story
    let audit = stdout_of(reverify(&env).args(["campaign", "audit", "kyc", "--user", &user]));
    for kind in ["target.notified", "target.started", "target.converted"] {
        assert!(audit.contains(kind), "{kind} missing from\n{audit}");
    }
    let lines = stdout_of(reverify(&env).args(["campaign", "audit", "kyc", "--user", &user, "--json"]));
    assert!(lines.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    assert_eq!(env.sandbox.stats().await.violations, 0);
});

both_engines!(reminders_hold_every_limit_and_stop_after_max, |db: TestDb| async move {
    let clock = ManualClock::new(Utc::now());
    let cfg = SandboxConfig {
        users: UserSource::Generate(40),
        seed: 7,
        clock: Arc::new(clock.clone()),
        ..Default::default()
    };
    let env = Env::with_sandbox(db, cfg).await;
    let c =
        env.apply(&campaign_toml("kyc-rem", "[reminders]\nafter = \"1h\"\nmax = 2\ninclude_rejected = true\n")).await;
    let mut worker = env.worker();
    worker.clock = Arc::new(clock.clone());
    let run =
        || async { worker.run_campaign(&c, Arc::new(Progress::default()), CancellationToken::new()).await.unwrap() };

    run().await;
    let first = links(&env);
    assert!(first.len() >= 5, "the generated mix has users to notify");
    // one user verifies on the sandbox; no webhook is configured: the run's sync of
    // expired sessions must find out before reminding
    let (verifier, url) = first[0].clone();
    assert!(env.sandbox.complete_session(&url, SessionOutcome::Verified));

    clock.advance(chrono::Duration::hours(2));
    run().await;
    assert_eq!(env.messages().len(), first.len(), "no reminder while the session is alive");

    for _ in 0..4 {
        clock.advance(chrono::Duration::hours(25));
        run().await;
    }
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for (to, _) in links(&env) {
        *per_user.entry(to).or_default() += 1;
    }
    assert_eq!(per_user[&verifier], 1, "the verified user is not reminded");
    for (to, n) in &per_user {
        if to != &verifier {
            assert_eq!(*n, 3, "{to}: the first message and max = 2 reminders, no more");
        }
    }
    // each in the user's language: the reminder template's subject in every shipped locale
    let reminder_subjects =
        ["Reminder:", "Erinnerung:", "Rappel :", "Recordatorio:", "Promemoria:", "Herinnering:", "Lembrete:"];
    let reminders = env
        .messages()
        .iter()
        .map(|m| reverify::notify::testing::ReceivedMail::parse(m).header("Subject").unwrap())
        .filter(|s| reminder_subjects.iter().any(|r| s.starts_with(r)))
        .count();
    assert_eq!(reminders, per_user.values().map(|n| n - 1).sum::<usize>(), "reminders use the reminder template");

    let stats = env.sandbox.stats().await;
    assert_eq!(stats.violations, 0, "{:?}", stats.violations_by_kind);
    let f = env.store().campaign_funnel(c.campaign_id, clock.now()).await.unwrap();
    assert_eq!(f.verified, 1);
    let unverified = env
        .sandbox
        .users()
        .iter()
        .filter(|u| u.verification_state == VerificationState::Unverified && per_user.contains_key(u.email.as_str()))
        .count();
    assert!(unverified > 0);
    assert_eq!(f.no_response_after_expiry as usize, unverified, "{f:?}");
});

both_engines!(users_sync_records_what_baanx_says, |db: TestDb| async move {
    let env = Env::new(db, 20).await;
    let c = env.apply(&campaign_toml("kyc", "")).await;
    env.run(&c).await;
    let sent = links(&env);
    let (email, url) = &sent[0];
    assert!(env.sandbox.complete_session(url, SessionOutcome::Rejected));
    let user = user_of(&env, email);

    let out = stdout_of(reverify(&env).args(["users", "sync", "--campaign", "kyc"]));
    assert!(out.contains(" 1 changed state, 0 targets converted") && out.contains(" 0 failed"), "{out}");
    let u = env.store().user_get(&reverify::domain::UserId::parse(&user).unwrap()).await.unwrap().unwrap();
    assert_eq!(u.verification_state, VerificationState::Rejected);
    assert!(u.rejected_at.is_some() && u.synced_at.is_some());
    assert_eq!(u.consecutive_failures, 1, "a change to REJECTED counts a failure");
    let f = env.store().campaign_funnel(c.campaign_id, Utc::now()).await.unwrap();
    assert_eq!((f.rejected, f.verified), (1, 0));

    // the campaign's users were all just synced: --stale 6h has nothing to do
    let again = stdout_of(reverify(&env).args(["users", "sync", "--campaign", "kyc", "--stale", "6h"]));
    assert!(again.starts_with("synced 0 users"), "{again}");
    assert_eq!(env.sandbox.stats().await.violations, 0);
});
