//! `reverify campaign …` through the real binary, on SQLite and on Postgres.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use reverify::both_engines;
use reverify::store::events::EventFilter;
use reverify::store::testing::TestDb;

const SPEC: &str = r#"# the issue's example
name = "kyc-refresh-q4"
description = "Unverified users and rejections older than 24 h"
schedule = "0 9 * * 1-5"
timezone = "Europe/London"

[audience]
states = ["UNVERIFIED", "REJECTED"]
regions = ["intl", "us"]

[delivery]
channel = "email"
from = "Compliance <compliance@example.com>"
subject = "Please verify your identity"

[throttle]
requests_per_second = 20
concurrency = 8
"#;

fn reverify(db: &TestDb, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reverify"));
    cmd.current_dir(dir).env_clear().env("USER", "tester").env("REVERIFY_DATABASE_URL", &db.url);
    cmd
}

both_engines!(apply_versions_and_status_changes, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("q4.toml"), SPEC).unwrap();
    std::fs::write(d.join("bad.toml"), SPEC.replace("concurrency = 8", "concurency = 8")).unwrap();

    // one bad file: nothing is applied, and the error names file, line and column
    reverify(&db, d)
        .args(["campaign", "apply", "q4.toml", "bad.toml"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("bad.toml:18:1: "))
        .stderr(predicate::str::contains("nothing applied: 1 of 2 files are not valid"));
    assert!(db.store.campaign_list().await.unwrap().is_empty());

    reverify(&db, d)
        .args(["campaign", "apply", "q4.toml"])
        .assert()
        .success()
        .stdout(predicate::str::contains("q4.toml: campaign kyc-refresh-q4 created (version 1)"));
    reverify(&db, d)
        .args(["campaign", "apply", "q4.toml"])
        .assert()
        .success()
        .stdout(predicate::str::contains("campaign kyc-refresh-q4 unchanged (version 1)"));
    reverify(&db, d)
        .args(["campaign", "pause", "kyc-refresh-q4"])
        .assert()
        .success()
        .stdout("campaign kyc-refresh-q4 is now paused (was active)\n");
    std::fs::write(d.join("q4.toml"), SPEC.replace("0 9 * * 1-5", "0 10 * * 1-5")).unwrap();
    reverify(&db, d)
        .args(["campaign", "apply", "q4.toml"])
        .assert()
        .success()
        .stdout(predicate::str::contains("campaign kyc-refresh-q4 updated (version 2, paused)"));

    let out = reverify(&db, d).args(["campaign", "list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "kyc-refresh-q4");
    assert_eq!(list[0]["version"], 2);
    assert_eq!(list[0]["status"], "paused");
    assert_eq!(list[0]["schedule"], "0 10 * * 1-5");
    reverify(&db, d)
        .args(["campaign", "show", "kyc-refresh-q4"])
        .assert()
        .success()
        .stdout(predicate::str::contains("status:    paused"))
        .stdout(predicate::str::contains("version:   2 (sha256 "))
        .stdout(predicate::str::contains("schedule = \"0 10 * * 1-5\""));

    reverify(&db, d).args(["campaign", "resume", "kyc-refresh-q4"]).assert().success();
    reverify(&db, d)
        .args(["campaign", "resume", "kyc-refresh-q4"])
        .assert()
        .success()
        .stdout("campaign kyc-refresh-q4 is already active\n");
    reverify(&db, d).args(["campaign", "cancel", "kyc-refresh-q4"]).assert().success();
    reverify(&db, d)
        .args(["campaign", "resume", "kyc-refresh-q4"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("campaign kyc-refresh-q4 cannot be resumed: it is cancelled"));
    std::fs::write(d.join("q4.toml"), SPEC.replace("0 9 * * 1-5", "0 11 * * 1-5")).unwrap();
    reverify(&db, d)
        .args(["campaign", "apply", "q4.toml"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("q4.toml: campaign kyc-refresh-q4: campaign kyc-refresh-q4 is cancelled"));
    reverify(&db, d)
        .args(["campaign", "pause", "no-such"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("campaign not found: no-such"));
    reverify(&db, d)
        .args(["campaign", "show", "Not A Name"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("campaign name \"Not A Name\" is not valid"));

    let events = db.store.event_list(&EventFilter::default(), 0, 100).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["campaign.applied", "campaign.paused", "campaign.applied", "campaign.resumed", "campaign.cancelled"]
    );
    assert!(events.iter().all(|e| e.actor.starts_with("cli:tester@")), "{events:?}");
});
