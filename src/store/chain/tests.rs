//! The audit chain on both engines: every way of editing the events table behind
//! the log's back is found, and named.

use super::*;
use crate::both_engines;
use crate::store::events::NewEvent;
use crate::store::testing::TestDb;
use chrono::TimeZone;

fn at(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, h, 0, 0).unwrap()
}

/// Five events at 08:00, sealed at 09:00; returns their ids.
async fn five_sealed(s: &Store) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..5 {
        let ev = NewEvent {
            actor: "cli:alice@host",
            kind: "campaign.paused",
            campaign_id: Some(1),
            user_id: None,
            detail: Some(serde_json::json!({ "i": i })),
        };
        ids.push(s.event_append(&ev, at(8)).await.unwrap());
    }
    let (n, head) = s.audit_seal(at(9)).await.unwrap();
    assert_eq!((n, head.seq), (5, 5));
    ids
}

async fn exec(db: &TestDb, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(db.pool()).await.unwrap();
}

both_engines!(an_untouched_chain_verifies_and_grows, |db: TestDb| async move {
    let s = &db.store;
    let report = s.audit_verify(at(1)).await.unwrap();
    assert_eq!((report.checked, report.problem), (0, None));
    five_sealed(s).await;
    // more events later, sealed by verify itself
    let ev = NewEvent { actor: "w", kind: "run.started", campaign_id: Some(1), user_id: None, detail: None };
    s.event_append(&ev, at(10)).await.unwrap();
    let report = s.audit_verify(at(10)).await.unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!((report.checked, report.head.seq, report.unsealed), (6, 6, 0));
    // sealing again seals nothing and keeps the head
    let (n, head) = s.audit_seal(at(11)).await.unwrap();
    assert_eq!((n, head.hash), (0, report.head.hash));
});

both_engines!(a_changed_detail_or_actor_is_named, |db: TestDb| async move {
    let s = &db.store;
    let ids = five_sealed(s).await;
    exec(&db, &format!("UPDATE events SET detail = '{{\"i\":99}}' WHERE event_id = {}", ids[2])).await;
    let p = s.audit_verify(at(10)).await.unwrap().problem.unwrap();
    assert_eq!(p, ChainProblem::Changed { event_id: ids[2], seq: 3 });
    assert!(p.to_string().contains(&format!("event {} (chain place 3) was changed", ids[2])), "{p}");
    // put it back: whole again; then the actor
    exec(&db, &format!("UPDATE events SET detail = '{{\"i\":2}}' WHERE event_id = {}", ids[2])).await;
    assert_eq!(s.audit_verify(at(10)).await.unwrap().problem, None);
    exec(&db, &format!("UPDATE events SET actor = 'cli:mallory@host' WHERE event_id = {}", ids[1])).await;
    assert_eq!(s.audit_verify(at(10)).await.unwrap().problem, Some(ChainProblem::Changed { event_id: ids[1], seq: 2 }));
});

both_engines!(a_change_with_a_recomputed_hash_breaks_the_next_link, |db: TestDb| async move {
    let s = &db.store;
    let ids = five_sealed(s).await;
    // the forger rewrites event 2 and its hash: the event after it no longer links
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM events WHERE event_id = {}", ids[1])))
        .fetch_one(db.pool())
        .await
        .unwrap();
    let mut e = chained_from_row(&row).unwrap();
    e.detail = Some("{\"i\":42}".into());
    let forged = event_hash(2, e.prev_hash.as_deref().unwrap(), &e);
    exec(&db, &format!("UPDATE events SET detail = '{{\"i\":42}}', hash = '{forged}' WHERE event_id = {}", ids[1]))
        .await;
    let p = s.audit_verify(at(10)).await.unwrap().problem.unwrap();
    assert_eq!(p, ChainProblem::Relinked { event_id: ids[2], seq: 3, before: ids[1] });
});

both_engines!(a_deleted_row_is_named, |db: TestDb| async move {
    let s = &db.store;
    let ids = five_sealed(s).await;
    exec(&db, &format!("DELETE FROM events WHERE event_id = {}", ids[2])).await;
    let p = s.audit_verify(at(10)).await.unwrap().problem.unwrap();
    assert_eq!(p, ChainProblem::Removed { seq: 3, after: ids[1] });
    assert!(p.to_string().contains("chain place 3 was removed"), "{p}");
});

both_engines!(a_deleted_last_row_is_named, |db: TestDb| async move {
    let s = &db.store;
    let ids = five_sealed(s).await;
    exec(&db, &format!("DELETE FROM events WHERE event_id = {}", ids[4])).await;
    let p = s.audit_verify(at(10)).await.unwrap().problem.unwrap();
    assert_eq!(p, ChainProblem::TailRemoved { from: 5, to: 5 });
});

both_engines!(an_inserted_row_is_named, |db: TestDb| async move {
    let s = &db.store;
    five_sealed(s).await;
    // an approval forged into the past, with no seal: never sealed, and named
    let id: i64 = sqlx::query(
        "INSERT INTO events (at, actor, kind, campaign_id, user_id, detail) \
         VALUES ($1, 'cli:mallory@host', 'campaign.approved', 1, NULL, NULL) RETURNING event_id",
    )
    .bind(to_millis(at(7)))
    .fetch_one(db.pool())
    .await
    .unwrap()
    .get("event_id");
    let report = s.audit_verify(at(10)).await.unwrap();
    let p = report.problem.unwrap();
    assert!(matches!(&p, ChainProblem::Inserted { event_id, .. } if *event_id == id), "{p:?}");
    assert!(p.to_string().contains(&format!("event {id} was inserted")), "{p}");
    assert_eq!(s.audit_verify(at(11)).await.unwrap().unsealed, 1, "the sealer never seals it");
    exec(&db, &format!("DELETE FROM events WHERE event_id = {id}")).await;
    assert_eq!(s.audit_verify(at(11)).await.unwrap().problem, None);

    // one with a made-up seal in the chain's places
    let id: i64 = sqlx::query(
        "INSERT INTO events (at, actor, kind, campaign_id, detail, chain_seq, prev_hash, hash) \
         VALUES ($1, 'cli:mallory@host', 'campaign.approved', 1, NULL, 6, 'x', 'y') RETURNING event_id",
    )
    .bind(to_millis(at(10)))
    .fetch_one(db.pool())
    .await
    .unwrap()
    .get("event_id");
    let p = s.audit_verify(at(12)).await.unwrap().problem.unwrap();
    assert!(matches!(&p, ChainProblem::Inserted { event_id, .. } if *event_id == id), "{p:?}");
    assert!(matches!(s.audit_seal(at(12)).await, Err(StoreError::Conflict(_))));
});
