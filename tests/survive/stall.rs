//! The stall test (issue 13, item 9), on Postgres: a worker frozen with SIGSTOP while
//! it has users in flight (and, likely, a group transaction holding users' row locks
//! open) for longer than its lease. A second worker must finish the campaign within
//! twice the lease plus the lock timeout (plus the campaign's own work), and when the
//! first thaws (SIGCONT) it finds its claims gone: no user gets a second message.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reverify::notify::testing::SmtpServer;
use reverify::sandbox::{Faults, Latency, RefreshReuse, SandboxConfig, UserSource};
use reverify::store::testing::TestDb;

use crate::common::{Rig, campaign, check_delivery, text, wait_until};
use crate::summary::{Counts, report};

const USERS: usize = 400;
const LEASE_SECONDS: u64 = 3;
/// `store::LOCK_TIMEOUT`.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
const RPS: u32 = 100;

fn signal(pid: u32, sig: &str) {
    let s = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(s.success(), "kill {sig} {pid}");
}

async fn a_frozen_worker_holds_the_fleet_up_for_a_bounded_time(db: TestDb) {
    let users = reverify::sandbox::users::generate_unverified(USERS, 17, chrono::Utc::now());
    let config = SandboxConfig {
        users: UserSource::Records(users),
        seed: 17,
        faults: Faults { latency: Latency::Fixed(Duration::from_millis(15)), ..Faults::default() },
        refresh_reuse: RefreshReuse::RevokeFamily,
        ..SandboxConfig::default()
    };
    let mut rig = Rig::with_sandbox(db, config).await;
    let smtp = SmtpServer::start();
    rig.smtp_url = Some(smtp.url());
    let name = "stall";
    let c = rig.apply(&campaign(name, RPS, 16)).await;
    let lease = LEASE_SECONDS.to_string();

    let mut frozen = rig
        .command(&["run", name, "--progress", "none"])
        .env("REVERIFY_LEASE_SECONDS", &lease)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(rig.path("frozen.log")).unwrap())
        .spawn()
        .unwrap();
    // users in flight: some delivered already, most still to come
    wait_until("the first messages", Duration::from_secs(60), || smtp.messages().len() >= 40).await;
    signal(frozen.id(), "-STOP");
    let frozen_at = Instant::now();
    let sent_before = smtp.messages().len();

    // the second worker runs until the campaign is done (as `run --due` on a schedule
    // would); the frozen one's claims come back to it as their leases run out
    let started = Instant::now();
    let mut runs = 0;
    while rig.targets_left(c.campaign_id).await > 0 {
        runs += 1;
        assert!(runs < 50, "the second worker did not finish");
        let mut cmd = rig.command(&["run", name, "--progress", "none"]);
        cmd.env("REVERIFY_LEASE_SECONDS", &lease);
        let o = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
        assert!(o.status.success(), "second worker, run {runs}: {}", text(&o));
        if rig.targets_left(c.campaign_id).await > 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let took = started.elapsed();
    // the work itself: the rest of the users at the campaign's rate, with room
    let work = Duration::from_secs_f64((USERS - sent_before) as f64 / f64::from(RPS) * 2.0 + 5.0);
    let bound = Duration::from_secs(2 * LEASE_SECONDS) + LOCK_TIMEOUT + work;
    assert!(took <= bound, "the second worker needed {took:?}, over {bound:?}");
    assert!(frozen_at.elapsed() > Duration::from_secs(LEASE_SECONDS), "frozen for longer than its lease");

    // thaw the first: it finds its claims gone and sends nothing more
    let sent_after_second = smtp.messages().len();
    signal(frozen.id(), "-CONT");
    let status = tokio::task::spawn_blocking(move || frozen.wait().unwrap()).await.unwrap();
    let log = std::fs::read_to_string(rig.path("frozen.log")).unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tail: Vec<&str> = log.lines().rev().take(4).collect();
    eprintln!("stall: the thawed worker's last log lines: {tail:?}");
    let mails = smtp.messages();
    let targets = rig.targets(c.campaign_id).await;
    let d = check_delivery(name, &targets, &mails, false);
    let stats = rig.sandbox.stats().await;
    report(
        format!(
            "stall: engine=postgres users={USERS} lease_s={LEASE_SECONDS} frozen_for_ms={} second_worker_ms={} \
             bound_ms={} runs={runs} sent_before_freeze={sent_before} sent_after_thaw={} notified={} \
             delivery_unknown={} duplicates={} violations={} thawed_exit={:?}",
            frozen_at.elapsed().as_millis(),
            took.as_millis(),
            bound.as_millis(),
            mails.len() - sent_after_second,
            d.notified,
            d.delivery_unknown,
            d.duplicates,
            stats.violations,
            status.code(),
        ),
        Counts { violations: stats.violations, ..Counts::default() },
    );
    assert_eq!(d.duplicates, 0);
    assert_eq!(stats.violations_by_kind.iter().filter(|(k, _)| *k != "refresh_reuse").map(|(_, n)| n).sum::<u64>(), 0);
    assert!(d.notified + d.delivery_unknown >= USERS - 16, "{d:?}: {log}");
}

reverify::postgres_only!(
    a_frozen_worker_holds_the_fleet_up_for_a_bounded_time,
    a_frozen_worker_holds_the_fleet_up_for_a_bounded_time
);
