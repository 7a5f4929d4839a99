//! Issue 25: the Grafana dashboard (deploy/grafana/reverify.json) and the alert rules
//! (deploy/prometheus/rules.yml, the same rules as alerts.yaml) refer only to series
//! the product exports. Every PromQL expression is read (each panel's
//! `targets[].expr`, through rows; each rule's `expr`), its `reverify_*` names
//! collected, and each must be a sample name of a real scrape (the registry's
//! `/metrics` text, every recording method called once) or of a real push (what a
//! real Prometheus Pushgateway exposes after `push_metrics_of`). A histogram is
//! named by its samples (`_bucket`, `_sum`, `_count`), a counter by `_total`, as
//! Prometheus stores them. Any other selector must be Prometheus's or the
//! Pushgateway's own (`up`, `push_time_seconds`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use reverify::telemetry::testing::Pushgateway;
use reverify::telemetry::{self, Metrics};
use serde_json::Value;

/// Series no reverify process exports: Prometheus makes `up` for every target, the
/// Pushgateway `push_time_seconds` for every group.
const OWN_SERIES: [&str; 3] = ["up", "push_time_seconds", "push_failure_time_seconds"];

fn read(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `targets[].expr` of the dashboard's panels, rows' panels included, with
/// the panel's title.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("(untitled)");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((format!("deploy/grafana/reverify.json panel {title:?}"), expr.to_owned()));
                }
            }
            // a collapsed row holds its panels
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Every rule's `expr` of a Prometheus rules file, with the rule's name: inline
/// (`expr: up == 0`, quoted or not) or a block scalar (`expr: |` and the lines
/// indented under it).
fn rule_exprs(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut rule = String::from("(unnamed rule)");
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start().trim_start_matches("- ");
        if let Some(name) = t.strip_prefix("alert:").or_else(|| t.strip_prefix("record:")) {
            rule = name.trim().to_owned();
        }
        if let Some(rest) = t.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                let indent = indent_of(line);
                let mut block = Vec::new();
                i += 1;
                while i < lines.len() && (lines[i].trim().is_empty() || indent_of(lines[i]) > indent) {
                    block.push(lines[i].trim());
                    i += 1;
                }
                out.push((format!("deploy/prometheus/rules.yml {rule}"), block.join("\n").trim().to_owned()));
                continue;
            }
            let unquoted = rest.trim_matches('\'').trim_matches('"').to_owned();
            out.push((format!("deploy/prometheus/rules.yml {rule}"), unquoted));
        }
        i += 1;
    }
    out
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The `reverify_[a-z0-9_]+` names in a PromQL expression (outside string
/// literals: a label value is no series).
fn reverify_names(expr: &str) -> BTreeSet<String> {
    identifiers(expr).into_iter().filter(|(name, _)| name.starts_with("reverify_")).map(|(name, _)| name).collect()
}

/// The other metric names: identifiers directly followed by a selector's `{`.
fn other_selectors(expr: &str) -> BTreeSet<String> {
    identifiers(expr)
        .into_iter()
        .filter(|(name, followed_by_brace)| *followed_by_brace && !name.starts_with("reverify_"))
        .map(|(name, _)| name)
        .collect()
}

/// Every identifier outside string literals, and whether a `{` follows it.
fn identifiers(expr: &str) -> Vec<(String, bool)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut in_string: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = in_string {
            if c == '\\' {
                i += 2;
                continue;
            }
            if c == q {
                in_string = None;
            }
            i += 1;
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            in_string = Some(c);
            i += 1;
            continue;
        }
        // a Grafana variable ($campaign, $__rate_interval) is no name
        if c == '$' {
            i += 1;
            while i < chars.len() && is_name_char(chars[i]) {
                i += 1;
            }
            continue;
        }
        if is_name_char(c) && !c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && is_name_char(chars[i]) {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            out.push((name, chars.get(i) == Some(&'{')));
            continue;
        }
        i += 1;
    }
    out
}

/// The sample names of a text exposition (Prometheus 0.0.4 or OpenMetrics).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// A registry in which every recording method was called once: every family has
/// a series.
fn every_family_recorded() -> Metrics {
    let m = Metrics::new();
    let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    m.campaign_known("q4");
    m.session_issued("q4");
    m.notification("q4", "sent", "ok");
    m.notification("q4", "failed", "delivery_failed");
    m.api_latency("verification", Duration::from_millis(20));
    m.limiter_wait(Duration::from_millis(2));
    m.set_targets("q4", "pending", 3);
    m.set_targets("q4", "notified", 5);
    m.baanx_request("verification", Some(200));
    m.baanx_request("verification", Some(429));
    m.baanx_request("token", Some(503));
    m.baanx_request("user", None);
    m.run_ended("q4", "finished", Duration::from_secs(3), at);
    m.run_ended("weekly", "failed", Duration::from_secs(1), at);
    m.run_failed_to_start();
    m.set_last_success("q4", at);
    m.unapproved_skip("q4");
    m.webhook_rejected("bad_signature");
    m.webhook_event("applied");
    m.webhook_answered(Duration::from_millis(4));
    m.delivery_attempt("smtp", "ok", Duration::from_millis(80));
    m.delivery_attempt("smtp", "transient", Duration::from_millis(90));
    m.click_answered("redirected", Duration::from_millis(40));
    m.set_campaign_next("q4", Some(at + chrono::Duration::hours(1)), Some(at + chrono::Duration::minutes(5)));
    m.set_campaign_halted("q4", false);
    m.set_webhook_feed_healthy(true);
    m.set_scheduler_pass(1_800_000_000.0);
    m.locale_fallback("q4", "language");
    m.timezone_fallback("q4");
    m.bounce_recorded("q4", "hard");
    m.bounce_rejected("ses", "bad_signature");
    m.bounce_mailbox_up(true);
    m
}

#[tokio::test]
async fn every_promql_expression_names_only_series_the_product_exports() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/reverify.json")).expect("the dashboard is JSON");
    let rules = read("deploy/prometheus/rules.yml");
    let mut exprs = dashboard_exprs(&dashboard);
    let panels = exprs.len();
    exprs.extend(rule_exprs(&rules));
    // the readers found what is there: a panel per topic, an expr per rule
    assert!(panels >= 20, "only {panels} dashboard expressions found");
    let rule_count = rules
        .lines()
        .filter(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with("alert:") || t.starts_with("record:")
        })
        .count();
    assert!(rule_count >= 9, "{rule_count} rules");
    assert_eq!(exprs.len() - panels, rule_count, "one expr per rule in rules.yml");
    assert!(exprs.iter().all(|(_, e)| !e.is_empty()), "{exprs:#?}");

    // a real scrape: what /metrics serves (OpenMetrics, as Prometheus asks for it)
    let m = every_family_recorded();
    let scraped = sample_names(&m.encode());
    assert!(scraped.contains("reverify_baanx_requests_total"), "{scraped:?}");
    // a real push: what the Pushgateway exposes to Prometheus afterwards (the
    // host's group and each campaign's last run)
    let pgw = Pushgateway::start().await;
    telemetry::server::push_metrics_of(&m, &pgw.url, "reverify", "w1").await.unwrap();
    let pushed = sample_names(&pgw.scrape().await);
    assert!(pushed.contains("reverify_last_run_timestamp_seconds"), "{pushed:?}");
    assert!(pushed.contains("push_time_seconds"), "{pushed:?}");

    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (whence, expr) in &exprs {
        for name in reverify_names(expr) {
            if !scraped.contains(&name) && !pushed.contains(&name) {
                missing.push(format!("{whence}: `{name}` is neither scraped nor pushed, in\n    {expr}"));
            }
            used.insert(name);
        }
        for name in other_selectors(expr) {
            if !OWN_SERIES.contains(&name.as_str()) {
                missing.push(format!("{whence}: `{name}` is not a reverify series, in\n    {expr}"));
            } else if name != "up" && !pushed.contains(&name) {
                missing.push(format!("{whence}: `{name}` is not a Pushgateway series, in\n    {expr}"));
            }
        }
    }
    assert!(missing.is_empty(), "PromQL naming series the product does not export:\n{}", missing.join("\n"));

    // what the issue asks the dashboard and the alerts to cover is read
    for name in [
        "reverify_baanx_requests_total",
        "reverify_sessions_issued_total",
        "reverify_notifications_total",
        "reverify_targets",
        "reverify_delivery_attempts_total",
        "reverify_click_duration_seconds_bucket",
        "reverify_click_requests_total",
        "reverify_runs_total",
        "reverify_last_run_timestamp_seconds",
        "reverify_campaign_next_tick_timestamp_seconds",
        "reverify_last_success_timestamp_seconds",
        "reverify_scheduler_last_pass_timestamp_seconds",
        "reverify_campaign_halted",
        "reverify_campaign_unapproved_skips_total",
        "reverify_webhook_events_total",
        "reverify_webhook_rejected_total",
    ] {
        assert!(used.contains(name), "no dashboard panel or rule reads {name}");
    }
}

/// The readers and the check themselves: a name outside the product is caught, a
/// label value or a Grafana variable is no name, a block scalar is read whole.
#[test]
fn the_name_extraction_reads_promql_as_prometheus_does() {
    let e = r#"sum by (campaign) (rate(reverify_runs_total{job=~".*reverify_x.*", campaign=~"$campaign"}[$__rate_interval])) / on() up{job="a"} > reverify_nope"#;
    assert_eq!(reverify_names(e), ["reverify_nope".to_owned(), "reverify_runs_total".to_owned()].into());
    assert_eq!(other_selectors(e), ["up".to_owned()].into());
    assert!(other_selectors("vector($api_limit) * time()").is_empty());

    let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          reverify_a_total\n          or\n          reverify_b\n        for: 5m\n      - record: r\n        expr: 'sum(reverify_c)'\n";
    let exprs = rule_exprs(rules);
    assert_eq!(
        exprs,
        [
            ("deploy/prometheus/rules.yml A".to_owned(), "reverify_a_total\nor\nreverify_b".to_owned()),
            ("deploy/prometheus/rules.yml r".to_owned(), "sum(reverify_c)".to_owned()),
        ]
    );

    let dashboard = serde_json::json!({"panels": [
        {"title": "p", "targets": [{"expr": "reverify_a"}]},
        {"type": "row", "title": "r", "collapsed": true, "panels": [{"title": "q", "targets": [{"expr": "reverify_b"}]}]},
    ]});
    let found: Vec<String> = dashboard_exprs(&dashboard).into_iter().map(|(_, e)| e).collect();
    assert_eq!(found, ["reverify_a", "reverify_b"]);

    let m = every_family_recorded();
    let scraped = sample_names(&m.encode());
    assert!(!scraped.contains("reverify_baanx_rate_limited_total"), "the duplicate 429 counter is gone");
    assert!(!scraped.contains("reverify_click_duration_seconds"), "a histogram is its _bucket, _sum and _count");
    assert!(scraped.contains("reverify_click_duration_seconds_bucket"), "{scraped:?}");
}

/// The dashboard imports anywhere: it asks for its Prometheus (`${datasource}`),
/// every query uses it, and the campaign filter lists the campaigns reverify knows.
#[test]
fn the_dashboard_queries_the_chosen_data_source_and_lists_the_campaigns() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/reverify.json")).expect("the dashboard is JSON");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{}", dashboard["schemaVersion"]);
    let vars = dashboard["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name} variable"));
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("campaign")["query"], "label_values(reverify_targets, campaign)");
    fn walk(panels: &Value, out: &mut Vec<Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p.clone());
            walk(&p["panels"], out);
        }
    }
    let mut panels = Vec::new();
    walk(&dashboard["panels"], &mut panels);
    let mut ids = BTreeSet::new();
    for p in &panels {
        assert!(ids.insert(p["id"].as_u64().expect("a panel id")), "panel id {} twice", p["id"]);
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {}: {t}", p["title"]);
        }
    }
}
