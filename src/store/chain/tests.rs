//! The audit chain on both engines: every way of editing the events table behind
//! the log's back is found, and named.

use super::*;
use crate::both_engines;
use crate::store::anchor::Anchor;
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
    // checked first (five), then sealed (the sixth)
    assert_eq!((report.checked, report.head.seq, report.unsealed), (5, 5, 0));
    let after = report.head_after.unwrap();
    assert_eq!(after.seq, 6);
    // sealing again seals nothing and keeps the head
    let (n, head) = s.audit_seal(at(11)).await.unwrap();
    assert_eq!((n, head.hash), (0, after.hash));
    assert_eq!(s.audit_verify(at(11)).await.unwrap().checked, 6);
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

fn key(byte: u8) -> AuditKey {
    AuditKey::new(&[byte; 32]).unwrap()
}

/// A store that seals with `key` (if any) into the anchor file `heads`.
fn sealing(s: &Store, key: Option<AuditKey>, heads: &std::path::Path) -> Store {
    s.clone().with_sealing(Sealing { key, anchor: Some(Anchor::File(heads.to_path_buf())) })
}

/// Events at 08:00, sealed at 08:00 in two seals (three, then two), so that the
/// anchor holds the heads at places 3 and 5; returns their ids.
async fn five_anchored(s: &Store) -> Vec<i64> {
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
        if i == 2 {
            s.audit_seal(at(8)).await.unwrap();
        }
    }
    assert_eq!(s.audit_seal(at(8)).await.unwrap().1.seq, 5);
    ids
}

async fn stored(db: &TestDb, seq: i64) -> ChainedEvent {
    let sql = format!("SELECT {COLUMNS} FROM events WHERE chain_seq = {seq}");
    chained_from_row(&sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_one(db.pool()).await.unwrap()).unwrap()
}

both_engines!(the_anchor_gets_every_head_and_a_clean_chain_matches_it, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let heads = dir.path().join("heads.jsonl");
    let s = &sealing(&db.store, Some(key(7)), &heads);
    five_anchored(s).await;
    let lines = Anchor::File(heads.clone()).read().unwrap().unwrap();
    assert_eq!(lines.iter().map(|h| (h.seq, h.sealed)).collect::<Vec<_>>(), vec![(3, 3), (5, 2)]);
    assert!(lines.iter().all(|h| h.hash.starts_with(KEYED)), "{lines:?}");
    // a seal with nothing new writes no line
    s.audit_seal(at(10)).await.unwrap();
    assert_eq!(Anchor::File(heads.clone()).read().unwrap().unwrap().len(), 2);
    let report = s.audit_verify(at(10)).await.unwrap();
    assert_eq!(report.problem, None, "{report:?}");
    assert_eq!((report.checked, report.keyed), (5, 5));
    assert_eq!(report.anchor.unwrap().last.unwrap().seq, 5);
});

both_engines!(a_cut_tail_is_found_against_the_anchor, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let s = &sealing(&db.store, None, &dir.path().join("heads.jsonl"));
    let ids = five_anchored(s).await;
    // the attack: the last events deleted and the head set back to the
    // last one left; the chain inside the database is whole
    let third = stored(&db, 3).await;
    exec(&db, &format!("DELETE FROM events WHERE event_id IN ({}, {})", ids[3], ids[4])).await;
    exec(&db, &format!("UPDATE audit_chain SET seq = 3, hash = '{}' WHERE id = 1", third.hash.unwrap())).await;
    let without = db.store.audit_verify(at(10)).await.unwrap();
    assert_eq!(without.problem, None, "without the anchor the cut cannot be seen");
    let p = s.audit_verify(at(10)).await.unwrap().problem.unwrap();
    assert!(matches!(&p, ChainProblem::Behind { head: 3, anchored: 5, first: 4, next_event: None, .. }), "{p:?}");
    assert!(p.to_string().contains("the first event missing is the one at chain place 4"), "{p}");
    // new events sealed over the cut do not hide it: place 5 is another event now
    let ev = NewEvent { actor: "w", kind: "run.started", campaign_id: Some(1), user_id: None, detail: None };
    db.store.event_append(&ev, at(10)).await.unwrap();
    db.store.event_append(&ev, at(10)).await.unwrap();
    db.store.audit_seal(at(10)).await.unwrap();
    let p = s.audit_verify(at(11)).await.unwrap().problem.unwrap();
    assert!(matches!(&p, ChainProblem::AnchorDiffers { seq: 5, matched: 3, .. }), "{p:?}");
});

both_engines!(a_rewound_head_is_found_against_the_anchor, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let s = &sealing(&db.store, None, &dir.path().join("heads.jsonl"));
    let ids = five_anchored(s).await;
    let third = stored(&db, 3).await;
    exec(&db, &format!("UPDATE audit_chain SET seq = 3, hash = '{}' WHERE id = 1", third.hash.unwrap())).await;
    let p = s.audit_verify(at(10)).await.unwrap().problem.unwrap();
    assert_eq!(
        p,
        ChainProblem::Behind {
            head: 3,
            anchored: 5,
            anchored_at: at(8).to_rfc3339(),
            first: 4,
            next_event: Some(ids[3])
        }
    );
    assert!(p.to_string().contains(&format!("event {} is still stored there", ids[3])), "{p}");
});

/// Rewrites every link from place 1 as a forger without the key would: plain
/// SHA-256, the actor of place 2 changed, the head updated.
async fn rebuild_without_key(db: &TestDb, with: impl Fn(i64, &str, &ChainedEvent) -> String) {
    let mut prev = GENESIS.to_owned();
    for seq in 1..=5 {
        let mut e = stored(db, seq).await;
        if seq == 2 {
            e.actor = "cli:mallory@host".into();
        }
        let hash = with(seq, &prev, &e);
        exec(
            db,
            &format!(
                "UPDATE events SET actor = '{}', prev_hash = '{prev}', hash = '{hash}' WHERE event_id = {}",
                e.actor, e.event_id
            ),
        )
        .await;
        prev = hash;
    }
    exec(db, &format!("UPDATE audit_chain SET hash = '{prev}' WHERE id = 1")).await;
}

both_engines!(a_chain_rebuilt_without_the_key_is_found, |db: TestDb| async move {
    let dir = tempfile::tempdir().unwrap();
    let heads = dir.path().join("heads.jsonl");
    let s = &sealing(&db.store, Some(key(7)), &heads);
    five_anchored(s).await;
    // with plain links: the key sees nothing keyed any more, the anchor sees place 3
    rebuild_without_key(&db, event_hash).await;
    let p = s.audit_verify(at(10)).await.unwrap().problem.unwrap();
    assert!(matches!(&p, ChainProblem::AnchorDiffers { seq: 3, matched: 0, .. }), "{p:?}");
    assert!(p.to_string().contains("the chain was rebuilt"), "{p}");
    // with a guessed key: the first link is wrong, named
    rebuild_without_key(&db, |seq, prev, e| keyed_hash(&key(8), seq, prev, e)).await;
    let first = stored(&db, 1).await.event_id;
    let keyed_only = db.store.clone().with_sealing(Sealing { key: Some(key(7)), anchor: None });
    let p = keyed_only.audit_verify(at(10)).await.unwrap().problem.unwrap();
    assert_eq!(p, ChainProblem::Changed { event_id: first, seq: 1 });
    // without the key the links cannot be checked at all, and that is said
    let p = db.store.audit_verify(at(10)).await.unwrap().problem.unwrap();
    assert_eq!(p, ChainProblem::NeedsKey { event_id: first, seq: 1 });
    // nor sealed onto
    let ev = NewEvent { actor: "w", kind: "run.started", campaign_id: Some(1), user_id: None, detail: None };
    db.store.event_append(&ev, at(10)).await.unwrap();
    assert!(matches!(db.store.audit_seal(at(10)).await, Err(StoreError::Conflict(m)) if m.contains("audit_key")));
});

both_engines!(plain_links_after_keyed_ones_are_named, |db: TestDb| async move {
    let s = &db.store.clone().with_sealing(Sealing { key: Some(key(7)), anchor: None });
    five_sealed(s).await;
    // the forger rebuilds from place 4 on, plain
    let mut prev = stored(&db, 3).await.hash.unwrap();
    let fourth = stored(&db, 4).await.event_id;
    for seq in 4..=5 {
        let e = stored(&db, seq).await;
        let hash = event_hash(seq, &prev, &e);
        exec(&db, &format!("UPDATE events SET prev_hash = '{prev}', hash = '{hash}' WHERE event_id = {}", e.event_id))
            .await;
        prev = hash;
    }
    exec(&db, &format!("UPDATE audit_chain SET hash = '{prev}' WHERE id = 1")).await;
    let p = s.audit_verify(at(10)).await.unwrap().problem.unwrap();
    assert_eq!(p, ChainProblem::Unkeyed { event_id: fourth, seq: 4 });
});

both_engines!(verify_checks_before_it_seals, |db: TestDb| async move {
    let s = &db.store;
    let ids = five_sealed(s).await;
    // an event made up "now", waiting to be sealed, while the chain is broken
    let forged = NewEvent {
        actor: "cli:mallory@host",
        kind: "campaign.approved",
        campaign_id: Some(1),
        user_id: None,
        detail: None,
    };
    let forged_id = s.event_append(&forged, at(10)).await.unwrap();
    exec(&db, &format!("DELETE FROM events WHERE event_id = {}", ids[2])).await;
    let report = s.audit_verify(at(10)).await.unwrap();
    assert_eq!(report.problem, Some(ChainProblem::Removed { seq: 3, after: ids[1] }));
    assert_eq!(report.unsealed, 1, "a broken chain seals nothing");
    assert_eq!(s.audit_head().await.unwrap().seq, 5);
    assert!(report.sealed_after_check.is_empty());
    // on a whole chain the waiting event is sealed after the check, and listed
    let db2 = crate::store::testing::TestDb::sqlite().await;
    let s2 = &db2.store;
    five_sealed(s2).await;
    let id = s2.event_append(&forged, at(10)).await.unwrap();
    let report = s2.audit_verify(at(10)).await.unwrap();
    assert_eq!(report.problem, None);
    assert_eq!(report.head.seq, 5, "the head checked is the one before the seal");
    assert_eq!(report.head_after.as_ref().map(|h| h.seq), Some(6));
    assert_eq!(report.sealed_after_check.iter().map(|e| e.event_id).collect::<Vec<_>>(), vec![id]);
    let _ = forged_id;
});
