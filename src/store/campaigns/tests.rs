//! Campaign records on both engines.

use super::*;
use crate::both_engines;
use crate::store::events::EventFilter;
use crate::store::runs::{RunCounts, RunFinishParams, RunOutcome};
use crate::store::testing::TestDb;
use chrono::TimeZone;

const SPEC: &str = r#"
name = "kyc-refresh-q4"
schedule = "0 9 * * 1-5"
timezone = "Europe/London"

[audience]
states = ["UNVERIFIED", "REJECTED"]
"#;

fn parse(text: &str) -> CampaignSpec {
    CampaignSpec::from_toml(text, "t.toml").unwrap()
}

fn at(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, d, 8, 0, 0).unwrap()
}

both_engines!(apply_creates_versions_and_audits, |db: TestDb| async move {
    let s = &db.store;
    let spec = parse(SPEC);
    let (o, c) = s.campaign_apply(&spec, SPEC, "cli:a@h", at(2)).await.unwrap();
    assert_eq!(o, ApplyOutcome::Created);
    assert_eq!((c.version, c.status), (1, CampaignStatus::Active));
    assert_eq!(c.spec_toml, SPEC);
    assert_eq!(c.spec_hash, spec_hash(SPEC));
    assert_eq!(c.schedule.as_deref(), Some("0 9 * * 1-5"));
    assert_eq!(c.timezone.as_deref(), Some("Europe/London"));
    // 2 March 2026 is a Monday; 09:00 London is 09:00 UTC in March before BST
    assert_eq!(c.next_run_at, Some(Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()));
    assert_eq!(c.spec().unwrap(), spec);

    let (o, again) = s.campaign_apply(&spec, SPEC, "cli:a@h", at(3)).await.unwrap();
    assert_eq!(o, ApplyOutcome::Unchanged);
    assert_eq!(again, c);

    s.campaign_set_status(&spec.name, StatusChange::Pause, "cli:b@h", at(3)).await.unwrap();
    let changed = SPEC.replace("0 9 * * 1-5", "0 10 * * 1-5");
    let (o, v2) = s.campaign_apply(&parse(&changed), &changed, "cli:a@h", at(4)).await.unwrap();
    assert_eq!(o, ApplyOutcome::Updated);
    assert_eq!(v2.version, 2);
    assert_eq!(v2.status, CampaignStatus::Paused, "apply keeps the status");
    assert_eq!(v2.created_at, at(2));
    assert_eq!(v2.updated_at, at(4));
    assert_eq!(v2.schedule.as_deref(), Some("0 10 * * 1-5"));
    assert_eq!(v2.campaign_id, c.campaign_id);

    let events =
        s.event_list(&EventFilter { campaign_id: Some(c.campaign_id), ..Default::default() }, 0, 100).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["campaign.applied", "campaign.paused", "campaign.applied"]);
    let detail = events[2].detail.as_ref().unwrap();
    assert_eq!(detail["version"], 2);
    assert_eq!(detail["spec_hash"], spec_hash(&changed).as_str());
    assert_eq!(detail["outcome"], "updated");
    assert_eq!(events[1].actor, "cli:b@h");
    assert_eq!(events[1].detail.as_ref().unwrap()["from"], "active");

    let other_text = SPEC.replace("kyc-refresh-q4", "another");
    s.campaign_apply(&parse(&other_text), &other_text, "x", at(5)).await.unwrap();
    let names: Vec<String> = s.campaign_list().await.unwrap().iter().map(|c| c.name.to_string()).collect();
    assert_eq!(names, ["another", "kyc-refresh-q4"]);
});

both_engines!(status_transitions, |db: TestDb| async move {
    let s = &db.store;
    let spec = parse(SPEC);
    let name = spec.name.clone();
    s.campaign_apply(&spec, SPEC, "t", at(2)).await.unwrap();
    use CampaignStatus::*;
    let set = |c| {
        let name = name.clone();
        async move { s.campaign_set_status(&name, c, "t", at(3)).await }
    };
    assert_eq!(set(StatusChange::Resume).await.unwrap(), (Active, Active));
    assert_eq!(set(StatusChange::Pause).await.unwrap(), (Active, Paused));
    assert_eq!(set(StatusChange::Pause).await.unwrap(), (Paused, Paused));
    assert_eq!(set(StatusChange::Resume).await.unwrap(), (Paused, Active));
    assert_eq!(set(StatusChange::Cancel).await.unwrap(), (Active, Cancelled));
    assert_eq!(set(StatusChange::Cancel).await.unwrap(), (Cancelled, Cancelled));
    let err = set(StatusChange::Resume).await.unwrap_err().to_string();
    assert!(err.contains("campaign kyc-refresh-q4 cannot be resumed") && err.contains("cancelled"), "{err}");
    assert!(set(StatusChange::Pause).await.is_err());
    assert_eq!(s.campaign_get(&name).await.unwrap().unwrap().status, Cancelled);
    // a cancelled campaign's file cannot change, though re-applying it as is is fine
    assert_eq!(s.campaign_apply(&spec, SPEC, "t", at(4)).await.unwrap().0, ApplyOutcome::Unchanged);
    let changed = SPEC.replace("0 9", "0 11");
    let err = s.campaign_apply(&parse(&changed), &changed, "t", at(4)).await.unwrap_err().to_string();
    assert!(err.contains("kyc-refresh-q4 is cancelled"), "{err}");
    // only real changes are audited: applied, paused, resumed, cancelled
    let n = s.event_list(&EventFilter::default(), 0, 100).await.unwrap().len();
    assert_eq!(n, 4);
    let missing = CampaignName::parse("nope").unwrap();
    let err = s.campaign_set_status(&missing, StatusChange::Pause, "t", at(3)).await.unwrap_err();
    assert_eq!(err.to_string(), "campaign not found: nope");
});

#[test]
fn finished_campaigns_can_only_be_cancelled() {
    assert!(StatusChange::Resume.apply_to(CampaignStatus::Finished).is_err());
    assert!(StatusChange::Pause.apply_to(CampaignStatus::Finished).is_err());
    assert_eq!(StatusChange::Cancel.apply_to(CampaignStatus::Finished), Ok(Some(CampaignStatus::Cancelled)));
    for s in ["active", "paused", "cancelled", "finished"] {
        assert_eq!(s.parse::<CampaignStatus>().unwrap().as_str(), s);
    }
}

both_engines!(a_tick_is_done_only_when_a_run_finishes, |db: TestDb| async move {
    let s = &db.store;
    let spec = parse(SPEC);
    let (_, c) = s.campaign_apply(&spec, SPEC, "cli:a@h", at(1)).await.unwrap();
    let id = c.campaign_id;
    let (tick, later) = (Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap(), at(2) + chrono::Duration::hours(2));
    let get = || async { s.campaign_get(&spec.name).await.unwrap().unwrap() };

    // a scheduled run of the tick is interrupted: in progress, not done
    let run = s
        .run_start(&crate::store::runs::RunStartParams {
            campaign_id: id,
            worker: "w1",
            actor: "tester",
            now: later,
            tick: Some(tick),
        })
        .await
        .unwrap();
    s.run_finish(finish(run, id, "w1", Ended { outcome: RunOutcome::Interrupted, error: None, now: later }))
        .await
        .unwrap();
    let c = get().await;
    assert_eq!((c.tick_in_progress, c.done_through, c.last_run_at), (Some(tick), None, Some(later)));
    // a failed one neither
    let run = s
        .run_start(&crate::store::runs::RunStartParams {
            campaign_id: id,
            worker: "w1",
            actor: "tester",
            now: later,
            tick: Some(tick),
        })
        .await
        .unwrap();
    s.run_finish(finish(run, id, "w1", Ended { outcome: RunOutcome::Failed, error: Some("boom"), now: later }))
        .await
        .unwrap();
    assert_eq!(get().await.tick_in_progress, Some(tick));
    assert_eq!(s.campaign_done_through(id).await.unwrap(), None);

    // a manual run that started before the tick and finishes after does not cover it
    let early = tick - chrono::Duration::minutes(5);
    let manual = s
        .run_start(&crate::store::runs::RunStartParams {
            campaign_id: id,
            worker: "w2",
            actor: "tester",
            now: early,
            tick: None,
        })
        .await
        .unwrap();
    s.run_finish(finish(manual, id, "w2", Ended { outcome: RunOutcome::Finished, error: None, now: later }))
        .await
        .unwrap();
    let c = get().await;
    assert_eq!((c.tick_in_progress, c.done_through), (Some(tick), Some(early)));

    // the resumed run finishes: the tick is done through its start
    let resumed_at = later + chrono::Duration::minutes(5);
    let run = s
        .run_start(&crate::store::runs::RunStartParams {
            campaign_id: id,
            worker: "w1",
            actor: "tester",
            now: resumed_at,
            tick: Some(tick),
        })
        .await
        .unwrap();
    s.run_finish(finish(run, id, "w1", Ended { outcome: RunOutcome::Finished, error: None, now: resumed_at }))
        .await
        .unwrap();
    let c = get().await;
    assert_eq!((c.tick_in_progress, c.done_through), (None, Some(resumed_at)));
    assert_eq!(s.campaign_done_through(id).await.unwrap(), Some(resumed_at));
    // done_through never moves back
    let old = s
        .run_start(&crate::store::runs::RunStartParams {
            campaign_id: id,
            worker: "w3",
            actor: "tester",
            now: early,
            tick: None,
        })
        .await
        .unwrap();
    s.run_finish(finish(old, id, "w3", Ended { outcome: RunOutcome::Finished, error: None, now: resumed_at }))
        .await
        .unwrap();
    assert_eq!(get().await.done_through, Some(resumed_at));
});

/// A run's end by `worker`, started by "tester", with no counts.
/// How a run ended, and when.
struct Ended {
    outcome: RunOutcome,
    error: Option<&'static str>,
    now: DateTime<Utc>,
}

fn finish(run_id: i64, campaign_id: i64, worker: &'static str, e: Ended) -> RunFinishParams<'static> {
    let Ended { outcome, error, now } = e;
    RunFinishParams { run_id, campaign_id, worker, actor: "tester", outcome, counts: RunCounts::default(), error, now }
}
