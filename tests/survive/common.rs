//! The rig every survival test stands on: a fresh database, an in-process sandbox with
//! chosen faults, its users imported, settings for the library and an environment for
//! the real binary; and the checks of design.md's invariants that every suite repeats.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reverify::Settings;
use reverify::config::Secret;
use reverify::crypto::TokenCipher;
use reverify::directory::{ImportOptions, import_file};
use reverify::domain::CampaignSpec;
use reverify::notify::testing::ReceivedMail;
use reverify::sandbox::{Faults, Sandbox, SandboxConfig, SandboxHandle, UserSource};
use reverify::store::campaigns::CampaignRecord;
use reverify::store::testing::TestDb;
use sqlx::Row;

/// A database, a sandbox and the users of one in the other.
pub struct Rig {
    pub db: TestDb,
    pub sandbox: SandboxHandle,
    pub dir: tempfile::TempDir,
    pub token_key: String,
    /// Where messages go (`smtp_url`); set by the test.
    pub smtp_url: Option<String>,
}

impl Rig {
    /// `users` sandbox users (from `seed`) with `faults`, imported into `db`.
    pub async fn new(db: TestDb, users: usize, seed: u64, faults: Faults) -> Self {
        Self::with_sandbox(db, SandboxConfig { users: UserSource::Generate(users), seed, faults, ..Default::default() })
            .await
    }

    /// A rig over a sandbox configured as given; its users are imported.
    pub async fn with_sandbox(db: TestDb, config: SandboxConfig) -> Self {
        let sandbox = Sandbox::start(config).await.expect("sandbox starts");
        let users = sandbox.users().len();
        let dir = tempfile::tempdir().unwrap();
        reverify::sandbox::userfile::write_users(&dir.path().join("users.csv"), &sandbox.users()).unwrap();
        let rig = Self { db, sandbox, dir, token_key: TokenCipher::generate_key(), smtp_url: None };
        let cipher = TokenCipher::from_secrets(Some(&Secret::new(rig.token_key.clone())), None).unwrap();
        let opts = ImportOptions {
            format: None,
            strict: true,
            cipher: Some(Arc::new(cipher)),
            actor: "survive".into(),
            now: Utc::now(),
        };
        let report = import_file(&rig.db.store, &rig.path("users.csv"), &opts).await.expect("import");
        assert_eq!(report.imported as usize, users, "{report:?}");
        rig
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Settings for an in-process worker.
    pub fn settings(&self) -> Settings {
        Settings {
            database_url: self.db.url.clone(),
            baanx_base_url: self.sandbox.base_url(),
            baanx_client_key: Some(Secret::new(self.sandbox.client_key())),
            token_key: Some(Secret::new(self.token_key.clone())),
            smtp_url: self.smtp_url.clone(),
            templates_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates"),
            requests_per_second: 5000.0,
            burst: 100,
            ..Settings::default()
        }
    }

    /// The real binary, with the environment pointing at this rig.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_reverify"));
        c.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REVERIFY_DATABASE_URL", &self.db.url)
            .env("REVERIFY_BAANX_BASE_URL", self.sandbox.base_url().as_str())
            .env("REVERIFY_BAANX_CLIENT_KEY", self.sandbox.client_key())
            .env("REVERIFY_TOKEN_KEY", &self.token_key)
            .env("REVERIFY_TEMPLATES_DIR", Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates"))
            .env("REVERIFY_REQUESTS_PER_SECOND", "5000")
            .env("REVERIFY_BURST", "100")
            .env("REVERIFY_LOG_LEVEL", "warn");
        if let Some(u) = &self.smtp_url {
            c.env("REVERIFY_SMTP_URL", u);
        }
        c
    }

    /// Runs the binary to completion off the runtime's threads.
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.command(args);
        tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
    }

    /// Applies a campaign through the library.
    pub async fn apply(&self, toml: &str) -> CampaignRecord {
        let spec = CampaignSpec::from_toml(toml, "survive.toml").unwrap();
        self.db.store.campaign_apply(&spec, toml, "survive", Utc::now()).await.unwrap().1
    }

    /// Every target of a campaign.
    pub async fn targets(&self, campaign_id: i64) -> Vec<TargetRow> {
        sqlx::query(
            "SELECT t.user_id, u.email, t.step, t.status, t.reason, t.not_before FROM campaign_targets t \
             JOIN users u ON u.user_id = t.user_id WHERE t.campaign_id = $1 ORDER BY t.user_id",
        )
        .bind(campaign_id)
        .fetch_all(self.db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| TargetRow {
            user_id: r.try_get("user_id").unwrap(),
            email: r.try_get("email").unwrap(),
            step: r.try_get("step").unwrap(),
            status: r.try_get("status").unwrap(),
            reason: r.try_get("reason").unwrap(),
            not_before: r.try_get("not_before").unwrap(),
        })
        .collect()
    }

    /// Targets a run could still work on now (pending or deferred and due), or that a
    /// worker (perhaps a dead or frozen one) still holds.
    pub async fn targets_left(&self, campaign_id: i64) -> i64 {
        sqlx::query(
            "SELECT COUNT(*) AS n FROM campaign_targets WHERE campaign_id = $1 AND (status = 'claimed' \
             OR (status IN ('pending', 'deferred') AND (not_before IS NULL OR not_before <= $2)))",
        )
        .bind(campaign_id)
        .bind(reverify::store::to_millis(Utc::now()))
        .fetch_one(self.db.pool())
        .await
        .unwrap()
        .get("n")
    }

    /// `campaign status NAME --json` from the binary equals the rows, status by status.
    pub async fn assert_status_equals_rows(&self, name: &str, campaign_id: i64) {
        let o = self.run(&["campaign", "status", name, "--json"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
        let mut rows: BTreeMap<String, i64> = BTreeMap::new();
        for t in self.targets(campaign_id).await {
            *rows.entry(t.status).or_default() += 1;
        }
        for status in ["pending", "claimed", "deferred", "notified", "skipped", "failed", "converted"] {
            let shown = doc[status].as_i64().unwrap_or_else(|| panic!("no {status} in {doc}"));
            assert_eq!(shown, rows.get(status).copied().unwrap_or(0), "status {status}: {doc} vs {rows:?}");
        }
    }
}

/// One `campaign_targets` row, with the user's address.
#[derive(Debug, Clone)]
pub struct TargetRow {
    pub user_id: String,
    pub email: String,
    pub step: i64,
    pub status: String,
    pub reason: Option<String>,
    pub not_before: Option<i64>,
}

/// The `n` column of a counting query's one row.
pub async fn count_of(rig: &Rig, q: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>) -> i64 {
    q.fetch_one(rig.db.pool()).await.unwrap().try_get("n").unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A campaign file delivering by email.
pub fn campaign(name: &str, rps: u32, concurrency: u32) -> String {
    format!(
        "name = \"{name}\"\n[delivery]\nfrom = \"Compliance <compliance@example.com>\"\ntrace_headers = true\n\
         [throttle]\nrequests_per_second = {rps}\nconcurrency = {concurrency}\n"
    )
}

/// Messages received, by (campaign, recipient, step).
pub fn per_target(mails: &[ReceivedMail]) -> HashMap<(String, String, i64), usize> {
    let mut m = HashMap::new();
    for mail in mails {
        let campaign = mail.header("X-Reverify-Campaign").unwrap_or_default();
        let to = mail.header("To").unwrap_or_default();
        let to = to.rsplit('<').next().unwrap_or(&to).trim_end_matches('>').trim().to_owned();
        let step = mail.header("X-Reverify-Step").and_then(|s| s.trim().parse().ok()).unwrap_or(-1);
        *m.entry((campaign, to, step)).or_insert(0) += 1;
    }
    m
}

/// What the exactly-once check found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Delivery {
    pub notified: usize,
    pub delivery_unknown: usize,
    pub duplicates: usize,
}

/// Checks the targets of `campaign` against the messages received:
/// - nobody got two messages for one step;
/// - `notified` targets got exactly one, `delivery_unknown` at most one, every other
///   target none;
/// - every target has a reason, and (when `allow_pending` is false) is final:
///   notified, skipped, failed, or deferred to a time in the future; with
///   `allow_pending`, a pending target must carry a retry time (a run ends when
///   nothing is due *now*; one due a second later waits for the next run).
pub fn check_delivery(name: &str, targets: &[TargetRow], mails: &[ReceivedMail], allow_pending: bool) -> Delivery {
    let got = per_target(mails);
    let mut d = Delivery { duplicates: got.values().filter(|n| **n > 1).count(), ..Delivery::default() };
    assert_eq!(d.duplicates, 0, "duplicate messages: {:?}", got.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>());
    let now = reverify::store::to_millis(Utc::now());
    let mut counted = 0;
    for t in targets {
        let n = got.get(&(name.to_owned(), t.email.clone(), t.step)).copied().unwrap_or(0);
        counted += n;
        let reason = t.reason.as_deref();
        assert!(reason.is_some_and(|r| !r.is_empty()) || t.status == "notified", "no reason: {t:?}");
        match (t.status.as_str(), reason) {
            ("notified", _) => {
                assert_eq!(n, 1, "a notified user got {n} messages: {t:?}");
                d.notified += 1;
            }
            ("failed", Some("delivery_unknown")) => {
                assert!(n <= 1, "{t:?} got {n}");
                d.delivery_unknown += 1;
            }
            ("skipped" | "failed", _) => assert_eq!(n, 0, "{t:?} got {n} messages"),
            ("deferred", _) => {
                assert_eq!(n, 0, "{t:?} got {n} messages");
                assert!(t.not_before.is_some_and(|nb| nb > now), "deferred without a future time: {t:?}");
            }
            ("pending", _) if allow_pending => {
                assert_eq!(n, 0, "{t:?} got {n} messages");
                // (the time may already have come: a 1 s Retry-After)
                assert!(t.not_before.is_some(), "pending without a retry time: {t:?}");
            }
            _ => panic!("target not in a final state: {t:?}"),
        }
    }
    let total: usize = got.iter().filter(|((c, _, _), _)| c == name).map(|(_, n)| *n).sum();
    assert_eq!(total, counted, "messages for users who are not targets");
    d
}

/// Waits (polling, with a deadline) until `f` is true.
pub async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A seed from `var`, or a fresh one; printed so that a failure can be replayed.
pub fn seed(var: &str) -> u64 {
    std::env::var(var).ok().and_then(|s| s.trim().parse().ok()).unwrap_or_else(rand::random)
}

/// Every row of every table, as text, in a stable order. Of the audit events, what
/// they say: not their place in the hash chain, which any command may seal (a
/// refused command too, sealing what others wrote before it).
pub async fn dump(db: &TestDb) -> String {
    let mut out = String::new();
    for table in
        ["users", "campaigns", "campaign_runs", "campaign_targets", "verification_sessions", "events", "webhook_events"]
    {
        let columns = if table == "events" { "event_id, at, actor, kind, campaign_id, user_id, detail" } else { "*" };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {columns} FROM {table}")))
            .fetch_all(db.pool())
            .await
            .unwrap();
        let mut lines: Vec<String> = rows
            .iter()
            .map(|r| {
                (0..r.columns().len())
                    .map(|i| {
                        if let Ok(v) = r.try_get::<Option<i64>, _>(i) {
                            format!("{v:?}")
                        } else if let Ok(v) = r.try_get::<Option<String>, _>(i) {
                            format!("{v:?}")
                        } else if let Ok(v) = r.try_get::<Option<Vec<u8>>, _>(i) {
                            format!("{v:?}")
                        } else {
                            "?".into()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        lines.sort();
        out.push_str(&format!("{table}: {}\n", lines.join(" | ")));
    }
    out
}
