//! dashboard_p95_ms: the dashboard's page of one campaign of `targets` targets on
//! Postgres, loaded over HTTP by a logged-in client, one request at a time.
//!
//! The database is filled by the report bench's fixture (users and targets in a
//! mix of statuses, written by Postgres itself), plus a few hundred events and runs,
//! then vacuumed and analysed as autovacuum would leave a table that has settled.
//! The dashboard runs in this process on a loopback port, as `reverify serve` runs
//! it; the figure is the 95th percentile of the page's latency, first byte to last.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use chrono::Utc;
use reverify::domain::CampaignSpec;
use reverify::store::events::NewEvent;
use reverify::store::testing::TestDb;
use reverify::ui::auth::{UsersFile, hash_password};
use reverify::ui::{UiConfig, ui_router};
use tokio_util::sync::CancellationToken;

use super::say;

/// A form body, URL-encoded.
fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

const LOADS: usize = 40;
/// Between two loads: 40 loads take 10 s, over two snapshot refreshes.
const GAP: Duration = Duration::from_millis(250);
const PASSWORD: &str = "bench passphrase";

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
    sorted.get(rank - 1).copied().unwrap_or_default().as_secs_f64() * 1000.0
}

/// `n` loads of `url`, `gap` apart: spread over more than the snapshot's age, so that
/// background refreshes run (and load the database) while pages are served.
async fn timed(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    n: usize,
    gap: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        tokio::time::sleep(gap).await;
        let started = Instant::now();
        let r = http.get(url).header("cookie", cookie).send().await?;
        ensure!(r.status() == 200, "{url}: {}", r.status());
        let body = r.text().await?;
        times.push(started.elapsed());
        ensure!(body.contains("reverify"), "{url}: not a page");
    }
    times.sort();
    Ok(times)
}

/// Fills the database, serves the dashboard and measures the page.
pub async fn dashboard(targets: usize) -> anyhow::Result<()> {
    let db = TestDb::postgres().await;
    let s = &db.store;
    let text = "name = \"bench-dashboard\"\nschedule = \"0 9 * * 1-5\"\n";
    let spec = CampaignSpec::from_toml(text, "bench campaign")?;
    let (_, c) = s.campaign_apply(&spec, text, "bench", Utc::now()).await?;
    let started = Instant::now();
    s.report_bench_fill(c.campaign_id, targets as i64, Utc::now()).await?;
    for i in 0..500 {
        let e = NewEvent {
            actor: "bench",
            kind: "target.notified",
            campaign_id: Some(c.campaign_id),
            user_id: None,
            detail: Some(serde_json::json!({ "i": i })),
        };
        s.event_append(&e, Utc::now()).await?;
    }
    for _ in 0..20 {
        s.run_start(&reverify::store::runs::RunStartParams {
            campaign_id: c.campaign_id,
            worker: "bench",
            actor: "bench",
            now: Utc::now(),
            tick: None,
        })
        .await?;
    }
    sqlx::query("VACUUM ANALYZE").execute(db.pool()).await.context("VACUUM ANALYZE")?;
    let fill = started.elapsed().as_secs_f64();

    let users =
        UsersFile::parse(&format!("bench:viewer:{}\n", hash_password(PASSWORD).map_err(anyhow::Error::msg)?), "bench")?;
    let config = UiConfig { users, ..UiConfig::default() };
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let server =
        reverify::telemetry::serve_public("127.0.0.1:0".parse()?, ui_router(s.clone(), config), stop.clone()).await?;
    let base = format!("http://{}", server.local_addr);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let login = http.get(format!("{base}/login")).send().await?;
    let login_cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no login cookie")?
        .to_owned();
    let page = login.text().await?;
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).context("no token")?;
    let r = http
        .post(format!("{base}/login"))
        .header("cookie", &login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("user", "bench"), ("password", PASSWORD), ("csrf", csrf)]))
        .send()
        .await?;
    ensure!(r.status() == 303, "login: {}", r.status());
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("reverify_session="))
        .and_then(|v| v.split(';').next())
        .context("no session cookie")?
        .to_owned();

    let campaign_url = format!("{base}/campaigns/bench-dashboard");
    timed(&http, &campaign_url, &cookie, 3, Duration::ZERO).await?; // warm the caches and the pool
    let campaign = timed(&http, &campaign_url, &cookie, LOADS, GAP).await?;
    let list = timed(&http, &format!("{base}/"), &cookie, LOADS / 4, GAP).await?;
    // what a snapshot refresh costs: the figures read afresh, as the page's
    // background refresh reads them (campaign status's queries and the series)
    let mut refresh = Vec::new();
    for _ in 0..3 {
        let at = Instant::now();
        futures::try_join!(
            s.campaign_progress(c.campaign_id, Utc::now()),
            s.dashboard_series(c.campaign_id),
            s.dashboard_deferred(c.campaign_id),
            s.dashboard_deferred_next(c.campaign_id, 10),
        )?;
        refresh.push(at.elapsed());
    }
    refresh.sort();
    say(format!("dashboard_p95_ms: {:.0} ms", quantile(&campaign, 0.95)));
    say(format!("dashboard_refresh_ms: {:.0} ms", quantile(&refresh, 0.5)));
    say(format!(
        "# dashboard_p95_ms: the page of one campaign of {targets} targets on Postgres, {LOADS} loads one at a time, \
         {} ms apart, over loopback (p50 {:.0} ms, max {:.0} ms); the campaigns page p95 {:.0} ms; pages render \
         from the figures' snapshot, which a load older than 4 s refreshes in the background \
         (dashboard_refresh_ms: reading them afresh, the median of 3); fixture filled and vacuumed in {fill:.1} s; \
         goal: under 200 ms",
        GAP.as_millis(),
        quantile(&campaign, 0.5),
        quantile(&campaign, 1.0),
        quantile(&list, 0.95),
    ));
    stop.cancel();
    let _ = server.handle.await;
    Ok(())
}
