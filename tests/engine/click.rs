//! Click-through links (`delivery.link = "click"`): the message carries our own link,
//! the send step makes no session call, a GET or HEAD never makes a session, a click
//! makes at most one, and every limit holds with zero sandbox violations.

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::Utc;
use reverify::both_engines;
use reverify::click::{ClickConfig, click_router_with_clock, serve_public};
use reverify::domain::{Clock, ManualClock, SystemClock, VerificationState};
use reverify::engine::adapters::BaanxApi;
use reverify::sandbox::{SandboxConfig, UserSource};
use reverify::store::testing::TestDb;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::common::Env;

/// An environment whose click routes are served on loopback; `public_url` points
/// at them.
struct ClickEnv {
    env: Env,
    addr: SocketAddr,
    http: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
}

async fn click_env(db: TestDb, users: usize, clock: Arc<dyn Clock>) -> ClickEnv {
    let mut users = reverify::sandbox::users::generate_unverified(users, 3, Utc::now());
    // the pages in English (their translations have tests of their own)
    users.iter_mut().for_each(|u| u.locale = "en-GB".into());
    let mut env =
        Env::with_sandbox(db, SandboxConfig { users: UserSource::Records(users), ..SandboxConfig::default() }).await;
    let worker = env.worker();
    let router = click_router_with_clock(
        env.store().clone(),
        Arc::new(BaanxApi(worker.client.clone())),
        ClickConfig { per_link_per_minute: 1000, per_address_per_minute: 100_000, ..ClickConfig::default() },
        clock,
    );
    let stop = CancellationToken::new();
    let server = serve_public("127.0.0.1:0".parse().unwrap(), router, stop.clone()).await.unwrap();
    env.settings.public_url = Some(format!("http://{}", server.local_addr).parse().unwrap());
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    ClickEnv { env, addr: server.local_addr, http, _stop: stop.drop_guard() }
}

fn click_campaign(name: &str) -> String {
    format!(
        "name = \"{name}\"\n[delivery]\nfrom = \"Compliance <compliance@example.com>\"\nlink = \"click\"\n\
         [throttle]\nrequests_per_second = 5000\nconcurrency = 16\n"
    )
}

/// The links in the outbox's messages, in order.
fn links(env: &Env, addr: SocketAddr) -> Vec<String> {
    let prefix = format!("http://{addr}/v/");
    let mut out = Vec::new();
    for m in env.messages() {
        let plain: String = m.replace("=\r\n", "").replace("=\n", "");
        for word in plain.split(|c: char| c.is_whitespace() || c == '"' || c == '<' || c == '>') {
            if let Some(rest) = word.strip_prefix(&prefix) {
                let token: String =
                    rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
                let link = format!("{prefix}{token}");
                if !out.contains(&link) {
                    out.push(link);
                }
            }
        }
    }
    out
}

async fn sessions(env: &Env) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM verification_sessions").fetch_one(env.db.pool()).await.unwrap().get("n")
}

both_engines!(a_click_campaign_sends_links_and_no_session_until_a_person_clicks, |db: TestDb| async move {
    let c = click_env(db, 5, Arc::new(SystemClock)).await;
    let campaign = c.env.apply(&click_campaign("clicks")).await;
    let report = c.env.run(&campaign).await;
    assert_eq!(report.counts.notified, 5, "{report:?}");
    let stats = c.env.sandbox.stats().await;
    assert_eq!(stats.requests.get("GET /v1/user/verification").copied().unwrap_or(0), 0, "no session at send time");
    assert_eq!(sessions(&c.env).await, 0);
    let links = links(&c.env, c.addr);
    assert_eq!(links.len(), 5, "one link per message: {links:?}");

    // only its hash is stored
    let stored: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM verification_links").fetch_one(c.env.db.pool()).await.unwrap().get("n");
    assert_eq!(stored, 5);
    for link in &links {
        let token = link.rsplit('/').next().unwrap();
        assert!(token.len() >= 22, "at least 128 bits: {token}");
        let found: i64 = sqlx::query("SELECT COUNT(*) AS n FROM verification_links WHERE token_hash = $1")
            .bind(token)
            .fetch_one(c.env.db.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(found, 0, "the token itself is stored");
    }

    // a mail scanner: 100 GETs and HEADs make no session and change nothing
    for i in 0..100 {
        let r =
            if i % 2 == 0 { c.http.get(&links[0]).send().await } else { c.http.head(&links[0]).send().await }.unwrap();
        assert_eq!(r.status(), 200);
        if i == 0 {
            let page = r.text().await.unwrap();
            assert!(page.contains("Continue to verification") && page.contains("<form method=\"post\""), "{page}");
        }
    }
    assert_eq!(sessions(&c.env).await, 0);
    let clicks: i64 = sqlx::query("SELECT COUNT(*) AS n FROM verification_links WHERE clicks > 0")
        .fetch_one(c.env.db.pool())
        .await
        .unwrap()
        .get("n");
    assert_eq!(clicks, 0, "a GET counts no click");
    assert_eq!(c.env.sandbox.stats().await.sessions_issued, 0);

    // a person's click: one session, 303 to it, counted under the link's campaign
    let metric = |text: &str, series: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
    };
    let issued = r#"reverify_sessions_issued_total{campaign="clicks"}"#;
    let redirected = r#"reverify_click_requests_total{result="redirected"}"#;
    let before = reverify::telemetry::global().encode();
    let r = c.http.post(&links[0]).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let after = reverify::telemetry::global().encode();
    assert!(metric(&after, issued) > metric(&before, issued), "{after}");
    assert!(metric(&after, redirected) > metric(&before, redirected), "{after}");
    assert!(metric(&after, r#"reverify_click_requests_total{result="page"}"#) >= 100.0, "the scanner's pages: {after}");
    assert!(!after.contains(r#"campaign="click""#), "no made-up campaign label: {after}");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(c.env.sandbox.session_urls().contains(&location), "{location}");
    let row =
        sqlx::query("SELECT status, link_id FROM verification_sessions").fetch_one(c.env.db.pool()).await.unwrap();
    assert_eq!(row.get::<String, _>("status"), "delivered");
    assert!(row.get::<Option<i64>, _>("link_id").is_some());
    let clicked: i64 = sqlx::query("SELECT COUNT(*) AS n FROM campaign_targets WHERE clicked_at IS NOT NULL")
        .fetch_one(c.env.db.pool())
        .await
        .unwrap()
        .get("n");
    assert_eq!(clicked, 1);
    let events: i64 = sqlx::query("SELECT COUNT(*) AS n FROM events WHERE kind = 'target.clicked'")
        .fetch_one(c.env.db.pool())
        .await
        .unwrap()
        .get("n");
    assert_eq!(events, 1);

    // unknown and malformed tokens: 404, nothing said about anyone
    let base = format!("http://{}/v/", c.addr);
    for bad in ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "x'%20or%201=1"] {
        assert_eq!(c.http.post(format!("{base}{bad}")).send().await.unwrap().status(), 404);
        assert_eq!(c.http.get(format!("{base}{bad}")).send().await.unwrap().status(), 404);
    }
    assert_eq!(c.env.sandbox.stats().await.violations, 0);
});

both_engines!(concurrent_clicks_of_one_link_make_at_most_one_session, |db: TestDb| async move {
    let c = click_env(db, 1, Arc::new(SystemClock)).await;
    let campaign = c.env.apply(&click_campaign("double")).await;
    c.env.run(&campaign).await;
    let link = links(&c.env, c.addr).pop().unwrap();
    let posts = (0..8).map(|_| {
        let (http, link) = (c.http.clone(), link.clone());
        async move { http.post(&link).send().await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(posts).await;
    assert_eq!(statuses.iter().filter(|s| **s == 303).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 303 || *s == 200), "{statuses:?}");
    assert_eq!(c.env.sandbox.stats().await.sessions_issued, 1);
    assert_eq!(sessions(&c.env).await, 1);
});

both_engines!(clicks_beyond_the_limits_get_the_not_yet_page_and_break_none, |db: TestDb| async move {
    let clock = ManualClock::new(Utc::now());
    let c = click_env(db, 1, Arc::new(clock.clone())).await;
    let campaign = c.env.apply(&click_campaign("limits")).await;
    c.env.run(&campaign).await;
    let link = links(&c.env, c.addr).pop().unwrap();
    // three clicks, 31 s apart (past the double-click window): three sessions
    for _ in 0..3 {
        assert_eq!(c.http.post(&link).send().await.unwrap().status(), 303);
        clock.advance(chrono::Duration::seconds(31));
    }
    // a fourth while three are active: the page says when, and the API is not asked
    let r = c.http.post(&link).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    // the page names the limit that holds (three open at once), and when it ends
    assert!(page.contains("You already have several verifications open"), "{page}");
    assert!(page.contains("You can try again"), "{page}");
    let stats = c.env.sandbox.stats().await;
    assert_eq!(stats.sessions_issued, 3);
    assert_eq!(stats.violations, 0, "{stats:?}");
    // the turn was given back: the next click is judged again at once (still not yet)
    assert!(c.http.post(&link).send().await.unwrap().text().await.unwrap().contains("You can try again"));
});

both_engines!(a_verified_user_is_told_so_and_their_links_are_revoked, |db: TestDb| async move {
    let c = click_env(db, 1, Arc::new(SystemClock)).await;
    let campaign = c.env.apply(&click_campaign("verified")).await;
    c.env.run(&campaign).await;
    let link = links(&c.env, c.addr).pop().unwrap();
    // the person clicks, completes the session at Baanx and is verified
    let r = c.http.post(&link).send().await.unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(c.env.sandbox.complete_session(&location, reverify::sandbox::SessionOutcome::Verified));
    // an old tab: the click finds the user verified, and says so
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let page = c.http.post(&link).send().await.unwrap();
    // within 30 s of the first click: "on its way"; the state is read on the next one
    assert_eq!(page.status(), 200);
    let user = c.env.sandbox.users()[0].user_id.clone();
    let state = reverify::store::outcomes::StateSource::fresh_state("test");
    c.env.store().user_apply_state(user.as_str(), VerificationState::Verified, Utc::now(), &state).await.unwrap();
    let r = c.http.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 410, "a verified user's link is revoked");
    let converted: String =
        sqlx::query("SELECT status FROM campaign_targets").fetch_one(c.env.db.pool()).await.unwrap().get("status");
    assert_eq!(converted, "converted");
});

both_engines!(click_reminders_send_new_links_and_no_session, |db: TestDb| async move {
    let clock = ManualClock::new(Utc::now());
    let c = click_env(db, 3, Arc::new(clock.clone())).await;
    let toml = click_campaign("click-rem").replace("[throttle]", "[reminders]\nafter = \"1h\"\nmax = 1\n[throttle]");
    let campaign = c.env.apply(&toml).await;
    let mut worker = c.env.worker();
    worker.clock = Arc::new(clock.clone());
    let run = || async {
        worker
            .run_campaign(&campaign, Arc::new(reverify::engine::Progress::default()), CancellationToken::new())
            .await
            .unwrap()
    };
    run().await;
    assert_eq!(links(&c.env, c.addr).len(), 3);
    // an hour later nobody clicked: each gets a reminder with a new link, and still
    // no session is made for anyone
    clock.advance(chrono::Duration::hours(2));
    run().await;
    let all = links(&c.env, c.addr);
    assert_eq!(all.len(), 6, "three first links and three reminders' links: {all:?}");
    assert_eq!(c.env.messages().iter().filter(|m| m.contains("A reminder")).count(), 3);
    assert_eq!(c.env.sandbox.stats().await.sessions_issued, 0);
    assert_eq!(sessions(&c.env).await, 0);
    // both links of a user work
    for link in [&all[0], &all[5]] {
        assert_eq!(c.http.get(link).send().await.unwrap().status(), 200, "{link}");
    }
});

both_engines!(a_cancelled_campaigns_links_are_gone, |db: TestDb| async move {
    let c = click_env(db, 2, Arc::new(SystemClock)).await;
    let campaign = c.env.apply(&click_campaign("cancelled")).await;
    c.env.run(&campaign).await;
    let link = links(&c.env, c.addr).pop().unwrap();
    assert_eq!(c.http.get(&link).send().await.unwrap().status(), 200);
    let name = reverify::domain::CampaignName::parse("cancelled").unwrap();
    c.env
        .store()
        .campaign_set_status(&name, reverify::store::campaigns::StatusChange::Cancel, "test", Utc::now())
        .await
        .unwrap();
    assert_eq!(c.http.get(&link).send().await.unwrap().status(), 410);
    assert_eq!(c.http.post(&link).send().await.unwrap().status(), 410);
    assert_eq!(sessions(&c.env).await, 0);
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_are_rate_limited_per_link_and_per_address() {
    let mut users = reverify::sandbox::users::generate_unverified(1, 3, Utc::now());
    users[0].locale = "en-GB".into();
    let mut env = Env::with_sandbox(
        TestDb::sqlite().await,
        SandboxConfig { users: UserSource::Records(users), ..SandboxConfig::default() },
    )
    .await;
    let worker = env.worker();
    let router = reverify::click::click_router(
        env.store().clone(),
        Arc::new(BaanxApi(worker.client.clone())),
        ClickConfig { per_link_per_minute: 2, per_address_per_minute: 6, ..ClickConfig::default() },
    );
    let stop = CancellationToken::new();
    let server = serve_public("127.0.0.1:0".parse().unwrap(), router, stop.clone()).await.unwrap();
    env.settings.public_url = Some(format!("http://{}", server.local_addr).parse().unwrap());
    let campaign = env.apply(&click_campaign("limited")).await;
    env.run(&campaign).await;
    let link = links(&env, server.local_addr).pop().unwrap();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(http.post(&link).send().await.unwrap().status().as_u16());
    }
    // the first makes the session, the second is "on its way", then 429 per link
    assert_eq!(statuses, vec![303, 200, 429, 429]);
    // and every request per address: 4 used, 2 more, then 429 even for a GET
    assert_eq!(http.get(&link).send().await.unwrap().status(), 200);
    assert_eq!(http.get(&link).send().await.unwrap().status(), 200);
    let r = http.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "60");
    assert_eq!(env.sandbox.stats().await.sessions_issued, 1);
    stop.cancel();
}

/// Issue 24: behind an ingress every request comes from the ingress's address. With
/// the ingress in `trusted_proxies`, `X-Forwarded-For` names the client, so one
/// client's made-up tokens use up its own limit, not everybody's; from a peer that
/// is not a trusted proxy the header changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_ingress_each_client_has_its_own_limit() {
    let mut users = reverify::sandbox::users::generate_unverified(1, 3, Utc::now());
    users[0].locale = "en-GB".into();
    let mut env = Env::with_sandbox(
        TestDb::sqlite().await,
        SandboxConfig { users: UserSource::Records(users), ..SandboxConfig::default() },
    )
    .await;
    let worker = env.worker();
    let store = env.store().clone();
    let serve = |proxies: Vec<&str>| {
        let router = reverify::click::click_router(
            store.clone(),
            Arc::new(BaanxApi(worker.client.clone())),
            ClickConfig {
                per_link_per_minute: 100,
                per_address_per_minute: 6,
                trusted_proxies: reverify::domain::proxies::TrustedProxies::new(
                    proxies.into_iter().map(|p| p.parse().unwrap()).collect(),
                ),
                ..ClickConfig::default()
            },
        );
        let stop = CancellationToken::new();
        let server = serve_public("127.0.0.1:0".parse().unwrap(), router, stop.clone());
        async move { (server.await.unwrap(), stop) }
    };
    let (ingress, stop) = serve(vec!["127.0.0.1/32"]).await;
    env.settings.public_url = Some(format!("http://{}", ingress.local_addr).parse().unwrap());
    let campaign = env.apply(&click_campaign("ingress")).await;
    env.run(&campaign).await;
    let link = links(&env, ingress.local_addr).pop().unwrap();
    let http = reqwest::Client::new();
    let get = |url: String, client: &'static str| {
        let http = http.clone();
        async move { http.get(url).header("x-forwarded-for", client).send().await.unwrap().status().as_u16() }
    };
    // an attacker behind the ingress tries made-up tokens until it is refused
    let base = format!("http://{}/v/", ingress.local_addr);
    let mut refused = 0;
    for i in 0..20 {
        if get(format!("{base}madeup{i}"), "198.51.100.66").await == 429 {
            refused += 1;
        }
    }
    assert_eq!(refused, 14, "6 a minute for the attacker");
    // a real person behind the same ingress still gets the page; another header
    // spelled by the attacker with its real address on the right does not escape
    assert_eq!(get(link.clone(), "203.0.113.5").await, 200);
    assert_eq!(get(link.clone(), "203.0.113.5, 198.51.100.66").await, 429, "the right-most hop counts");
    stop.cancel();

    // a peer that is not a trusted proxy: the header is not believed
    let (direct, stop) = serve(vec!["10.0.0.0/8"]).await;
    let base = format!("http://{}/v/", direct.local_addr);
    let statuses: Vec<u16> = futures::future::join_all((0..8).map(|i| {
        let url = format!("{base}madeup{i}");
        let from =
            ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.6", "192.0.2.7", "192.0.2.8"][i];
        get(url, from)
    }))
    .await;
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2, "one address, 6 a minute: {statuses:?}");
    stop.cancel();
}

/// The sandbox's (token refreshes, profiles, sessions).
async fn api_counts(env: &Env) -> (u64, u64, u64) {
    let s = env.sandbox.stats().await;
    let n = |k: &str| s.requests.get(k).copied().unwrap_or(0);
    (n("POST /v1/auth/oauth/token"), n("GET /v1/user"), n("GET /v1/user/verification"))
}

both_engines!(a_fresh_state_spares_the_send_every_call_and_the_click_all_but_the_session, |db: TestDb| async move {
    let c = click_env(db, 4, Arc::new(SystemClock)).await;
    // a direct campaign first stores each user's access token and confirms their state
    let direct = c.env.apply(&crate::common::campaign_toml("direct-first", "")).await;
    assert_eq!(c.env.run(&direct).await.counts.notified, 4);
    let before = api_counts(&c.env).await;
    assert_eq!(before, (4, 4, 4), "the direct campaign: refresh, state, session each");

    let toml =
        click_campaign("fresh-clicks").replace("[delivery]", "[audience]\nfresh_state_max_age = \"6h\"\n[delivery]");
    let campaign = c.env.apply(&toml).await;
    assert_eq!(c.env.run(&campaign).await.counts.notified, 4);
    assert_eq!(api_counts(&c.env).await, before, "the send step of fresh users makes no API call at all");
    let links = links(&c.env, c.addr);
    assert_eq!(links.len(), 4, "{links:?}");
    for link in &links {
        assert_eq!(c.http.post(link).send().await.unwrap().status(), 303);
    }
    let (tokens, profiles, sessions) = api_counts(&c.env).await;
    assert_eq!((tokens - before.0, profiles - before.1, sessions - before.2), (0, 0, 4), "a click: the session alone");
    assert_eq!(c.env.sandbox.stats().await.violations, 0);
});
