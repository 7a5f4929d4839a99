//! The operations endpoints over real HTTP, and the push to a real Prometheus
//! Pushgateway (`telemetry::testing`).

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use reverify::both_engines;
use reverify::engine::gauges::StoreProbe;
use reverify::store::testing::TestDb;
use reverify::telemetry::testing::Pushgateway;
use reverify::telemetry::{self, TelemetryError, serve_ops};
use tokio_util::sync::CancellationToken;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

both_engines!(probes_and_metrics_answer_over_http, |db: TestDb| async move {
    let stop = CancellationToken::new();
    let ops = serve_ops(any_port(), StoreProbe::of(db.store.clone()), stop.clone()).await.unwrap();
    let base = format!("http://{}", ops.local_addr);
    let http = reqwest::Client::new();

    let r = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Prometheus asks for OpenMetrics; curl and the rest get the 0.0.4 text
    telemetry::global().session_issued("ops-endpoint-test");
    let r = http
        .get(format!("{base}/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let body = r.text().await.unwrap();
    assert!(body.contains("reverify_sessions_issued_total{campaign=\"ops-endpoint-test\"}"), "{body}");
    assert!(body.ends_with("# EOF\n"));
    let r = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let body = r.text().await.unwrap();
    assert!(body.contains("# TYPE reverify_sessions_issued_total counter"), "{body}");

    // the database goes away: not ready, still alive, metrics still served
    db.store.close().await;
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "database unreachable\n");
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{base}/metrics")).send().await.unwrap().status(), 200);

    // shutdown ends the server task and frees the port
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), ops.handle).await.unwrap().unwrap().unwrap();
    assert!(http.get(format!("{base}/healthz")).send().await.is_err());
});

/// The listener that may face the internet (`reverify serve`, `daemon
/// --webhook-listen`) serves its routes and /healthz, and 404 to /metrics and
/// /readyz, which only the operations listener serves.
#[tokio::test]
async fn the_public_listener_serves_only_its_routes_and_healthz() {
    let stop = CancellationToken::new();
    let routes = axum::Router::new().route("/webhooks/baanx", axum::routing::post(|| async { "hook" }));
    let public = telemetry::serve_public(any_port(), routes, stop.clone()).await.unwrap();
    let base = format!("http://{}", public.local_addr);
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.post(format!("{base}/webhooks/baanx")).send().await.unwrap().text().await.unwrap(), "hook");
    for path in ["/metrics", "/readyz"] {
        assert_eq!(http.get(format!("{base}{path}")).send().await.unwrap().status(), 404, "{path}");
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), public.handle).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_taken_port_is_an_error_naming_the_setting() {
    let db = TestDb::sqlite().await;
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let e = serve_ops(addr, StoreProbe::of(db.store.clone()), CancellationToken::new()).await.unwrap_err();
    assert!(matches!(e, TelemetryError::Listen { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&format!("metrics_listen {addr}")), "{e}");
}

#[tokio::test]
async fn a_push_reaches_a_real_pushgateway() {
    let pgw = Pushgateway::start().await;
    let m = telemetry::Metrics::new();
    m.session_issued("push-test");
    m.session_issued("push-test");
    m.notification("push-test", "failed", "delivery_failed");
    m.api_latency("verification", Duration::from_millis(30));
    m.limiter_wait(Duration::from_millis(2));
    m.set_targets("push-test", "pending", 7);
    m.baanx_request("verification", Some(200));
    m.baanx_request("user", None);
    m.run_ended(
        "push-test",
        "finished",
        Duration::from_secs(2),
        chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
    );
    m.webhook_rejected("unsigned");
    telemetry::server::push_metrics_of(&m, &pgw.url, "reverify", "worker-1").await.unwrap();

    let body = pgw.scrape().await;
    for line in [
        r#"reverify_sessions_issued_total{campaign="push-test",instance="worker-1",job="reverify"} 2"#,
        r#"reverify_notifications_total{campaign="push-test",instance="worker-1",job="reverify",outcome="failed",reason="delivery_failed"} 1"#,
        r#"reverify_baanx_request_duration_seconds_count{endpoint="verification",instance="worker-1",job="reverify"} 1"#,
        r#"reverify_limiter_wait_seconds_count{instance="worker-1",job="reverify"} 1"#,
        r#"reverify_targets{campaign="push-test",instance="worker-1",job="reverify",status="pending"} 7"#,
        r#"reverify_baanx_requests_total{code="200",endpoint="verification",instance="worker-1",job="reverify"} 1"#,
        r#"reverify_baanx_requests_total{code="error",endpoint="user",instance="worker-1",job="reverify"} 1"#,
        r#"reverify_runs_total{campaign="push-test",instance="worker-1",job="reverify",outcome="finished"} 1"#,
        r#"reverify_run_duration_seconds_count{campaign="push-test",instance="worker-1",job="reverify"} 1"#,
        // the campaign's own group: its last run
        r#"reverify_last_run_timestamp_seconds{campaign="push-test",instance="",job="reverify",outcome="finished"} 1.8e+09"#,
        r#"reverify_last_run_duration_seconds{campaign="push-test",instance="",job="reverify"} 2"#,
        r#"reverify_last_run_users{campaign="push-test",instance="",job="reverify",status="pending"} 7"#,
        r#"reverify_last_success_timestamp_seconds{campaign="push-test",instance="worker-1",job="reverify"} 1.8e+09"#,
        r#"reverify_webhook_rejected_total{instance="worker-1",job="reverify",reason="unsigned"} 1"#,
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in the Pushgateway's\n{body}");
    }
    // a later push replaces the group (PUT): the numbers are the last run's
    let m2 = telemetry::Metrics::new();
    m2.session_issued("push-test");
    telemetry::server::push_metrics_of(&m2, &pgw.url, "reverify", "worker-1").await.unwrap();
    let body = pgw.scrape().await;
    assert!(
        body.contains(r#"reverify_sessions_issued_total{campaign="push-test",instance="worker-1",job="reverify"} 1"#)
    );
    assert!(!body.contains("reverify_targets{"), "{body}");
    // the build's identity goes with every push
    let build = format!(
        r#"reverify_build_info{{instance="worker-1",job="reverify",revision="{}",version="{}"}} 1"#,
        telemetry::metrics::REVISION,
        env!("CARGO_PKG_VERSION")
    );
    assert!(body.lines().any(|l| l == build), "missing {build:?} in\n{body}");
}

#[tokio::test]
async fn a_refused_push_says_where_and_why() {
    let pgw = Pushgateway::start().await;
    // nothing listens on port 9 (discard): a transport failure names the URL
    let e = telemetry::server::push_metrics_of(&telemetry::Metrics::new(), "http://127.0.0.1:9/", "reverify", "w")
        .await
        .unwrap_err();
    assert!(matches!(e, TelemetryError::Push { .. }), "{e:?}");
    assert!(e.to_string().contains("127.0.0.1:9/metrics/job/reverify/instance/w"), "{e}");
    // a wrong path prefix: the Pushgateway's own 404 comes back in the message
    let e = telemetry::push_metrics(&format!("{}/nowhere", pgw.url), "reverify", "w").await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("answered 404"), "{msg}");
}
