//! Proven approvals through the real binary (issue 24): with `approvers_file`,
//! apply and approve need SSH signatures (ours and `ssh-keygen -Y sign`'s), `--as`
//! approves nothing, one key cannot be both pairs of eyes, the database's
//! `require_approval` cannot be switched off from a runner's environment, and a run
//! checks the approval's digest and signatures again before it sends.

use std::process::{Command, Output};

use reverify::store::testing::TestDb;

use crate::common::{Bin, campaign, text};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An Ed25519 key made by ssh-keygen in the test's directory; its public line.
fn keygen(bin: &Bin, name: &str) -> String {
    let key = bin.path(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen is installed (scripts/install-test-deps.sh)");
    assert!(st.success());
    std::fs::read_to_string(bin.path(&format!("{name}.pub"))).unwrap().trim().to_owned()
}

/// `args` with the approvers file set (and `env` on top).
async fn signed(bin: &Bin, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = bin.command(args);
    c.env("REVERIFY_APPROVERS_FILE", bin.path("approvers"));
    for (k, v) in env {
        c.env(k, v);
    }
    tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
}

async fn events(db: &TestDb, kind: &str) -> Vec<(String, serde_json::Value)> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT actor, detail FROM events WHERE kind = '{kind}' ORDER BY event_id"
    )))
    .fetch_all(db.pool())
    .await
    .unwrap();
    rows.into_iter().map(|(a, d)| (a, d.map(|d| serde_json::from_str(&d).unwrap()).unwrap_or_default())).collect()
}

async fn proven_approvals(db: TestDb) {
    let bin = Bin::new(&db, 6, None).await;
    let alice = keygen(&bin, "alice");
    let bob = keygen(&bin, "bob");
    let _mallory = keygen(&bin, "mallory");
    bin.write("approvers", &format!("alice namespaces=\"reverify\" {alice}\nbob {bob}\n"));
    let o = bin.run(&["users", "import", "users.csv"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    bin.write("kyc.toml", &campaign("kyc-signed", "", 1000, 4));

    // --as alone applies nothing when approvers_file is set
    let o = signed(&bin, &["campaign", "apply", "kyc.toml", "--as", "alice"], &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("applying needs an SSH signature by a listed key"), "{}", text(&o));
    // a key not in the file proves nobody
    let o = signed(&bin, &["campaign", "apply", "kyc.toml", "--sign-with", "mallory"], &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("is not listed for namespace \"reverify\""), "{}", text(&o));
    // alice's key: the recorded actor is the principal it proves, not --as
    let o = signed(&bin, &["campaign", "apply", "kyc.toml", "--sign-with", "alice", "--as", "bob"], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(events(&db, "campaign.applied").await[0].0, "alice");

    // four eyes on this database, with signatures (pins the approvers file)
    let o = signed(&bin, &["settings", "set", "require_approval", "true"], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("require_approval = signed"), "{}", text(&o));

    // the runner's environment cannot switch it off, nor drop the approvers
    let o = signed(&bin, &["run", "kyc-signed", "--progress", "none"], &[("REVERIFY_REQUIRE_APPROVAL", "false")]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("REVERIFY_REQUIRE_APPROVAL=false (or require_approval = false) cannot turn it off"),
        "{}",
        text(&o)
    );
    let o = bin.run(&["run", "kyc-signed", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("the database requires signed approvals"), "{}", text(&o));
    // nor point approvers_file at a file of its own
    bin.write("mine", &format!("eve {}\n", std::fs::read_to_string(bin.path("mallory.pub")).unwrap().trim()));
    let o = signed(&bin, &["run", "kyc-signed", "--progress", "none"], &[("REVERIFY_APPROVERS_FILE", "mine")]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("is not the approvers file the database pins"), "{}", text(&o));
    assert_eq!(bin.outbox_count(), 0);

    // --as cannot approve; the applier's own key cannot either
    let o = signed(&bin, &["campaign", "approve", "kyc-signed", "--as", "bob"], &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("an approval needs an SSH signature by a listed key"), "{}", text(&o));
    assert!(!stderr(&o).contains("--as NAME"), "the error must not suggest --as: {}", text(&o));
    let o = signed(&bin, &["campaign", "approve", "kyc-signed", "--sign-with", "alice", "--as", "bob"], &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("was applied by alice, who cannot approve it too"), "{}", text(&o));

    // a hand-written approval with a made-up digest is not honoured
    let id: i64 = sqlx::query_scalar("SELECT campaign_id FROM campaigns WHERE name = 'kyc-signed'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    let templates =
        reverify::notify::Templates::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates"))
            .unwrap();
    let default = templates.digest("default").unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO campaign_approvals (campaign_id, version, approver, approved_at, digest, templates, plan) \
         VALUES ({id}, 1, 'bob', 0, 'x', '{{\"default\": \"{default}\"}}', '{{}}')"
    )))
    .execute(db.pool())
    .await
    .unwrap();
    let o = signed(&bin, &["run", "kyc-signed", "--progress", "none"], &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("approval 1 is for digest x"), "{}", text(&o));
    assert_eq!(bin.outbox_count(), 0, "a forged approval sent something");
    // (the forged row stays: unsigned, it neither blocks a signed approval nor counts)

    // bob signs elsewhere, with ssh-keygen itself, what `campaign digest` prints
    let o = signed(&bin, &["campaign", "digest", "kyc-signed", "--version", "1"], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).starts_with("reverify campaign approve\ncampaign: kyc-signed\nversion: 1\ndigest: "),
        "{}",
        text(&o)
    );
    bin.write("approve.msg", &stdout(&o));
    let st = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "reverify", "-f"])
        .arg(bin.path("bob"))
        .arg(bin.path("approve.msg"))
        .status()
        .unwrap();
    assert!(st.success());
    let o =
        signed(&bin, &["campaign", "approve", "kyc-signed", "--version", "1", "--signature", "approve.msg.sig"], &[])
            .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("approved by bob"), "{}", text(&o));
    // the stored signature is one ssh-keygen -Y verify accepts, for bob
    let sig: String = sqlx::query_scalar("SELECT signature FROM campaign_approvals WHERE signature IS NOT NULL")
        .fetch_one(db.pool())
        .await
        .unwrap();
    bin.write("stored.sig", &sig);
    let out = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "reverify", "-I", "bob", "-f"])
        .arg(bin.path("approvers"))
        .arg("-s")
        .arg(bin.path("stored.sig"))
        .stdin(std::fs::File::open(bin.path("approve.msg")).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // what was approved changed behind its back (the plan, by hand): the run stops
    let plan: String = sqlx::query_scalar("SELECT plan FROM campaign_approvals WHERE signature IS NOT NULL")
        .fetch_one(db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE campaign_approvals SET plan = '{\"target\": 1000}' WHERE signature IS NOT NULL")
        .execute(db.pool())
        .await
        .unwrap();
    let o = signed(&bin, &["run", "kyc-signed", "--progress", "none"], &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("does not cover what would be sent"), "{}", text(&o));
    sqlx::query("UPDATE campaign_approvals SET plan = $1 WHERE signature IS NOT NULL")
        .bind(&plan)
        .execute(db.pool())
        .await
        .unwrap();
    // and the file itself, edited in the database
    sqlx::query("UPDATE campaigns SET spec = spec || '# edited' WHERE campaign_id = $1")
        .bind(id)
        .execute(db.pool())
        .await
        .unwrap();
    let o = signed(&bin, &["run", "kyc-signed", "--progress", "none"], &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("changed outside reverify"), "{}", text(&o));
    assert_eq!(bin.outbox_count(), 0);
    sqlx::query("UPDATE campaigns SET spec = (SELECT spec FROM campaign_versions WHERE campaign_id = $1 AND version = 1) WHERE campaign_id = $1")
        .bind(id)
        .execute(db.pool())
        .await
        .unwrap();

    // approved by two proven people: it runs, and run.started says under what
    let o = signed(&bin, &["run", "kyc-signed", "--progress", "none"], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(bin.outbox_count() > 0);
    let started = events(&db, "run.started").await;
    let a = &started[0].1["approval"];
    assert_eq!(a["principals"]["applied_by"], "alice", "{a}");
    assert_eq!(a["principals"]["approved_by"], "bob", "{a}");
    assert_eq!(a["signed"], true, "{a}");
    assert_eq!(a["digest"].as_str().map(str::len), Some(64), "{a}");

    // turning it off needs an approver's signature, and is audited
    let o = signed(&bin, &["settings", "set", "require_approval", "false", "--as", "alice"], &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("needs an approver's SSH signature"), "{}", text(&o));
    let o = signed(&bin, &["settings", "set", "require_approval", "false", "--sign-with", "bob"], &[]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let changed = events(&db, "settings.changed").await;
    assert_eq!(changed.len(), 2);
    assert_eq!((changed[1].0.as_str(), &changed[1].1["to"]), ("bob", &serde_json::json!("false")));
    assert!(changed[1].1["signature"].as_str().is_some_and(|s| s.contains("BEGIN SSH SIGNATURE")));
}

/// Without approvers_file: the database's require_approval still holds against the
/// runner's environment (the attack of issue 24: 21 users emailed).
async fn env_cannot_switch_off(db: TestDb) {
    let bin = Bin::new(&db, 6, None).await;
    let o = bin.run(&["users", "import", "users.csv"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    bin.write("kyc.toml", &campaign("kyc-db", "", 1000, 4));
    let o = bin.run(&["campaign", "apply", "kyc.toml", "--as", "alice"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = bin.run(&["settings", "set", "require_approval", "true", "--as", "alice"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for env in [vec![("REVERIFY_REQUIRE_APPROVAL", "false")], vec![]] {
        let mut c = bin.command(&["run", "kyc-db", "--progress", "none"]);
        c.envs(env.clone());
        let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
        assert_eq!(o.status.code(), Some(1), "{env:?}: {}", text(&o));
        assert_eq!(bin.outbox_count(), 0, "{env:?}: an unapproved version sent mail");
    }
    // run --due too: an error before anything runs, not a skipped campaign
    let mut c = bin.command(&["run", "--due", "--progress", "none"]);
    c.env("REVERIFY_REQUIRE_APPROVAL", "false");
    let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("require_approval is on in the database (set by alice at"), "{}", text(&o));
    // a hand-written approval by "bob" with a made-up digest (templates right) is not honoured
    let templates =
        reverify::notify::Templates::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates"))
            .unwrap();
    let default = templates.digest("default").unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO campaign_approvals (campaign_id, version, approver, approved_at, digest, templates, plan) \
         SELECT campaign_id, 1, 'bob', 0, 'x', '{{\"default\": \"{default}\"}}', '{{}}' FROM campaigns"
    )))
    .execute(db.pool())
    .await
    .unwrap();
    let mut c = bin.command(&["run", "kyc-db", "--progress", "none"]);
    c.env("REVERIFY_REQUIRE_APPROVAL", "false");
    let o = tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = bin.run(&["run", "kyc-db", "--progress", "none"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("approval 1 is for digest x") && stderr(&o).contains("does not cover what would be sent"),
        "{}",
        text(&o)
    );
    assert_eq!(bin.outbox_count(), 0, "a forged approval sent something");
    // the applier under another spelling is the applier
    let o = bin.run(&["campaign", "approve", "kyc-db", "--as", " Alice"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = bin.run(&["settings", "show"]).await;
    assert!(stdout(&o).contains("require_approval = true (set by alice"), "{}", text(&o));
}

reverify::both_engines!(proven_approvals, proven_approvals);

reverify::both_engines!(the_environment_cannot_switch_approval_off, env_cannot_switch_off);
