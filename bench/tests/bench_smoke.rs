//! `reverify-bench --quick` as CI runs it: the whole pipeline at a small size, so
//! that the harness cannot rot. It asserts that every figure line is printed and
//! parses, never how fast anything was (a shared CI machine gives any number).
//!
//! The scenarios run the `reverify` binary next to `reverify-bench` in the target
//! directory: `cargo test --workspace` builds both.

use std::path::Path;
use std::process::Command;

/// (figure, unit) as `reverify-bench` prints them: `name: value unit`.
const FIGURES: [(&str, &str); 23] = [
    ("throughput_postgres", "users/s"),
    ("cpu_per_1k_users", "s"),
    ("throughput_sqlite", "users/s"),
    ("rate_fidelity", ""),
    ("rate_max_window", "requests"),
    ("latency_hiding", ""),
    ("latency_hiding_throughput", "users/s"),
    ("peak_rss_1m", "MB"),
    ("throughput_1m_postgres", "users/s"),
    ("throughput_1m_postgres_last_100k", "users/s"),
    ("cost_growth_1m", ""),
    ("targeting_1m_postgres", "s"),
    ("api_requests_per_user_first_run", "requests"),
    ("api_requests_per_user", "requests"),
    ("throughput_click_send_postgres", "users/s"),
    ("throughput_click_send_sqlite", "users/s"),
    ("throughput_click_send", "users/s"),
    ("click_throughput", "posts/s"),
    ("click_throughput_p99", "ms"),
    ("api_requests_per_user_click_send", "requests"),
    ("api_requests_per_click", "requests"),
    ("follow_up_lag_p99_s", "s"),
    ("daemon_idle_cpu_percent", "%"),
];

#[test]
fn quick_bench_prints_every_figure() {
    let bench = Path::new(env!("CARGO_BIN_EXE_reverify-bench"));
    let reverify = bench.with_file_name(format!("reverify{}", std::env::consts::EXE_SUFFIX));
    assert!(
        reverify.is_file(),
        "no {}: run the tests with cargo test --workspace, which builds the reverify binary too",
        reverify.display()
    );
    let out = Command::new(bench)
        .arg("--quick")
        .env("REVERIFY_CONFIG", "/dev/null")
        .env_remove("REVERIFY_BIN")
        .output()
        .expect("reverify-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let machine = stdout.lines().next().unwrap_or_default();
    assert!(machine.starts_with("machine: ") && machine.contains(" cores, "), "{stdout}");
    for (name, unit) in FIGURES {
        let prefix = format!("{name}: ");
        let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(lines.len(), 1, "{name} printed once\n{stdout}");
        let mut rest = lines[0][prefix.len()..].split(' ');
        let value: f64 = rest.next().unwrap().parse().unwrap_or_else(|_| panic!("{name}: not a number\n{stdout}"));
        // an idle daemon may well spend no measurable CPU in the quick run's window, nor
        // Postgres in the first tenth of its "1m" campaign (100 users)
        let least = if matches!(name, "daemon_idle_cpu_percent" | "api_requests_per_user_click_send" | "cost_growth_1m")
        {
            0.0
        } else {
            f64::MIN_POSITIVE
        };
        assert!(value.is_finite() && value >= least, "{name}: {value}\n{stdout}");
        assert_eq!(rest.next().unwrap_or(""), unit, "{name}: unit\n{stdout}");
        assert_eq!(rest.next(), None, "{name}: nothing after the unit\n{stdout}");
    }
    // one request per re-contacted user, two per first contact, none at a click
    // campaign's send, one per click (issue 29)
    let figure = |name: &str| -> f64 {
        let line = stdout.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).unwrap();
        line.split(' ').next().unwrap().parse().unwrap()
    };
    for (name, goal) in [
        ("api_requests_per_user", 1.05),
        ("api_requests_per_user_first_run", 2.05),
        ("api_requests_per_user_click_send", 0.0),
        ("api_requests_per_click", 1.05),
    ] {
        let value = figure(name);
        assert!(value <= goal, "{name} {value} above its goal {goal}\n{stdout}");
    }
}
