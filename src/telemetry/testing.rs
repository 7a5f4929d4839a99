//! Test support: a real Prometheus Pushgateway (Debian's `prometheus-pushgateway`,
//! installed by scripts/install-test-deps.sh) on a free port, for the push tests.
//!
//! Not part of the product; hidden from the docs. The gateway is a child process
//! killed when the handle drops; start-up waits on its readiness endpoint (polled,
//! with a deadline), not for a fixed time.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Pushgateway.
pub struct Pushgateway {
    child: Child,
    /// `http://127.0.0.1:PORT`: the `metrics_push_url` to give reverify.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pushgateway {
    /// Starts one and waits until it is ready.
    ///
    /// # Panics
    /// When the binary is missing (with the command that installs it) or it does
    /// not become ready within 20 s: a test must not silently skip.
    pub async fn start() -> Self {
        let bin = ["/usr/bin/prometheus-pushgateway", "/usr/local/bin/pushgateway"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("prometheus-pushgateway is not installed: run scripts/install-test-deps.sh");
        let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port();
        let dir = tempfile::tempdir().expect("temp dir");
        let child = Command::new(bin)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--persistence.file={}", dir.path().join("pgw.data").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-pushgateway");
        let pgw = Self { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/-/ready", pgw.url)).send().await
                && r.status().is_success()
            {
                return pgw;
            }
            assert!(Instant::now() < deadline, "the Pushgateway did not become ready at {}", pgw.url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the gateway exposes now (its `/metrics`).
    pub async fn scrape(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("the Pushgateway answers")
            .text()
            .await
            .expect("a text body")
    }
}
