use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use reverify::crypto::TokenCipher;
use reverify::sandbox::{Faults, Latency, Sandbox, SandboxConfig, SandboxHandle, UserSource};
use reverify::store::testing::TestDb;

pub struct Bin {
    pub dir: tempfile::TempDir,
    pub sandbox: SandboxHandle,
    pub db_url: String,
    token_key: String,
}

impl Bin {
    /// A sandbox with `users` users and `latency`, their import file, and settings
    /// for the binary pointing at both and at `db`.
    pub async fn new(db: &TestDb, users: usize, latency: Option<Duration>) -> Self {
        let faults = Faults { latency: latency.map_or(Latency::None, Latency::Fixed), ..Faults::default() };
        Self::with_sandbox(
            db,
            SandboxConfig { users: UserSource::Generate(users), seed: 3, faults, ..Default::default() },
        )
        .await
    }

    /// As [`Bin::new`], with the sandbox configured as given (the test's own users).
    pub async fn with_sandbox(db: &TestDb, config: SandboxConfig) -> Self {
        let sandbox = Sandbox::start(config).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        reverify::sandbox::userfile::write_users(&dir.path().join("users.csv"), &sandbox.users()).unwrap();
        Self { dir, sandbox, db_url: db.url.clone(), token_key: TokenCipher::generate_key() }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_reverify"));
        c.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REVERIFY_DATABASE_URL", &self.db_url)
            .env("REVERIFY_BAANX_BASE_URL", self.sandbox.base_url().as_str())
            .env("REVERIFY_BAANX_CLIENT_KEY", self.sandbox.client_key())
            .env("REVERIFY_TOKEN_KEY", &self.token_key)
            .env("REVERIFY_OUTBOX_DIR", self.path("outbox"))
            .env("REVERIFY_TEMPLATES_DIR", Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates"))
            .env("REVERIFY_LOG_LEVEL", "warn");
        c
    }

    /// Runs the binary to completion off the async runtime's threads.
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut c = self.command(args);
        tokio::task::spawn_blocking(move || c.output().unwrap()).await.unwrap()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The messages in the outbox (not the temporary files of messages being written,
    /// which a test polling during a run can see).
    pub fn outbox_messages(&self) -> Vec<PathBuf> {
        let Ok(d) = std::fs::read_dir(self.path("outbox")) else { return vec![] };
        d.flatten().filter(|e| reverify::notify::is_message_name(&e.file_name())).map(|e| e.path()).collect()
    }

    pub fn outbox_count(&self) -> usize {
        self.outbox_messages().len()
    }

    /// The recipients of the outbox's messages, with how many each got.
    pub fn outbox_recipients(&self) -> std::collections::HashMap<String, usize> {
        let mut m = std::collections::HashMap::new();
        for path in self.outbox_messages() {
            let text = std::fs::read_to_string(path).unwrap();
            let to = text.lines().find_map(|l| l.strip_prefix("To: ")).unwrap().to_owned();
            *m.entry(to).or_insert(0) += 1;
        }
        m
    }
}

impl Bin {
    /// How many messages each (campaign, user, step) got, from the outbox file names
    /// (`TIME_CAMPAIGN_USER_sSTEP.eml`).
    pub fn outbox_per_target(&self) -> std::collections::HashMap<String, usize> {
        let mut m = std::collections::HashMap::new();
        for path in self.outbox_messages() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let key = name.split_once('_').map_or(name.clone(), |(_, rest)| rest.to_owned());
            *m.entry(key).or_insert(0) += 1;
        }
        m
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn campaign(name: &str, extra: &str, rps: u32, concurrency: u32) -> String {
    format!(
        "name = \"{name}\"\n{extra}\n[delivery]\nfrom = \"Compliance <compliance@example.com>\"\n\
         [throttle]\nrequests_per_second = {rps}\nconcurrency = {concurrency}\n"
    )
}
