//! Four workers (four processes of the real binary) run one campaign on one Postgres
//! at once. Each user is notified once, and the campaign's total rate holds across
//! the four: each runs with `REVERIFY_WORKERS=4` and so enforces a quarter of it.
//! The sandbox's histogram of `GET /v1/user/verification` is the measure.

use std::process::Stdio;

use reverify::notify::testing::SmtpServer;
use reverify::sandbox::{Faults, Latency};
use reverify::store::testing::TestDb;

use crate::common::{Rig, campaign, check_delivery};
use crate::summary::{Counts, report};

const WORKERS: usize = 4;
const USERS: usize = 800;
/// The campaign's total `throttle.requests_per_second` (burst 1).
const TOTAL_RPS: u32 = 80;

async fn four_workers_share_one_campaign_and_its_rate(db: TestDb) {
    let faults = Faults { latency: Latency::Fixed(std::time::Duration::from_millis(3)), ..Faults::default() };
    let mut rig = Rig::new(db, USERS, 21, faults).await;
    let smtp = SmtpServer::start();
    rig.smtp_url = Some(smtp.url());
    let name = "overlap";
    let c = rig.apply(&campaign(name, TOTAL_RPS, 8)).await;

    // --no-fresh-state: then the campaign's throttle governs exactly the session
    // calls, which the sandbox counts per 100 ms
    let children: Vec<_> = (0..WORKERS)
        .map(|i| {
            rig.command(&["run", name, "--progress", "none", "--no-fresh-state"])
                .env("REVERIFY_WORKERS", WORKERS.to_string())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(rig.path(&format!("worker-{i}.log"))).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, mut child) in children.into_iter().enumerate() {
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
        let log = std::fs::read_to_string(rig.path(&format!("worker-{i}.log"))).unwrap_or_default();
        assert!(status.success(), "worker {i}: {status}: {log}");
    }

    let targets = rig.targets(c.campaign_id).await;
    let d = check_delivery(name, &targets, &smtp.messages(), false);
    rig.assert_status_equals_rows(name, c.campaign_id).await;
    let stats = rig.sandbox.stats().await;
    assert_eq!(stats.violations, 0, "{stats:?}");
    // Each worker may start with its burst (1) in hand; the rest is the rate.
    let ceiling = u64::from(TOTAL_RPS) + WORKERS as u64 + 2;
    assert!(
        stats.verification_busiest_second <= ceiling,
        "busiest second {} over the total {TOTAL_RPS} (+bursts): {:?}",
        stats.verification_busiest_second,
        stats.verification_per_second
    );
    // and the fleet used more than one worker's share: a fleet whose workers each
    // kept a quarter of a quarter (the rate divided twice) could never do more than
    // TOTAL_RPS / WORKERS in any window after the first second. The best three
    // seconds are the measure, not the mean, so that a machine busy with other work
    // (which slows the processes, not their throttle) does not fail the test.
    let secs = &stats.verification_per_second;
    let middle: Vec<u64> = secs.iter().copied().skip(1).take(secs.len().saturating_sub(2)).collect();
    let mean = middle.iter().sum::<u64>() as f64 / middle.len().max(1) as f64;
    let best3 = middle.windows(3).map(|w| w.iter().sum::<u64>() as f64 / 3.0).fold(0.0, f64::max);
    let one_share = f64::from(TOTAL_RPS) / WORKERS as f64;
    assert!(
        best3 > one_share,
        "the fleet's best three seconds ran at {best3:.1}/s, one worker's share is {one_share}: {secs:?}"
    );
    report(
        format!(
            "overlap: workers={WORKERS} users={USERS} notified={} delivery_unknown={} duplicates={} \
             total_rps={TOTAL_RPS} busiest_second={} mean_rps={mean:.1} best3_rps={best3:.1} violations={}",
            d.notified, d.delivery_unknown, d.duplicates, stats.verification_busiest_second, stats.violations
        ),
        Counts { violations: stats.violations, ..Counts::default() },
    );
}
reverify::postgres_only!(four_workers_share_one_campaign_and_its_rate, four_workers_share_one_campaign_and_its_rate);
