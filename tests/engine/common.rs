//! A sandbox, a store loaded with the sandbox's users, and a worker wired to both.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use reverify::Settings;
use reverify::config::Secret;
use reverify::crypto::TokenCipher;
use reverify::domain::CampaignSpec;
use reverify::engine::{Progress, RunReport, Worker};
use reverify::sandbox::{Sandbox, SandboxConfig, SandboxHandle, UserSource};
use reverify::store::Store;
use reverify::store::campaigns::CampaignRecord;
use reverify::store::testing::TestDb;
use reverify::store::users::{SealedToken, UserUpsert};
use tokio_util::sync::CancellationToken;

pub struct Env {
    pub db: TestDb,
    pub sandbox: SandboxHandle,
    pub settings: Settings,
    pub outbox: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn campaign_toml(name: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\n{extra}\n[delivery]\nfrom = \"Compliance <compliance@example.com>\"\ntrace_headers = true\n\
         [throttle]\nrequests_per_second = 5000\nconcurrency = 16\n"
    )
}

impl Env {
    pub async fn new(db: TestDb, users: usize) -> Self {
        Self::with_sandbox(db, SandboxConfig { users: UserSource::Generate(users), seed: 7, ..Default::default() })
            .await
    }

    /// As [`Env::new`], with the sandbox configured as given (a webhook, a clock).
    pub async fn with_sandbox(db: TestDb, config: SandboxConfig) -> Self {
        let sandbox = Sandbox::start(config).await.expect("sandbox starts");
        let dir = tempfile::tempdir().unwrap();
        let outbox = dir.path().join("outbox");
        let settings = Settings {
            database_url: db.url.clone(),
            baanx_base_url: sandbox.base_url(),
            baanx_client_key: Some(Secret::new(sandbox.client_key())),
            token_key: Some(Secret::new(TokenCipher::generate_key())),
            outbox_dir: Some(outbox.clone()),
            templates_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates"),
            requests_per_second: 5000.0,
            burst: 100,
            ..Settings::default()
        };
        let env = Self { db, sandbox, settings, outbox, _dir: dir };
        env.load_users().await;
        env
    }

    pub fn store(&self) -> &Store {
        &self.db.store
    }

    /// The sandbox's users, as an import would write them.
    async fn load_users(&self) {
        self.upsert_users(|_, _| {}).await;
    }

    /// Writes the sandbox's users again as an import would, each (the i-th, in the
    /// sandbox's order) changed by `adjust` first: a test's own locales, time zones.
    pub async fn upsert_users(&self, adjust: impl Fn(usize, &mut UserUpsert)) {
        let cipher = TokenCipher::from_secrets(self.settings.token_key.as_ref(), None).unwrap();
        let rows: Vec<UserUpsert> = self
            .sandbox
            .users()
            .into_iter()
            .map(|u| UserUpsert {
                state_confirmed_at: None,
                access: None,
                token: u.refresh_token.as_ref().map(|t| SealedToken {
                    key_id: cipher.key_id().to_owned(),
                    ciphertext: cipher.seal(u.user_id.as_str(), t),
                }),
                user_id: u.user_id,
                email: u.email,
                first_name: Some(u.first_name),
                last_name: Some(u.last_name),
                locale: Some(u.locale),
                timezone: Some(u.timezone),
                region: u.region,
                country: Some(u.country),
                verification_state: u.verification_state,
                rejected_at: u.rejected_at,
                tags: u.tags,
                signed_up_at: None,
            })
            .enumerate()
            .map(|(i, mut row)| {
                adjust(i, &mut row);
                row
            })
            .collect();
        for chunk in rows.chunks(500) {
            // at the sandbox's time: a test that moves the clock imports then
            self.store().user_upsert_batch(chunk, self.sandbox.now()).await.unwrap();
        }
    }

    pub async fn apply(&self, toml: &str) -> CampaignRecord {
        let spec = CampaignSpec::from_toml(toml, "test.toml").unwrap();
        self.store().campaign_apply(&spec, toml, "test", Utc::now()).await.unwrap().1
    }

    pub fn worker(&self) -> Worker {
        Worker::from_settings(&self.settings, self.store().clone()).expect("worker")
    }

    pub async fn run(&self, c: &CampaignRecord) -> RunReport {
        self.worker().run_campaign(c, Arc::new(Progress::default()), CancellationToken::new()).await.expect("run")
    }

    /// The .eml files in the outbox.
    pub fn messages(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(&self.outbox) else { return vec![] };
        let mut v: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter(|e| reverify::notify::is_message_name(&e.file_name()))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect();
        v.sort();
        v
    }
}

/// A Baanx webhook receiver of `store`'s, over real HTTP, and a sender that signs
/// each post as Baanx does.
pub struct WebhookReceiver {
    addr: std::net::SocketAddr,
    key: &'static str,
}

impl WebhookReceiver {
    /// Serves `POST /webhooks/baanx` for `store`, verifying with `key`.
    pub async fn start(store: &Store, key: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = reverify::webhooks::webhook_router(store.clone(), Secret::new(key));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, key }
    }

    /// Posts `body` signed now; the answer's status.
    pub async fn post(&self, body: Vec<u8>) -> u16 {
        let ts = Utc::now().timestamp().to_string();
        let sig = reverify::sandbox::signature(self.key.as_bytes(), &ts, &body);
        reqwest::Client::new()
            .post(format!("http://{}/webhooks/baanx", self.addr))
            .header("content-type", "application/json")
            .header("X-Timestamp", ts)
            .header("X-Signature", sig)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}
