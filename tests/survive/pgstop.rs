//! Postgres stopped (`pg_ctl stop -m immediate`: a crash, no clean shutdown) and
//! started again under a running worker: the run fails cleanly, a later run
//! resumes, and nothing is corrupted or sent twice. The shared Postgres is never
//! touched: the test starts a private cluster (Debian's `initdb` and `pg_ctl`, run
//! as the `postgres` user) on a free port in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use reverify::notify::testing::{SmtpServer, free_port};
use reverify::sandbox::{Faults, Latency};
use reverify::store::testing::TestDb;
use reverify::store::to_millis;

use crate::common::{Rig, campaign, check_delivery, count_of, wait_until};
use crate::summary::{Counts, report};

/// A Postgres cluster of this test's own.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> std::process::Output {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin.join(tool)).args(args).stdin(Stdio::null());
    c.output().unwrap_or_else(|e| panic!("runuser {tool}: {e}"))
}

impl Cluster {
    fn init() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Debian's postgresql server package")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::Builder::new().prefix("reverify-pg-").tempdir().unwrap();
        let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
        assert!(chown.success());
        let data = dir.path().join("data");
        let o =
            as_postgres(&bin, "initdb", &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        assert!(o.status.success(), "initdb: {}", String::from_utf8_lossy(&o.stderr));
        let c = Self { bin, dir, port: free_port() };
        c.start();
        c
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn start(&self) {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let log = self.dir.path().join("server.log").display().to_string();
        let o =
            as_postgres(&self.bin, "pg_ctl", &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "-t", "60", "start"]);
        assert!(
            o.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// A crash: no checkpoint, connections cut.
    fn stop_immediate(&self) {
        let o = as_postgres(&self.bin, "pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        assert!(o.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&o.stderr));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

async fn count(rig: &Rig, sql: &'static str, campaign_id: i64) -> i64 {
    count_of(rig, sqlx::query(sql).bind(campaign_id).bind(to_millis(chrono::Utc::now()))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_mid_run() {
    let cluster = Cluster::init();
    let faults = Faults { latency: Latency::Fixed(Duration::from_millis(3)), ..Faults::default() };
    let mut rig = Rig::new(TestDb::postgres_at(&cluster.url()).await, 400, 61, faults).await;
    let smtp = SmtpServer::start();
    rig.smtp_url = Some(smtp.url());
    let name = "pgstop";
    let c = rig.apply(&campaign(name, 100, 8)).await;

    let log = rig.path("run-1.log");
    let mut child = rig
        .command(&["run", name, "--progress", "none"])
        .env("REVERIFY_LEASE_SECONDS", "2")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until("the first 30 messages", Duration::from_secs(60), || smtp.messages().len() >= 30).await;
    let at_stop = smtp.messages().len();
    cluster.stop_immediate();
    let stopped = std::time::Instant::now();
    // the worker must notice and end, not hang: its pool gives up after 30 s
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker hung with its database gone: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exit_after = stopped.elapsed();
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!err.contains("panicked"), "{err}");
    assert!(!status.success(), "a run whose database died must not report success: {err}");
    let first_line =
        err.lines().rev().find(|l| l.contains("error")).unwrap_or("").chars().take(200).collect::<String>();
    let sent_while_down = smtp.messages().len() - at_stop;

    cluster.start();
    // resume until a run exits 0 with nothing left, waiting out the dead worker's leases
    let mut runs = 1;
    loop {
        runs += 1;
        assert!(runs < 20, "did not finish");
        let o = rig.run(&["run", name, "--progress", "none"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", crate::common::text(&o));
        let left = count(
            &rig,
            "SELECT COUNT(*) AS n FROM campaign_targets WHERE campaign_id = $1 AND (status = 'claimed' \
             OR (status IN ('pending', 'deferred') AND (not_before IS NULL OR not_before <= $2)))",
            c.campaign_id,
        )
        .await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let targets = rig.targets(c.campaign_id).await;
    let d = check_delivery(name, &targets, &smtp.messages(), false);
    rig.assert_status_equals_rows(name, c.campaign_id).await;
    let stats = rig.sandbox.stats().await;
    assert_eq!(stats.violations, 0, "{stats:?}");
    // the ledger agrees with the targets: every notified user has a delivered row
    let undelivered = count(
        &rig,
        "SELECT COUNT(*) AS n FROM campaign_targets t WHERE t.campaign_id = $1 AND t.status = 'notified' AND $2 > 0 \
         AND NOT EXISTS (SELECT 1 FROM verification_sessions s WHERE s.campaign_id = t.campaign_id \
           AND s.user_id = t.user_id AND s.status = 'delivered')",
        c.campaign_id,
    )
    .await;
    assert_eq!(undelivered, 0, "notified targets without a delivered ledger row");
    // and Postgres itself reports no damage
    let o = as_postgres(
        &cluster.bin,
        "pg_amcheck",
        &["-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "postgres", "--install-missing", "postgres"],
    );
    assert!(
        o.status.success(),
        "pg_amcheck: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    report(
        format!(
            "pgstop: stopped_after_messages={at_stop} sent_while_down={sent_while_down} exit_on_stop={:?} exit_after={:.1}s runs={runs} \
             notified={} delivery_unknown={} duplicates={} violations={} amcheck=clean error={first_line:?}",
            status.code(),
            exit_after.as_secs_f64(),
            d.notified,
            d.delivery_unknown,
            d.duplicates,
            stats.violations
        ),
        Counts { faults: 1, violations: stats.violations, ..Counts::default() },
    );
}
