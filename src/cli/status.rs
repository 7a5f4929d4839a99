//! `campaign status`, `campaign plan` and `campaign retry-failed`: progress read
//! straight from the rows.

use chrono::Utc;
use reverify::domain::TargetStatus;
use reverify::store::Store;
use reverify::store::campaigns::CampaignRecord;

use super::exit;

/// Prints a campaign's progress as a table, or as JSON.
pub async fn status(store: &Store, c: &CampaignRecord, json: bool) -> anyhow::Result<u8> {
    let now = Utc::now();
    let p = store.campaign_progress(c.campaign_id, now).await?;
    let (waiting, next_window) = store.target_window_waiting(c.campaign_id).await?;
    let outlook = reverify::engine::outlook::outlook(store, c, now).await?;
    if json {
        let doc = serde_json::json!({
            "campaign": c.name.as_str(),
            "status": c.status.as_str(),
            "version": c.version,
            "targeted": p.targeted,
            "pending": p.count(TargetStatus::Pending),
            "claimed": p.count(TargetStatus::Claimed),
            "deferred": p.count(TargetStatus::Deferred),
            "notified": p.count(TargetStatus::Notified),
            "skipped": p.count(TargetStatus::Skipped),
            "failed": p.count(TargetStatus::Failed),
            "converted": p.count(TargetStatus::Converted),
            "by_status": p.by_status,
            "sessions_issued": p.sessions_issued,
            "rate_per_second_last_minute": p.rate_per_second(),
            "due_now": p.due_now,
            "eta_seconds": p.eta_seconds(),
            "next_deferred_at": p.next_deferred_at,
            "waiting_for_send_window": waiting,
            "next_window_opens_at": next_window,
            "last_run_at": c.last_run_at,
            "funnel": p.funnel,
            "bounced": p.funnel.bounced,
            "bounce_rate": p.funnel.bounce_rate(),
            "fallback_sent": p.funnel.fallback_sent,
            "next_tick": outlook.next_tick,
            "next_follow_up": outlook.next_follow_up,
            "follows_up": outlook.follows_up,
            "starts_at": outlook.starts_at,
            "ends_at": outlook.ends_at,
            "completed_at": outlook.completed_at,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(exit::OK);
    }
    println!("campaign   {} (version {}, {})", c.name, c.version, c.status);
    println!("targeted   {}", p.targeted);
    for (status, n, reasons) in p.listing() {
        println!("{:<10} {n}", status.as_str());
        for (reason, n) in reasons {
            println!("  {:<24} {n}", reason.as_str());
        }
    }
    println!("sessions   {} issued", p.sessions_issued);
    println!("rate       {:.2} users/s over the last minute", p.rate_per_second());
    match p.eta_seconds() {
        _ if p.due_now == 0 => println!("eta        nothing due now"),
        Some(s) => println!("eta        {} for {} due now", humantime::format_duration(secs(s)), p.due_now),
        None => println!("eta        unknown ({} due now; no recent progress)", p.due_now),
    }
    let f = &p.funnel;
    let pct = |n: i64| {
        if f.notified > 0 {
            format!(" ({:.1}% of notified)", 100.0 * n as f64 / f.notified as f64)
        } else {
            String::new()
        }
    };
    if f.clicked > 0 {
        println!(
            "funnel     targeted {} → notified {} → clicked {} → started {} → verified {} / rejected {}",
            f.targeted, f.notified, f.clicked, f.started, f.verified, f.rejected
        );
        println!("  clicked                  {}{}", f.clicked, pct(f.clicked));
    } else {
        println!(
            "funnel     targeted {} → notified {} → started {} → verified {} / rejected {}",
            f.targeted, f.notified, f.started, f.verified, f.rejected
        );
    }
    if f.bounced > 0 || f.fallback_sent > 0 {
        println!(
            "  bounced                  {} ({:.1}% bounce rate); fallback sent {}",
            f.bounced,
            100.0 * f.bounce_rate(),
            f.fallback_sent
        );
    }
    println!("  verified                 {}{}", f.verified, pct(f.verified));
    println!("  no response after expiry {}{}", f.no_response_after_expiry, pct(f.no_response_after_expiry));
    match f.median_seconds_to_verify {
        Some(s) => println!("  median time to verify    {}", humantime::format_duration(secs(s))),
        None => println!("  median time to verify    -"),
    }
    if let Some(t) = p.next_deferred_at {
        println!("next       deferred users become due at {}", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    if let Some(t) = next_window {
        println!(
            "window     {waiting} wait for their send window; the next opens at {}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    for (label, text) in outlook.lines(c.status) {
        println!("{label} {text}");
    }
    Ok(exit::OK)
}

fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs(s.max(0.0).round() as u64)
}

/// Prints who a run would target now, without calling the API.
pub async fn plan(
    store: &Store,
    c: &CampaignRecord,
    freshness: reverify::domain::freshness::FreshStateSettings,
    json: bool,
) -> anyhow::Result<u8> {
    let spec = c.spec()?;
    let now = Utc::now();
    let buckets = store.campaign_plan(c.campaign_id, &spec.audience, now).await?;
    let window = window_forecast(store, c, &spec, now).await?;
    let fresh = fresh_forecast(store, c, &spec, freshness, now).await?;
    if json {
        let mut doc = serde_json::json!({ "campaign": c.name.as_str(), "buckets": buckets });
        doc["fresh_state"] = serde_json::json!({
            "max_age_seconds": fresh.age.max_age.as_secs(),
            "webhook_feed": feed_name(fresh.age.feed),
            "skip_fresh_state_call": fresh.skipping,
            "oldest_confirmation_used": fresh.oldest,
        });
        if let Some(w) = &window {
            doc["send_window"] = serde_json::json!({
                "new_targets_outside_window": w.new_outside,
                "waiting_for_send_window": w.waiting,
                "next_window_opens_at": w.next,
            });
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(exit::OK);
    }
    let get = |b: &str| buckets.iter().find(|x| x.bucket == b).map_or(0, |x| x.count);
    println!("campaign {}: a run now would add", c.name);
    println!("  {:<28} {}", "targets, due now", get("target"));
    println!("  {:<28} {}", "targets, deferred (cooldown)", get("target_deferred"));
    if let Some(max) = spec.audience.max_users {
        println!("  (audience.max_users = {max} caps the campaign's targets in all)");
    }
    println!("excluded");
    for b in buckets.iter().filter(|b| !b.bucket.starts_with("target")) {
        println!("  {:<28} {}", b.bucket, b.count);
    }
    println!("fresh state (GET /v1/user before each session)");
    println!(
        "  {:<28} {} (webhook feed: {})",
        "fresh_state_max_age",
        humantime::format_duration(fresh.age.max_age),
        feed_name(fresh.age.feed)
    );
    println!("  {:<28} {}", "targets skipping the call", fresh.skipping);
    match fresh.oldest {
        Some(t) => println!(
            "  {:<28} {} ({} ago)",
            "oldest confirmation used",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            humantime::format_duration(std::time::Duration::from_secs(
                u64::try_from((now - t).num_seconds()).unwrap_or(0)
            ))
        ),
        None => println!("  {:<28} -", "oldest confirmation used"),
    }
    if let Some(w) = window {
        println!("send window");
        println!("  {:<28} {}", "new targets outside it now", w.new_outside);
        println!("  {:<28} {}", "targets waiting for it", w.waiting);
        match w.next {
            Some(t) => {
                println!("  {:<28} {}", "next window opens at", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            }
            None => println!("  {:<28} -", "next window opens at"),
        }
    }
    Ok(exit::OK)
}

/// Who a run would spare the fresh-state call: the targets (new and waiting) whose
/// state was confirmed within the campaign's `fresh_state_max_age`.
struct FreshForecast {
    age: reverify::domain::freshness::FreshStateAge,
    skipping: i64,
    oldest: Option<chrono::DateTime<Utc>>,
}

async fn fresh_forecast(
    store: &Store,
    c: &CampaignRecord,
    spec: &reverify::domain::CampaignSpec,
    freshness: reverify::domain::freshness::FreshStateSettings,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<FreshForecast> {
    let age = reverify::engine::fresh_state_age(store, freshness, spec, now).await?;
    if age.max_age.is_zero() {
        return Ok(FreshForecast { age, skipping: 0, oldest: None });
    }
    let since = now - chrono::Duration::from_std(age.max_age).unwrap_or(chrono::Duration::MAX);
    let (skipping, oldest) = store.campaign_plan_fresh(c.campaign_id, &spec.audience, now, since).await?;
    Ok(FreshForecast { age, skipping, oldest })
}

/// The feed's state as `campaign plan` prints it.
fn feed_name(feed: reverify::domain::freshness::Feed) -> &'static str {
    match feed {
        reverify::domain::freshness::Feed::None => "none",
        reverify::domain::freshness::Feed::Healthy => "healthy",
        reverify::domain::freshness::Feed::Silent => "silent",
    }
}

/// Who waits for the campaign's send window: the users a run would add now whose
/// window is closed, the targets already waiting, and the earliest opening.
struct WindowForecast {
    new_outside: i64,
    waiting: i64,
    next: Option<chrono::DateTime<Utc>>,
}

async fn window_forecast(
    store: &Store,
    c: &CampaignRecord,
    spec: &reverify::domain::CampaignSpec,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<Option<WindowForecast>> {
    let Some(window) = spec.delivery.window() else { return Ok(None) };
    let campaign_zone: chrono_tz::Tz = spec.timezone.parse().unwrap_or(chrono_tz::Tz::UTC);
    let (waiting, mut next) = store.target_window_waiting(c.campaign_id).await?;
    let mut new_outside = 0;
    for (zone, n) in store.campaign_plan_zones(c.campaign_id, &spec.audience, now).await? {
        let (tz, _) = reverify::domain::window::user_zone(zone.as_deref(), campaign_zone);
        if let Some(at) = window.next_opening(now, tz) {
            new_outside += n;
            next = Some(next.map_or(at, |x| x.min(at)));
        }
    }
    Ok(Some(WindowForecast { new_outside, waiting, next }))
}

/// Puts every failed target back in the queue.
pub async fn retry_failed(store: &Store, c: &CampaignRecord, actor: &str) -> anyhow::Result<u8> {
    let now = Utc::now();
    let n = store.campaign_retry_failed(c.campaign_id, actor, now).await?;
    super::seal(store).await;
    println!("campaign {}: {n} failed targets re-queued; the next run retries them", c.name);
    Ok(exit::OK)
}
