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

/// The binary in `dir` on `db`, with a file outbox: email campaigns have a channel.
fn reverify(db: &TestDb, dir: &Path) -> Command {
    let mut cmd = bare(db, dir);
    cmd.env("REVERIFY_OUTBOX_DIR", dir.join("outbox"));
    cmd
}

/// The binary with no setting but the database.
fn bare(db: &TestDb, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reverify"));
    cmd.current_dir(dir).env_clear().env("USER", "tester").env("REVERIFY_DATABASE_URL", &db.url);
    cmd
}

/// A key long enough for notify_webhook_key.
const HOOK_KEY: &str = "notify-webhook-key-0123456789abcdef";

/// A webhook campaign on loopback.
const WEBHOOK_SPEC: &str = r#"name = "push-retry"
[audience]
states = ["REJECTED"]
[delivery]
channel = "webhook"
webhook_url = "http://127.0.0.1:9/hook"
"#;

/// `campaign validate`, then `campaign apply`, of `file` (in `dir`): both exit 1
/// with `expect` on standard error, and nothing is applied. Then the same campaign
/// stored behind apply's back is refused by `reverify run` with the same words.
/// A campaign file that must be refused: its name, its text, the environment, and
/// the words every command must refuse it with.
struct Refusal<'a> {
    file: &'a str,
    spec: &'a str,
    env: &'a [(&'a str, &'a str)],
    expect: &'a str,
}

async fn refused_alike(db: &TestDb, dir: &Path, r: Refusal<'_>) {
    let Refusal { file, spec, env, expect } = r;
    std::fs::write(dir.join(file), spec).unwrap();
    let with_env = |args: &[&str]| {
        let mut c = bare(db, dir);
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    };
    with_env(&["campaign", "validate", file])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!("error: {file}: {expect}")));
    with_env(&["campaign", "apply", file])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!("error: {file}: {expect}")))
        .stderr(predicate::str::contains("nothing applied: 1 of 1 files are not valid"));
    assert!(db.store.campaign_list().await.unwrap().is_empty(), "{file} was applied");

    // what run refuses: the same campaign, stored through the library
    let parsed = reverify::domain::CampaignSpec::from_toml(spec, file).unwrap();
    db.store.campaign_apply(&parsed, spec, "test", chrono::Utc::now()).await.unwrap();
    let key = reverify::crypto::TokenCipher::generate_key();
    with_env(&["run", parsed.name.as_str(), "--progress", "none"])
        .env("REVERIFY_BAANX_CLIENT_KEY", "client-key")
        .env("REVERIFY_TOKEN_KEY", key)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!("campaign {}: {expect}", parsed.name)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_and_apply_refuse_what_run_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let outbox = d.join("outbox");
    let outbox = outbox.to_str().unwrap();

    // an email campaign without delivery.from
    let db = TestDb::sqlite().await;
    let no_from = SPEC.replace("from = \"Compliance <compliance@example.com>\"\n", "");
    let expect = "delivery.from: the email channel needs a From address";
    refused_alike(
        &db,
        d,
        Refusal { file: "no-from.toml", spec: &no_from, env: &[("REVERIFY_OUTBOX_DIR", outbox)], expect },
    )
    .await;

    // a webhook campaign without notify_webhook_key
    let db = TestDb::sqlite().await;
    let expect = "notify_webhook_key: the campaign uses the webhook channel: set notify_webhook_key";
    refused_alike(&db, d, Refusal { file: "push.toml", spec: WEBHOOK_SPEC, env: &[], expect }).await;
    // with the key, it is valid
    bare(&db, d)
        .args(["campaign", "validate", "push.toml"])
        .env("REVERIFY_NOTIFY_WEBHOOK_KEY", HOOK_KEY)
        .assert()
        .success()
        .stdout("push.toml: ok (campaign push-retry)\n");

    // an email campaign with neither smtp_url nor outbox_dir
    let db = TestDb::sqlite().await;
    let expect = "smtp_url: the campaign sends email, and neither smtp_url nor outbox_dir is set";
    refused_alike(&db, d, Refusal { file: "nowhere.toml", spec: SPEC, env: &[], expect }).await;

    // a template that does not exist (the built-in ones are default and reminder)
    let db = TestDb::sqlite().await;
    let welcome = SPEC.replace("[throttle]", "template = \"welcome\"\n\n[throttle]");
    let expect = "delivery.template: template \"welcome\" is not in (built-in templates) (found: default, reminder)";
    refused_alike(
        &db,
        d,
        Refusal { file: "welcome.toml", spec: &welcome, env: &[("REVERIFY_OUTBOX_DIR", outbox)], expect },
    )
    .await;
    let db = TestDb::sqlite().await;
    let reminder = format!("{SPEC}\n[reminders]\nafter = \"72h\"\ntemplate = \"nudge\"\n");
    let expect = "reminders.template: template \"nudge\" is not in";
    refused_alike(
        &db,
        d,
        Refusal { file: "nudge.toml", spec: &reminder, env: &[("REVERIFY_OUTBOX_DIR", outbox)], expect },
    )
    .await;

    // one subject for every language is valid, with a warning; a table per locale
    // is not warned about, and a bad locale key is refused naming the field
    std::fs::write(d.join("one-subject.toml"), SPEC).unwrap();
    bare(&db, d)
        .args(["campaign", "validate", "one-subject.toml"])
        .env("REVERIFY_OUTBOX_DIR", outbox)
        .assert()
        .success()
        .stdout(predicate::str::starts_with("one-subject.toml: ok (campaign kyc-refresh-q4)\n"))
        .stderr(predicate::str::contains(
            "warning: one-subject.toml: `delivery.subject`: one subject (\"Please verify your identity\") is sent in every language",
        ));
    let table = SPEC.replace(
        "subject = \"Please verify your identity\"\n",
        "[delivery.subject]\nen = \"Please verify your identity\"\nde = \"Bitte bestätigen Sie Ihre Identität\"\n",
    );
    std::fs::write(d.join("subjects.toml"), &table).unwrap();
    bare(&db, d)
        .args(["campaign", "validate", "subjects.toml"])
        .env("REVERIFY_OUTBOX_DIR", outbox)
        .assert()
        .success()
        .stderr(predicate::str::contains("warning").not());
    std::fs::write(d.join("bad-subjects.toml"), table.replace("de = ", "\"d e\" = ")).unwrap();
    bare(&db, d)
        .args(["campaign", "validate", "bad-subjects.toml"])
        .env("REVERIFY_OUTBOX_DIR", outbox)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("bad-subjects.toml: `delivery.subject`: \"d e\" is not a locale tag"));

    // a webhook to a plain-http host that is not this one (in the file itself)
    let plain = WEBHOOK_SPEC.replace("http://127.0.0.1:9/hook", "http://push.example.com/hook?token=hunter2");
    std::fs::write(d.join("plain.toml"), &plain).unwrap();
    bare(&db, d)
        .args(["campaign", "validate", "plain.toml"])
        .env("REVERIFY_NOTIFY_WEBHOOK_KEY", HOOK_KEY)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("plain.toml: `delivery.webhook_url`: "))
        .stderr(predicate::str::contains("must use https"))
        .stderr(predicate::str::contains("hunter2").not());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_without_a_file_applies_every_file_of_jobs_dir() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let jobs = d.join("campaigns");
    std::fs::create_dir(&jobs).unwrap();
    std::fs::write(jobs.join("a.toml"), SPEC.replace("kyc-refresh-q4", "a-campaign")).unwrap();
    std::fs::write(jobs.join("b.toml"), SPEC.replace("kyc-refresh-q4", "b-campaign")).unwrap();
    let bad =
        SPEC.replace("kyc-refresh-q4", "c-campaign").replace("from = \"Compliance <compliance@example.com>\"\n", "");
    std::fs::write(jobs.join("c.toml"), &bad).unwrap();
    std::fs::write(jobs.join("README.md"), "not a campaign").unwrap();
    let jobs_dir = jobs.to_str().unwrap();
    let names = || async {
        let mut n: Vec<String> =
            db.store.campaign_list().await.unwrap().into_iter().map(|c| c.name.to_string()).collect();
        n.sort();
        n
    };

    // a bad file is named and skipped; the others are applied; exit 1
    let c_toml = jobs.join("c.toml").display().to_string();
    reverify(&db, d)
        .args(["campaign", "apply"])
        .env("REVERIFY_JOBS_DIR", jobs_dir)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("a.toml: campaign a-campaign created (version 1)"))
        .stdout(predicate::str::contains("b.toml: campaign b-campaign created (version 1)"))
        .stderr(predicate::str::contains(format!("error: {c_toml}: delivery.from: ")))
        .stderr(predicate::str::contains(format!("2 of 3 files in {jobs_dir} applied; not applied: {c_toml}")));
    assert_eq!(names().await, ["a-campaign", "b-campaign"]);

    // fixed: every file applied, the unchanged ones said so; exit 0
    std::fs::write(jobs.join("c.toml"), SPEC.replace("kyc-refresh-q4", "c-campaign")).unwrap();
    reverify(&db, d)
        .args(["campaign", "apply"])
        .env("REVERIFY_JOBS_DIR", jobs_dir)
        .assert()
        .success()
        .stdout(predicate::str::contains("a.toml: campaign a-campaign unchanged (version 1)"))
        .stdout(predicate::str::contains("c.toml: campaign c-campaign created (version 1)"))
        .stderr(predicate::str::contains("error").not());
    assert_eq!(names().await, ["a-campaign", "b-campaign", "c-campaign"]);

    // two files for one campaign: the second is refused, naming the first
    std::fs::write(jobs.join("d.toml"), SPEC.replace("kyc-refresh-q4", "a-campaign")).unwrap();
    reverify(&db, d)
        .args(["campaign", "apply"])
        .env("REVERIFY_JOBS_DIR", jobs_dir)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("d.toml: campaign a-campaign is also defined in "))
        .stderr(predicate::str::contains("3 of 4 files in"));
    std::fs::remove_file(jobs.join("d.toml")).unwrap();

    // the default jobs_dir is ./jobs; a missing or empty one is an error naming it
    reverify(&db, d)
        .args(["campaign", "apply"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("jobs_dir jobs: cannot read the campaign files"));
    std::fs::create_dir(d.join("jobs")).unwrap();
    reverify(&db, d)
        .args(["campaign", "apply"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("jobs_dir jobs: no *.toml campaign files to apply"));
}

/// What the systemd units run before each start: `campaign apply` over the shipped
/// campaigns, with the channels they need configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_campaigns_apply_from_jobs_dir() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
    reverify(&db, dir.path())
        .args(["campaign", "apply"])
        .env("REVERIFY_JOBS_DIR", &jobs)
        .env("REVERIFY_TEMPLATES_DIR", jobs.join("templates"))
        .env("REVERIFY_NOTIFY_WEBHOOK_KEY", HOOK_KEY)
        // the demo campaign sends click-through links
        .env("REVERIFY_PUBLIC_URL", "https://verify.example.com")
        .assert()
        .success()
        .stdout(predicate::str::contains("rejected-retry-push.toml: campaign rejected-retry-push created"));
    let n = std::fs::read_dir(&jobs)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "toml"))
        .count();
    assert_eq!(db.store.campaign_list().await.unwrap().len(), n);
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
    // JSON Lines: one campaign per line
    let lines: Vec<&[u8]> = out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", String::from_utf8_lossy(&out.stdout));
    let list = [serde_json::from_slice::<serde_json::Value>(lines[0]).unwrap()];
    assert!(list[0].get("next_run_at").is_none() && list[0].get("next_run").is_some(), "one name: {}", list[0]);
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
    assert!(events.iter().all(|e| e.actor == "tester"), "{events:?}");
});

both_engines!(the_actor_is_as_else_reverify_actor_else_the_os_user, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("kyc.toml"), SPEC).unwrap();
    reverify(&db, d).args(["campaign", "apply", "kyc.toml"]).assert().success();
    reverify(&db, d).args(["campaign", "pause", "kyc-refresh-q4"]).env("REVERIFY_ACTOR", "carol").assert().success();
    reverify(&db, d)
        .args(["campaign", "resume", "kyc-refresh-q4", "--as", "dave"])
        .env("REVERIFY_ACTOR", "carol")
        .assert()
        .success();
    reverify(&db, d).args(["--as", "erin", "campaign", "retry-failed", "kyc-refresh-q4"]).assert().success();
    let events = db.store.event_list(&EventFilter::default(), 0, 100).await.unwrap();
    let who: Vec<(&str, &str)> = events.iter().map(|e| (e.kind.as_str(), e.actor.as_str())).collect();
    assert_eq!(
        who,
        [
            ("campaign.applied", "tester"),
            ("campaign.paused", "carol"),
            ("campaign.resumed", "dave"),
            ("campaign.retry_failed", "erin")
        ]
    );
    // `campaign audit` shows each, and the events are sealed into the chain
    reverify(&db, d).args(["campaign", "audit", "kyc-refresh-q4"]).assert().success().stdout(
        predicate::str::contains("carol").and(predicate::str::contains("dave")).and(predicate::str::contains("erin")),
    );
    assert_eq!(db.store.audit_head().await.unwrap().seq, 4);
    reverify(&db, d).args(["campaign", "pause", "kyc-refresh-q4", "--as", "bad\u{7}name"]).assert().code(2);
});

/// `campaign validate` checks every locale of every template, and the new keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_a_locale_missing_a_file_or_a_variable_and_bad_windows() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tpl = d.join("templates");
    let write = |rel: &str, text: &str| {
        let p = tpl.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    for (locale, word) in [("en", "until"), ("de", "bis")] {
        write(&format!("default/{locale}/subject.txt"), "Verify");
        write(&format!("default/{locale}/body.txt"), &format!("{{{{ link }}}} {word} {{{{ expires_at }}}}"));
        write(
            &format!("default/{locale}/body.html"),
            &format!("<a href=\"{{{{ link }}}}\">{word} {{{{ expires_at }}}}</a>"),
        );
    }
    std::fs::write(d.join("c.toml"), SPEC).unwrap();
    let validate = || {
        reverify(&db, d).env("REVERIFY_TEMPLATES_DIR", &tpl).args(["campaign", "validate", "c.toml"]).output().unwrap()
    };
    let ok = validate();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    // a translation that lost the expiry
    write("default/de/body.txt", "{{ link }}");
    let out = validate();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("default/de/body.txt: missing variable {{ expires_at }}"), "{err}");

    // a locale without its HTML
    write("default/de/body.txt", "{{ link }} bis {{ expires_at }}");
    std::fs::remove_file(tpl.join("default/de/body.html")).unwrap();
    let out = validate();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("default/de/body.html") && err.contains("missing"), "{err}");
    write("default/de/body.html", "<a href=\"{{ link }}\">bis {{ expires_at }}</a>");

    // a default locale the template does not have, a window that is not one
    for (change, expect) in [
        ("default_locale = \"fr\"", "default/fr"),
        ("send_window = \"9-17\"", "`delivery.send_window`"),
        ("send_days = [\"monday\"]", "`delivery.send_days`"),
    ] {
        std::fs::write(d.join("c.toml"), SPEC.replace("[delivery]\n", &format!("[delivery]\n{change}\n"))).unwrap();
        let out = validate();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{change}");
        assert!(err.contains("c.toml") && err.contains(expect), "{change}: {err}");
    }
}

// A campaign's life (issue 23): an ends_at already past is refused at apply with the
// file, line and column; a completed campaign's file cannot be changed (ends_at
// included), though the same file applies again as unchanged; `validate` warns of a
// window that never opens before the end.
both_engines!(a_campaigns_life_is_checked_at_apply_and_final_once_completed, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let life = |ends: &str, window: &str| {
        format!(
            "name = \"ends\"\nschedule = \"0 9 * * *\"\nends_at = \"{ends}\"\n[delivery]\n\
             from = \"Compliance <compliance@example.com>\"\n{window}"
        )
    };
    std::fs::write(dir.path().join("past.toml"), life("2020-01-01T00:00:00Z", "")).unwrap();
    reverify(&db, dir.path())
        .args(["campaign", "apply", "past.toml"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("past.toml:3:1: `ends_at`: 2020-01-01T00:00:00Z has already passed"));
    reverify(&db, dir.path())
        .args(["campaign", "validate", "past.toml"])
        .assert()
        .stderr(predicate::str::contains("warning: past.toml: ends_at has already passed"));

    // Saturdays only, and the campaign ends before the next one
    let now = chrono::Utc::now();
    let saturday = (0..7)
        .map(|d| now + chrono::Duration::days(d))
        .find(|t| chrono::Datelike::weekday(t) == chrono::Weekday::Sat)
        .unwrap();
    let friday_end = (saturday - chrono::Duration::days(1)).date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    if friday_end > now + chrono::Duration::hours(14) {
        let never = life(&friday_end.to_rfc3339(), "send_window = \"09:00-10:00\"\nsend_days = [\"sat\"]\n");
        std::fs::write(dir.path().join("never.toml"), never).unwrap();
        reverify(&db, dir.path())
            .args(["campaign", "validate", "never.toml"])
            .assert()
            .success()
            .stderr(predicate::str::contains("send_window and send_days admit no time"));
    }

    let soon = (now + chrono::Duration::days(3)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::fs::write(dir.path().join("ends.toml"), life(&soon, "")).unwrap();
    reverify(&db, dir.path()).args(["campaign", "apply", "ends.toml"]).assert().success();
    reverify(&db, dir.path())
        .args(["campaign", "show", "ends"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("ends: {soon}")))
        .stdout(predicate::str::contains("next follow-up: none: nobody waits"));
    // completed (as the scheduler does once ends_at passes)
    let store = &db.store;
    let c = store.campaign_get(&reverify::domain::CampaignName::parse("ends").unwrap()).await.unwrap().unwrap();
    store
        .campaign_complete(&reverify::store::campaigns::CompleteParams {
            campaign_id: c.campaign_id,
            ends_at: now,
            outcomes_until: now + chrono::Duration::days(30),
            actor: "test",
            now,
        })
        .await
        .unwrap()
        .unwrap();
    reverify(&db, dir.path()).args(["campaign", "apply", "ends.toml"]).assert().success();
    let later = (now + chrono::Duration::days(9)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::fs::write(dir.path().join("ends.toml"), life(&later, "")).unwrap();
    reverify(&db, dir.path())
        .args(["campaign", "apply", "ends.toml"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("campaign ends completed at").and(predicate::str::contains("new name")));
    reverify(&db, dir.path())
        .args(["campaign", "resume", "ends"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("completed"));
    reverify(&db, dir.path())
        .args(["campaign", "status", "ends"])
        .assert()
        .success()
        .stdout(predicate::str::contains("(version 1, completed)"))
        .stdout(predicate::str::contains("completed "));
});
