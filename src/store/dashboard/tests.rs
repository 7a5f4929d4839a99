//! The dashboard's reads on both engines, over the bench fixture's mix of targets.

use chrono::TimeZone;

use super::*;
use crate::both_engines;
use crate::domain::CampaignSpec;
use crate::store::events::NewEvent;
use crate::store::testing::TestDb;

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap()
}

async fn campaign(s: &Store, name: &str) -> i64 {
    let toml = format!("name = \"{name}\"\n");
    let spec = CampaignSpec::from_toml(&toml, "t.toml").unwrap();
    s.campaign_apply(&spec, &toml, "test", at()).await.unwrap().1.campaign_id
}

both_engines!(series_deferred_runs_and_events_read_the_rows, |db: TestDb| async move {
    let s = &db.store;
    let id = campaign(s, "dash").await;
    // 50 targets: n % 5 = 1 converted, 3 skipped, 4 deferred, 0 and 2 notified
    s.report_bench_fill(id, 50, at()).await.unwrap();

    let series = s.dashboard_series(id).await.unwrap();
    assert_eq!(series.sends, vec![(hour_of(at()), 50)], "every target first notified in the same hour");
    assert_eq!(series.conversions.iter().map(|p| p.1).sum::<i64>(), 10);
    assert_eq!(series.conversions[0].0, hour_of(at()));

    let deferred = s.dashboard_deferred(id).await.unwrap();
    assert_eq!(deferred.iter().map(|b| b.count).sum::<i64>(), 10);
    assert!(deferred.iter().all(|b| b.reason == "rejection_cooldown"), "{deferred:?}");
    let next = s.dashboard_deferred_next(id, 3).await.unwrap();
    assert_eq!(next.len(), 3);
    assert!(next.iter().all(|t| t.reason == "rejection_cooldown"));

    // the progress `campaign status` prints agrees with the series
    let p = s.campaign_progress(id, at()).await.unwrap();
    assert_eq!(p.targeted, 50);
    assert_eq!(p.funnel.verified, series.conversions.iter().map(|c| c.1).sum::<i64>());

    let r1 = s
        .run_start(&crate::store::runs::RunStartParams {
            campaign_id: id,
            worker: "w1",
            actor: "test",
            now: at(),
            tick: None,
        })
        .await
        .unwrap();
    let r2 = s
        .run_start(&crate::store::runs::RunStartParams {
            campaign_id: id,
            worker: "w2",
            actor: "test",
            now: at(),
            tick: None,
        })
        .await
        .unwrap();
    let runs = s.run_recent(id, 10).await.unwrap();
    assert_eq!(runs.iter().map(|r| r.run_id).collect::<Vec<_>>(), vec![r2, r1]);
    assert_eq!(runs[0].outcome, "running");
    let latest = s.run_latest_each().await.unwrap();
    assert_eq!(latest.iter().map(|r| r.run_id).collect::<Vec<_>>(), vec![r2]);

    for i in 0..30 {
        let e = NewEvent {
            actor: "test",
            kind: "test.event",
            campaign_id: Some(id),
            user_id: None,
            detail: Some(serde_json::json!({ "i": i })),
        };
        s.event_append(&e, at()).await.unwrap();
    }
    let (page1, more) = s.event_page_desc(id, None, 25).await.unwrap();
    assert_eq!(page1.len(), 25);
    assert!(more);
    assert!(page1.windows(2).all(|w| w[0].event_id > w[1].event_id), "newest first");
    let (page2, more) = s.event_page_desc(id, Some(page1[24].event_id), 25).await.unwrap();
    // 30 test events, the two runs' and the campaign's `applied` event
    assert_eq!(page2.len(), 8);
    assert!(!more);
    assert_eq!(page2.last().unwrap().kind, "campaign.applied");
});

both_engines!(a_user_is_read_across_campaigns, |db: TestDb| async move {
    let s = &db.store;
    let a = campaign(s, "first").await;
    s.report_bench_fill(a, 5, at()).await.unwrap();
    let user = UserId::parse("00000000-0000-4000-8000-000000000001").unwrap();
    let targets = s.user_targets(&user).await.unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].campaign, "first");
    assert_eq!(targets[0].status, "converted");
    assert_eq!(targets[0].outcome.as_deref(), Some("verified"));
    assert!(s.user_sessions(&user, 10).await.unwrap().is_empty());
    assert!(s.user_events(&user, 10).await.unwrap().is_empty());
});

both_engines!(retry_failed_is_audited_with_its_actor, |db: TestDb| async move {
    let s = &db.store;
    let id = campaign(s, "retry").await;
    s.report_bench_fill(id, 10, at()).await.unwrap();
    sqlx::query("UPDATE campaign_targets SET status = 'failed', reason = 'api_unavailable' WHERE status = 'skipped'")
        .execute(s.pool())
        .await
        .unwrap();
    assert_eq!(s.campaign_retry_failed(id, "ui:alice", at()).await.unwrap(), 2);
    let (events, _) = s.event_page_desc(id, None, 5).await.unwrap();
    assert_eq!(events[0].kind, "campaign.retry_failed");
    assert_eq!(events[0].actor, "ui:alice");
    assert_eq!(events[0].detail, Some(serde_json::json!({ "requeued": 2 })));
});
