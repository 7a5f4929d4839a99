//! The fault matrix: one small campaign per fault, run by an in-process worker with
//! short retry budgets, delivering to a real SMTP server. Under each fault every
//! target ends in the state its fault calls for, nobody gets two messages and the
//! sandbox counts no violation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reverify::Settings;
use reverify::baanx::{BaanxClient, BaanxConfig};
use reverify::engine::observe::Metered;
use reverify::engine::{Progress, RunReport, Worker};
use reverify::notify::Notifier;
use reverify::notify::testing::{Fault, SmtpServer};
use reverify::sandbox::{Faults, Latency};
use reverify::store::campaigns::CampaignRecord;
use reverify::store::testing::TestDb;
use tokio_util::sync::CancellationToken;

use crate::common::{Rig, TargetRow, campaign, check_delivery};
use crate::summary::{Counts, report};

/// A worker whose retries are quick: a cell is about the outcome, not the wait.
fn quick_worker(rig: &Rig, settings: &Settings) -> Worker {
    let mut w = Worker::from_settings(settings, rig.db.store.clone()).expect("worker");
    let mut cfg = BaanxConfig::from_settings(settings).unwrap();
    cfg.retry = reverify::baanx::ApiRetryPolicy {
        max_attempts: 3,
        max_rate_limited_attempts: 4,
        max_elapsed: Duration::from_secs(8),
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    };
    cfg.observer = Arc::new(Metered);
    w.client = Arc::new(BaanxClient::new(cfg, w.vault.clone()).unwrap());
    w.notifier = Notifier::from_settings(
        settings,
        reverify::notify::DeliveryRetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(5),
        },
    )
    .unwrap()
    .observed_by(Arc::new(Metered));
    w
}

async fn run(w: &Worker, c: &CampaignRecord) -> RunReport {
    w.run_campaign(c, Arc::new(Progress::default()), CancellationToken::new()).await.expect("run")
}

fn by_outcome(targets: &[TargetRow]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in targets {
        *m.entry(format!("{}/{}", t.status, t.reason.as_deref().unwrap_or("-"))).or_insert(0) += 1;
    }
    m
}

/// Targets the audience selected that were not refused by a per-user rule before
/// any API call (skipped or deferred by the ledger's policy).
fn reached(targets: &[TargetRow]) -> impl Iterator<Item = &TargetRow> {
    targets.iter().filter(|t| !matches!(t.status.as_str(), "skipped" | "deferred"))
}

async fn finish(cell: &str, rig: &Rig, smtp: &SmtpServer, c: &CampaignRecord, faults: u64) -> Vec<TargetRow> {
    let targets = rig.targets(c.campaign_id).await;
    let d = check_delivery(c.name.as_str(), &targets, &smtp.messages(), true);
    let stats = rig.sandbox.stats().await;
    assert_eq!(stats.violations, 0, "{cell}: {stats:?}");
    rig.assert_status_equals_rows(c.name.as_str(), c.campaign_id).await;
    report(
        format!(
            "faults: cell={cell} engine={} targets={} faults={faults} notified={} duplicates={} violations={} outcomes={:?}",
            rig.db.backend().as_str(),
            targets.len(),
            d.notified,
            d.duplicates,
            stats.violations,
            by_outcome(&targets)
        ),
        Counts { faults, violations: stats.violations, ..Counts::default() },
    );
    targets
}

/// 500s and hung requests: each user ends notified, or pending with a retry time
/// (`api_unavailable`); a hung session call may have created a session, so it counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_timeouts() {
    let faults =
        Faults { error_rate: 0.15, timeout_rate: 0.05, hang: Duration::from_secs(3), seed: 5, ..Faults::default() };
    let mut rig = Rig::new(TestDb::sqlite().await, 100, 31, faults).await;
    let smtp = SmtpServer::start();
    rig.smtp_url = Some(smtp.url());
    let mut settings = rig.settings();
    settings.http_request_timeout_ms = 300;
    let w = quick_worker(&rig, &settings);
    let c = rig.apply(&campaign("errors", 1000, 16)).await;
    run(&w, &c).await;
    let stats = rig.sandbox.stats().await;
    let injected = stats.injected_server_errors + stats.injected_timeouts;
    assert!(injected > 0, "{stats:?}");
    let targets = finish("500+timeouts", &rig, &smtp, &c, injected).await;
    for t in reached(&targets) {
        let ok = t.status == "notified" || (t.status == "pending" && t.reason.as_deref() == Some("api_unavailable"));
        assert!(ok, "{t:?}");
    }
    assert!(targets.iter().filter(|t| t.status == "notified").count() * 2 > reached(&targets).count());
}

/// A storm of 429s with `Retry-After`: honoured, then given up on as pending with a
/// retry time (`rate_limited`); never a failure or a violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_429s() {
    let faults = Faults { throttle_rate: 0.3, retry_after: Duration::from_secs(1), seed: 8, ..Faults::default() };
    let mut rig = Rig::new(TestDb::sqlite().await, 50, 32, faults).await;
    let smtp = SmtpServer::start();
    rig.smtp_url = Some(smtp.url());
    let w = quick_worker(&rig, &rig.settings());
    let c = rig.apply(&campaign("storm", 1000, 16)).await;
    run(&w, &c).await;
    let stats = rig.sandbox.stats().await;
    assert!(stats.too_many_requests.injected > 0, "{stats:?}");
    assert!(w.client.stats().rate_limited > 0);
    let targets = finish("429-storm", &rig, &smtp, &c, stats.too_many_requests.injected).await;
    for t in reached(&targets) {
        let ok = t.status == "notified" || (t.status == "pending" && t.reason.as_deref() == Some("rate_limited"));
        assert!(ok, "{t:?}");
    }
}

/// Slow answers (50-150 ms each): everyone is notified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_responses() {
    let faults = Faults {
        latency: Latency::Uniform(Duration::from_millis(50), Duration::from_millis(150)),
        ..Faults::default()
    };
    let mut rig = Rig::new(TestDb::sqlite().await, 60, 33, faults).await;
    let smtp = SmtpServer::start();
    rig.smtp_url = Some(smtp.url());
    let w = quick_worker(&rig, &rig.settings());
    let c = rig.apply(&campaign("slow", 1000, 16)).await;
    run(&w, &c).await;
    let n = rig.sandbox.stats().await.requests.values().sum::<u64>();
    let targets = finish("slow", &rig, &smtp, &c, n).await;
    assert!(reached(&targets).all(|t| t.status == "notified"), "{:?}", by_outcome(&targets));
}

/// Access tokens expired under the worker (401): refreshed once, retried, notified.
/// Suspended users (403): failed `forbidden`, no message, nothing retried.
async fn expired_tokens_and_suspended_users(db: TestDb) {
    let mut rig = Rig::new(db, 60, 34, Faults::default()).await;
    let smtp = SmtpServer::start();
    rig.smtp_url = Some(smtp.url());
    let w = quick_worker(&rig, &rig.settings());
    // a first campaign leaves every user with a cached access token
    let first = rig.apply(&campaign("warm", 1000, 16)).await;
    run(&w, &first).await;
    let refreshes_before = w.client.stats().token_refreshes;
    let users = rig.sandbox.users();
    for u in &users {
        rig.sandbox.expire_tokens(&u.user_id).unwrap();
    }
    let suspended: Vec<String> = users.iter().step_by(6).map(|u| u.user_id.to_string()).collect();
    for id in &suspended {
        rig.sandbox.suspend(&reverify::domain::UserId::parse(id).unwrap()).unwrap();
    }
    let c = rig.apply(&campaign("expired", 1000, 16)).await;
    run(&w, &c).await;
    let targets = finish("401+403", &rig, &smtp, &c, (users.len() + suspended.len()) as u64).await;
    let mut refreshed = 0;
    for t in reached(&targets) {
        if suspended.contains(&t.user_id) {
            assert_eq!((t.status.as_str(), t.reason.as_deref()), ("failed", Some("forbidden")), "{t:?}");
        } else {
            assert_eq!(t.status, "notified", "{t:?}");
            refreshed += 1;
        }
    }
    assert!(refreshed > 0);
    // every notified user needed a new access token after the 401
    assert!(w.client.stats().token_refreshes >= refreshes_before + refreshed as u64, "{:?}", w.client.stats());
}

/// SMTP: no server on the port (connection refused), then a server that drops one
/// connection, answers 451 twice and 550 to some addresses for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_refused_dropped_4xx_5xx() {
    let mut rig = Rig::new(TestDb::sqlite().await, 60, 35, Faults::default()).await;
    // refused: a port whose server has gone
    let mut gone = SmtpServer::start();
    rig.smtp_url = Some(gone.url());
    gone.stop();
    let w = quick_worker(&rig, &rig.settings());
    let c = rig.apply(&campaign("smtp", 1000, 8)).await;
    let r = w.run_campaign(&c, Arc::new(Progress::default()), CancellationToken::new()).await;
    let targets = rig.targets(c.campaign_id).await;
    assert!(gone.messages().is_empty());
    // a channel that is down stops the run after a few users, instead of spending a
    // session on every user of the campaign
    let err = r.expect_err("the run stops when the channel is down").to_string();
    assert!(err.contains("notification channel unavailable"), "{err}");
    for t in reached(&targets) {
        let ok = (t.status == "failed" && t.reason.as_deref() == Some("delivery_failed")) || t.status == "pending";
        assert!(ok, "refused: {t:?}");
    }
    let refused = reached(&targets).filter(|t| t.status == "failed").count() as u64;
    assert!((5..=5 + 8).contains(&refused), "{refused} sessions spent on a dead channel");
    report(
        format!(
            "faults: cell=smtp-refused engine=sqlite targets={} faults={refused} outcomes={:?}",
            targets.len(),
            by_outcome(&targets)
        ),
        Counts { faults: refused, ..Counts::default() },
    );

    // the same campaign again, to a server that misbehaves: the undelivered users are
    // sent their first message now, once
    let smtp = SmtpServer::start_with(&[
        Fault::drop_connection("user1", Some(1)),
        Fault::reply("user2", 451, Some(2)),
        Fault::reply("user3", 550, None),
    ]);
    rig.smtp_url = Some(smtp.url());
    let w = quick_worker(&rig, &rig.settings());
    run(&w, &c).await;
    let hard = reached(&targets).filter(|t| t.email.starts_with("user3")).count() as u64;
    let targets = finish("smtp-drop+451+550", &rig, &smtp, &c, 3 + hard).await;
    for t in reached(&targets) {
        if t.email.starts_with("user3") {
            assert_eq!((t.status.as_str(), t.reason.as_deref()), ("failed", Some("delivery_failed")), "{t:?}");
        } else {
            assert_eq!(t.status, "notified", "{t:?}");
        }
    }
}

reverify::postgres_only!(expired_tokens_and_suspended_users, expired_tokens_and_suspended_users);
