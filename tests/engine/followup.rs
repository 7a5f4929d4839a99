//! Follow-up on the work's own clock (issue 23, design.md invariant 9): every user a
//! rule holds back is taken when the hold ends, through a `run --due` pass and
//! through the daemon, never by running the campaign by hand; and a campaign has a
//! life (`starts_at`, `ends_at`).
//!
//! The sandbox and the worker share a manual clock, moved past each hold's end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reverify::both_engines;
use reverify::domain::{Clock as _, ManualClock};
use reverify::engine::{Progress, Worker};
use reverify::sandbox::{SandboxConfig, ScriptedFault, UserSource};
use reverify::schedule::daemon::DaemonOptions;
use reverify::schedule::{PassOptions, Scheduled, Work};
use reverify::store::campaigns::{CampaignRecord, CampaignStatus};
use reverify::store::testing::TestDb;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::common::{Env, campaign_toml};
use crate::outcomes::until;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// An environment whose sandbox and worker share `clock`.
async fn env_at(db: TestDb, users: usize, clock: &ManualClock) -> Env {
    let cfg = SandboxConfig {
        users: UserSource::Generate(users),
        seed: 11,
        clock: Arc::new(clock.clone()),
        ..Default::default()
    };
    Env::with_sandbox(db, cfg).await
}

fn worker(env: &Env, clock: &ManualClock) -> Arc<Worker> {
    let mut w = env.worker();
    w.clock = Arc::new(clock.clone());
    Arc::new(w)
}

/// One `run --due` pass at the clock's time, as the command runs it: the work due,
/// each under its campaign's lease. Returns what ran.
async fn due_pass(env: &Env, clock: &ManualClock, opts: PassOptions) -> Vec<(String, Work)> {
    let w = worker(env, clock);
    let pass = reverify::schedule::pass(env.store(), "test", clock.now(), opts).await.unwrap();
    let mut ran = Vec::new();
    for (c, work) in pass.due {
        let name = c.name.to_string();
        let progress = Arc::new(Progress::default());
        match reverify::schedule::run_work(reverify::schedule::RunWork {
            worker: w.clone(),
            campaign: c,
            work,
            linger_until: None,
            progress,
            stop: CancellationToken::new(),
        })
        .await
        {
            Scheduled::Ran(_) | Scheduled::AlreadyRan => ran.push((name, work)),
            other => panic!("{name}: {other:?}"),
        }
    }
    ran
}

/// (user, status, reason, not_before) of every target of the campaign.
async fn targets(env: &Env, campaign_id: i64) -> Vec<(String, String, Option<String>, Option<i64>)> {
    sqlx::query(
        "SELECT user_id, status, reason, not_before FROM campaign_targets WHERE campaign_id = $1 ORDER BY user_id",
    )
    .bind(campaign_id)
    .fetch_all(env.db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("user_id"), r.get("status"), r.get("reason"), r.get("not_before")))
    .collect()
}

/// The users waiting (deferred or pending) for `reason`, with the latest time any
/// of them is due.
async fn waiting_for(env: &Env, campaign_id: i64, reason: &str) -> (Vec<String>, Option<DateTime<Utc>>) {
    let rows: Vec<_> = targets(env, campaign_id)
        .await
        .into_iter()
        .filter(|(_, s, r, _)| (s == "deferred" || s == "pending") && r.as_deref() == Some(reason))
        .collect();
    let latest = rows.iter().filter_map(|r| r.3).max().map(|ms| DateTime::from_timestamp_millis(ms).unwrap());
    (rows.into_iter().map(|r| r.0).collect(), latest)
}

/// Moves the clock past the latest end of the users waiting for `reason`, lets
/// `take` (a pass, or the daemon) act, and checks that each user whose hold had
/// ended was taken: notified, or held again by a later hold (a rejection is dated
/// when first seen, a retry may fail again). Repeats until nobody waits for it.
async fn each_taken_when_due<F, Fut>(env: &Env, clock: &ManualClock, campaign_id: i64, reason: &str, mut take: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for round in 0..4 {
        let before: Vec<_> = targets(env, campaign_id)
            .await
            .into_iter()
            .filter(|(_, s, r, _)| (s == "deferred" || s == "pending") && r.as_deref() == Some(reason))
            .collect();
        let Some(latest) = before.iter().filter_map(|t| t.3).max() else {
            assert!(round > 0, "nobody waits for {reason}: {:?}", targets(env, campaign_id).await);
            return;
        };
        let latest = DateTime::from_timestamp_millis(latest).unwrap();
        if latest > clock.now() + chrono::Duration::seconds(2) {
            // just before: the last of them still waits
            clock.set(latest - chrono::Duration::seconds(1));
            take().await;
            let last = before.iter().max_by_key(|t| t.3).unwrap();
            let now = targets(env, campaign_id).await.into_iter().find(|t| t.0 == last.0).unwrap();
            assert_eq!((now.1.as_str(), now.3), (last.1.as_str(), last.3), "{reason}: taken before its time");
        }
        clock.set(latest + chrono::Duration::seconds(1));
        take().await;
        let after: HashMap<String, _> = targets(env, campaign_id).await.into_iter().map(|t| (t.0.clone(), t)).collect();
        for (user, _, _, due) in &before {
            let (_, status, _, next) = &after[user];
            let held_again = (status == "deferred" || status == "pending") && next.is_some_and(|n| Some(n) > *due);
            assert!(status == "notified" || held_again, "{reason}: {user} was not taken: {:?}", after[user]);
        }
    }
    panic!("{reason}: still waiting after 4 rounds: {:?}", waiting_for(env, campaign_id, reason).await);
}

async fn status_of(env: &Env, campaign_id: i64, user: &str) -> String {
    targets(env, campaign_id).await.into_iter().find(|t| t.0 == user).map(|t| t.1).unwrap()
}

async fn exec(env: &Env, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(env.db.pool()).await.unwrap();
}

/// The sandbox's users in `state` (as the store holds them).
async fn users_in(env: &Env, state: &str) -> Vec<String> {
    sqlx::query("SELECT user_id FROM users WHERE verification_state = $1 ORDER BY user_id")
        .bind(state)
        .fetch_all(env.db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("user_id"))
        .collect()
}

/// Holds three UNVERIFIED users back from the ledger's side, as of `t0`: one in
/// its failure cooldown, one at the daily cap, one with three sessions still active.
async fn hold_back(env: &Env, t0: DateTime<Utc>) -> [String; 3] {
    let unverified = users_in(env, "UNVERIFIED").await;
    let [failing, capped, busy] = [unverified[0].clone(), unverified[1].clone(), unverified[2].clone()];
    let ms = |t: DateTime<Utc>| t.timestamp_millis();
    exec(
        env,
        &format!(
            "UPDATE users SET consecutive_failures = 3, last_failure_at = {} WHERE user_id = '{failing}'",
            ms(t0 - chrono::Duration::minutes(10))
        ),
    )
    .await;
    let session = |user: &str, reserved: DateTime<Utc>, expires: DateTime<Utc>| {
        format!(
            "INSERT INTO verification_sessions (user_id, campaign_id, step, status, reserved_at, issued_at, \
             expires_at, updated_at, counted_at) VALUES ('{user}', NULL, 0, 'delivered', {r}, {r}, {e}, {r}, {r})",
            r = ms(reserved),
            e = ms(expires)
        )
    };
    for i in 0..10 {
        let reserved = t0 - chrono::Duration::hours(23) + chrono::Duration::minutes(i);
        exec(env, &session(&capped, reserved, reserved + chrono::Duration::minutes(5))).await;
    }
    for i in 0..3 {
        let reserved = t0 - chrono::Duration::hours(1) + chrono::Duration::minutes(i);
        exec(env, &session(&busy, reserved, t0 + chrono::Duration::minutes(30 + i))).await;
    }
    [failing, capped, busy]
}

/// How a test lets follow-up happen once the clock has moved.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Driver {
    /// A `run --due` pass at the clock's time.
    RunDue,
    /// The daemon's loop, running all along (reading the campaigns every 50 ms):
    /// wait until every user due by now has been taken (or give it a moment when
    /// none is).
    Daemon,
}

impl Driver {
    async fn take(self, env: &Env, clock: &ManualClock, campaign_ids: &[i64]) {
        match self {
            Driver::RunDue => {
                let ran = due_pass(env, clock, PassOptions::default()).await;
                assert!(ran.iter().all(|(_, w)| *w == Work::FollowUp), "{ran:?}");
            }
            Driver::Daemon => {
                let now = clock.now().timestamp_millis();
                let mut due = Vec::new();
                for id in campaign_ids {
                    for t in targets(env, *id).await {
                        let waiting = t.1 == "deferred" || t.1 == "pending";
                        if waiting && t.3.is_some_and(|n| n <= now) {
                            due.push((*id, t.0));
                        }
                    }
                }
                if due.is_empty() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    return;
                }
                until("the daemon takes the users due", || async {
                    let mut all = true;
                    for (id, user) in &due {
                        let t = targets(env, *id).await.into_iter().find(|t| &t.0 == user).unwrap();
                        let waiting_due = (t.1 == "deferred" || t.1 == "pending") && t.3.is_some_and(|n| n <= now);
                        all &= t.1 != "claimed" && !waiting_due;
                    }
                    all
                })
                .await;
            }
        }
    }
}

/// Every hold, ended in turn: the users are taken when it ends (not before), by
/// `driver`, never by a run by hand.
async fn every_hold_ends_in_a_message(db: TestDb, driver: Driver) {
    let t0 = Utc::now();
    let clock = ManualClock::new(t0);
    let env = env_at(db, 60, &clock).await;
    let [failing, capped, busy] = hold_back(&env, t0).await;
    // a schedule that never ticks during the test: follow-up alone takes the users
    let c = env.apply(&campaign_toml("follow", "schedule = \"0 0 1 1 *\"\n")).await;
    worker(&env, &clock).run_campaign(&c, Arc::new(Progress::default()), CancellationToken::new()).await.unwrap();
    // a second campaign meets an API that answers 5xx (past the client's own
    // retries): its users are pending, retried minutes later
    let flaky = env.apply(&campaign_toml("follow-5xx", "schedule = \"0 0 1 1 *\"\n")).await;
    env.sandbox.fail_next(ScriptedFault::ServerError, 100_000);
    worker(&env, &clock).run_campaign(&flaky, Arc::new(Progress::default()), CancellationToken::new()).await.unwrap();
    env.sandbox.clear_faults();

    let reasons: HashMap<String, (String, Option<String>)> =
        targets(&env, c.campaign_id).await.into_iter().map(|(u, s, r, _)| (u, (s, r))).collect();
    assert_eq!(reasons[&failing].1.as_deref(), Some("failure_cooldown"), "{reasons:?}");
    assert_eq!(reasons[&capped].1.as_deref(), Some("daily_cap"), "{reasons:?}");
    assert_eq!(reasons[&busy].1.as_deref(), Some("concurrency"), "{reasons:?}");
    assert!(reasons.values().any(|(s, _)| s == "notified"));

    let ids = [c.campaign_id, flaky.campaign_id];
    let daemon = (driver == Driver::Daemon).then(|| daemon(&env, &clock, true));
    // nothing is due before a hold ends
    if driver == Driver::RunDue {
        assert!(due_pass(&env, &clock, PassOptions::default()).await.is_empty(), "nothing due at t0");
    }

    // each hold in turn, in the order they end: just before its end the users still
    // wait; just after, every one of them is taken
    let mut order = Vec::new();
    for (campaign, reason) in [
        (&flaky, "api_unavailable"),
        (&c, "concurrency"),
        (&c, "failure_cooldown"),
        (&c, "daily_cap"),
        (&c, "rejection_cooldown"),
    ] {
        let (users, latest) = waiting_for(&env, campaign.campaign_id, reason).await;
        assert!(!users.is_empty(), "nobody waits for {reason}: {:?}", targets(&env, campaign.campaign_id).await);
        order.push((latest.unwrap(), reason, campaign.campaign_id));
    }
    order.sort();
    for (_, reason, id) in order {
        each_taken_when_due(&env, &clock, id, reason, || driver.take(&env, &clock, &ids)).await;
    }
    for u in [&failing, &capped, &busy] {
        assert_eq!(status_of(&env, c.campaign_id, u).await, "notified", "{u}");
    }

    if let Some((stop, task)) = daemon {
        stop.cancel();
        task.await.unwrap();
    }
    // nobody was ever asked beyond a limit; no run by hand after the first two
    assert_eq!(env.sandbox.stats().await.violations, 0);
    let runs: i64 = sqlx::query("SELECT COUNT(*) AS n FROM campaign_runs WHERE campaign_id = $1")
        .bind(c.campaign_id)
        .fetch_one(env.db.pool())
        .await
        .unwrap()
        .get("n");
    assert!(runs >= 4, "{runs} runs: one by hand, then a follow-up for each hold");
}

/// A reminder comes due `after` its message and once the session expired: the
/// follow-up takes it then, not before.
async fn a_reminder_is_sent_when_due(db: TestDb, driver: Driver) {
    let t0 = Utc::now();
    let clock = ManualClock::new(t0);
    let env = env_at(db, 30, &clock).await;
    let toml = campaign_toml("remind", "schedule = \"0 0 1 1 *\"\n[audience]\nstates = [\"UNVERIFIED\"]\n")
        + "[reminders]\nafter = \"30h\"\nmax = 1\n";
    let c = env.apply(&toml).await;
    worker(&env, &clock).run_campaign(&c, Arc::new(Progress::default()), CancellationToken::new()).await.unwrap();
    let ids = [c.campaign_id];
    let daemon = (driver == Driver::Daemon).then(|| daemon(&env, &clock, true));
    // a reminder coming due: after its time and its session's expiry (stamped on the
    // notified targets once their run ends)
    let stamp = || async {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT MIN(not_before) AS t FROM campaign_targets WHERE campaign_id = $1 AND status = 'notified' \
             AND not_before < {}",
            reverify::store::targets::NO_REMINDER_YET
        )))
        .bind(c.campaign_id)
        .fetch_one(env.db.pool())
        .await
        .unwrap()
        .get::<Option<i64>, _>("t")
    };
    until("a reminder's time stamped", || async { stamp().await.is_some() }).await;
    let reminder_at = DateTime::from_timestamp_millis(stamp().await.unwrap()).unwrap();
    let plan = env.store().target_follow_up_plan(c.campaign_id, clock.now()).await.unwrap().expect("a follow-up");
    assert_eq!((plan.at, plan.reasons[0].0.as_str()), (reminder_at, "reminder"), "{plan:?}");
    let reminded = || async {
        sqlx::query(
            "SELECT COUNT(*) AS n FROM campaign_targets WHERE campaign_id = $1 AND step = 1 AND status = 'notified'",
        )
        .bind(c.campaign_id)
        .fetch_one(env.db.pool())
        .await
        .unwrap()
        .get::<i64, _>("n")
    };
    assert!(reminder_at > clock.now() + chrono::Duration::hours(29), "{reminder_at}");
    clock.set(reminder_at - chrono::Duration::seconds(1));
    driver.take(&env, &clock, &ids).await;
    assert_eq!(reminded().await, 0, "a reminder before its time");
    let before = env.messages().len();
    clock.set(reminder_at + chrono::Duration::seconds(1));
    match driver {
        Driver::RunDue => driver.take(&env, &clock, &ids).await,
        Driver::Daemon => until("a reminder", || async { reminded().await > 0 }).await,
    }
    assert!(reminded().await > 0, "no reminder went out");
    until("the reminder's message", || async { env.messages().len() > before }).await;

    if let Some((stop, task)) = daemon {
        stop.cancel();
        task.await.unwrap();
    }
    assert_eq!(env.sandbox.stats().await.violations, 0);
}

both_engines!(a_reminder_is_sent_when_due_through_run_due_passes, |db: TestDb| async move {
    a_reminder_is_sent_when_due(db, Driver::RunDue).await;
});

both_engines!(a_reminder_is_sent_when_due_through_the_daemon, |db: TestDb| async move {
    a_reminder_is_sent_when_due(db, Driver::Daemon).await;
});

both_engines!(every_hold_ends_in_a_message_through_run_due_passes, |db: TestDb| async move {
    every_hold_ends_in_a_message(db, Driver::RunDue).await;
});

both_engines!(every_hold_ends_in_a_message_through_the_daemon, |db: TestDb| async move {
    every_hold_ends_in_a_message(db, Driver::Daemon).await;
});

both_engines!(schedule_only_and_no_follow_up_wait_for_the_next_tick, |db: TestDb| async move {
    let t0 = Utc::now();
    let clock = ManualClock::new(t0);
    let env = env_at(db, 40, &clock).await;
    let only = env.apply(&campaign_toml("ticks-only", "schedule = \"0 0 1 1 *\"\nschedule_only = true\n")).await;
    let plain = env.apply(&campaign_toml("plain", "schedule = \"0 0 1 1 *\"\n")).await;
    for c in [&only, &plain] {
        worker(&env, &clock).run_campaign(c, Arc::new(Progress::default()), CancellationToken::new()).await.unwrap();
    }
    let (users, _) = waiting_for(&env, only.campaign_id, "rejection_cooldown").await;
    assert!(!users.is_empty());
    // --no-follow-up: nothing at all is due
    let (_, latest) = waiting_for(&env, plain.campaign_id, "rejection_cooldown").await;
    clock.set(latest.unwrap() + chrono::Duration::seconds(1));
    assert!(due_pass(&env, &clock, PassOptions { follow_up: false }).await.is_empty());
    // follow-up: the plain campaign only, until nobody waits
    each_taken_when_due(&env, &clock, plain.campaign_id, "rejection_cooldown", || async {
        let ran = due_pass(&env, &clock, PassOptions::default()).await;
        assert!(ran.iter().all(|r| r == &("plain".to_owned(), Work::FollowUp)), "{ran:?}");
    })
    .await;
    assert_eq!(waiting_for(&env, only.campaign_id, "rejection_cooldown").await.0, users);
});

/// Starts the daemon's loop on `clock`, reading the campaigns every 50 ms.
fn daemon(env: &Env, clock: &ManualClock, follow_up: bool) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let opts = DaemonOptions { poll: Duration::from_millis(50), follow_up };
    let task = tokio::spawn(reverify::schedule::daemon::run_with(worker(env, clock), stop.clone(), opts));
    (stop, tokio::spawn(async move { task.await.unwrap().unwrap() }))
}

/// Dates the campaign back so that a tick at `tick` is its to run.
async fn created_before(env: &Env, c: &CampaignRecord, tick: DateTime<Utc>) {
    let ms = (tick - chrono::Duration::hours(1)).timestamp_millis();
    exec(env, &format!("UPDATE campaigns SET created_at = {ms} WHERE campaign_id = {}", c.campaign_id)).await;
}

// The shipped shape: a weekday tick at 09:00 in London and a 09:00-10:00 window in
// each user's zone. London's users open with the tick; Tokyo's and Los Angeles'
// windows never meet a London tick. The daemon takes each at their opening; with
// follow-up off, they wait through the next tick as well.
both_engines!(the_daemon_reaches_users_in_every_zone_of_a_window_campaign, |db: TestDb| async move {
    let tick = at("2026-11-27T09:00:00Z"); // Friday, 09:00 in London (GMT)
    let clock = ManualClock::new(tick - chrono::Duration::minutes(5));
    let env = env_at(db, 30, &clock).await;
    let zones = ["Europe/London", "Asia/Tokyo", "America/Los_Angeles"];
    env.upsert_users(|i, u| {
        u.timezone = Some(zones[i % 3].to_owned());
        u.verification_state = reverify::domain::VerificationState::Unverified;
        u.rejected_at = None;
    })
    .await;
    let window = |name: &str, extra: &str| {
        campaign_toml(name, &format!("schedule = \"0 9 * * 1-5\"\ntimezone = \"Europe/London\"\n{extra}"))
            .replace("[delivery]\n", "[delivery]\nsend_window = \"09:00-10:00\"\n")
    };
    let c = env.apply(&window("zones", "")).await;
    let off = env.apply(&window("zones-ticks-only", "schedule_only = true\n")).await;
    for x in [&c, &off] {
        created_before(&env, x, tick).await;
    }
    let zone_of: HashMap<String, String> = sqlx::query("SELECT user_id, timezone FROM users")
        .fetch_all(env.db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("user_id"), r.get("timezone")))
        .collect();
    let notified_in = |id: i64, zone: &'static str| {
        let (env, zone_of) = (&env, &zone_of);
        async move {
            let all: Vec<_> = targets(env, id).await.into_iter().filter(|t| zone_of[&t.0] == zone).collect();
            (all.iter().filter(|t| t.1 == "notified").count(), all.len())
        }
    };

    // unverified users only are asked: the sandbox's own states are the truth
    let (stop, task) = daemon(&env, &clock, true);
    clock.set(tick + chrono::Duration::seconds(30));
    until("the tick's London users", || async { notified_in(c.campaign_id, "Europe/London").await.0 > 0 }).await;
    // both tick runs have settled every user (notified, or deferred to the window)
    // before the clock moves: a run still going would read its users at the new time
    let settled = |id: i64| {
        let env = &env;
        async move {
            let all = targets(env, id).await;
            !all.is_empty() && all.iter().all(|t| t.1 != "pending" && t.1 != "claimed")
        }
    };
    until("the tick runs to settle", || async { settled(c.campaign_id).await && settled(off.campaign_id).await }).await;
    // Los Angeles opens at 17:00 UTC, Tokyo at 00:00 UTC the next day
    for (open, zone) in [("2026-11-27T17:00:05Z", "America/Los_Angeles"), ("2026-11-28T00:00:05Z", "Asia/Tokyo")] {
        let (n, _) = notified_in(c.campaign_id, zone).await;
        assert_eq!(n, 0, "{zone}: sent outside its window");
        clock.set(at(open));
        until(zone, || async { notified_in(c.campaign_id, zone).await.0 > 0 }).await;
    }
    // the ticks-only campaign's users outside London still wait, past its next tick
    clock.set(at("2026-11-30T09:00:30Z")); // Monday's tick
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.cancel();
    task.await.unwrap();
    for zone in ["America/Los_Angeles", "Asia/Tokyo"] {
        assert_eq!(notified_in(off.campaign_id, zone).await.0, 0, "{zone}: schedule_only reached them");
        assert!(notified_in(c.campaign_id, zone).await.0 > 0, "{zone}");
    }
    // and every user of the follow-up campaign whose window has opened was taken
    let now = clock.now().timestamp_millis();
    let overdue: Vec<_> = targets(&env, c.campaign_id)
        .await
        .into_iter()
        .filter(|t| t.1 == "deferred" && t.2.as_deref() == Some("send_window") && t.3.is_some_and(|n| n <= now))
        .collect();
    assert!(overdue.is_empty(), "{overdue:?}");
    let stats = env.sandbox.stats().await;
    assert_eq!(stats.violations, 0, "{:?}", stats.violations_by_kind);
});

both_engines!(a_campaign_lives_from_starts_at_to_ends_at, |db: TestDb| async move {
    let t0 = Utc::now();
    let clock = ManualClock::new(t0);
    let env = env_at(db, 40, &clock).await;
    let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let starts = t0 + chrono::Duration::hours(1);
    let ends = t0 + chrono::Duration::hours(3);
    let c = env
        .apply(&campaign_toml(
            "life",
            &format!(
                "schedule = \"*/30 * * * *\"\nstarts_at = \"{}\"\nends_at = \"{}\"\ntrack_outcomes_for = \"1h\"\n",
                rfc(starts),
                rfc(ends)
            ),
        ))
        .await;
    created_before(&env, &c, t0).await;
    // before starts_at: no tick, and a hand run is refused
    assert!(due_pass(&env, &clock, PassOptions::default()).await.is_empty());
    let e = worker(&env, &clock)
        .run_campaign(&c, Arc::new(Progress::default()), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("starts at"), "{e}");
    assert!(targets(&env, c.campaign_id).await.is_empty());
    // the first tick at or after starts_at targets
    let first = c.spec().unwrap().next_tick_after(clock.now()).unwrap();
    assert!(first >= starts && first < starts + chrono::Duration::minutes(30), "{first}");
    clock.set(first + chrono::Duration::minutes(1));
    let ran = due_pass(&env, &clock, PassOptions::default()).await;
    assert!(matches!(ran.as_slice(), [(_, Work::Tick(_))]), "{ran:?}");
    let (waiting, latest) = waiting_for(&env, c.campaign_id, "rejection_cooldown").await;
    let after_end: Vec<&String> = waiting.iter().filter(|_| latest.is_some_and(|l| l > ends)).collect();
    assert!(!after_end.is_empty(), "a rejection whose cooldown outlives the campaign");
    // at ends_at the pass completes it: the waiting are skipped, nothing more is sent
    let sent = env.messages().len();
    clock.set(ends + chrono::Duration::seconds(1));
    assert!(due_pass(&env, &clock, PassOptions::default()).await.is_empty());
    let now = env.store().campaign_get(&c.name).await.unwrap().unwrap();
    assert_eq!(now.status, CampaignStatus::Completed);
    let left: Vec<_> = targets(&env, c.campaign_id)
        .await
        .into_iter()
        .filter(|t| t.1 == "deferred" || t.1 == "pending" || t.1 == "claimed")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let ended = targets(&env, c.campaign_id).await.into_iter().filter(|t| t.2.as_deref() == Some("campaign_ended"));
    assert_eq!(ended.count(), waiting.len());
    // outcomes still move the funnel for track_outcomes_for, and no longer after it
    let notified: Vec<String> =
        targets(&env, c.campaign_id).await.into_iter().filter(|t| t.1 == "notified").map(|t| t.0).collect();
    assert!(notified.len() >= 2);
    let verified = |user: &str, at: DateTime<Utc>| {
        let (store, user) = (env.store().clone(), user.to_owned());
        async move {
            let src = reverify::store::outcomes::StateSource::sync("test");
            store.user_apply_state(&user, reverify::domain::VerificationState::Verified, at, &src).await.unwrap();
        }
    };
    verified(&notified[0], ends + chrono::Duration::minutes(30)).await;
    verified(&notified[1], ends + chrono::Duration::minutes(90)).await;
    assert_eq!(status_of(&env, c.campaign_id, &notified[0]).await, "converted", "inside track_outcomes_for");
    assert_eq!(status_of(&env, c.campaign_id, &notified[1]).await, "notified", "after track_outcomes_for");
    clock.set(latest.unwrap() + chrono::Duration::hours(30));
    assert!(due_pass(&env, &clock, PassOptions::default()).await.is_empty());
    assert_eq!(env.messages().len(), sent, "a message left after ends_at");
    let o = reverify::engine::outlook::outlook(env.store(), &now, clock.now()).await.unwrap();
    assert_eq!((o.next_tick, o.next_follow_up), (None, None));
    assert!(o.completed_at.is_some());
});

/// A bounced user re-queued for the fallback channel (issue 27) is taken by the
/// scheduler when the bounce arrives: no hand-run, no tick between (the campaign's
/// schedule ticks once a year).
async fn a_fallback_is_sent_by_the_scheduler(db: TestDb, driver: Driver) {
    use reverify::bounces::BounceSink as _;
    let clock = ManualClock::new(Utc::now());
    let mut env = env_at(db, 10, &clock).await;
    env.settings.notify_webhook_key = Some(reverify::Secret::new("whk-fallback-key-0123456789"));
    let (hook, posted) = crate::bounces::fallback_receiver().await;
    let toml = campaign_toml("fallback-due", "schedule = \"0 0 1 1 *\"\n[audience]\nstates = [\"UNVERIFIED\"]\n")
        .replace("[delivery]\n", &format!("[delivery]\nfallback = \"webhook\"\nfallback_webhook_url = \"{hook}\"\n"));
    let c = env.apply(&toml).await;
    worker(&env, &clock).run_campaign(&c, Arc::new(Progress::default()), CancellationToken::new()).await.unwrap();
    let ids = [c.campaign_id];
    let daemon = (driver == Driver::Daemon).then(|| daemon(&env, &clock, true));
    // nothing is due once the run is done
    driver.take(&env, &clock, &ids).await;
    assert!(posted.lock().unwrap().is_empty());

    // one message bounces, named by its VERP token
    let row = sqlx::query("SELECT session_id, user_id FROM verification_sessions WHERE campaign_id = $1 LIMIT 1")
        .bind(c.campaign_id)
        .fetch_one(env.db.pool())
        .await
        .unwrap();
    let (session, user): (i64, String) = (row.get("session_id"), row.get("user_id"));
    let token = env.settings.verp_key().unwrap().token(reverify::domain::bounce::MessageRef::Session(session));
    let sink = reverify::engine::bounces::StoreBounceSink::new(env.store().clone(), env.settings.verp_key());
    let report = reverify::domain::bounce::BounceReport {
        source: reverify::domain::bounce::BounceSource::Mailbox,
        dedupe_id: "dsn-due".into(),
        keys: vec![reverify::domain::bounce::BounceKey::Token(token)],
        kind: reverify::domain::bounce::BounceKind::Hard,
        status_code: Some("5.1.1".into()),
        diagnostic: None,
        occurred_at: None,
    };
    assert_eq!(sink.record(report).await.unwrap(), reverify::bounces::Recorded::Applied);

    // the scheduler takes it as it is: the clock does not move
    match driver {
        Driver::RunDue => driver.take(&env, &clock, &ids).await,
        // the webhook is posted before the delivery is recorded: wait for both
        Driver::Daemon => {
            until("the fallback, recorded", || async {
                !posted.lock().unwrap().is_empty() && status_of(&env, c.campaign_id, &user).await == "notified"
            })
            .await
        }
    }
    assert_eq!(*posted.lock().unwrap(), vec![user.clone()], "the bounced user, through the fallback");
    assert_eq!(status_of(&env, c.campaign_id, &user).await, "notified");
    if let Some((stop, task)) = daemon {
        stop.cancel();
        task.await.unwrap();
    }
    assert_eq!(env.sandbox.stats().await.violations, 0);
}

both_engines!(a_fallback_is_sent_through_run_due_passes, |db: TestDb| async move {
    a_fallback_is_sent_by_the_scheduler(db, Driver::RunDue).await;
});

both_engines!(a_fallback_is_sent_through_the_daemon, |db: TestDb| async move {
    a_fallback_is_sent_by_the_scheduler(db, Driver::Daemon).await;
});
