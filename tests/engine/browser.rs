//! Click-through links in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`, installed by scripts/install-test-deps.sh), driven over
//! WebDriver — chromedriver's HTTP JSON API — with reqwest.
//!
//! A click-mode campaign is sent through a real SMTP server; the link is taken from
//! the received message; Chromium opens it at a phone's width and a desktop's, the
//! person presses the button and lands on the sandbox's session page, completes it
//! as "Verified", and the sandbox's signed `kyc.status.changed` webhooks, sent to
//! the same public server as `reverify serve` runs (click routes and webhook
//! receiver), turn the target `converted`. Screenshots of every page, at 375 and
//! 1280 CSS pixels wide, are written to `target/screenshots/click-*.png`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::Utc;
use reverify::Secret;
use reverify::click::{ClickConfig, click_router, serve_public_on};
use reverify::domain::VerificationState;
use reverify::engine::adapters::BaanxApi;
use reverify::notify::testing::SmtpServer;
use reverify::sandbox::{SandboxConfig, UserSource, WebhookTarget};
use reverify::store::testing::TestDb;
use reverify::webhooks::webhook_router;
use serde_json::{Value, json};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::common::Env;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Headless, and quiet on a machine without internet: no background requests that
/// would only be refused.
const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
];
/// A slow, loaded CI machine: every wait is for a condition, bounded by this.
const PATIENCE: Duration = Duration::from_secs(90);
const WEBHOOK_KEY: &str = "whsec_browser_test";
/// The WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// (name, CSS width, CSS height, a phone?)
const VIEWPORTS: [(&str, u32, u32, bool); 2] = [("375", 375, 812, true), ("1280", 1280, 800, false)];

/// `target/screenshots`, beside the test binary (`target/debug/deps/engine-…`), so
/// that it follows `CARGO_TARGET_DIR`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .filter(|t| t.join("debug").is_dir() || t.join("release").is_dir())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}

/// Fails, never skips, without the browser.
pub(crate) fn require_browser() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: the browser test needs Debian's chromium and chromium-driver; \
             run scripts/install-test-deps.sh"
        );
    }
}

/// A chromedriver child and one browser session on it; both end when dropped.
pub(crate) struct Browser {
    driver: Child,
    port: u16,
    http: reqwest::Client,
    session: String,
    /// The browser's own process, to end it should the driver not.
    browser_pid: Option<u32>,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub(crate) async fn start() -> Browser {
        require_browser();
        let profile = tempfile::Builder::new().prefix("reverify-chromium-").tempdir().unwrap();
        let log = profile.path().join("chromedriver.log");
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}; run scripts/install-test-deps.sh"));
        // "ChromeDriver was started successfully on port N."; the rest of its output
        // is read on to the end so that it never writes to a closed pipe
        let stdout = driver.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            while lines.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|p| p.trim().trim_end_matches('.').parse().ok())
                {
                    let _ = tx.send(port);
                }
                line.clear();
            }
            let _ = lines.read_to_end(&mut Vec::new());
        });
        let port: u16 = match rx.recv_timeout(PATIENCE) {
            Ok(port) => port,
            Err(_) => {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!("{CHROMEDRIVER} did not say its port within {PATIENCE:?}:\n{}", tail(&log));
            }
        };
        let http = reqwest::Client::builder().timeout(PATIENCE + Duration::from_secs(60)).build().unwrap();
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().join("profile").display()));
        args.push("--window-size=1280,900".into());
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": { "pageLoad": PATIENCE.as_millis() as u64, "script": 30_000, "implicit": 0 },
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let url = format!("http://127.0.0.1:{port}/session");
        let answer = async {
            let r = http.post(&url).json(&caps).send().await.map_err(|e| e.to_string())?;
            r.json::<Value>().await.map_err(|e| e.to_string())
        }
        .await;
        let session = answer.as_ref().ok().and_then(|v| v["value"]["sessionId"].as_str().map(str::to_owned));
        let browser_pid = answer
            .as_ref()
            .ok()
            .and_then(|v| v["value"]["capabilities"]["goog:processID"].as_u64())
            .and_then(|p| u32::try_from(p).ok());
        let Some(session) = session else {
            let _ = driver.kill();
            let _ = driver.wait();
            panic!("Chromium did not start over WebDriver: {answer:?}\n{}", tail(&log));
        };
        Browser { driver, port, http, session, browser_pid, log, _profile: profile }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/session/{}{path}", self.port, self.session)
    }

    /// One WebDriver command: its `value`, or the driver's error.
    pub(crate) async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.map_err(|e| format!("WebDriver {method} {path}: {e}\n{}", tail(&self.log)))?;
        let status = res.status();
        let v: Value = res.json().await.map_err(|e| format!("WebDriver {method} {path}: not JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!("WebDriver {method} {path}: {status} {}", v["value"]["message"]));
        }
        Ok(v["value"].clone())
    }

    /// One WebDriver command; its `value`, or a panic with the driver's error.
    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body).await.unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub(crate) async fn go(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    pub(crate) async fn current_url(&self) -> String {
        self.get("/url").await.as_str().unwrap_or_default().to_owned()
    }

    pub(crate) async fn title(&self) -> String {
        self.get("/title").await.as_str().unwrap_or_default().to_owned()
    }

    /// The rendered text of the page, as a person reads it, once it is loaded. An
    /// error while a navigation replaces the page (a stale element) is "not yet".
    pub(crate) async fn loaded_text(&self) -> Result<String, String> {
        let ready = self
            .try_call(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({ "script": "return document.readyState", "args": [] })),
            )
            .await?;
        if ready.as_str() != Some("complete") {
            return Err(format!("the page is {ready}"));
        }
        let body = self
            .try_call(reqwest::Method::POST, "/element", Some(json!({ "using": "css selector", "value": "body" })))
            .await?;
        let body = body[ELEMENT].as_str().ok_or("no body")?.to_owned();
        let text = self.try_call(reqwest::Method::GET, &format!("/element/{body}/text"), None).await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    pub(crate) async fn find(&self, using: &str, value: &str) -> String {
        let v = self.post("/element", json!({ "using": using, "value": value })).await;
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {value}: {v}")).to_owned()
    }

    pub(crate) async fn click(&self, element: &str) {
        self.post(&format!("/element/{element}/click"), json!({})).await;
    }

    /// Types `text` into a field.
    pub(crate) async fn type_into(&self, element: &str, text: &str) {
        self.post(&format!("/element/{element}/value"), json!({ "text": text })).await;
    }

    /// The page's markup as the browser holds it.
    pub(crate) async fn source(&self) -> String {
        self.get("/source").await.as_str().unwrap_or_default().to_owned()
    }

    /// The value of the cookie `name`, if the browser holds one.
    pub(crate) async fn cookie(&self, name: &str) -> Option<String> {
        let v = self.try_call(reqwest::Method::GET, &format!("/cookie/{name}"), None).await.ok()?;
        v["value"].as_str().map(str::to_owned)
    }

    /// Waits until the loaded page's text holds `needle`.
    pub(crate) async fn wait_for_text(&self, needle: &str) -> String {
        let started = Instant::now();
        loop {
            let text = self.loaded_text().await;
            if let Ok(text) = &text
                && text.contains(needle)
            {
                return text.clone();
            }
            if started.elapsed() >= PATIENCE {
                panic!(
                    "the page at {} never showed {needle:?}; it shows: {text:?}\nthe browser's console: {}",
                    self.current_url().await,
                    self.post("/se/log", json!({ "type": "browser" })).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Emulates a viewport of `width`×`height` CSS pixels (a phone: a mobile
    /// browser, the viewport meta tag honoured), at a device pixel ratio of 1.
    pub(crate) async fn viewport(&self, width: u32, height: u32, phone: bool) {
        self.post(
            "/goog/cdp/execute",
            json!({ "cmd": "Emulation.setDeviceMetricsOverride", "params": {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": phone,
            }}),
        )
        .await;
        // applied when the command returns; each screenshot's width is checked
    }

    /// Emulates the reader's colour scheme (`prefers-color-scheme`), as a mail
    /// reader in dark mode reports it.
    pub(crate) async fn color_scheme(&self, dark: bool) {
        self.post(
            "/goog/cdp/execute",
            json!({ "cmd": "Emulation.setEmulatedMedia", "params": {
                "features": [{ "name": "prefers-color-scheme", "value": if dark { "dark" } else { "light" } }],
            }}),
        )
        .await;
    }

    /// Screenshots at each width to `target/screenshots/click-{name}-{width}.png`;
    /// leaves the phone's viewport on, as a person on a phone goes on.
    pub(crate) async fn screenshots(&self, name: &str) -> Vec<PathBuf> {
        self.screenshots_as("click", name).await
    }

    /// [`Browser::screenshots`] to `target/screenshots/{prefix}-{name}-{width}.png`.
    pub(crate) async fn screenshots_as(&self, prefix: &str, name: &str) -> Vec<PathBuf> {
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let mut saved = Vec::new();
        for (label, width, height, phone) in VIEWPORTS {
            self.viewport(width, height, phone).await;
            let b64 = self.get("/screenshot").await;
            let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or_default()).unwrap();
            assert_eq!(png.get(..8), Some(&b"\x89PNG\r\n\x1a\n"[..]), "a PNG");
            let png_width = u32::from_be_bytes(png[16..20].try_into().unwrap());
            assert_eq!(png_width, width, "{name}: the screenshot is {png_width} px wide");
            let path = dir.join(format!("{prefix}-{name}-{label}.png"));
            std::fs::write(&path, &png).unwrap();
            saved.push(path);
        }
        let (_, width, height, phone) = VIEWPORTS[0];
        self.viewport(width, height, phone).await;
        saved
    }

    /// Ends the browser and the driver: the session's `DELETE` closes the browser
    /// (chromedriver's `/shutdown` alone leaves it running), then the driver goes.
    /// Raw requests, so that this works from `drop` too; the browser's process is
    /// ended by its id should it still be there.
    pub(crate) fn shutdown(&mut self) {
        let request = |method: &str, path: &str| {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let _ = write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
                let _ = s.read_to_end(&mut Vec::new());
            }
        };
        if self.driver.try_wait().ok().flatten().is_none() {
            request("DELETE", &format!("/session/{}", self.session));
            request("GET", "/shutdown");
        }
        let started = Instant::now();
        while self.driver.try_wait().ok().flatten().is_none() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        if let Some(pid) = self.browser_pid.take()
            && Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains(&*self._profile.path().to_string_lossy()))
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("chromedriver log ({}):\n{}", log.display(), lines[lines.len().saturating_sub(30)..].join("\n"))
}

async fn target_status(env: &Env) -> String {
    sqlx::query("SELECT status FROM campaign_targets").fetch_one(env.db.pool()).await.unwrap().get("status")
}

async fn a_person_clicks_through_in_chromium_and_is_converted(db: TestDb) {
    require_browser();
    // the public server's address first: the sandbox sends its webhooks there
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://{}", listener.local_addr().unwrap());
    let mut users = reverify::sandbox::users::generate_unverified(1, 5, Utc::now());
    users[0].locale = "en-GB".into();
    users[0].timezone = "Europe/London".into();
    let sandbox = SandboxConfig {
        users: UserSource::Records(users),
        webhook: Some(WebhookTarget {
            url: format!("{public}/webhooks/baanx").parse().unwrap(),
            key: Secret::new(WEBHOOK_KEY),
        }),
        ..SandboxConfig::default()
    };
    let mut env = Env::with_sandbox(db, sandbox).await;
    let smtp = SmtpServer::start();
    env.settings.outbox_dir = None;
    env.settings.smtp_url = Some(smtp.url());
    env.settings.public_url = Some(public.parse().unwrap());
    // what `reverify serve` serves: the click routes and the webhook receiver
    let worker = env.worker();
    let router = click_router(env.store().clone(), Arc::new(BaanxApi(worker.client.clone())), ClickConfig::default())
        .merge(webhook_router(env.store().clone(), Secret::new(WEBHOOK_KEY)));
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    serve_public_on(listener, router, stop).unwrap();

    // the campaign: one message, no session yet
    let campaign = env
        .apply(
            "name = \"browser\"\n[delivery]\nfrom = \"Compliance <compliance@example.com>\"\nlink = \"click\"\n\
             [throttle]\nrequests_per_second = 5000\nconcurrency = 4\n",
        )
        .await;
    let report = env.run(&campaign).await;
    assert_eq!(report.counts.notified, 1, "{report:?}");
    assert_eq!(env.sandbox.stats().await.sessions_issued, 0, "no session at send time");
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "one message");
    let mail = &mails[0];
    assert_eq!(
        mail.header("To").unwrap().rsplit('<').next().unwrap().trim_end_matches('>'),
        env.sandbox.users()[0].email.as_str()
    );
    let text = mail.text.as_deref().expect("a text part");
    let prefix = format!("{public}/v/");
    let link = text
        .split_whitespace()
        .find(|w| w.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}… link in the message:\n{}", mail.raw))
        .to_owned();
    assert!(mail.html_unescaped().is_some_and(|h| h.contains(&format!("href=\"{link}\""))), "the HTML part links it");
    assert!(!mail.raw.contains("/session/"), "no Baanx session URL in the message");

    // the link in Chromium, at a phone's width and a desktop's
    let mut browser = Browser::start().await;
    browser.viewport(375, 812, true).await;
    browser.go(&link).await;
    let page = browser.wait_for_text("Continue to verification").await;
    assert_eq!(browser.title().await, "Verify your identity");
    assert!(page.contains("Verify your identity") && page.contains("have your ID ready"), "{page}");
    // the expiry as the email writes it, in the user's zone
    assert!(page.contains("This link works until") && (page.contains(" GMT") || page.contains(" BST")), "{page}");
    let button = browser.find("css selector", "form[method=post] button[type=submit]").await;
    let label = browser.get(&format!("/element/{button}/text")).await;
    assert_eq!(label.as_str(), Some("Continue to verification"));
    browser.screenshots("landing").await;
    assert_eq!(env.sandbox.stats().await.sessions_issued, 0, "opening the page makes no session");

    // the button: one session, and the browser is on the sandbox's session page
    let button = browser.find("css selector", "form[method=post] button[type=submit]").await;
    browser.click(&button).await;
    let page = browser.wait_for_text("Identity verification (sandbox)").await;
    let session_url = browser.current_url().await;
    assert_eq!(env.sandbox.session_urls(), vec![session_url.clone()], "the browser is on the issued session");
    assert!(session_url.starts_with(&format!("{}session/", env.sandbox.base_url())), "{session_url}");
    assert!(page.contains("Choose how this one ends"), "{page}");
    assert_eq!(browser.title().await, "Baanx sandbox: identity verification");
    assert_eq!(env.sandbox.stats().await.sessions_issued, 1);
    let status: String =
        sqlx::query("SELECT status FROM verification_sessions").fetch_one(env.db.pool()).await.unwrap().get("status");
    assert_eq!(status, "delivered");
    browser.screenshots("session").await;

    // the person completes it as "Verified"
    let verified = browser.find("xpath", "//button[normalize-space()='Verified']").await;
    browser.click(&verified).await;
    let page = browser.wait_for_text("your documents were submitted").await;
    assert!(page.contains("Thank you"), "{page}");
    browser.screenshots("completed").await;

    // the sandbox's signed webhooks (pending, then completed) reach the public
    // server, which records the user verified and the target converted
    let started = Instant::now();
    while target_status(&env).await != "converted" {
        assert!(
            started.elapsed() < PATIENCE,
            "the target is {} after {PATIENCE:?}; sandbox: {:?}",
            target_status(&env).await,
            env.sandbox.stats().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let user = &env.sandbox.users()[0].user_id;
    let stored = env.store().user_get(user).await.unwrap().unwrap();
    assert_eq!(stored.verification_state, VerificationState::Verified);
    let stats = env.sandbox.stats().await;
    assert!(stats.webhooks_delivered >= 2 && stats.webhooks_failed == 0, "{stats:?}");
    assert_eq!(stats.violations, 0, "{stats:?}");

    // the link again, later: a verified user's links are revoked
    browser.go(&link).await;
    let page = browser.wait_for_text("This link is no longer valid").await;
    assert!(!page.contains("Continue to verification"), "{page}");
    browser.screenshots("revoked").await;
    assert_eq!(env.sandbox.stats().await.sessions_issued, 1, "one session in all");
    browser.shutdown();
}
reverify::postgres_only!(
    a_person_clicks_through_in_chromium_and_is_converted,
    a_person_clicks_through_in_chromium_and_is_converted
);

/// Every shipped template, in every shipped locale, as a mail reader shows its
/// HTML: headless Chromium at a phone's width and a desktop's, in light and dark
/// mode. The link and the expiry must be in the rendered text, the page must not
/// scroll sideways on the phone, dark mode must turn the background dark with
/// light text, and a screenshot of each is written to
/// `target/screenshots/mail-{template}-{locale}-{375,1280}-{light,dark}.png`.
#[tokio::test]
async fn every_shipped_template_reads_well_in_chromium() {
    use reverify::domain::{CampaignName, EmailAddress, Region, SessionUrl, UserId};
    use reverify::notify::{Message, Recipient, SHIPPED_LOCALES, Templates};

    let templates = Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/templates")).unwrap();
    let pages = tempfile::tempdir().unwrap();
    let mut browser = Browser::start().await;
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let link = "https://verify.example.com/v/Q2xpY2stdGhyb3VnaC1saW5rLWZvci1hLXRlc3Q";
    let expires_at = chrono::DateTime::parse_from_rfc3339("2026-12-11T15:00:00Z").unwrap().with_timezone(&Utc);
    let zone = "Europe/Madrid";
    for name in ["default", "reminder"] {
        for locale in SHIPPED_LOCALES {
            let msg = Message {
                recipient: Recipient {
                    user_id: UserId::parse("6f9619ff-8b86-4011-b42d-00c04fc964ff").unwrap(),
                    email: EmailAddress::parse("maria@example.com").unwrap(),
                    first_name: Some("María".into()),
                    last_name: Some("García".into()),
                    locale: Some(reverify::domain::Locale::parse(locale).unwrap()),
                    time_zone: Some(zone.into()),
                    region: Region::Intl,
                    verification_state: reverify::domain::VerificationState::Unverified,
                },
                bounce_token: None,
                session_url: SessionUrl::new(link.to_owned()),
                expires_at,
                campaign: CampaignName::parse("browser").unwrap(),
                step: u32::from(name == "reminder"),
                delivery: reverify::domain::spec::Delivery {
                    template: name.into(),
                    reply_to: Some("Support <support@example.com>".into()),
                    link: reverify::domain::spec::LinkMode::Click,
                    brand: Some(reverify::domain::spec::Brand {
                        name: Some("Example Bank".into()),
                        support_url: Some("https://example.com/help".into()),
                        support_email: Some("help@example.com".into()),
                        address: Some("1 Example Street, London EC1A 1AA".into()),
                        app_name: Some("Example Bank".into()),
                    }),
                    ..Default::default()
                },
            };
            let rendered = templates.render(&msg).unwrap();
            assert_eq!(rendered.locale, locale);
            let file = pages.path().join(format!("{name}-{locale}.html"));
            std::fs::write(&file, rendered.html.as_bytes()).unwrap();
            let expiry = reverify::domain::locale::format_datetime_in(expires_at, zone.parse().unwrap(), locale);
            for ((label, width, height, phone), dark) in VIEWPORTS.into_iter().flat_map(|v| [(v, false), (v, true)]) {
                browser.viewport(width, height, phone).await;
                browser.color_scheme(dark).await;
                browser.go(&format!("file://{}", file.display())).await;
                let text = browser.wait_for_text(link).await;
                assert!(text.contains(&expiry), "{name}/{locale} at {label}: no {expiry:?} in\n{text}");
                assert!(text.contains("María"), "{name}/{locale}: {text}");
                let overflow = browser
                    .post(
                        "/execute/sync",
                        json!({ "script": "return document.documentElement.scrollWidth", "args": [] }),
                    )
                    .await;
                assert!(
                    overflow.as_u64().unwrap_or(u64::MAX) <= u64::from(width),
                    "{name}/{locale} scrolls sideways at {width} px: {overflow}"
                );
                // the body's own colours: light on dark in dark mode, dark on light otherwise
                let colours = browser
                    .post(
                        "/execute/sync",
                        json!({ "script": "const s = getComputedStyle(document.body); \
                                           return [s.backgroundColor, s.color];", "args": [] }),
                    )
                    .await;
                let lum = |i: usize| -> u32 {
                    colours[i]
                        .as_str()
                        .unwrap_or_default()
                        .trim_start_matches("rgb(")
                        .trim_end_matches(')')
                        .split(',')
                        .take(3)
                        .map(|c| c.trim().parse::<u32>().unwrap_or(0))
                        .sum()
                };
                let (background, text) = (lum(0), lum(1));
                assert!(
                    if dark { background < 200 && text > 500 } else { background > 700 && text < 200 },
                    "{name}/{locale} dark={dark}: {colours}"
                );
                let label = format!("{label}-{}", if dark { "dark" } else { "light" });
                let b64 = browser.get("/screenshot").await;
                let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or_default()).unwrap();
                assert_eq!(png.get(..8), Some(&b"\x89PNG\r\n\x1a\n"[..]), "a PNG");
                assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), width);
                std::fs::write(dir.join(format!("mail-{name}-{locale}-{label}.png")), &png).unwrap();
            }
        }
    }
    browser.shutdown();
}
