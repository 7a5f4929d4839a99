//! Send windows (issue 17) on a manual clock: each user is sent inside their own
//! window, in their own time zone, and never outside it; a target outside its window
//! waits, deferred to the next opening, holding no claim and no session.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use reverify::both_engines;
use reverify::domain::ManualClock;
use reverify::engine::Progress;
use reverify::notify::testing::ReceivedMail;
use reverify::sandbox::{SandboxConfig, UserSource};
use reverify::store::testing::TestDb;
use tokio_util::sync::CancellationToken;

use crate::common::{Env, campaign_toml};
use crate::outcomes::{reverify, stdout_of};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// An environment whose sandbox and worker share `clock`, with the users' zones
/// set round-robin from `zones` (their refresh tokens kept).
async fn env_with_zones(
    db: TestDb,
    users: usize,
    clock: &ManualClock,
    zones: &[&str],
) -> (Env, HashMap<String, String>) {
    let cfg = SandboxConfig {
        users: UserSource::Generate(users),
        seed: 7,
        clock: Arc::new(clock.clone()),
        ..Default::default()
    };
    let env = Env::with_sandbox(db, cfg).await;
    let zone_of = std::sync::Mutex::new(HashMap::new());
    env.upsert_users(|i, u| {
        let zone = zones[i % zones.len()].to_owned();
        zone_of.lock().unwrap().insert(u.email.as_str().to_owned(), zone.clone());
        u.timezone = Some(zone);
    })
    .await;
    let zone_of = zone_of.into_inner().unwrap();
    (env, zone_of)
}

/// The recipients of the campaign's messages in the outbox, in any order.
fn recipients(env: &Env, campaign: &str) -> Vec<String> {
    env.messages()
        .iter()
        .map(|m| ReceivedMail::parse(m))
        .filter(|m| m.header("X-Reverify-Campaign").as_deref() == Some(campaign))
        .map(|m| {
            let to = m.header("To").unwrap();
            to.rsplit('<').next().unwrap().trim_end_matches('>').to_owned()
        })
        .collect()
}

struct Runner<'a> {
    env: &'a Env,
    clock: ManualClock,
    campaign: reverify::store::campaigns::CampaignRecord,
}

impl Runner<'_> {
    /// Runs the campaign once with the clock at `now`.
    async fn run_at(&mut self, now: &str) {
        self.clock.set(at(now));
        let mut worker = self.env.worker();
        worker.clock = Arc::new(self.clock.clone());
        worker.run_campaign(&self.campaign, Arc::new(Progress::default()), CancellationToken::new()).await.unwrap();
        let all = recipients(self.env, self.campaign.name.as_str());
        let distinct: std::collections::HashSet<&String> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "a user got two messages of one campaign");
    }

    /// [`Runner::run_at`], noting in `sent_at` when each new recipient was sent to.
    async fn run_noting(&mut self, now: &str, sent_at: &mut HashMap<String, DateTime<Utc>>) {
        let before: std::collections::HashSet<String> =
            recipients(self.env, self.campaign.name.as_str()).into_iter().collect();
        self.run_at(now).await;
        for to in recipients(self.env, self.campaign.name.as_str()) {
            if !before.contains(&to) {
                sent_at.insert(to, at(now));
            }
        }
    }
}

fn inside(now: DateTime<Utc>, zone: &str, open: u32, close: u32, weekdays_only: bool) -> bool {
    let tz: Tz = zone.parse().unwrap_or(Tz::Asia__Tokyo);
    let local = now.with_timezone(&tz);
    let day_ok = !weekdays_only || local.weekday().num_days_from_monday() < 5;
    let h = local.hour();
    let in_hours = if open < close { h >= open && h < close } else { h >= open || h < close };
    day_ok && in_hours
}

async fn deferred_for_window(env: &Env, campaign_id: i64) -> i64 {
    env.store()
        .target_counts(campaign_id)
        .await
        .unwrap()
        .iter()
        .filter(|c| {
            c.status == reverify::domain::TargetStatus::Deferred
                && c.reason == Some(reverify::domain::TargetReason::SendWindow)
        })
        .map(|c| c.count)
        .sum()
}

both_engines!(tokyo_london_and_los_angeles_each_get_their_message_in_their_own_hours, |db: TestDb| async move {
    let clock = ManualClock::new(at("2026-11-27T08:00:00Z"));
    let zones = ["Asia/Tokyo", "Europe/London", "America/Los_Angeles", "Mars/Olympus"];
    let (env, zone_of) = env_with_zones(db, 40, &clock, &zones).await;
    let toml = campaign_toml("windows", "timezone = \"Asia/Tokyo\"\n").replace(
        "[delivery]\n",
        "[delivery]\nsend_window = \"09:00-19:00\"\nsend_days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\n",
    );
    let campaign = env.apply(&toml).await;
    let fallbacks_before = metric("reverify_timezone_fallbacks_total{campaign=\"windows\"}");
    let mut r = Runner { env: &env, clock: clock.clone(), campaign: campaign.clone() };

    // Friday 08:00 UTC: 17:00 in Tokyo, 08:00 in London, 00:00 in Los Angeles
    let mut sent_at: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut total = 0;
    for now in [
        "2026-11-27T08:00:00Z", // Tokyo (and the unknown zone, read as the campaign's Tokyo)
        "2026-11-27T08:59:00Z", // nobody new: London opens at 09:00
        "2026-11-27T09:00:00Z", // London
        "2026-11-27T16:30:00Z", // nobody: Los Angeles opens at 17:00 UTC
        "2026-11-27T17:00:00Z", // Los Angeles
    ] {
        r.run_noting(now, &mut sent_at).await;
        let by_zone = |z: &str| sent_at.iter().filter(|(to, _)| zone_of[*to] == z).count();
        match now {
            "2026-11-27T08:00:00Z" => {
                assert!(by_zone("Asia/Tokyo") > 0 && by_zone("Mars/Olympus") > 0);
                assert_eq!(by_zone("Europe/London") + by_zone("America/Los_Angeles"), 0);
                let waiting = deferred_for_window(&env, campaign.campaign_id).await;
                assert!(waiting > 0);
                // status and plan say how many wait, and when the next window opens
                let status = stdout_of(reverify(&env).args(["campaign", "status", "windows"]));
                let line =
                    format!("window     {waiting} wait for their send window; the next opens at 2026-11-27T09:00:00Z");
                assert!(status.contains(&line), "{status}");
                let json = stdout_of(reverify(&env).args(["campaign", "status", "windows", "--json"]));
                let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
                assert_eq!(doc["waiting_for_send_window"], waiting);
                let plan = stdout_of(reverify(&env).args(["campaign", "plan", "windows"]));
                let row = |name: &str| {
                    plan.lines()
                        .find(|l| l.trim_start().starts_with(name))
                        .map(|l| l[name.len() + 2..].trim().to_owned())
                };
                assert_eq!(row("targets waiting for it"), Some(waiting.to_string()), "{plan}");
                assert_eq!(row("next window opens at").as_deref(), Some("2026-11-27T09:00:00Z"), "{plan}");
            }
            // London opens at 09:00, Los Angeles at 17:00 UTC (a London user whose
            // rejection cooldown ended may be sent at 16:30: their window is open)
            "2026-11-27T08:59:00Z" => assert_eq!(sent_at.len(), total, "{now}"),
            "2026-11-27T16:30:00Z" => assert_eq!(by_zone("America/Los_Angeles"), 0),
            "2026-11-27T09:00:00Z" => {
                assert!(by_zone("Europe/London") > 0);
                assert_eq!(by_zone("America/Los_Angeles"), 0);
            }
            _ => {
                assert!(by_zone("America/Los_Angeles") > 0);
                assert_eq!(deferred_for_window(&env, campaign.campaign_id).await, 0, "nobody is left waiting");
            }
        }
        total = sent_at.len();
    }
    for (to, when) in &sent_at {
        assert!(inside(*when, &zone_of[to], 9, 19, true), "{to} ({}) was sent at {when}", zone_of[to]);
    }
    // no session or claim was taken while waiting: one session per message, and
    // no target of the campaign holds a lease
    let stats = env.sandbox.stats().await;
    assert_eq!(stats.violations, 0);
    assert_eq!(stats.sessions_issued as usize, sent_at.len(), "{stats:?}");
    assert!(metric("reverify_timezone_fallbacks_total{campaign=\"windows\"}") > fallbacks_before);
});

both_engines!(a_window_across_midnight_and_a_dst_change, |db: TestDb| async move {
    // London, Saturday 28 March 2026 (GMT) into Sunday 29 March (BST)
    let clock = ManualClock::new(at("2026-03-28T20:00:00Z"));
    let (env, zone_of) = env_with_zones(db, 24, &clock, &["Europe/London", "America/New_York"]).await;
    let toml = campaign_toml("night", "").replace("[delivery]\n", "[delivery]\nsend_window = \"22:00-06:00\"\n");
    let night = env.apply(&toml).await;
    let mut r = Runner { env: &env, clock: clock.clone(), campaign: night };
    let mut sent_at: HashMap<String, DateTime<Utc>> = HashMap::new();
    // 21:59 London: nobody; 22:00 London (GMT): London; New York (EDT since 8 March)
    // opens at 02:00 UTC; after the change, 05:59 BST is 04:59 UTC and still open
    for now in ["2026-03-28T21:59:00Z", "2026-03-28T22:00:00Z", "2026-03-29T01:59:00Z", "2026-03-29T02:00:00Z"] {
        r.run_noting(now, &mut sent_at).await;
        let london = sent_at.iter().filter(|(to, _)| zone_of[*to] == "Europe/London").count();
        let ny = sent_at.len() - london;
        match now {
            "2026-03-28T21:59:00Z" => assert_eq!(sent_at.len(), 0),
            "2026-03-28T22:00:00Z" | "2026-03-29T01:59:00Z" => assert!(london > 0 && ny == 0, "{now}: {london} {ny}"),
            _ => assert!(ny > 0),
        }
    }
    for (to, when) in &sent_at {
        assert!(inside(*when, &zone_of[to], 22, 6, false), "{to} sent at {when}");
    }

    // DST: a day window in London on the morning of the change. At 07:30 UTC it is
    // 08:30 BST: closed until 08:00 UTC (09:00 BST), not 09:00 UTC (GMT's 09:00)
    let day = env
        .apply(&campaign_toml("day", "").replace("[delivery]\n", "[delivery]\nsend_window = \"09:00-19:00\"\n"))
        .await;
    let mut r = Runner { env: &env, clock: clock.clone(), campaign: day.clone() };
    r.run_at("2026-03-29T07:30:00Z").await;
    assert_eq!(recipients(&env, "day").len(), 0, "08:30 BST is before the window");
    r.run_at("2026-03-29T08:00:00Z").await;
    let london_users = zone_of.values().filter(|z| *z == "Europe/London").count();
    let n = recipients(&env, "day").len();
    assert!(recipients(&env, "day").iter().all(|to| zone_of[to] == "Europe/London"));
    assert!(n > 0 && n <= london_users, "09:00 BST opens London's window: {n}");
    assert_eq!(env.sandbox.stats().await.violations, 0);
});

/// The current value of one series in the process's metrics.
fn metric(series: &str) -> f64 {
    let text = reverify::telemetry::global().encode_prometheus();
    text.lines().find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse::<f64>().unwrap_or(0.0))).unwrap_or(0.0)
}
