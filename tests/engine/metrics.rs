//! A real run shows up in the Prometheus metrics: sessions, outcomes, API latency,
//! requests by endpoint and code, 429s, limiter waits, targets by status, and the
//! run's outcome, duration and last success, with nothing personal in a label.
//!
//! The registry is process-wide, so each test reads only its own campaign's series
//! and, for the unlabelled families, an increase over what it saw before.

use reverify::both_engines;
use reverify::sandbox::ScriptedFault;
use reverify::store::testing::TestDb;
use reverify::telemetry;

use crate::common::{Env, campaign_toml};

/// The value of the sample line that starts with `series ` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

both_engines!(a_run_is_counted_in_the_metrics, |db: TestDb| async move {
    let backend = db.backend().as_str();
    let env = Env::new(db, 12).await;
    let name = format!("metrics-{backend}");
    let campaign = env.apply(&campaign_toml(&name, "")).await;

    let before = telemetry::global().encode();
    let waits_before = sample(&before, "reverify_limiter_wait_seconds_count").unwrap_or(0.0);
    let finished = format!("reverify_runs_total{{campaign=\"{name}\",outcome=\"finished\"}}");
    let finished_before = sample(&before, &finished).unwrap_or(0.0);
    let durations = format!("reverify_run_duration_seconds_count{{campaign=\"{name}\"}}");
    let durations_before = sample(&before, &durations).unwrap_or(0.0);
    let verification_200 = "reverify_baanx_requests_total{endpoint=\"verification\",code=\"200\"}";
    let verification_200_before = sample(&before, verification_200).unwrap_or(0.0);
    let throttled = |text: &str| {
        ["token", "user", "verification"]
            .iter()
            .filter_map(|e| sample(text, &format!("reverify_baanx_requests_total{{endpoint=\"{e}\",code=\"429\"}}")))
            .sum::<f64>()
    };
    let throttled_before = throttled(&before);
    let started = chrono::Utc::now();
    // the first API call of the run is answered 429; the client waits and retries
    env.sandbox.fail_next(ScriptedFault::Throttle { retry_after_secs: 1 }, 1);
    let report = env.run(&campaign).await;
    assert!(report.counts.notified > 0, "{report:?}");
    reverify::engine::gauges::refresh_target_gauges(env.store()).await.unwrap();

    let text = telemetry::global().encode();
    let c = format!("campaign=\"{name}\"");
    let issued = env.store().session_count(campaign.campaign_id).await.unwrap();
    assert_eq!(sample(&text, &format!("reverify_sessions_issued_total{{{c}}}")), Some(issued as f64), "{text}");
    assert_eq!(
        sample(&text, &format!("reverify_notifications_total{{{c},outcome=\"sent\",reason=\"ok\"}}")),
        Some(report.counts.notified as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("reverify_targets{{{c},status=\"notified\"}}")),
        Some(report.counts.notified as f64),
        "{text}"
    );
    assert_eq!(sample(&text, &format!("reverify_targets{{{c},status=\"failed\"}}")), Some(0.0), "{text}");
    // every answered verification call was timed
    let timed = sample(&text, "reverify_baanx_request_duration_seconds_count{endpoint=\"verification\"}").unwrap();
    assert!(timed >= issued as f64, "{timed} < {issued}\n{text}");
    assert!(!text.contains("reverify_baanx_rate_limited"), "one 429 counter: baanx_requests_total's code=\"429\"");
    assert!(sample(&text, "reverify_limiter_wait_seconds_count").unwrap() > waits_before, "{text}");
    // every request is counted by endpoint and code: each issued session was a 200,
    // and the 429 is there
    assert!(sample(&text, verification_200).unwrap() - verification_200_before >= issued as f64, "{text}");
    assert!(throttled(&text) > throttled_before, "{text}");
    // the run itself: its outcome, its duration, and the campaign's last success
    assert!(sample(&text, &finished).unwrap() > finished_before, "{text}");
    assert!(sample(&text, &durations).unwrap() > durations_before, "{text}");
    // the users who got no message are users, not notifications
    let users_sent = sample(&text, &format!("reverify_users_total{{{c},outcome=\"sent\",reason=\"ok\"}}"));
    assert_eq!(users_sent, Some(report.counts.notified as f64), "{text}");
    assert!(!text.contains(&format!("reverify_notifications_total{{{c},outcome=\"skipped\"")), "{text}");
    assert!(!text.contains(&format!("reverify_notifications_total{{{c},outcome=\"deferred\"")), "{text}");
    // an SMTP-less test run writes its messages to the outbox: each attempt timed
    assert!(
        sample(&text, "reverify_delivery_attempts_total{channel=\"outbox\",result=\"ok\"}").unwrap_or(0.0)
            >= report.counts.notified as f64,
        "{text}"
    );
    assert!(sample(&text, "reverify_delivery_duration_seconds_count{channel=\"outbox\"}").is_some(), "{text}");
    // the campaign's series an alert reads exist at 0 once the gauges were read
    assert_eq!(sample(&text, &format!("reverify_campaign_unapproved_skips_total{{{c}}}")), Some(0.0), "{text}");
    assert_eq!(sample(&text, &format!("reverify_runs_total{{{c},outcome=\"failed\"}}")), Some(0.0), "{text}");
    let success = sample(&text, &format!("reverify_last_success_timestamp_seconds{{{c}}}")).unwrap();
    assert!(success >= started.timestamp() as f64 && success <= chrono::Utc::now().timestamp() as f64 + 1.0, "{text}");

    // invariant 2: no URL, address or user id in any series
    let messages = env.messages();
    assert!(!messages.is_empty());
    assert!(!text.contains('@'), "an email address in the metrics");
    assert!(!text.contains("127.0.0.1") && !text.contains("http"), "a URL in the metrics");
    for user in env.sandbox.users() {
        assert!(!text.contains(user.user_id.as_str()), "a user id in the metrics");
    }
});
