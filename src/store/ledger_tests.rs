//! Targeting, claiming and the ledger, on both engines.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::Row;

use super::ledger::{Reservation, ReserveParams, SettleIfAmbiguousParams};
use super::sessions::{DeliveryParams, DeliveryRecord, IssuedParams, SessionLife};
use super::targets::{Claim, ClaimBatchParams, SettleParams};
use super::{Store, StoreError, to_millis};
use crate::both_engines;
use crate::domain::spec::Audience;
use crate::domain::{DeferReason, Region, TargetReason, TargetStatus, Transition, VerificationState};
use crate::store::testing::TestDb;

/// The claim `worker` holds on (campaign, user).
fn held(campaign_id: i64, user_id: &str, worker: &str) -> Claim {
    Claim { campaign_id, user_id: crate::domain::UserId::parse(user_id).unwrap(), worker: worker.to_owned() }
}

/// [`Store::session_reserve`] with its parameters in a row.
async fn reserve_fresh(
    s: &Store,
    (campaign_id, user_id, step, worker): (i64, &str, i64, &str),
    now: DateTime<Utc>,
    life: impl Into<SessionLife>,
    fresh: Option<VerificationState>,
) -> Result<Reservation, StoreError> {
    let fresh = fresh.map(|state| super::outcomes::Fresh { state, asked_at: now });
    let claim = held(campaign_id, user_id, worker);
    s.session_reserve(ReserveParams { claim: &claim, step, now, life: life.into(), fresh }).await
}

/// [`Store::session_reserve`] without a fresh state.
async fn reserve(
    s: &Store,
    target: (i64, &str, i64, &str),
    now: DateTime<Utc>,
    life: impl Into<SessionLife>,
) -> Result<Reservation, StoreError> {
    reserve_fresh(s, target, now, life, None).await
}

/// [`Store::session_record_delivery`] with its parameters in a row.
async fn record_delivery(
    s: &Store,
    (campaign_id, user_id, session_id): (i64, &str, i64),
    record: DeliveryRecord,
    worker: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let claim = held(campaign_id, user_id, worker);
    let p = DeliveryParams { claim: &claim, id: session_id, outcome: record.into(), now };
    s.session_record_delivery(p).await
}

/// [`Store::target_settle`] to `status` for `reason`.
async fn settle(
    s: &Store,
    (campaign_id, user_id, worker): (i64, &str, &str),
    (status, reason): (TargetStatus, TargetReason),
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let to = Transition::new(status, reason, None);
    s.target_settle(SettleParams { claim: &held(campaign_id, user_id, worker), to, now }).await
}

/// [`Store::session_settle_if_ambiguous`] with its parameters in a row.
async fn settle_if_ambiguous(
    s: &Store,
    (campaign_id, user_id, step, worker): (i64, &str, i64, &str),
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    s.session_settle_if_ambiguous(SettleIfAmbiguousParams { claim: &held(campaign_id, user_id, worker), step, now })
        .await
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

fn uid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// A seeded user's state, region, rejection time and tags.
struct Profile<'a> {
    state: &'a str,
    region: &'a str,
    rejected_at: Option<DateTime<Utc>>,
    tags: &'a str,
}

async fn user(store: &Store, n: u32, p: Profile<'_>) {
    let Profile { state, region, rejected_at, tags } = p;
    sqlx::query(
        "INSERT INTO users (user_id, email, region, verification_state, rejected_at, refresh_token_enc, token_key_id, \
           tags, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'k', $7, 0, 0)",
    )
    .bind(uid(n))
    .bind(format!("u{n}@example.test"))
    .bind(region)
    .bind(state)
    .bind(rejected_at.map(to_millis))
    .bind(vec![1u8, 2, 3])
    .bind(tags)
    .execute(store.pool())
    .await
    .unwrap();
}

async fn campaign(store: &Store, name: &str) -> i64 {
    sqlx::query(
        "INSERT INTO campaigns (name, spec, spec_hash, status, created_at, updated_at) \
         VALUES ($1, '', '', 'active', 0, 0) RETURNING campaign_id",
    )
    .bind(name)
    .fetch_one(store.pool())
    .await
    .unwrap()
    .try_get("campaign_id")
    .unwrap()
}

async fn status_of(store: &Store, campaign_id: i64, n: u32) -> (String, Option<String>, Option<i64>) {
    let r =
        sqlx::query("SELECT status, reason, not_before FROM campaign_targets WHERE campaign_id = $1 AND user_id = $2")
            .bind(campaign_id)
            .bind(uid(n))
            .fetch_one(store.pool())
            .await
            .unwrap();
    (r.get("status"), r.get("reason"), r.get("not_before"))
}

const LEASE: Duration = Duration::from_secs(30);

/// A claim of up to `limit` targets of `c` by `worker` at `now`, for [`LEASE`].
fn claim(c: i64, worker: &str, limit: i64, now: DateTime<Utc>) -> ClaimBatchParams<'_> {
    ClaimBatchParams { campaign_id: c, worker, limit, now, lease: LEASE }
}
const DAY: Duration = Duration::from_secs(86_400);

both_engines!(targeting_is_set_based_filtered_and_idempotent, |db: TestDb| async move {
    let s = &db.store;
    let now = t0();
    user(s, 1, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: ",vip," }).await;
    user(s, 2, Profile { state: "UNVERIFIED", region: "us", rejected_at: None, tags: "" }).await;
    user(
        s,
        3,
        Profile { state: "REJECTED", region: "intl", rejected_at: Some(now - chrono::Duration::hours(30)), tags: "" },
    )
    .await;
    user(
        s,
        4,
        Profile { state: "REJECTED", region: "intl", rejected_at: Some(now - chrono::Duration::hours(2)), tags: "" },
    )
    .await;
    user(s, 5, Profile { state: "VERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    user(s, 6, Profile { state: "PENDING", region: "intl", rejected_at: None, tags: "" }).await;
    user(s, 7, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: ",vip_x," }).await;
    sqlx::query("UPDATE users SET refresh_token_enc = NULL WHERE user_id = $1")
        .bind(uid(2))
        .execute(s.pool())
        .await
        .unwrap();
    let c = campaign(s, "c").await;
    let audience = Audience::default();
    let plan = s.campaign_plan(c, &audience, now).await.unwrap();
    let get = |b: &str| plan.iter().find(|p| p.bucket == b).map_or(0, |p| p.count);
    assert_eq!(get("target"), 3, "{plan:?}");
    assert_eq!(get("target_deferred"), 1, "{plan:?}");
    assert_eq!(get("no_refresh_token"), 1, "{plan:?}");
    assert_eq!(get("not_matching_state"), 2, "{plan:?}");

    assert_eq!(s.target_add_matching(c, &audience, now).await.unwrap(), 4);
    assert_eq!(s.target_add_matching(c, &audience, now).await.unwrap(), 0, "idempotent");
    assert_eq!(status_of(s, c, 1).await.0, "pending");
    let (st, reason, nb) = status_of(s, c, 4).await;
    assert_eq!((st.as_str(), reason.as_deref()), ("deferred", Some("rejection_cooldown")));
    assert_eq!(nb, Some(to_millis(now + chrono::Duration::hours(22))), "deferred until the cooldown ends");

    // filters: a tag (with '_' taken literally), a region, a cap
    let c2 = campaign(s, "c2").await;
    let tagged = Audience { tags: vec!["vip".into()], ..Audience::default() };
    assert_eq!(s.target_add_matching(c2, &tagged, now).await.unwrap(), 1);
    let c3 = campaign(s, "c3").await;
    let us = Audience { regions: vec![Region::Intl], max_users: Some(2), ..Audience::default() };
    assert_eq!(s.target_add_matching(c3, &us, now).await.unwrap(), 2);
    assert_eq!(s.target_add_matching(c3, &us, now).await.unwrap(), 0, "max_users holds across runs");
    let c4 = campaign(s, "c4").await;
    let rejected = Audience { states: vec![VerificationState::Rejected], ..Audience::default() };
    // the run's summary counts the one deferred at targeting (user 4, in the cooldown)
    let counted = s.target_add_matching_counted(c4, &rejected, now).await.unwrap();
    assert_eq!(counted, crate::store::targets::Targeted { added: 2, deferred: 1 });
    let c5 = campaign(s, "c5").await;
    let unverified = Audience { states: vec![VerificationState::Unverified], ..Audience::default() };
    let counted = s.target_add_matching_counted(c5, &unverified, now).await.unwrap();
    assert_eq!(counted, crate::store::targets::Targeted { added: 2, deferred: 0 });
});

// Without ON CONFLICT (issue 8), only the advisory lock (Postgres) or the single
// writer (SQLite) keeps two passes from inserting the same target: a duplicate
// would fail on the primary key here.
both_engines!(overlapping_targeting_passes_add_each_user_once, |db: TestDb| async move {
    let s = &db.store;
    let now = t0();
    for n in 0..300 {
        user(s, n, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    }
    let c = campaign(s, "c").await;
    let all = Audience::default();
    let (a, b, d) = tokio::join!(s.target_add_matching(c, &all, now), s.target_add_matching(c, &all, now), async {
        tokio::task::yield_now().await;
        s.target_add_matching(c, &all, now).await
    });
    assert_eq!(a.unwrap() + b.unwrap() + d.unwrap(), 300);
    let rows: i64 = sqlx::query("SELECT COUNT(DISTINCT user_id) AS n FROM campaign_targets WHERE campaign_id = $1")
        .bind(c)
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get("n");
    assert_eq!(rows, 300);
});

// campaign_targets has no foreign key (issue 8): targeting checks the campaign itself.
both_engines!(targeting_an_unknown_campaign_is_refused, |db: TestDb| async move {
    let s = &db.store;
    user(s, 1, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    let err = s.target_add_matching(4242, &Audience::default(), t0()).await.unwrap_err();
    assert!(matches!(err, crate::store::StoreError::NotFound { what: "campaign", .. }), "{err}");
    let rows: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM campaign_targets").fetch_one(s.pool()).await.unwrap().get("n");
    assert_eq!(rows, 0);
});

both_engines!(a_claim_parses_its_users_and_a_row_that_does_not_parse_is_its_error, |db: TestDb| async move {
    let s = &db.store;
    let now = t0();
    for n in 1..=2 {
        user(s, n, Profile { state: "UNVERIFIED", region: "us", rejected_at: None, tags: "" }).await;
    }
    sqlx::query("UPDATE users SET locale = 'de-AT', timezone = 'Mars/Olympus' WHERE user_id = $1")
        .bind(uid(1))
        .execute(s.pool())
        .await
        .unwrap();
    let c = campaign(s, "c").await;
    s.target_add_matching(c, &Audience::default(), now).await.unwrap();
    let claimed = s.target_claim_batch(claim(c, "w", 1, now)).await.unwrap();
    let [t] = claimed.as_slice() else { panic!("one target: {claimed:?}") };
    assert_eq!(t.claim, held(c, &uid(1), "w"));
    let r = &t.recipient;
    assert_eq!((r.user_id.as_str(), r.email.as_str()), (uid(1).as_str(), "u1@example.test"));
    assert_eq!((r.region, r.verification_state), (Region::Us, VerificationState::Unverified));
    assert_eq!(r.locale_tag(), Some("de-AT"));
    // a zone that names none is kept as stored (the run reads the campaign's)
    assert_eq!(r.time_zone, Some(crate::domain::TimeZone::Unknown("Mars/Olympus".into())));
    assert_eq!(r.zone(), None);

    // an address that does not parse: that target is failed `invalid_user_record`
    // (not dropped, not claimed again), and the claim goes on with the others
    user(s, 3, Profile { state: "UNVERIFIED", region: "us", rejected_at: None, tags: "" }).await;
    sqlx::query("UPDATE users SET email = 'not an address' WHERE user_id = $1")
        .bind(uid(2))
        .execute(s.pool())
        .await
        .unwrap();
    s.target_add_matching(c, &Audience::default(), now).await.unwrap();
    let claimed = s.target_claim_batch(claim(c, "w", 10, now)).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|t| t.claim.user_id.as_str()).collect();
    assert_eq!(ids, vec![uid(3).as_str()], "the parsable user is claimed");
    let row =
        sqlx::query("SELECT status, reason, lease_owner FROM campaign_targets WHERE campaign_id = $1 AND user_id = $2")
            .bind(c)
            .bind(uid(2))
            .fetch_one(s.pool())
            .await
            .unwrap();
    let (status, reason, owner): (String, Option<String>, Option<String>) =
        (row.get("status"), row.get("reason"), row.get("lease_owner"));
    assert_eq!((status.as_str(), reason.as_deref(), owner), ("failed", Some("invalid_user_record"), None));
    // through the shared transition: its audit event names the user and the reason
    let detail: String =
        sqlx::query("SELECT detail FROM events WHERE kind = 'target.failed' AND campaign_id = $1 AND user_id = $2")
            .bind(c)
            .bind(uid(2))
            .fetch_one(s.pool())
            .await
            .unwrap()
            .get("detail");
    assert!(detail.contains("\"invalid_user_record\""), "{detail}");
    assert!(s.target_claim_batch(claim(c, "w", 10, now)).await.unwrap().is_empty(), "not claimed again");
});

both_engines!(claims_are_exclusive_and_expired_leases_are_rescued, |db: TestDb| async move {
    let s = &db.store;
    let now = t0();
    for n in 0..50 {
        user(s, n, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    }
    let c = campaign(s, "c").await;
    s.target_add_matching(c, &Audience::default(), now).await.unwrap();
    let (a, b) = tokio::join!(
        s.target_claim_batch(claim(c, "worker-a", 30, now)),
        s.target_claim_batch(claim(c, "worker-b", 30, now))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 50);
    let mut ids: Vec<&str> = a.iter().chain(&b).map(|t| t.claim.user_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 50, "no user claimed twice");
    assert!(s.target_claim_batch(claim(c, "worker-c", 10, now)).await.unwrap().is_empty());

    // a's heartbeat keeps its claims; b dies: its claims come back after the lease
    let later = now + chrono::Duration::seconds(20);
    s.target_heartbeat(c, "worker-a", later, LEASE).await.unwrap();
    let after = now + chrono::Duration::seconds(31);
    let rescued = s.target_claim_batch(claim(c, "worker-c", 100, after)).await.unwrap();
    assert_eq!(rescued.len(), b.len(), "only the dead worker's claims are rescued");
    assert!(rescued.iter().all(|t| t.attempts == 2));

    // released claims are due at once and the attempt is not counted
    let ids: Vec<String> = rescued.iter().map(|t| t.claim.user_id.to_string()).collect();
    assert_eq!(s.target_release(c, "worker-c", &ids, after).await.unwrap(), ids.len() as u64);
    let again = s.target_claim_batch(claim(c, "worker-d", 100, after)).await.unwrap();
    assert_eq!(again.len(), ids.len());
});

both_engines!(the_ledger_enforces_concurrency_and_the_daily_cap_across_campaigns, |db: TestDb| async move {
    let s = &db.store;
    let mut now = t0();
    user(s, 1, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    // three campaigns reserve for the same user with 24 h sessions: 3 fit, the 4th waits
    let mut reserved = 0;
    for i in 0..4 {
        let c = campaign(s, &format!("c{i}")).await;
        s.target_add_matching(c, &Audience::default(), now).await.unwrap();
        s.target_claim_batch(claim(c, "w", 10, now)).await.unwrap();
        match reserve(s, (c, &uid(1), 0, "w"), now, DAY).await.unwrap() {
            Reservation::Reserved { .. } => reserved += 1,
            Reservation::Deferred { reason, until } => {
                assert_eq!(reason, DeferReason::Concurrency);
                assert_eq!(until, now + chrono::Duration::days(1));
                assert_eq!(status_of(s, c, 1).await.0, "deferred");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(reserved, 3);

    // short sessions: the daily cap of 10 is what stops the 11th
    user(s, 2, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    let mut ok = 0;
    for i in 0..11 {
        let c = campaign(s, &format!("d{i}")).await;
        s.target_add_matching(c, &Audience::default(), now).await.unwrap();
        s.target_claim_batch(claim(c, "w", 10, now)).await.unwrap();
        match reserve(s, (c, &uid(2), 0, "w"), now, Duration::from_secs(60)).await.unwrap() {
            Reservation::Reserved { .. } => ok += 1,
            Reservation::Deferred { reason, .. } => assert_eq!(reason, DeferReason::DailyCap, "at {i}"),
            Reservation::Skipped(_) => {}
            other => panic!("{other:?}"),
        }
        now += chrono::Duration::minutes(10);
    }
    assert_eq!(ok, 10);
});

/// `session_mark_issued` for user `n`'s session at step 0, a day's life.
/// Which user's session, by which worker, when.
struct Issue<'a> {
    n: u32,
    worker: &'a str,
    session_id: i64,
    now: DateTime<Utc>,
}

async fn issued(s: &Store, c: i64, i: Issue<'_>) -> bool {
    let Issue { n, worker, session_id, now } = i;
    let user = uid(n);
    let life = SessionLife { ttl: DAY, margin: std::time::Duration::ZERO };
    let p = IssuedParams { claim: &held(c, &user, worker), step: 0, session_id, now, life };
    s.session_mark_issued(p).await.unwrap()
}

both_engines!(
    a_worker_that_lost_its_claim_gets_no_issued_session_and_the_row_keeps_counting,
    |db: TestDb| async move {
        let s = &db.store;
        let now = t0();
        user(s, 1, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
        let c = campaign(s, "c").await;
        s.target_add_matching(c, &Audience::default(), now).await.unwrap();
        assert_eq!(s.target_claim_batch(claim(c, "slow", 10, now)).await.unwrap().len(), 1);
        let Reservation::Reserved { session_id } = reserve(s, (c, &uid(1), 0, "slow"), now, DAY).await.unwrap() else {
            panic!("reserved")
        };
        // the slow worker stalls past its lease while the API makes the session; another
        // worker takes the target over
        let later = now + chrono::Duration::seconds(60);
        assert_eq!(s.target_claim_batch(claim(c, "next", 10, later)).await.unwrap().len(), 1);
        // the answer arrives: the claim is gone, so the URL must not be sent
        assert!(
            !issued(s, c, Issue { n: 1, worker: "slow", session_id, now: later }).await,
            "a lost claim must not be told to send"
        );
        let row = sqlx::query("SELECT status, issued_at FROM verification_sessions WHERE session_id = $1")
            .bind(session_id)
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(row.get::<String, _>("status"), "orphaned");
        assert_eq!(row.get::<Option<i64>, _>("issued_at"), Some(to_millis(later)));
        // it keeps counting: three more sessions reach the concurrency limit
        for _ in 0..2 {
            assert!(matches!(
                reserve(s, (c, &uid(1), 0, "next"), later, DAY).await.unwrap(),
                Reservation::Reserved { .. }
            ));
        }
        assert!(matches!(
            reserve(s, (c, &uid(1), 0, "next"), later, DAY).await.unwrap(),
            Reservation::Deferred { reason: DeferReason::Concurrency, .. }
        ));
    }
);

both_engines!(an_issued_session_counts_from_the_answer_plus_the_margin, |db: TestDb| async move {
    let s = &db.store;
    let now = t0();
    user(s, 1, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    let c = campaign(s, "c").await;
    s.target_add_matching(c, &Audience::default(), now).await.unwrap();
    s.target_claim_batch(claim(c, "w", 10, now)).await.unwrap();
    let life = SessionLife { ttl: DAY, margin: std::time::Duration::from_secs(300) };
    let Reservation::Reserved { session_id } = reserve(s, (c, &uid(1), 0, "w"), now, life).await.unwrap() else {
        panic!("reserved")
    };
    // the API answers 40 s after the reservation (limiter, retries of other users)
    let answered = now + chrono::Duration::seconds(40);
    let user1 = uid(1);
    let p = IssuedParams { claim: &held(c, &user1, "w"), step: 0, session_id, now: answered, life };
    assert!(s.session_mark_issued(p).await.unwrap());
    let row = sqlx::query("SELECT counted_at, expires_at FROM verification_sessions WHERE session_id = $1")
        .bind(session_id)
        .fetch_one(s.pool())
        .await
        .unwrap();
    let to = to_millis;
    assert_eq!(row.get::<i64, _>("counted_at"), to(answered + chrono::Duration::minutes(5)));
    assert_eq!(
        row.get::<i64, _>("expires_at"),
        to(answered + chrono::Duration::hours(24) + chrono::Duration::minutes(5))
    );
});

both_engines!(a_crash_after_the_session_is_never_a_second_message, |db: TestDb| async move {
    let s = &db.store;
    let now = t0();
    user(s, 1, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    user(s, 2, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    let c = campaign(s, "c").await;
    s.target_add_matching(c, &Audience::default(), now).await.unwrap();
    s.target_claim_batch(claim(c, "dead", 10, now)).await.unwrap();
    // user 1: died after the API answered (issued); user 2: died before it answered (reserved)
    let Reservation::Reserved { session_id } = reserve(s, (c, &uid(1), 0, "dead"), now, DAY).await.unwrap() else {
        panic!()
    };
    assert!(issued(s, c, Issue { n: 1, worker: "dead", session_id, now }).await);
    reserve(s, (c, &uid(2), 0, "dead"), now, DAY).await.unwrap();

    let after = now + chrono::Duration::seconds(31);
    assert_eq!(s.target_claim_batch(claim(c, "next", 10, after)).await.unwrap().len(), 2);
    assert_eq!(reserve(s, (c, &uid(1), 0, "next"), after, DAY).await.unwrap(), Reservation::Ambiguous);
    assert_eq!(status_of(s, c, 1).await, ("failed".into(), Some("delivery_unknown".into()), None));
    assert!(matches!(reserve(s, (c, &uid(2), 0, "next"), after, DAY).await.unwrap(), Reservation::Reserved { .. }));
    // the interrupted reservation still counts against the user's limits
    let counted: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM verification_sessions WHERE user_id = $1 AND status IN ('unknown', 'reserved')",
    )
    .bind(uid(2))
    .fetch_one(s.pool())
    .await
    .unwrap()
    .get("n");
    assert_eq!(counted, 2);
    // a worker whose claim was taken cannot reserve
    assert_eq!(reserve(s, (c, &uid(2), 0, "dead"), after, DAY).await.unwrap(), Reservation::LostClaim);
});

both_engines!(an_earlier_issued_session_settles_the_target_before_any_api_call, |db: TestDb| async move {
    let s = &db.store;
    let now = t0();
    user(s, 1, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    user(s, 2, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    let c = campaign(s, "c").await;
    s.target_add_matching(c, &Audience::default(), now).await.unwrap();
    let claimed = s.target_claim_batch(claim(c, "dead", 10, now)).await.unwrap();
    assert_eq!(claimed.len(), 2);
    // a first attempt is not ambiguous: one read, nothing written
    assert!(!settle_if_ambiguous(s, (c, &uid(1), 0, "dead"), now).await.unwrap());
    // user 1: the worker fetched a session, then died before recording the delivery
    let Reservation::Reserved { session_id } = reserve(s, (c, &uid(1), 0, "dead"), now, DAY).await.unwrap() else {
        panic!("reserved")
    };
    assert!(issued(s, c, Issue { n: 1, worker: "dead", session_id, now }).await);
    // both claims expire; another worker takes them
    let later = now + chrono::Duration::seconds(60);
    assert_eq!(s.target_claim_batch(claim(c, "next", 10, later)).await.unwrap().len(), 2);
    // the dead worker cannot settle what is no longer its own
    assert!(!settle_if_ambiguous(s, (c, &uid(1), 0, "dead"), later).await.unwrap());
    assert!(settle_if_ambiguous(s, (c, &uid(1), 0, "next"), later).await.unwrap());
    assert_eq!(status_of(s, c, 1).await, ("failed".into(), Some("delivery_unknown".into()), None));
    assert!(!settle_if_ambiguous(s, (c, &uid(2), 0, "next"), later).await.unwrap());
    assert_eq!(status_of(s, c, 2).await.0, "claimed");
    // the ledger row stays counted, as unknown
    let st: String = sqlx::query("SELECT status FROM verification_sessions WHERE session_id = $1")
        .bind(session_id)
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get("status");
    assert_eq!(st, "unknown");
});

both_engines!(a_delivery_records_delivered_failed_or_unknown_and_only_failed_is_requeued, |db: TestDb| async move {
    let s = &db.store;
    let now = t0();
    for n in 1..=3 {
        user(s, n, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    }
    let c = campaign(s, "c").await;
    s.target_add_matching(c, &Audience::default(), now).await.unwrap();
    assert_eq!(s.target_claim_batch(claim(c, "w", 10, now)).await.unwrap().len(), 3);
    let records = [(1, DeliveryRecord::Delivered), (2, DeliveryRecord::Failed), (3, DeliveryRecord::Unknown)];
    // all three in flight at once, so that Postgres records them in one group
    let ids = futures::future::join_all(records.iter().map(|(n, record)| async move {
        let Reservation::Reserved { session_id } = reserve(s, (c, &uid(*n), 0, "w"), now, DAY).await.unwrap() else {
            panic!("reserved")
        };
        assert!(issued(s, c, Issue { n: *n, worker: "w", session_id, now }).await);
        assert!(record_delivery(s, (c, &uid(*n), session_id), *record, "w", now).await.unwrap());
        session_id
    }))
    .await;
    let expected = [
        (("notified", None), "delivered", "target.notified"),
        (("failed", Some("delivery_failed")), "delivery_failed", "target.failed"),
        (("failed", Some("delivery_unknown")), "unknown", "target.failed"),
    ];
    for ((n, session_id), ((status, reason), ledger, kind)) in (1..=3).zip(ids).zip(expected) {
        let (st, why, _) = status_of(s, c, n).await;
        assert_eq!((st.as_str(), why.as_deref()), (status, reason), "user {n}");
        let row = sqlx::query(
            "SELECT status, (SELECT lease_owner FROM campaign_targets WHERE campaign_id = $2 AND user_id = $3) AS owner, \
               (SELECT finalized_at FROM campaign_targets WHERE campaign_id = $2 AND user_id = $3) AS fin \
             FROM verification_sessions WHERE session_id = $1",
        )
        .bind(session_id)
        .bind(c)
        .bind(uid(n))
        .fetch_one(s.pool())
        .await
        .unwrap();
        assert_eq!(row.get::<String, _>("status"), ledger, "user {n}");
        assert_eq!(row.get::<Option<String>, _>("owner"), None, "user {n}: the claim is released");
        assert_eq!(row.get::<Option<i64>, _>("fin").is_some(), status == "failed", "user {n}: finalized");
        let event = sqlx::query(
            "SELECT kind, detail FROM events WHERE campaign_id = $1 AND user_id = $2 AND kind LIKE 'target.%'",
        )
        .bind(c)
        .bind(uid(n))
        .fetch_one(s.pool())
        .await
        .unwrap();
        assert_eq!(event.get::<String, _>("kind"), kind, "user {n}");
        let detail: serde_json::Value = serde_json::from_str(&event.get::<String, _>("detail")).unwrap();
        assert_eq!(detail["reason"].as_str(), reason, "user {n}");
    }
    // the unknown row keeps counting, like every row but a definite API refusal
    assert_eq!(s.session_count(c).await.unwrap(), 3);
    // a later run re-queues the undelivered target, never the one that may have arrived
    assert_eq!(s.target_requeue_delivery_failed(c, now).await.unwrap(), 1);
    assert_eq!(status_of(s, c, 2).await.0, "pending");
    assert_eq!(status_of(s, c, 3).await, ("failed".into(), Some("delivery_unknown".into()), None));
});

both_engines!(a_worker_whose_claim_was_taken_records_nothing_on_the_target, |db: TestDb| async move {
    let s = &db.store;
    let now = t0();
    user(s, 1, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    let c = campaign(s, "c").await;
    s.target_add_matching(c, &Audience::default(), now).await.unwrap();
    assert_eq!(s.target_claim_batch(claim(c, "slow", 10, now)).await.unwrap().len(), 1);
    let Reservation::Reserved { session_id } = reserve(s, (c, &uid(1), 0, "slow"), now, DAY).await.unwrap() else {
        panic!("reserved")
    };
    assert!(issued(s, c, Issue { n: 1, worker: "slow", session_id, now }).await);
    // the lease runs out mid-message; another worker takes the target
    let later = now + chrono::Duration::seconds(60);
    assert_eq!(s.target_claim_batch(claim(c, "next", 10, later)).await.unwrap().len(), 1);
    // the slow worker's record keeps the ledger row but moves no target
    assert!(!record_delivery(s, (c, &uid(1), session_id), DeliveryRecord::Delivered, "slow", later).await.unwrap());
    assert!(!settle(s, (c, &uid(1), "slow"), (TargetStatus::Failed, TargetReason::Forbidden), later).await.unwrap());
    assert_eq!(status_of(s, c, 1).await.0, "claimed");
    let st: String = sqlx::query("SELECT status FROM verification_sessions WHERE session_id = $1")
        .bind(session_id)
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get("status");
    assert_eq!(st, "delivered");
    // the owner's record does move it
    assert!(settle(s, (c, &uid(1), "next"), (TargetStatus::Failed, TargetReason::Forbidden), later).await.unwrap());
    assert_eq!(status_of(s, c, 1).await.0, "failed");
});

both_engines!(a_group_batches_reservations_yet_one_user_never_exceeds_the_limits, |db: TestDb| async move {
    // One writer, so that the writes queued behind the first share a group and its
    // batched statements. User 1 is a target of six campaigns at once: a batch that
    // judged them all on one reading of the ledger would reserve six; the limit is 3
    // unexpired sessions. Users 2-7 reserve beside them; user 8 verified since the
    // import (a fresh state that changes) and must get no session.
    let store = db.store.with_group_commit(crate::store::group::GroupCommit { writers: 1, max_group: 128 });
    let s = &db.store;
    let now = t0();
    for n in 1..=8 {
        user(s, n, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    }
    let mut campaigns = Vec::new();
    for i in 0..6 {
        let c = campaign(s, &format!("c{i}")).await;
        s.target_add_matching(c, &Audience::default(), now).await.unwrap();
        s.target_claim_batch(claim(c, "w", 100, now)).await.unwrap();
        campaigns.push(c);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in campaigns.iter().copied().enumerate() {
        let st = store.clone();
        tasks.spawn(async move { (1, reserve_fresh(&st, (c, &uid(1), 0, "w"), now, DAY, None).await.unwrap()) });
        let st = store.clone();
        let n = u32::try_from(i).unwrap() + 2; // users 2..=7, one campaign each
        let fresh = Some(VerificationState::Unverified);
        tasks.spawn(async move { (n, reserve_fresh(&st, (c, &uid(n), 0, "w"), now, DAY, fresh).await.unwrap()) });
    }
    let st = store.clone();
    let c0 = campaigns[0];
    tasks.spawn(async move {
        (8, reserve_fresh(&st, (c0, &uid(8), 0, "w"), now, DAY, Some(VerificationState::Verified)).await.unwrap())
    });
    let (mut user1_reserved, mut user1_deferred, mut others_reserved) = (0, 0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            (1, Reservation::Reserved { .. }) => user1_reserved += 1,
            (1, Reservation::Deferred { reason, .. }) => {
                assert_eq!(reason, DeferReason::Concurrency);
                user1_deferred += 1;
            }
            (8, r) => assert!(!matches!(r, Reservation::Reserved { .. }), "a verified user was reserved: {r:?}"),
            (_, Reservation::Reserved { .. }) => others_reserved += 1,
            (n, other) => panic!("user {n}: {other:?}"),
        }
    }
    assert_eq!((user1_reserved, user1_deferred, others_reserved), (3, 3, 6));
    let sessions = |n: u32| {
        sqlx::query("SELECT COUNT(*) AS n FROM verification_sessions WHERE user_id = $1")
            .bind(uid(n))
            .fetch_one(s.pool())
    };
    assert_eq!(sessions(1).await.unwrap().get::<i64, _>("n"), 3);
    assert_eq!(sessions(8).await.unwrap().get::<i64, _>("n"), 0);
    let state: String = sqlx::query("SELECT verification_state FROM users WHERE user_id = $1")
        .bind(uid(8))
        .fetch_one(s.pool())
        .await
        .unwrap()
        .get("verification_state");
    assert_eq!(state, "VERIFIED", "the fresh state was recorded with the reservation");
});

both_engines!(claims_go_on_from_their_cursor_and_a_pass_from_the_start_finds_the_rest, |db: TestDb| async move {
    use crate::store::targets::ClaimCursor;
    let s = &db.store;
    let now = t0();
    for n in 1..=8 {
        user(s, n, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
    }
    let c = campaign(s, "c").await;
    s.target_add_matching(c, &Audience::default(), now).await.unwrap();
    let ids = |batch: &[crate::store::targets::ClaimedTarget]| {
        let mut v: Vec<String> = batch.iter().map(|t| t.claim.user_id.to_string()).collect();
        v.sort();
        v
    };
    let mut cursor = ClaimCursor::start();
    let first = s.target_claim_next(claim(c, "w", 3, now), &mut cursor).await.unwrap();
    assert_eq!(ids(&first), vec![uid(1), uid(2), uid(3)], "fresh targets in user id order");
    assert_eq!(cursor.after, Some(uid(3)));
    // user 2 is given back: behind the cursor, so not taken by the next claims
    s.target_release(c, "w", &[uid(2)], now).await.unwrap();
    cursor.rescue = false;
    let second = s.target_claim_next(claim(c, "w", 3, now), &mut cursor).await.unwrap();
    assert_eq!(ids(&second), vec![uid(4), uid(5), uid(6)]);
    let third = s.target_claim_next(claim(c, "w", 3, now), &mut cursor).await.unwrap();
    assert_eq!(ids(&third), vec![uid(7), uid(8)]);
    assert!(s.target_claim_next(claim(c, "w", 3, now), &mut cursor).await.unwrap().is_empty());
    // the pass from the start finds it
    let mut again = ClaimCursor::start();
    assert_eq!(ids(&s.target_claim_next(claim(c, "w", 3, now), &mut again).await.unwrap()), vec![uid(2)]);

    // expired claims are looked for only when the cursor asks
    let later = now + chrono::Duration::seconds(60);
    let mut quiet = ClaimCursor { after: Some(uid(8)), rescue: false };
    assert!(s.target_claim_next(claim(c, "x", 10, later), &mut quiet).await.unwrap().is_empty());
    let mut rescue = ClaimCursor { after: Some(uid(8)), rescue: true };
    assert_eq!(s.target_claim_next(claim(c, "x", 10, later), &mut rescue).await.unwrap().len(), 8);
});

/// Issue 13, item 3: a reservation that waits for the user's row lock sees the
/// session its holder committed meanwhile. Before, the sessions were read in the
/// locking statement itself, from a snapshot taken before the wait: a fourth
/// concurrent session was reserved and reached the API (a 429). Postgres only:
/// SQLite's BEGIN IMMEDIATE takes the write lock before anything is read.
mod reservation_after_the_lock {
    use super::*;
    use crate::store::testing::TestDb;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = TestDb::postgres().await;
        let s = db.store.clone();
        let now = t0();
        user(&s, 1, Profile { state: "UNVERIFIED", region: "intl", rejected_at: None, tags: "" }).await;
        let mut campaigns = Vec::new();
        for name in ["a", "b", "c"] {
            let c = campaign(&s, name).await;
            s.target_add_matching(c, &Audience::default(), now).await.unwrap();
            assert_eq!(s.target_claim_batch(claim(c, "w", 10, now)).await.unwrap().len(), 1);
            campaigns.push(c);
        }
        for c in &campaigns[..2] {
            assert!(matches!(
                reserve(&s, (*c, &uid(1), 0, "w"), now, DAY).await.unwrap(),
                Reservation::Reserved { .. }
            ));
        }
        // another process holds the user's row: it has reserved a third session and
        // not committed yet
        let mut holder = s.begin_write().await.unwrap();
        sqlx::query("SELECT user_id FROM users WHERE user_id = $1 FOR UPDATE")
            .bind(uid(1))
            .fetch_one(&mut *holder)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO verification_sessions (user_id, campaign_id, step, status, reserved_at, expires_at, \
               updated_at, counted_at) VALUES ($1, NULL, 0, 'reserved', $2, $3, $2, $2)",
        )
        .bind(uid(1))
        .bind(to_millis(now))
        .bind(to_millis(now + chrono::Duration::hours(24)))
        .execute(&mut *holder)
        .await
        .unwrap();
        let (s2, c) = (s.clone(), campaigns[2]);
        let waiting = tokio::spawn(async move { reserve(&s2, (c, &uid(1), 0, "w"), now, DAY).await.unwrap() });
        // until the reservation waits on the lock
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let waiters: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock'",
            )
            .fetch_one(s.pool())
            .await
            .unwrap()
            .get("n");
            if waiters > 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the reservation never waited on the lock");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        holder.commit().await.unwrap();
        let r = waiting.await.unwrap();
        assert!(
            matches!(r, Reservation::Deferred { reason: DeferReason::Concurrency, .. }),
            "a fourth concurrent session: {r:?}"
        );
    }
}

async fn rejected_at(store: &Store, n: u32) -> Option<i64> {
    sqlx::query("SELECT rejected_at FROM users WHERE user_id = $1")
        .bind(uid(n))
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get("rejected_at")
}

/// A session for user `n` in a campaign of its own, issued and delivered at `at`.
async fn delivered_session(store: &Store, n: u32, at: DateTime<Utc>) {
    let c = campaign(store, &format!("first-{n}")).await;
    store.target_add_matching(c, &Audience::default(), at).await.unwrap();
    store.target_claim_batch(claim(c, "w", 10, at)).await.unwrap();
    let fresh = Some(VerificationState::Rejected);
    let r = reserve_fresh(store, (c, &uid(n), 0, "w"), at, DAY, fresh).await.unwrap();
    let Reservation::Reserved { session_id } = r else { panic!("user {n}: {r:?}") };
    assert!(issued(store, c, Issue { n, worker: "w", session_id, now: at }).await);
    assert!(record_delivery(store, (c, &uid(n), session_id), DeliveryRecord::Delivered, "w", at).await.unwrap());
}

both_engines!(a_rejected_user_seen_rejected_after_a_session_is_rejected_no_earlier_than_it, |db: TestDb| async move {
    let s = &db.store;
    let now = t0();
    let issued = now - chrono::Duration::hours(2);
    // rejected two days ago, so a session went out two hours ago; each is REJECTED
    // again now: user 1 as a run's fresh state finds it, user 2 by `users sync`
    for n in [1, 2] {
        user(
            s,
            n,
            Profile {
                state: "REJECTED",
                region: "intl",
                rejected_at: Some(now - chrono::Duration::hours(48)),
                tags: "",
            },
        )
        .await;
        delivered_session(s, n, issued).await;
        assert_eq!(rejected_at(s, n).await, Some(to_millis(now - chrono::Duration::hours(48))));
    }
    let c = campaign(s, "again").await;
    assert_eq!(s.target_add_matching(c, &Audience::default(), now).await.unwrap(), 2);
    assert_eq!(s.target_claim_batch(claim(c, "w", 10, now)).await.unwrap().len(), 2);
    let until = issued + chrono::Duration::hours(24);

    let sync = crate::store::outcomes::StateSource::sync("t");
    s.user_apply_state(&uid(2), VerificationState::Rejected, now, &sync).await.unwrap();
    assert_eq!(rejected_at(s, 2).await, Some(to_millis(issued)));
    let r = reserve(s, (c, &uid(2), 0, "w"), now, DAY).await.unwrap();
    assert_eq!(r, Reservation::Deferred { reason: DeferReason::RejectionCooldown, until });

    // the run's fresh state, recorded with the reservation (the batched statement)
    let fresh = Some(VerificationState::Rejected);
    let r = reserve_fresh(s, (c, &uid(1), 0, "w"), now, DAY, fresh).await.unwrap();
    assert_eq!(r, Reservation::Deferred { reason: DeferReason::RejectionCooldown, until });
    assert_eq!(rejected_at(s, 1).await, Some(to_millis(issued)));
    assert_eq!(
        status_of(s, c, 1).await,
        ("deferred".into(), Some("rejection_cooldown".into()), Some(to_millis(until)))
    );

    // seen again later, the time stays (it never moves back nor past the session)
    s.user_apply_state(&uid(2), VerificationState::Rejected, now + chrono::Duration::hours(1), &sync).await.unwrap();
    assert_eq!(rejected_at(s, 2).await, Some(to_millis(issued)));
});

both_engines!(a_rejection_without_a_time_is_dated_once_and_its_cooldown_ends, |db: TestDb| async move {
    use crate::domain::{Clock as _, EmailAddress, ManualClock, UserId, policy};
    use crate::store::users::UserUpsert;
    let s = &db.store;
    let clock = ManualClock::new(t0());
    let row = UserUpsert {
        user_id: UserId::parse(&uid(1)).unwrap(),
        email: EmailAddress::parse("u1@example.test").unwrap(),
        first_name: None,
        last_name: None,
        locale: None,
        timezone: None,
        region: Region::Intl,
        country: None,
        verification_state: VerificationState::Rejected,
        rejected_at: None,
        tags: vec![],
        signed_up_at: None,
        token: Some(crate::store::users::SealedToken { key_id: "k".into(), ciphertext: vec![1, 2, 3] }),
        state_confirmed_at: None,
        access: None,
    };
    s.user_upsert_batch(std::slice::from_ref(&row), clock.now()).await.unwrap();
    let first_seen = clock.now();
    assert_eq!(rejected_at(s, 1).await, Some(to_millis(first_seen)));
    let until = first_seen + chrono::Duration::hours(24);

    // two evaluations an hour apart (two campaigns targeting, and the policy on the
    // stored standing) defer until the same instant; a re-import changes nothing
    for i in 0..2 {
        let c = campaign(s, &format!("c{i}")).await;
        s.target_add_matching(c, &Audience::default(), clock.now()).await.unwrap();
        assert_eq!(
            status_of(s, c, 1).await,
            ("deferred".into(), Some("rejection_cooldown".into()), Some(to_millis(until)))
        );
        let u = s.user_get(&row.user_id).await.unwrap().unwrap();
        let standing = policy::UserStanding {
            state: u.verification_state,
            rejected_at: u.rejected_at,
            consecutive_failures: 0,
            last_failure_at: None,
        };
        let verdict = policy::standing_verdict(&standing, clock.now());
        assert_eq!(verdict, policy::Verdict::Defer { reason: DeferReason::RejectionCooldown, until });
        clock.advance(chrono::Duration::hours(1));
        s.user_upsert_batch(std::slice::from_ref(&row), clock.now()).await.unwrap();
    }
    // the cooldown ends
    clock.set(until);
    let c = campaign(s, "after").await;
    s.target_add_matching(c, &Audience::default(), clock.now()).await.unwrap();
    assert_eq!(status_of(s, c, 1).await.0, "pending");
});
