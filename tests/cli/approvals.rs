//! Compliance controls through the real binary (issue 16): four-eyes approval
//! (an unapproved campaign sends nothing, the applier cannot approve, a changed
//! file needs a new approval, `run --due` skips and counts it), the audit chain's
//! `--verify` after the database is edited by hand, and evidence bundles.

use reverify::store::testing::TestDb;
use reverify::telemetry::testing::Pushgateway;

use crate::common::{Bin, campaign, text};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `args` run as `who`, with approval required.
async fn as_(bin: &Bin, who: &str, args: &[&str]) -> std::process::Output {
    let mut c = bin.command(args);
    c.env("REVERIFY_REQUIRE_APPROVAL", "true").env("REVERIFY_ACTOR", who);
    tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
}

async fn four_eyes(db: TestDb) {
    let bin = Bin::new(&db, 6, None).await;
    let pgw = Pushgateway::start().await;
    let o = bin.run(&["users", "import", "users.csv"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // daily, dated back two days: today's tick is due
    let spec = campaign("kyc-4e", "schedule = \"0 0 * * *\"\nstarting_deadline = \"25h\"", 1000, 4);
    bin.write("kyc.toml", &spec);
    let o = as_(&bin, "alice", &["campaign", "apply", "kyc.toml"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    sqlx::query("UPDATE campaigns SET created_at = created_at - 172800000").execute(db.pool()).await.unwrap();

    // unapproved: run NAME exits 1 saying what is missing, and sends nothing
    let o = as_(&bin, "alice", &["run", "kyc-4e", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("campaign kyc-4e version 1 is not approved, and require_approval is on: someone other than alice (who applied it) must run `reverify campaign approve kyc-4e`"),
        "{}",
        text(&o)
    );
    // run --due skips it with a warning, exits 0, and counts it
    let mut c = bin.command(&["run", "--due", "--progress", "none"]);
    c.env("REVERIFY_REQUIRE_APPROVAL", "true").env("REVERIFY_METRICS_PUSH_URL", &pgw.url);
    let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stderr(&o).contains("warning: campaign kyc-4e version 1 is not approved"), "{}", text(&o));
    let body = pgw.scrape().await;
    assert!(
        body.lines().any(|l| l.starts_with("reverify_campaign_unapproved_skips_total{campaign=\"kyc-4e\"") && l.ends_with(" 1")),
        "{body}"
    );
    assert_eq!(bin.outbox_count(), 0, "an unapproved campaign sent something");
    assert_eq!(bin.sandbox.stats().await.sessions_issued, 0);
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM campaign_runs").fetch_one(db.pool()).await.unwrap();
    assert_eq!(runs, 0, "no run started");
    let o = as_(&bin, "alice", &["campaign", "show", "kyc-4e"]).await;
    assert!(stdout(&o).contains("approval:  version 1 not approved; required: runs wait for it"), "{}", text(&o));

    // the applier cannot approve; another person can
    let o = as_(&bin, "alice", &["campaign", "approve", "kyc-4e"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("was applied by alice, who cannot approve it too"), "{}", text(&o));
    let o = as_(&bin, "bob", &["campaign", "approve", "kyc-4e", "--version", "1"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("campaign kyc-4e version 1 approved by bob (digest "), "{}", text(&o));
    assert!(stdout(&o).contains("template default sha256 "), "{}", text(&o));
    let plan = stdout(&o).lines().find_map(|l| l.strip_prefix("  plan: ").map(str::to_owned)).unwrap();
    let targets: usize = plan
        .split(", ")
        .find_map(|b| b.strip_prefix("target "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(targets > 0, "{plan}");
    let o = as_(&bin, "carol", &["campaign", "show", "kyc-4e"]).await;
    assert!(stdout(&o).contains("approval:  version 1 approved by bob at "), "{}", text(&o));

    // a changed file is a new version: the approval no longer covers it
    bin.write("kyc.toml", &format!("{spec}# reviewed wording\n"));
    let o = as_(&bin, "bob", &["campaign", "apply", "kyc.toml"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = as_(&bin, "alice", &["run", "kyc-4e", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("version 2 is not approved"), "{}", text(&o));
    assert!(stderr(&o).contains("someone other than bob"), "{}", text(&o));
    assert_eq!(bin.outbox_count(), 0);
    let o = as_(&bin, "alice", &["campaign", "approve", "kyc-4e", "--version", "1"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("is at version 2 now, not 1"), "{}", text(&o));
    let o = as_(&bin, "alice", &["campaign", "approve", "kyc-4e"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // approved: it runs, and every event names its actor
    let o = as_(&bin, "carol", &["run", "kyc-4e", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(bin.outbox_count(), targets);
    let o = as_(&bin, "carol", &["campaign", "audit", "kyc-4e", "--json"]).await;
    let events: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let who = |kind: &str| -> Vec<String> {
        events.iter().filter(|e| e["kind"] == kind).map(|e| e["actor"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(who("campaign.applied"), ["alice", "bob"]);
    assert_eq!(who("campaign.approved"), ["bob", "alice"]);
    assert_eq!(who("run.started"), ["carol"]);
    assert_eq!(who("run.finished"), ["carol"]);
    assert!(events.iter().all(|e| !e["actor"].as_str().unwrap().is_empty()));
    // each delivery names its template version and the message's hash
    let notified: Vec<&serde_json::Value> = events.iter().filter(|e| e["kind"] == "target.notified").collect();
    assert_eq!(notified.len(), targets);
    for e in &notified {
        assert_eq!(e["detail"]["template"], "default", "{e}");
        assert_eq!(e["detail"]["template_sha256"].as_str().map(str::len), Some(64), "{e}");
        assert_eq!(e["detail"]["message_sha256"].as_str().map(str::len), Some(64), "{e}");
    }
    let o = as_(&bin, "carol", &["campaign", "audit", "kyc-4e", "--verify"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).starts_with("audit chain ok: "), "{}", text(&o));

    // evidence: written, verified, and a tampered file is named
    let o = as_(&bin, "dave", &["campaign", "evidence", "kyc-4e", "--output", "ev"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for f in ["manifest.json", "report.csv", "events.jsonl", "versions/v1.toml", "versions/v2.toml", "approvals.json"] {
        assert!(bin.path("ev").join(f).is_file(), "{f} missing");
    }
    assert_eq!(std::fs::read_to_string(bin.path("ev/versions/v1.toml")).unwrap(), spec);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bin.path("ev/manifest.json")).unwrap()).unwrap();
    let head = db.store.audit_head().await.unwrap();
    assert_eq!(manifest["chain_head"]["hash"], head.hash.as_str());
    let approvals: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(bin.path("ev/approvals.json")).unwrap()).unwrap();
    assert_eq!(approvals.len(), 2);
    let templates = std::fs::read_dir(bin.path("ev/templates")).unwrap().count();
    assert_eq!(templates, 1, "one template version, named by the approvals and the deliveries");
    // unsigned (no evidence_signing_key): it all matches, but that is integrity only
    let o = bin.run(&["evidence", "verify", "ev"]).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(stdout(&o).contains(": ok: campaign kyc-4e"), "{}", text(&o));
    assert!(stderr(&o).contains("integrity only, not origin"), "{}", text(&o));
    let o = bin.run(&["campaign", "evidence", "kyc-4e", "--output", "ev"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("exists and is not empty"), "{}", text(&o));

    let copy = |to: &str| {
        let o = std::process::Command::new("cp").arg("-r").arg(bin.path("ev")).arg(bin.path(to)).output().unwrap();
        assert!(o.status.success());
    };
    for (name, tamper, expect) in [
        ("t-report", "report.csv", "report.csv: SHA-256 is "),
        ("t-version", "versions/v1.toml", "versions/v1.toml: SHA-256 is "),
        ("t-events", "events.jsonl", "events.jsonl: SHA-256 is "),
    ] {
        copy(name);
        let path = bin.path(name).join(tamper);
        let mut body = std::fs::read_to_string(&path).unwrap();
        body.push_str("# one more line\n");
        std::fs::write(&path, body).unwrap();
        let o = bin.run(&["evidence", "verify", name]).await;
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(stderr(&o).contains(expect), "{}", text(&o));
    }
    // an added file, and a removed one
    copy("t-added");
    std::fs::write(bin.path("t-added/versions/v3.toml"), "name = \"x\"\n").unwrap();
    let o = bin.run(&["evidence", "verify", "t-added"]).await;
    assert!(stderr(&o).contains("versions/v3.toml: is not in the manifest"), "{}", text(&o));
    copy("t-removed");
    std::fs::remove_file(bin.path("t-removed/approvals.json")).unwrap();
    let o = bin.run(&["evidence", "verify", "t-removed"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("approvals.json: cannot read"), "{}", text(&o));

    // an audit row edited in the database: --verify fails and names it
    let id: i64 = sqlx::query_scalar("SELECT MIN(event_id) FROM events WHERE kind = 'campaign.approved'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE events SET actor = 'mallory' WHERE event_id = {id}")))
        .execute(db.pool())
        .await
        .unwrap();
    let o = bin.run(&["campaign", "audit", "kyc-4e", "--verify"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!("error: the audit chain is broken: event {id} (chain place ")),
        "{}",
        text(&o)
    );
}

reverify::both_engines!(four_eyes_chain_and_evidence, four_eyes);
