//! Evidence an auditor can trust, through the real binary (issue 24): signed
//! bundles checked with `ssh-keygen` both ways, forged bundles refused and named,
//! and `campaign audit --verify` against the anchor after the tail is cut.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use reverify::store::chain::{ChainedEvent, event_hash};
use reverify::store::testing::TestDb;
use sha2::{Digest, Sha256};

use crate::common::{Bin, campaign, text};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A new Ed25519 key pair at `path` (and `path.pub`), made by `ssh-keygen`.
fn keygen(path: &Path) -> String {
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen is installed");
    assert!(o.status.success(), "{}", text(&o));
    std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_owned()
}

/// `ssh-keygen -Y sign -n reverify` of `file` with `key`: writes `file.sig`.
fn ssh_sign(key: &Path, file: &Path) {
    let _ = std::fs::remove_file(sig_of(file));
    let o =
        Command::new("ssh-keygen").args(["-Y", "sign", "-n", "reverify", "-f"]).arg(key).arg(file).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

fn sig_of(file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sig", file.display()))
}

fn copy(from: &Path, to: &Path) {
    let o = Command::new("cp").arg("-r").arg(from).arg(to).output().unwrap();
    assert!(o.status.success());
}

/// Rewrites `manifest.json`'s SHA-256 and size of every file it lists, as a forger
/// would after changing them; `edit` may change the manifest's other fields.
fn refresh_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        let bytes = std::fs::read(dir.join(f["path"].as_str().unwrap())).unwrap();
        f["sha256"] = hex::encode(Sha256::digest(&bytes)).into();
        f["bytes"] = bytes.len().into();
    }
    edit(&mut m);
    std::fs::write(&path, format!("{}\n", serde_json::to_string_pretty(&m).unwrap())).unwrap();
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("events.jsonl")).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(dir: &Path, lines: &[String]) {
    std::fs::write(dir.join("events.jsonl"), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

/// `args` with the signing key, the audit anchor and the outbox set.
async fn with_env(bin: &Bin, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut c = bin.command(args);
    for (k, v) in env {
        c.env(k, v);
    }
    tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_bundles_verify_and_forged_ones_are_refused_and_named() {
    let db = TestDb::sqlite().await;
    let bin = Bin::new(&db, 2, None).await;
    let key = bin.path("evidence_key");
    let public = keygen(&key);
    let mallory = bin.path("mallory_key");
    keygen(&mallory);
    let signing = [("REVERIFY_EVIDENCE_SIGNING_KEY_FILE", key.as_path())];

    // two campaigns whose events interleave in the chain
    bin.write("a.toml", &campaign("kyc-a", "", 10, 1));
    bin.write("b.toml", &campaign("kyc-b", "", 10, 1));
    for args in [
        &["campaign", "apply", "a.toml"][..],
        &["campaign", "apply", "b.toml"],
        &["campaign", "pause", "kyc-a"],
        &["campaign", "pause", "kyc-b"],
        &["campaign", "resume", "kyc-a"],
    ] {
        let o = bin.run(args).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    }
    let o = with_env(&bin, &signing, &["campaign", "evidence", "kyc-a", "--output", "ev"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("manifest.json signed by SHA256:"), "{}", text(&o));
    let ev = bin.path("ev");
    // the segment: kyc-a's events whole, kyc-b's as links only, up to the head
    let segment = lines(&ev);
    let whole = segment.iter().filter(|l| l.contains("\"event_id\"")).count();
    let links = segment.iter().filter(|l| !l.contains("\"event_id\"")).count();
    assert_eq!((whole, links), (4, 2), "{segment:#?}"); // applied, paused, resumed, evidence_written
    assert!(!segment.iter().any(|l| l.contains("kyc-b")), "another campaign's content: {segment:#?}");

    // verified: with the public key, with allowed signers, and by OpenSSH itself
    bin.write("key.pub", &public);
    let o = bin.run(&["evidence", "verify", "ev", "--public-key", "key.pub"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains(": ok: campaign kyc-a") && stdout(&o).contains("signed by SHA256:"), "{}", text(&o));
    bin.write("allowed_signers", &format!("auditor@example.com namespaces=\"git,reverify\" {public}\n"));
    let o = bin.run(&["evidence", "verify", "ev", "--allowed-signers", "allowed_signers"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("signed by auditor@example.com"), "{}", text(&o));
    let o = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "reverify", "-I", "auditor@example.com", "-f"])
        .arg(bin.path("allowed_signers"))
        .arg("-s")
        .arg(ev.join("manifest.json.sig"))
        .stdin(std::fs::File::open(ev.join("manifest.json")).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "ssh-keygen -Y verify refused our signature: {}", text(&o));
    // a signature made by ssh-keygen -Y sign is accepted
    copy(&ev, &bin.path("ev-ssh"));
    ssh_sign(&key, &bin.path("ev-ssh/manifest.json"));
    let o = bin.run(&["evidence", "verify", "ev-ssh", "--public-key", "key.pub"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // a line that lists other namespaces only does not vouch
    bin.write("git_only", &format!("auditor@example.com namespaces=\"git\" {public}\n"));
    let o = bin.run(&["evidence", "verify", "ev", "--allowed-signers", "git_only"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("manifest.json.sig: was made by key SHA256:"), "{}", text(&o));
    // without a key: integrity only, said plainly, exit 3
    let o = bin.run(&["evidence", "verify", "ev"]).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(stderr(&o).contains("integrity only, not origin"), "{}", text(&o));

    // the forgeries, each with the manifest's hashes recomputed by the forger; each
    // refused without a key (naming what is wrong) and with it (the signature)
    let forged = |name: &str| {
        let dir = bin.path(name);
        copy(&ev, &dir);
        dir
    };
    // with the key the signature fails first, unless the manifest was left alone
    let refused = |name: &'static str, expect: String| {
        let bin = &bin;
        async move {
            let o = bin.run(&["evidence", "verify", name]).await;
            assert_eq!(o.status.code(), Some(1), "{name}: {}", text(&o));
            assert!(stderr(&o).contains(&expect), "{name}: wanted {expect:?}: {}", text(&o));
            let o = bin.run(&["evidence", "verify", name, "--public-key", "key.pub"]).await;
            assert_eq!(o.status.code(), Some(1), "{name}: {}", text(&o));
            assert!(
                stderr(&o).contains("manifest.json.sig: does not verify") || stderr(&o).contains(&expect),
                "{name}: {}",
                text(&o)
            );
        }
    };

    // 1. a changed actor, its hash recomputed: the next link names it
    let dir = forged("f-actor");
    let mut seg = lines(&dir);
    let i = seg.iter().position(|l| l.contains("campaign.paused")).unwrap();
    let mut e: ChainedEvent = serde_json::from_str(&seg[i]).unwrap();
    e.actor = "mallory".into();
    e.hash = Some(event_hash(e.chain_seq.unwrap(), e.prev_hash.as_deref().unwrap(), &e));
    seg[i] = serde_json::to_string(&e).unwrap();
    write_lines(&dir, &seg);
    refresh_manifest(&dir, |_| {});
    refused(
        "f-actor",
        format!(
            "events.jsonl:{}: place {} does not link to place {}: event {} (the line before) was changed",
            i + 2,
            e.chain_seq.unwrap() + 1,
            e.chain_seq.unwrap(),
            e.event_id
        ),
    )
    .await;

    // 2. a dropped event, the manifest's count updated
    let dir = forged("f-dropped");
    let mut seg = lines(&dir);
    let dropped: ChainedEvent = serde_json::from_str(&seg[i]).unwrap();
    seg.remove(i);
    write_lines(&dir, &seg);
    refresh_manifest(&dir, |m| m["campaign_events"] = (m["campaign_events"].as_u64().unwrap() - 1).into());
    refused("f-dropped", format!("chain place {} is missing", dropped.chain_seq.unwrap())).await;

    // 3. an appended unsealed line
    let dir = forged("f-unsealed");
    let mut seg = lines(&dir);
    let mut extra: ChainedEvent = serde_json::from_str(&seg[0]).unwrap();
    (extra.event_id, extra.kind, extra.actor) = (99_999, "campaign.approved".into(), "mallory".into());
    (extra.chain_seq, extra.prev_hash, extra.hash) = (None, None, None);
    seg.push(serde_json::to_string(&extra).unwrap());
    write_lines(&dir, &seg);
    refresh_manifest(&dir, |m| m["campaign_events"] = (m["campaign_events"].as_u64().unwrap() + 1).into());
    refused("f-unsealed", format!("events.jsonl:{}: event 99999 is not sealed", seg.len())).await;

    // 4. paths outside the bundle: absolute, .., and a symbolic link out
    bin.write("outside.toml", "name = \"kyc-a\"\n");
    let dir = forged("f-absolute");
    let versions = std::fs::read_to_string(dir.join("versions.json")).unwrap();
    let outside = bin.path("outside.toml").display().to_string();
    std::fs::write(dir.join("versions.json"), versions.replace("versions/v1.toml", &outside)).unwrap();
    refresh_manifest(&dir, |_| {});
    refused("f-absolute", format!("versions.json: names {outside:?}, which is not a file of the bundle")).await;
    let dir = forged("f-dotdot");
    std::fs::write(dir.join("versions.json"), versions.replace("versions/v1.toml", "../outside.toml")).unwrap();
    refresh_manifest(&dir, |_| {});
    refused("f-dotdot", "versions.json: names \"../outside.toml\"".into()).await;
    let dir = forged("f-symlink");
    std::fs::remove_file(dir.join("versions/v1.toml")).unwrap();
    std::os::unix::fs::symlink(bin.path("outside.toml"), dir.join("versions/v1.toml")).unwrap();
    refused("f-symlink", "versions/v1.toml: is a symbolic link".into()).await;
    let dir = forged("f-manifest-path");
    refresh_manifest(&dir, |m| m["files"][0]["path"] = outside.clone().into());
    refused("f-manifest-path", format!("{outside}: is not a plain path inside the bundle")).await;

    // 5. the forged actor again, the manifest re-signed with another key
    let dir = forged("f-resigned");
    std::fs::copy(bin.path("f-actor/events.jsonl"), dir.join("events.jsonl")).unwrap();
    refresh_manifest(&dir, |_| {});
    ssh_sign(&mallory, &dir.join("manifest.json"));
    let o = bin.run(&["evidence", "verify", "f-resigned", "--public-key", "key.pub"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let fp = Command::new("ssh-keygen").arg("-lf").arg(mallory.with_extension("pub")).output().unwrap();
    let fp = stdout(&fp).split_whitespace().nth(1).unwrap().to_owned();
    assert!(
        stderr(&o).contains(&format!("manifest.json.sig: was made by key {fp}, not by the key given")),
        "{}",
        text(&o)
    );
    let o = bin.run(&["evidence", "verify", "f-resigned", "--allowed-signers", "allowed_signers"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("which the allowed signers do not list"), "{}", text(&o));
    // and the signature removed
    let dir = forged("f-unsigned");
    std::fs::remove_file(dir.join("manifest.json.sig")).unwrap();
    let o = bin.run(&["evidence", "verify", "f-unsigned", "--public-key", "key.pub"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("the bundle is not signed"), "{}", text(&o));
}

/// The issue's attack on the chain through the binary: the last events deleted and
/// the head set back pass `--verify` without an anchor, and are found with one.
async fn cut_tail_against_the_anchor(db: TestDb) {
    let bin = Bin::new(&db, 2, None).await;
    let anchor = bin.path("heads.jsonl");
    let key = bin.path("audit_key");
    std::fs::write(&key, "an audit key of more than 32 bytes, for the test\n").unwrap();
    let env = [("REVERIFY_AUDIT_ANCHOR", Path::new(&format!("file://{}", anchor.display())).to_path_buf())];
    let env: Vec<(&str, &Path)> =
        env.iter().map(|(k, v)| (*k, v.as_path())).chain([("REVERIFY_AUDIT_KEY_FILE", key.as_path())]).collect();
    bin.write("a.toml", &campaign("kyc-a", "", 10, 1));
    for args in [
        &["campaign", "apply", "a.toml"][..],
        &["campaign", "pause", "kyc-a"],
        &["campaign", "resume", "kyc-a"],
        &["campaign", "pause", "kyc-a"],
    ] {
        let o = with_env(&bin, &env, args).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
    }
    assert_eq!(std::fs::read_to_string(&anchor).unwrap().lines().count(), 4, "a line per seal");
    let o = with_env(&bin, &env, &["campaign", "audit", "kyc-a", "--verify"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stdout(&o).contains("4 events verified, 4 of them keyed with audit_key"), "{}", text(&o));
    assert!(stdout(&o).contains("4 heads recorded, all matched"), "{}", text(&o));

    // cut the last two, set the head back to the second
    let second: (i64, String) =
        sqlx::query_as("SELECT chain_seq, hash FROM events WHERE chain_seq = 2").fetch_one(db.pool()).await.unwrap();
    sqlx::query("DELETE FROM events WHERE chain_seq > 2").execute(db.pool()).await.unwrap();
    sqlx::query("UPDATE audit_chain SET seq = $1, hash = $2")
        .bind(second.0)
        .bind(&second.1)
        .execute(db.pool())
        .await
        .unwrap();
    let o = bin.run(&["campaign", "audit", "kyc-a", "--verify"]).await;
    assert_eq!(o.status.code(), Some(1), "without the key the keyed links cannot be checked: {}", text(&o));
    assert!(stderr(&o).contains("is linked with audit_key, which is not set here"), "{}", text(&o));
    let no_anchor: Vec<(&str, &Path)> = env.iter().filter(|(k, _)| *k == "REVERIFY_AUDIT_KEY_FILE").copied().collect();
    let o = with_env(&bin, &no_anchor, &["campaign", "audit", "kyc-a", "--verify"]).await;
    assert_eq!(o.status.code(), Some(0), "without the anchor the cut is invisible: {}", text(&o));
    // an event forged "now" waits unsealed while the chain is broken
    sqlx::query("INSERT INTO events (at, actor, kind, campaign_id) VALUES ($1, 'mallory', 'campaign.approved', 1)")
        .bind(chrono::Utc::now().timestamp_millis())
        .execute(db.pool())
        .await
        .unwrap();
    let o = with_env(&bin, &env, &["campaign", "audit", "kyc-a", "--verify"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains("the chain's head is at place 2, but the anchor recorded place 4")
            && stderr(&o).contains("the first event missing is the one at chain place 3"),
        "{}",
        text(&o)
    );
    let head: i64 = sqlx::query_scalar("SELECT seq FROM audit_chain").fetch_one(db.pool()).await.unwrap();
    assert_eq!(head, 2, "a broken chain is not sealed onto");
}

/// `deploy/sql/events-append-only.sql` run as an operator would: the application's
/// role then cannot delete or rewrite an event, re-seal one or set the head back,
/// and the worker still writes, seals and verifies as that role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_append_only_grants_refuse_edits_and_keep_the_worker_working() {
    let db = TestDb::postgres().await;
    let role = format!("reverify_app_{}", std::process::id());
    let admin = |sql: String| {
        let pool = db.pool().clone();
        async move { sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await }
    };
    admin(format!("DROP ROLE IF EXISTS {role}")).await.ok();
    admin(format!("CREATE ROLE {role} LOGIN")).await.unwrap();
    let sql = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/sql/events-append-only.sql");
    let o = Command::new("psql")
        .arg(&db.url)
        .args(["-X", "-q", "-v", &format!("app_role={role}"), "-f"])
        .arg(&sql)
        .output()
        .expect("psql is installed");
    assert!(o.status.success(), "{}", text(&o));

    // the worker, as the application's role
    let mut app_url = url::Url::parse(&db.url).unwrap();
    app_url.set_username(&role).unwrap();
    let mut bin = Bin::new(&db, 2, None).await;
    bin.db_url = app_url.to_string();
    bin.write("a.toml", &campaign("kyc-a", "", 10, 1));
    for args in [
        &["campaign", "apply", "a.toml"][..],
        &["campaign", "pause", "kyc-a"],
        &["campaign", "audit", "kyc-a", "--verify"],
    ] {
        let o = bin.run(args).await;
        assert_eq!(o.status.code(), Some(0), "{args:?} as {role}: {}", text(&o));
    }
    let head: i64 = sqlx::query_scalar("SELECT seq FROM audit_chain").fetch_one(db.pool()).await.unwrap();
    assert_eq!(head, 2, "the worker sealed its events");

    // the same role, by hand: every edit refused
    let app = reverify::store::Store::connect(app_url.as_str()).await.unwrap();
    let pool = sqlx::AnyPool::connect(app_url.as_str()).await.unwrap();
    drop(app);
    for (sql, expect) in [
        ("DELETE FROM events", "permission denied"),
        ("TRUNCATE events", "permission denied"),
        ("UPDATE events SET actor = 'mallory'", "permission denied"),
        ("UPDATE events SET hash = 'x' WHERE chain_seq = 1", "is sealed: the audit trail is append-only"),
        ("UPDATE audit_chain SET seq = 1", "moves forward only"),
        ("DELETE FROM audit_chain", "permission denied"),
    ] {
        let e = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.expect_err(sql).to_string();
        assert!(e.contains(expect), "{sql}: {e}");
    }
    pool.close().await;
    admin(format!("DROP OWNED BY {role}")).await.unwrap();
    admin(format!("DROP ROLE {role}")).await.ok();
}

reverify::both_engines!(a_cut_tail_is_found_against_the_anchor, cut_tail_against_the_anchor);
