//! Bounces (issue 27): a campaign with 3% dead addresses ends with those users
//! `bounced` and reached through the fallback channel; the next campaign skips them
//! by email; an import with a new address brings them back. Reports reach the store
//! through `engine::bounces::StoreBounceSink`, the sink every intake hands to, keyed
//! by the VERP token each message carries in its Message-ID.

use std::sync::{Arc, Mutex};

use chrono::Utc;
use reverify::Secret;
use reverify::both_engines;
use reverify::bounces::{BounceSink, Recorded};
use reverify::domain::EmailAddress;
use reverify::domain::bounce::{BounceKey, BounceKind, BounceReport, BounceSource, token_in_plus_address};
use reverify::engine::bounces::StoreBounceSink;
use reverify::sandbox::{SandboxConfig, UserSource};
use reverify::store::testing::TestDb;
use sqlx::Row;

use crate::common::Env;

const HOOK_KEY: &str = "whk-fallback-key-0123456789";

/// `n` UNVERIFIED users, with the fallback's webhook key set.
async fn env_of(db: TestDb, n: usize) -> Env {
    let users = reverify::sandbox::users::generate_unverified(n, 27, Utc::now());
    let mut env =
        Env::with_sandbox(db, SandboxConfig { users: UserSource::Records(users), ..SandboxConfig::default() }).await;
    env.settings.notify_webhook_key = Some(Secret::new(HOOK_KEY));
    env
}

fn campaign(name: &str, delivery: &str, halt: &str) -> String {
    format!(
        "name = \"{name}\"\n{halt}\n[delivery]\nfrom = \"Compliance <compliance@example.com>\"\n\
         return_path = \"bounces+{{token}}@example.com\"\n{delivery}\n\
         [throttle]\nrequests_per_second = 5000\nconcurrency = 16\n"
    )
}

/// A receiver of the fallback's signed webhook posts: the user ids it was sent.
pub(crate) async fn fallback_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::HeaderMap;
    let seen = Arc::new(Mutex::new(Vec::new()));
    async fn hook(State(seen): State<Arc<Mutex<Vec<String>>>>, headers: HeaderMap, body: Bytes) -> &'static str {
        let ts = headers["x-reverify-timestamp"].to_str().unwrap();
        let sig = hex::decode(headers["x-reverify-signature"].to_str().unwrap()).unwrap();
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_KEY.as_bytes()).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(&body);
        mac.verify_slice(&sig).expect("the fallback post is signed");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json["session_url"].as_str().is_some_and(|u| u.starts_with("http")), "a new session's link");
        seen.lock().unwrap().push(json["user_id"].as_str().unwrap().to_owned());
        "ok"
    }
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// The Message-ID of the outbox message to `email` (without angle brackets).
fn message_id_to(env: &Env, email: &str) -> String {
    let m = env.messages().into_iter().find(|m| m.contains(&format!("<{email}>"))).expect("a message to the address");
    let line = m.lines().find(|l| l.to_ascii_lowercase().starts_with("message-id:")).expect("a Message-ID");
    line.split_once(':').unwrap().1.trim().trim_matches(['<', '>']).to_owned()
}

fn report(dedupe: &str, keys: Vec<BounceKey>, kind: BounceKind, source: BounceSource) -> BounceReport {
    BounceReport {
        source,
        dedupe_id: dedupe.to_owned(),
        keys,
        kind,
        status_code: Some(if kind == BounceKind::Soft { "4.2.2" } else { "5.1.1" }.to_owned()),
        diagnostic: Some("smtp; 550 5.1.1 <dead@example.com>: user unknown".to_owned()),
        occurred_at: Some(Utc::now()),
    }
}

async fn target(env: &Env, campaign_id: i64, user: &str) -> (String, Option<String>, i64, Option<i64>, Option<i64>) {
    let r = sqlx::query(
        "SELECT status, reason, step, bounced_at, fallback_sent_at FROM campaign_targets \
         WHERE campaign_id = $1 AND user_id = $2",
    )
    .bind(campaign_id)
    .bind(user)
    .fetch_one(env.db.pool())
    .await
    .unwrap();
    (r.get("status"), r.get("reason"), r.get("step"), r.get("bounced_at"), r.get("fallback_sent_at"))
}

both_engines!(dead_addresses_bounce_then_go_by_the_fallback_and_are_skipped_by_email_after, |db: TestDb| async move {
    let env = env_of(db, 100).await;
    let (hook, posted) = fallback_receiver().await;
    let delivery = format!("fallback = \"webhook\"\nfallback_webhook_url = \"{hook}\"");
    let c = env.apply(&campaign("first", &delivery, "")).await;
    let report1 = env.run(&c).await;
    assert_eq!(report1.counts.notified, 100, "{report1:?}");

    // 3% of the addresses are dead: their messages bounce, keyed by the VERP token
    // the Message-ID carries
    let users = env.sandbox.users();
    let dead: Vec<_> = users.iter().take(3).collect();
    let sink = StoreBounceSink::new(env.store().clone(), env.settings.verp_key());
    for (i, u) in dead.iter().enumerate() {
        let id = message_id_to(&env, u.email.as_str());
        let token = token_in_plus_address(&id).expect("the Message-ID carries a token").to_owned();
        let keys = vec![BounceKey::MessageId(id.clone()), BounceKey::Address(u.email.clone())];
        let r = report(&format!("dsn-{i}"), keys, BounceKind::Hard, BounceSource::Mailbox);
        assert_eq!(sink.record(r.clone()).await.unwrap(), Recorded::Applied);
        // the same report again changes nothing
        assert_eq!(sink.record(r).await.unwrap(), Recorded::Duplicate);
        // and a token forged from it opens nothing
        let forged = token.replacen(&token[1..3], "99", 1);
        let r = report(&format!("forged-{i}"), vec![BounceKey::Token(forged)], BounceKind::Hard, BounceSource::Mailbox);
        assert_eq!(sink.record(r).await.unwrap(), Recorded::UnknownToken);
    }
    for u in &dead {
        let (status, reason, step, bounced_at, _) = target(&env, c.campaign_id, u.user_id.as_str()).await;
        assert_eq!((status.as_str(), reason.as_deref(), step), ("pending", Some("fallback"), 1));
        assert!(bounced_at.is_some());
        let r = sqlx::query("SELECT status FROM verification_sessions WHERE user_id = $1")
            .bind(u.user_id.as_str())
            .fetch_all(env.db.pool())
            .await
            .unwrap();
        let statuses: Vec<String> = r.iter().map(|r| r.get("status")).collect();
        assert_eq!(statuses, vec!["bounced".to_owned()], "the message's ledger row is bounced");
        let r = sqlx::query("SELECT email_undeliverable_at, email_undeliverable_reason FROM users WHERE user_id = $1")
            .bind(u.user_id.as_str())
            .fetch_one(env.db.pool())
            .await
            .unwrap();
        assert!(r.get::<Option<i64>, _>("email_undeliverable_at").is_some());
        let why: String = r.get("email_undeliverable_reason");
        assert!(why.starts_with("5.1.1") && !why.contains("dead@example.com"), "{why}");
    }
    let f = env.store().campaign_funnel(c.campaign_id, Utc::now()).await.unwrap();
    assert_eq!((f.notified, f.bounced, f.fallback_sent), (100, 3, 0));
    let counts = env.store().bounce_counts(c.campaign_id).await.unwrap();
    assert_eq!(counts, vec![(BounceKind::Hard, 3)], "each report counted once");

    // the next run reaches them through the fallback, each with a new session
    let before = env.sandbox.stats().await.requests.get("GET /v1/user/verification").copied().unwrap_or(0);
    let mails_before = env.messages().len();
    let report2 = env.run(&c).await;
    assert_eq!(report2.counts.notified, 3, "{report2:?}");
    let mut sent: Vec<String> = posted.lock().unwrap().clone();
    sent.sort();
    let mut want: Vec<String> = dead.iter().map(|u| u.user_id.to_string()).collect();
    want.sort();
    assert_eq!(sent, want, "the fallback webhook got the three bounced users");
    assert_eq!(env.messages().len(), mails_before, "no email to a dead address");
    let after = env.sandbox.stats().await.requests.get("GET /v1/user/verification").copied().unwrap_or(0);
    assert_eq!(after - before, 3, "a new session each");
    for u in &dead {
        let (status, _, step, _, fallback_at) = target(&env, c.campaign_id, u.user_id.as_str()).await;
        assert_eq!((status.as_str(), step), ("notified", 1));
        assert!(fallback_at.is_some());
    }
    let f = env.store().campaign_funnel(c.campaign_id, Utc::now()).await.unwrap();
    assert_eq!((f.bounced, f.fallback_sent), (3, 3));

    // a later campaign without a fallback skips them by email
    let c2 = env.apply(&campaign("second", "", "")).await;
    let report3 = env.run(&c2).await;
    assert_eq!(report3.counts.notified, 97, "{report3:?}");
    for u in &dead {
        let (status, reason, ..) = target(&env, c2.campaign_id, u.user_id.as_str()).await;
        assert_eq!((status.as_str(), reason.as_deref()), ("skipped", Some("email_undeliverable")));
    }

    // an import bringing a different address clears it; the same address does not
    env.upsert_users(|i, row| {
        if i == 0 {
            row.email = EmailAddress::parse("new-address@example.com").unwrap();
        }
    })
    .await;
    let undeliverable: Vec<String> =
        sqlx::query("SELECT user_id FROM users WHERE email_undeliverable_at IS NOT NULL ORDER BY user_id")
            .fetch_all(env.db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("user_id"))
            .collect();
    let mut still: Vec<String> = dead[1..].iter().map(|u| u.user_id.to_string()).collect();
    still.sort();
    assert_eq!(undeliverable, still, "only the user with a new address is deliverable again");

    // users forget takes the person's bounce records and diagnostics with them
    let gone = &dead[1].user_id;
    env.store().user_forget(gone, "test", Utc::now()).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bounces WHERE user_id = $1")
        .bind(gone.as_str())
        .fetch_one(env.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 0, "the bounce records are erased");
    let kept: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM campaign_targets WHERE user_id = $1 AND bounce_diagnostic IS NOT NULL",
    )
    .bind(gone.as_str())
    .fetch_one(env.db.pool())
    .await
    .unwrap();
    assert_eq!(kept, 0, "the diagnostics are erased");
    let reason: Option<String> = sqlx::query_scalar("SELECT email_undeliverable_reason FROM users WHERE user_id = $1")
        .bind(gone.as_str())
        .fetch_one(env.db.pool())
        .await
        .unwrap();
    assert_eq!(reason, None);
});

both_engines!(soft_bounces_complaints_and_untrusted_reports, |db: TestDb| async move {
    let env = env_of(db, 6).await;
    let c = env.apply(&campaign("soft", "on_complaint = \"suppress\"", "")).await;
    assert_eq!(env.run(&c).await.counts.notified, 6);
    let users = env.sandbox.users();
    let sink = StoreBounceSink::new(env.store().clone(), env.settings.verp_key());
    let keyed = |u: usize| {
        let id = message_id_to(&env, users[u].email.as_str());
        vec![BounceKey::MessageId(id)]
    };

    // two soft bounces are counted; the third within 7 days counts as hard
    for i in 0..2 {
        let r = report(&format!("soft-{i}"), keyed(0), BounceKind::Soft, BounceSource::Mailbox);
        assert_eq!(sink.record(r).await.unwrap(), Recorded::Applied);
    }
    let (status, ..) = target(&env, c.campaign_id, users[0].user_id.as_str()).await;
    assert_eq!(status, "notified", "two soft bounces change nothing");
    let r = report("soft-2", keyed(0), BounceKind::Soft, BounceSource::Mailbox);
    assert_eq!(sink.record(r).await.unwrap(), Recorded::Applied);
    let (status, reason, ..) = target(&env, c.campaign_id, users[0].user_id.as_str()).await;
    assert_eq!((status.as_str(), reason.as_deref()), ("failed", Some("bounced")));

    // an unknown report is recorded, never taken as hard
    let r = report("unknown-1", keyed(1), BounceKind::Unknown, BounceSource::Mailbox);
    assert_eq!(sink.record(r).await.unwrap(), Recorded::Applied);
    assert_eq!(target(&env, c.campaign_id, users[1].user_id.as_str()).await.0, "notified");

    // a mailbox report naming only an address is not trusted (anyone can mail the
    // bounce mailbox); a provider's authenticated one is, for the latest message
    let by_address = vec![BounceKey::Address(users[2].email.clone())];
    let r = report("addr-1", by_address.clone(), BounceKind::Hard, BounceSource::Mailbox);
    assert_eq!(sink.record(r).await.unwrap(), Recorded::Unmatched);
    assert_eq!(target(&env, c.campaign_id, users[2].user_id.as_str()).await.0, "notified");
    let r = report("pm-1", by_address, BounceKind::Hard, BounceSource::Postmark);
    assert_eq!(sink.record(r).await.unwrap(), Recorded::Applied);
    assert_eq!(target(&env, c.campaign_id, users[2].user_id.as_str()).await.0, "failed");

    // a bounce naming an address the user no longer has changes nothing of theirs
    let mut keys = keyed(3);
    keys.push(BounceKey::Address(EmailAddress::parse("someone-else@example.com").unwrap()));
    let r = report("old-address", keys, BounceKind::Hard, BounceSource::Mailbox);
    assert_eq!(sink.record(r).await.unwrap(), Recorded::Applied);
    assert_eq!(target(&env, c.campaign_id, users[3].user_id.as_str()).await.0, "notified");

    // a complaint marks the user; a campaign that suppresses complaints skips them
    let r = report("arf-1", keyed(4), BounceKind::Complaint, BounceSource::Mailbox);
    assert_eq!(sink.record(r).await.unwrap(), Recorded::Applied);
    let complained: Option<i64> = sqlx::query("SELECT complained_at FROM users WHERE user_id = $1")
        .bind(users[4].user_id.as_str())
        .fetch_one(env.db.pool())
        .await
        .unwrap()
        .get("complained_at");
    assert!(complained.is_some());
    let suppress = env.apply(&campaign("suppress", "on_complaint = \"suppress\"", "")).await;
    env.run(&suppress).await;
    let (status, reason, ..) = target(&env, suppress.campaign_id, users[4].user_id.as_str()).await;
    assert_eq!((status.as_str(), reason.as_deref()), ("skipped", Some("complained")));
    let keep = env.apply(&campaign("continue", "", "")).await;
    env.run(&keep).await;
    assert_eq!(target(&env, keep.campaign_id, users[4].user_id.as_str()).await.0, "notified");

    let mut counts = env.store().bounce_counts(c.campaign_id).await.unwrap();
    counts.sort_by_key(|(k, _)| k.as_str());
    assert_eq!(
        counts,
        vec![(BounceKind::Complaint, 1), (BounceKind::Hard, 2), (BounceKind::Soft, 3), (BounceKind::Unknown, 1)]
    );
});

both_engines!(a_hard_bounce_rate_above_the_halt_pauses_the_campaign, |db: TestDb| async move {
    let env = env_of(db, 10).await;
    let c = env.apply(&campaign("halted", "", "[halt]\nbounce_rate = 0.2\nmin_sample = 5")).await;
    assert_eq!(env.run(&c).await.counts.notified, 10);
    let users = env.sandbox.users();
    let sink = StoreBounceSink::new(env.store().clone(), env.settings.verp_key());
    for (i, u) in users.iter().enumerate().take(3) {
        let id = message_id_to(&env, u.email.as_str());
        let r = report(&format!("h-{i}"), vec![BounceKey::MessageId(id)], BounceKind::Hard, BounceSource::Mailbox);
        sink.record(r).await.unwrap();
        let status = env.store().campaign_get(&c.name).await.unwrap().unwrap();
        if i < 2 {
            assert_eq!(status.status.as_str(), "active", "2 of 10 is not above 0.2");
        } else {
            assert_eq!(status.status.as_str(), "paused", "3 of 10 is");
            assert_eq!(status.pause_reason.as_deref(), Some("bounce_rate"));
        }
    }
});

// The whole way, with real parts: the campaign's emails leave over SMTP with the
// VERP envelope sender; the relay's asynchronous DSNs for the dead addresses (and
// one ARF complaint) land in an IMAP mailbox (Dovecot); the mailbox reader records
// them; the next campaign skips the dead addresses by email.
both_engines!(dsns_through_a_real_mailbox_make_addresses_undeliverable, |db: TestDb| async move {
    use reverify::bounces::testing::{DovecotServer, arf_for, dsn_for};
    use reverify::notify::testing::SmtpServer;
    let mut env = env_of(db, 100).await;
    let smtp = SmtpServer::start();
    env.settings.smtp_url = Some(smtp.url());
    env.settings.outbox_dir = None;
    let c = env.apply(&campaign("by-mail", "", "")).await;
    assert_eq!(env.run(&c).await.counts.notified, 100);
    let sent = smtp.messages();
    assert_eq!(sent.len(), 100);

    // 3% dead: the relay bounces them to the envelope sender, hours later
    let imap = DovecotServer::start();
    let users = env.sandbox.users();
    let dead: Vec<_> = users.iter().take(3).collect();
    for u in &dead {
        let m = sent.iter().find(|m| m.raw.contains(&format!("<{}>", u.email))).expect("a message to the address");
        let envelope_from = m.header("X-MailFrom").expect("aiosmtpd records the envelope sender");
        assert!(envelope_from.starts_with("bounces+s"), "the VERP return path: {envelope_from}");
        let dsn = dsn_for(m.raw.as_bytes(), u.email.as_str(), "5.1.1", "smtp; 550 5.1.1 user unknown", &envelope_from);
        imap.deliver(&dsn);
    }
    // and one complaint, from a feedback loop
    let complainer = &users[10];
    let m = sent.iter().find(|m| m.raw.contains(&format!("<{}>", complainer.email))).unwrap();
    imap.deliver(&arf_for(m.raw.as_bytes(), complainer.email.as_str(), &m.header("X-MailFrom").unwrap()));
    // a forged DSN naming an address, with no token: ignored
    let forged = dsn_for(sent[50].raw.as_bytes(), users[50].email.as_str(), "5.1.1", "550", "bounces@example.com")
        .into_iter()
        .collect::<Vec<u8>>();
    let forged = String::from_utf8(forged).unwrap().replace(&sent[50].header("Message-ID").unwrap(), "<forged@x>");
    imap.deliver(forged.as_bytes());

    let sink = StoreBounceSink::new(env.store().clone(), env.settings.verp_key());
    let config = imap.mailbox_config();
    let tls = reverify::bounces::mailbox::tls_connector(&config).unwrap();
    let summary = reverify::bounces::mailbox::poll_once(&config, tls.as_ref(), &sink).await.unwrap();
    assert_eq!(summary.processed, 5, "{summary:?}");
    assert!(imap.messages("INBOX").iter().all(|m| m.is_done()), "every message flagged, none deleted");
    // a second poll finds nothing new
    let again = reverify::bounces::mailbox::poll_once(&config, tls.as_ref(), &sink).await.unwrap();
    assert_eq!(again.processed, 0);

    let undeliverable: Vec<String> =
        sqlx::query("SELECT user_id FROM users WHERE email_undeliverable_at IS NOT NULL ORDER BY user_id")
            .fetch_all(env.db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("user_id"))
            .collect();
    let mut want: Vec<String> = dead.iter().map(|u| u.user_id.to_string()).collect();
    want.sort();
    assert_eq!(undeliverable, want, "the three dead addresses, and not the forged one's");
    let complained: Option<i64> = sqlx::query("SELECT complained_at FROM users WHERE user_id = $1")
        .bind(complainer.user_id.as_str())
        .fetch_one(env.db.pool())
        .await
        .unwrap()
        .get("complained_at");
    assert!(complained.is_some());
    let status = env.store().campaign_funnel(c.campaign_id, Utc::now()).await.unwrap();
    assert_eq!((status.notified, status.bounced), (100, 3));

    // the next campaign does not email them
    let before = smtp.messages().len();
    let c2 = env.apply(&campaign("by-mail-2", "", "")).await;
    assert_eq!(env.run(&c2).await.counts.notified, 97);
    let later = smtp.messages();
    assert_eq!(later.len() - before, 97);
    for u in &dead {
        assert!(!later[before..].iter().any(|m| m.raw.contains(&format!("<{}>", u.email))), "mailed a dead address");
    }
});
