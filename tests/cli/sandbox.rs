//! `reverify sandbox` as a process: it prints its address and client key, serves,
//! exports users, refuses bad input with a clear message, and stops on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn reverify() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reverify"));
    // no settings file from the working directory, no secrets from the caller
    c.env("REVERIFY_CONFIG", "/dev/null").env_remove("REVERIFY_BAANX_CLIENT_KEY").env_remove("REVERIFY_WEBHOOK_KEY");
    c
}

#[test]
fn serves_exports_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("users.csv");
    let mut child = reverify()
        .args(["sandbox", "--listen", "127.0.0.1:0", "--users", "7", "--export-users"])
        .arg(&export)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut base = None;
    let mut key = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("sandbox listening on ") {
            base = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("client key (demo): ") {
            key = Some(rest.trim().to_owned());
        }
        if base.is_some() && key.is_some() {
            break;
        }
    }
    let base = base.expect("prints its address");
    assert_eq!(key.as_deref(), Some(reverify::sandbox::DEMO_CLIENT_KEY));
    let users = reverify::sandbox::userfile::read_users(&export).unwrap();
    assert_eq!(users.len(), 7);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let stats: serde_json::Value =
            reqwest::get(format!("{base}_sandbox/stats")).await.unwrap().json().await.unwrap();
        assert_eq!(stats["violations"], 0);
        let u = &users[0];
        let r = reqwest::Client::new()
            .post(format!("{base}v1/auth/oauth/token"))
            .header("x-client-key", reverify::sandbox::DEMO_CLIENT_KEY)
            .header("x-us-env", if u.region == reverify::domain::Region::Us { "true" } else { "false" })
            .json(&serde_json::json!({"grant_type": "refresh_token", "refresh_token": u.refresh_token}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the exported refresh token works");
    });

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a clean stop on SIGTERM");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("violations: 0")), "{rest:?}");
}

#[test]
fn bad_input_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("users.csv");
    std::fs::write(
        &seed,
        "user_id,email,region\n6f9619ff-8b86-d011-b42d-00c04fc964ff,a@example.test,intl\nnot-a-uuid,b@example.test,us\n",
    )
    .unwrap();
    let out = reverify().args(["sandbox", "--listen", "127.0.0.1:0", "--seed"]).arg(&seed).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("users.csv:3: field user_id"), "{err}");

    let out = reverify().args(["sandbox", "--error-rate", "1.5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--error-rate"));
    let out = reverify().args(["sandbox", "--latency", "soon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = reverify()
        .args(["sandbox", "--listen", "127.0.0.1:0", "--webhook-url", "http://127.0.0.1:9/h"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REVERIFY_WEBHOOK_KEY"));
}
