//! The dashboard (issue 18) in headless Chromium, served by the real binary
//! (`reverify serve` with `ui_listen`) over a Postgres database seeded by real
//! campaign runs against the sandbox.
//!
//! Each page is loaded at a phone's width and a desktop's, its text checked against
//! `campaign status --json` of the same binary, and screenshots written to
//! `target/screenshots/dashboard-*.png`. Pausing from the page shows in
//! `campaign show`; a viewer cannot pause; a POST without the CSRF token is refused;
//! and no page holds a session URL, a link token or a refresh token.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reverify::store::testing::TestDb;
use serde_json::Value;

use crate::browser::{Browser, require_browser};
use crate::common::{Env, campaign_toml};

/// A form body, URL-encoded.
fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

const PASSWORD_ALICE: &str = "alice's long passphrase";
const PASSWORD_BOB: &str = "bob's long passphrase";

/// `reverify serve` with the dashboard alone; killed when dropped.
struct Serve {
    child: Child,
    base: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reverify(env: &[(&str, String)], args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reverify"));
    c.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).current_dir(std::env::temp_dir());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn cli(env: &[(&str, String)], args: &[&str]) -> String {
    let o = reverify(env, args).output().unwrap();
    assert!(o.status.success(), "reverify {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn serve(env: &[(&str, String)]) -> Serve {
    let mut child = reverify(env, &["serve"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line
        .split("dashboard on ")
        .nth(1)
        .unwrap_or_else(|| panic!("no dashboard address in {line:?}"))
        .trim()
        .trim_end_matches('/')
        .to_owned();
    Serve { child, base }
}

/// The count in the "targets by status" table for `status`.
fn status_cell(source: &str, status: &str) -> i64 {
    let needle = format!("<span class=\"badge {status}\">{status}</span></td><td class=\"n\">");
    let at = source.find(&needle).unwrap_or_else(|| panic!("no {status} row in the page")) + needle.len();
    source[at..].split('<').next().unwrap().replace(',', "").parse().unwrap()
}

fn hidden_csrf(source: &str) -> String {
    let at = source.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    source[at..].split('"').next().unwrap().to_owned()
}

async fn log_in(b: &Browser, base: &str, user: &str, password: &str) {
    b.go(&format!("{base}/login")).await;
    b.wait_for_text("Log in").await;
    let field = b.find("css selector", "#user").await;
    b.type_into(&field, user).await;
    let field = b.find("css selector", "#password").await;
    b.type_into(&field, password).await;
    let button = b.find("css selector", "form[action='/login'] button[type=submit]").await;
    b.click(&button).await;
    b.wait_for_text("Log out").await;
    // the name is in the bar (hidden on a phone's width)
    assert!(b.source().await.contains(&format!("<span>{user} (")), "logged in as {user}");
}

async fn log_out(b: &Browser) {
    let button = b.find("css selector", "form[action='/logout'] button").await;
    b.click(&button).await;
    b.wait_for_text("User name").await;
}

async fn the_dashboard_in_chromium(db: TestDb) {
    require_browser();
    // seed: a direct campaign and a click-mode one, run for real; a third with a run
    // in progress
    let mut env = Env::new(db, 60).await;
    env.settings.public_url = Some("http://127.0.0.1:9/".parse().unwrap());
    let direct = env.apply(&campaign_toml("kyc-refresh", "schedule = \"0 9 * * 1-5\"")).await;
    let click = env
        .apply(
            "name = \"click-links\"\n[delivery]\nfrom = \"Compliance <c@example.com>\"\nlink = \"click\"\n\
             [throttle]\nrequests_per_second = 5000\nconcurrency = 16\n",
        )
        .await;
    env.run(&direct).await;
    env.run(&click).await;
    // one of the direct campaign's messages bounced (a DSN, by its VERP token)
    let sink = reverify::engine::bounces::StoreBounceSink::new(env.store().clone(), env.settings.verp_key());
    let session: i64 = sqlx::query_scalar(
        "SELECT session_id FROM verification_sessions WHERE campaign_id = $1 AND status = 'delivered' LIMIT 1",
    )
    .bind(direct.campaign_id)
    .fetch_one(env.db.pool())
    .await
    .unwrap();
    let token = env.settings.verp_key().unwrap().token(reverify::domain::bounce::MessageRef::Session(session));
    let report = reverify::domain::bounce::BounceReport {
        source: reverify::domain::bounce::BounceSource::Mailbox,
        dedupe_id: "dsn-1".into(),
        keys: vec![reverify::domain::bounce::BounceKey::Token(token)],
        kind: reverify::domain::bounce::BounceKind::Hard,
        status_code: Some("5.1.1".into()),
        diagnostic: Some("user unknown".into()),
        occurred_at: None,
    };
    use reverify::bounces::BounceSink as _;
    assert_eq!(sink.record(report).await.unwrap(), reverify::bounces::Recorded::Applied);
    let live = env.apply(&campaign_toml("live-one", "")).await;
    env.store()
        .run_start(&reverify::store::runs::RunStartParams {
            campaign_id: live.campaign_id,
            worker: "worker-x",
            actor: "test",
            now: chrono::Utc::now(),
            tick: None,
        })
        .await
        .unwrap();

    // what must never appear in a page
    let mut secrets: Vec<String> = Vec::new();
    for m in env.messages() {
        for w in m.split(|c: char| c.is_whitespace() || c == '"' || c == '<' || c == '>') {
            if w.contains("/session/") {
                secrets.push(w.to_owned());
            }
            if let Some(token) = w.split("/v/").nth(1).filter(|t| t.len() > 20) {
                secrets.push(token.to_owned());
            }
        }
    }
    assert!(secrets.iter().any(|s| s.contains("/session/")), "the direct campaign mailed session URLs");
    assert!(secrets.iter().any(|s| !s.contains("/session/")), "the click campaign mailed link tokens");
    secrets.extend(env.sandbox.users().into_iter().filter_map(|u| u.refresh_token));

    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("ui-users");
    std::fs::write(
        &users_file,
        format!(
            "# the dashboard's people\nalice:operator:{}\nbob:viewer:{}\n",
            reverify::ui::auth::hash_password(PASSWORD_ALICE).unwrap(),
            reverify::ui::auth::hash_password(PASSWORD_BOB).unwrap()
        ),
    )
    .unwrap();
    let vars = [
        ("REVERIFY_DATABASE_URL", env.db.url.clone()),
        ("REVERIFY_UI_LISTEN", "127.0.0.1:0".to_owned()),
        ("REVERIFY_UI_USERS_FILE", users_file.display().to_string()),
    ];
    let server = serve(&vars);
    let base = server.base.clone();
    let status: Value = serde_json::from_str(&cli(&vars, &["campaign", "status", "kyc-refresh", "--json"])).unwrap();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    // refused without a login
    let r = http.get(format!("{base}/campaigns/kyc-refresh")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
    let r = http
        .post(format!("{base}/campaigns/kyc-refresh/pause"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", "x")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let b = Browser::start().await;
    let mut pages: Vec<String> = Vec::new();
    b.viewport(375, 812, true).await;
    b.go(&format!("{base}/")).await;
    b.wait_for_text("Log in").await;
    assert!(b.current_url().await.ends_with("/login"), "sent to the login page");
    b.screenshots_as("dashboard", "login").await;

    // a viewer: every page, no pause button, emails masked
    log_in(&b, &base, "bob", PASSWORD_BOB).await;
    let text = b.wait_for_text("Campaigns").await;
    for name in ["kyc-refresh", "click-links", "live-one"] {
        assert!(text.contains(name), "{name} listed: {text}");
    }
    let source = b.source().await;
    assert!(source.contains("http-equiv=\"refresh\""), "a running campaign refreshes the list");
    assert!(
        source.contains("data-approval=\"not-required\""),
        "the approval column says no approval is needed (require_approval is off)"
    );
    b.screenshots_as("dashboard", "campaigns").await;
    pages.push(source);

    b.go(&format!("{base}/campaigns/kyc-refresh")).await;
    let text = b.wait_for_text("Funnel").await;
    for label in ["Targets by status and reason", "Sends and conversions over time", "Recent runs", "Audit trail"] {
        assert!(text.contains(label), "{label}: {text}");
    }
    // the funnel's bounced stage, its share of notified the bounce rate
    let notified = status["funnel"]["notified"].as_i64().unwrap();
    assert_eq!(status["bounced"], 1, "{status}");
    let rate = format!("{:.1}%", 100.0 / notified as f64);
    assert!(text.contains("bounced") && text.contains(&rate), "the bounced stage at {rate}: {text}");
    assert!(text.contains("Report (CSV)") && !text.contains("Pause"), "a viewer has no pause button: {text}");
    // what happens next: the tick and the follow-up of the users held back
    assert!(text.contains("next tick") && text.contains("next follow-up"), "{text}");
    let source = b.source().await;
    for (status_name, key) in [("notified", "notified"), ("deferred", "deferred"), ("skipped", "skipped")] {
        let want = status[key].as_i64().unwrap();
        if want > 0 || status_name == "notified" {
            assert_eq!(status_cell(&source, status_name), want, "{status_name} as campaign status counts it");
        }
    }
    assert!(status["notified"].as_i64().unwrap() > 0, "{status}");
    let f = &status["funnel"];
    for (label, key) in [("targeted", "targeted"), ("notified", "notified"), ("started", "started")] {
        let n = f[key].as_i64().unwrap();
        assert!(source.contains(&format!(">{label}</text>")), "the funnel chart labels {label}");
        assert!(source.contains(&format!("<tr><td>{label}</td><td class=\"n\">{n}</td>")), "{label} = {n}");
    }
    assert!(source.contains(">Sent</text>") && source.contains(">Converted</text>"), "the series chart's legend");
    assert!(!source.contains("http-equiv=\"refresh\""), "a finished campaign's page does not refresh");
    b.screenshots_as("dashboard", "campaign").await;
    let bob_csrf = hidden_csrf(&source);
    pages.push(source);

    // the viewer cannot pause, even by hand
    let bob_cookie = b.cookie("reverify_session").await.expect("a session cookie");
    let r = http
        .post(format!("{base}/campaigns/kyc-refresh/pause"))
        .header("cookie", format!("reverify_session={bob_cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", bob_csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("Only an operator"));

    // a user, searched by id: targets across campaigns, the email masked
    let user = env.sandbox.users().into_iter().find(|u| u.refresh_token.is_some()).unwrap();
    let search = b.find("css selector", "#q").await;
    b.type_into(&search, user.user_id.as_str()).await;
    let find = b.find("css selector", "form.search button").await;
    b.click(&find).await;
    let text = b.wait_for_text("Timeline").await;
    assert!(text.contains("kyc-refresh") && text.contains("click-links"), "{text}");
    let source = b.source().await;
    let email = user.email.as_str();
    assert!(!source.contains(email), "a viewer sees no email");
    assert!(source.contains(&reverify::ui::auth::mask_email(email)), "but a masked one");
    assert!(!source.contains(&format!("{} {}", user.first_name, user.last_name)), "and no name");
    b.screenshots_as("dashboard", "user").await;
    pages.push(source);
    b.go(&format!("{base}/campaigns/live-one")).await;
    b.wait_for_text("Funnel").await;
    let source = b.source().await;
    assert!(source.contains("http-equiv=\"refresh\" content=\"5\""), "a running campaign's page refreshes");
    pages.push(source);
    log_out(&b).await;

    // an operator pauses from the page; the CLI sees it
    log_in(&b, &base, "alice", PASSWORD_ALICE).await;
    b.go(&format!("{base}/users?id={}", user.user_id.as_str())).await;
    b.wait_for_text("Timeline").await;
    assert!(b.source().await.contains(email), "an operator sees the email");
    b.go(&format!("{base}/campaigns/kyc-refresh")).await;
    b.wait_for_text("Funnel").await;
    let alice_cookie = b.cookie("reverify_session").await.expect("a session cookie");
    // a POST without the CSRF token, or with another's, is refused
    for csrf in [None, Some(bob_csrf.as_str())] {
        let req = http
            .post(format!("{base}/campaigns/kyc-refresh/pause"))
            .header("cookie", format!("reverify_session={alice_cookie}"));
        let req = match csrf {
            Some(t) => req.header("content-type", "application/x-www-form-urlencoded").body(form(&[("csrf", t)])),
            None => req.header("content-type", "application/x-www-form-urlencoded").body(form(&[("x", "y")])),
        };
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "csrf {csrf:?}");
        assert!(r.text().await.unwrap().contains("CSRF"));
    }
    assert!(cli(&vars, &["campaign", "show", "kyc-refresh"]).contains("active"), "still active");
    let pause = b.find("css selector", "form[action='/campaigns/kyc-refresh/pause'] button").await;
    b.click(&pause).await;
    let text = b.wait_for_text("Paused.").await;
    assert!(text.contains("Resume"), "{text}");
    let shown = cli(&vars, &["campaign", "show", "kyc-refresh", "--json"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["status"], "paused");
    let audit = cli(&vars, &["campaign", "audit", "kyc-refresh"]);
    assert!(audit.contains("ui:alice") && audit.contains("campaign.paused"), "{audit}");
    let source = b.source().await;
    assert!(source.contains("ui:alice"), "the audit trail on the page names the actor");
    b.screenshots_as("dashboard", "paused").await;
    pages.push(source);

    // the CSV report
    let r = http
        .get(format!("{base}/campaigns/kyc-refresh/report.csv"))
        .header("cookie", format!("reverify_session={alice_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csv = r.text().await.unwrap();
    assert_eq!(csv.lines().count() as i64, status["targeted"].as_i64().unwrap() + 1, "a row per target");
    pages.push(csv);

    for page in &pages {
        for s in &secrets {
            assert!(!page.contains(s.as_str()), "a page holds a secret ({} chars)", s.len());
        }
    }

    // failed logins are limited: after 5, even the right password waits
    let login = http.get(format!("{base}/login")).send().await.unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let token = hidden_csrf(&login.text().await.unwrap());
    let attempt = |password: &'static str| {
        http.post(format!("{base}/login"))
            .header("cookie", cookie.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("user", "bob"), ("password", password), ("csrf", token.as_str())]))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(attempt("wrong").await.unwrap().status(), 401);
    }
    assert_eq!(attempt(PASSWORD_BOB).await.unwrap().status(), 429);
    // and the login form itself needs its token
    let r = http
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("user", "alice"), ("password", PASSWORD_ALICE), ("csrf", "")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    drop(b);
    drop(server);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
reverify::postgres_only!(the_dashboard_in_chromium, the_dashboard_in_chromium);

/// The proxy's header lets a person in only when `ui_trusted_user_header` is set,
/// and only from a peer in `ui_trusted_proxies` (issue 24: from anyone else it is
/// ignored); twice in one request, it is refused. Their role is the users file's,
/// else viewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_header_is_read_only_when_set() {
    use axum::body::Body;
    use axum::http::Request;
    use reverify::ui::{UiConfig, ui_router};
    use tower::ServiceExt as _;

    let db = TestDb::sqlite().await;
    let users = reverify::ui::auth::UsersFile::parse(
        &format!("alice:operator:{}\n", reverify::ui::auth::hash_password("pw").unwrap()),
        "users",
    )
    .unwrap();
    let proxy: std::net::SocketAddr = "10.0.0.7:40000".parse().unwrap();
    let get_from = |router: axum::Router, who: Vec<&str>, peer: std::net::SocketAddr| {
        let mut req = Request::get("/");
        for who in who {
            req = req.header("x-forwarded-user", who);
        }
        let mut req = req.body(Body::empty()).unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        async move {
            let r = router.oneshot(req).await.unwrap();
            let status = r.status();
            let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let trusting = ui_router(
        db.store.clone(),
        UiConfig {
            users: users.clone(),
            trusted_header: Some("x-forwarded-user".parse().unwrap()),
            trusted_proxies: reverify::domain::proxies::TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]),
            ..UiConfig::default()
        },
    );
    let get = |router: axum::Router, who: Option<&str>| get_from(router, who.into_iter().collect(), proxy);
    let (status, page) = get(trusting.clone(), Some("alice")).await;
    assert_eq!(status, 200);
    assert!(page.contains("alice (operator)"), "{page}");
    let (status, page) = get(trusting.clone(), Some("dave")).await;
    assert_eq!(status, 200);
    assert!(page.contains("dave (viewer)"), "{page}");
    assert_eq!(get(trusting.clone(), None).await.0, 303, "no header, no cookie: to the login page");
    // from a peer that is not a trusted proxy the header is ignored
    let anyone: std::net::SocketAddr = "192.0.2.9:5555".parse().unwrap();
    assert_eq!(get_from(trusting.clone(), vec!["alice"], anyone).await.0, 303, "a client naming itself");
    // twice in one request: refused, even from the proxy
    assert_eq!(get_from(trusting.clone(), vec!["dave", "alice"], proxy).await.0, 400);
    assert_eq!(get_from(trusting, vec!["alice", "alice"], anyone).await.0, 400);

    let not_trusting = ui_router(db.store.clone(), UiConfig { users, ..UiConfig::default() });
    assert_eq!(get(not_trusting, Some("alice")).await.0, 303, "the header means nothing unless the setting is set");
}

/// Approving from the page: only an approver, never the person who applied the
/// version (`alice` on the command line is `ui:alice` on the page), and the
/// approval shows in the column and satisfies the engine's check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_approves_from_the_page_with_the_clis_rules() {
    use axum::body::Body;
    use axum::http::Request;
    use reverify::ui::{UiConfig, ui_router};
    use tower::ServiceExt as _;

    let db = TestDb::sqlite().await;
    let text = "name = \"four-eyes\"\n";
    let spec = reverify::domain::CampaignSpec::from_toml(text, "four-eyes.toml").unwrap();
    let (_, c) = db.store.campaign_apply(&spec, text, "alice", chrono::Utc::now()).await.unwrap();
    let hash = reverify::ui::auth::hash_password("pw").unwrap();
    let users = reverify::ui::auth::UsersFile::parse(
        &format!("alice:approver:{hash}\ncarol:approver:{hash}\nolga:operator:{hash}\n"),
        "users",
    )
    .unwrap();
    let router = ui_router(
        db.store.clone(),
        UiConfig {
            users,
            trusted_header: Some("x-forwarded-user".parse().unwrap()),
            trusted_proxies: reverify::domain::proxies::TrustedProxies::new(vec!["127.0.0.1/32".parse().unwrap()]),
            require_approval: true,
            templates: Some(std::sync::Arc::new(reverify::notify::Templates::builtin().unwrap())),
            ..UiConfig::default()
        },
    );
    let call = |mut req: Request<Body>| {
        let router = router.clone();
        req.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))));
        async move {
            let r = router.oneshot(req).await.unwrap();
            let status = r.status();
            let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let page = |who: &'static str| {
        call(Request::get("/campaigns/four-eyes").header("x-forwarded-user", who).body(Body::empty()).unwrap())
    };
    let approve = |who: &'static str, csrf: String| {
        call(
            Request::post("/campaigns/four-eyes/approve")
                .header("x-forwarded-user", who)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(form(&[("csrf", &csrf), ("version", &c.version.to_string())])))
                .unwrap(),
        )
    };

    let (_, before) = page("carol").await;
    assert!(before.contains("data-approval=\"missing\""), "awaiting approval: {before}");
    assert!(before.contains("Approve version 1"), "an approver sees the button");
    let (_, as_operator) = page("olga").await;
    assert!(!as_operator.contains("Approve version"), "an operator does not");

    let (status, _) = approve("olga", hidden_csrf(&as_operator)).await;
    assert_eq!(status, 403, "an operator cannot approve");
    let (_, as_alice) = page("alice").await;
    let (status, why) = approve("alice", hidden_csrf(&as_alice)).await;
    assert_eq!(status, 409, "the applier cannot approve her own version: {why}");
    assert!(why.contains("cannot approve it too"), "{why}");
    assert!(db.store.approval_current(&c).await.unwrap().is_none());
    let (status, _) = approve("carol", String::new()).await;
    assert_eq!(status, 403, "no CSRF token, no approval");

    let (status, _) = approve("carol", hidden_csrf(&before)).await;
    assert_eq!(status, 303, "approved, back to the page");
    let a = db.store.approval_current(&c).await.unwrap().expect("recorded");
    assert_eq!((a.approver.as_str(), a.version), ("ui:carol", 1));
    let (_, after) = page("carol").await;
    assert!(after.contains("approved by ui:carol"), "{after}");
    assert!(!after.contains("Approve version"), "approved: no button");

    // ui_approvals = false, or approvals that need signatures: the page approves nothing
    for config in [
        UiConfig { approvals: false, ..UiConfig::default() },
        UiConfig { approvals_signed: true, ..UiConfig::default() },
    ] {
        let router = ui_router(
            db.store.clone(),
            UiConfig {
                users: reverify::ui::auth::UsersFile::parse(&format!("carol:approver:{hash}\n"), "users").unwrap(),
                trusted_header: Some("x-forwarded-user".parse().unwrap()),
                trusted_proxies: reverify::domain::proxies::TrustedProxies::new(vec!["127.0.0.1/32".parse().unwrap()]),
                templates: Some(std::sync::Arc::new(reverify::notify::Templates::builtin().unwrap())),
                ..config
            },
        );
        let peer = axum::extract::ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000)));
        let mut req =
            Request::get("/campaigns/four-eyes").header("x-forwarded-user", "carol").body(Body::empty()).unwrap();
        req.extensions_mut().insert(peer);
        let r = router.clone().oneshot(req).await.unwrap();
        let page = String::from_utf8_lossy(&axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap()).into_owned();
        let mut req = Request::post("/campaigns/four-eyes/approve")
            .header("x-forwarded-user", "carol")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(form(&[("csrf", &hidden_csrf(&page)), ("version", "1")])))
            .unwrap();
        req.extensions_mut().insert(peer);
        let r = router.oneshot(req).await.unwrap();
        let status = r.status();
        let body = String::from_utf8_lossy(&axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap()).into_owned();
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("ui_approvals = false") || body.contains("need an SSH signature"), "{body}");
    }
}
