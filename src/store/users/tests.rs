//! The users store on both engines.

use super::*;
use crate::both_engines;
use crate::store::testing::TestDb;
use chrono::TimeZone;

fn id(n: u32) -> UserId {
    UserId::parse(&format!("00000000-0000-4000-8000-{n:012}")).unwrap()
}

fn at(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, h, 0, 0).unwrap()
}

fn user(n: u32) -> UserUpsert {
    UserUpsert {
        user_id: id(n),
        email: EmailAddress::parse(&format!("user{n}@example.com")).unwrap(),
        first_name: Some(format!("First{n}")),
        last_name: Some("Last".into()),
        locale: Some("en-GB".into()),
        timezone: Some("Europe/London".into()),
        region: if n.is_multiple_of(2) { Region::Intl } else { Region::Us },
        country: Some("GB".into()),
        verification_state: if n.is_multiple_of(3) {
            VerificationState::Rejected
        } else {
            VerificationState::Unverified
        },
        rejected_at: None,
        tags: vec![],
        signed_up_at: Some(at(1)),
        token: None,
        state_confirmed_at: None,
        access: None,
    }
}

fn sealed(key: &str, bytes: &[u8]) -> SealedToken {
    SealedToken { key_id: key.into(), ciphertext: bytes.to_vec() }
}

both_engines!(upsert_is_idempotent_and_updates, |db: TestDb| async move {
    let s = &db.store;
    let rows: Vec<UserUpsert> = (1..=1203).map(user).collect();
    assert_eq!(s.user_upsert_batch(&rows, at(2)).await.unwrap(), 1203);
    let before = s.user_get(&id(7)).await.unwrap().unwrap();
    assert_eq!(s.user_upsert_batch(&rows, at(2)).await.unwrap(), 1203);
    assert_eq!(s.user_count(&UserFilter::default()).await.unwrap(), 1203);
    assert_eq!(s.user_get(&id(7)).await.unwrap().unwrap(), before, "same input, same row");
    assert_eq!(before.first_name.as_deref(), Some("First7"));
    assert_eq!(before.region, Region::Us);
    assert_eq!(before.created_at, at(2));
    assert_eq!(before.state_changed_at, Some(at(2)));
    assert!(!before.has_token);

    // a later import changes the state: state_changed_at moves, created_at does not
    let mut changed = user(7);
    changed.verification_state = VerificationState::Verified;
    changed.first_name = None;
    s.user_upsert_batch(&[changed], at(5)).await.unwrap();
    let after = s.user_get(&id(7)).await.unwrap().unwrap();
    assert_eq!(after.verification_state, VerificationState::Verified);
    assert_eq!(after.state_changed_at, Some(at(5)));
    assert_eq!(after.created_at, at(2));
    assert_eq!(after.updated_at, at(5));
    assert_eq!(after.first_name, None);
    // same state again: state_changed_at stays
    let mut again = user(7);
    again.verification_state = VerificationState::Verified;
    s.user_upsert_batch(&[again], at(6)).await.unwrap();
    assert_eq!(s.user_get(&id(7)).await.unwrap().unwrap().state_changed_at, Some(at(5)));
    assert!(s.user_get(&id(99_999)).await.unwrap().is_none());
});

both_engines!(duplicate_ids_in_one_batch_last_wins, |db: TestDb| async move {
    let s = &db.store;
    let mut second = user(1);
    second.email = EmailAddress::parse("second@example.com").unwrap();
    assert_eq!(s.user_upsert_batch(&[user(1), user(2), second], at(2)).await.unwrap(), 2);
    assert_eq!(s.user_get(&id(1)).await.unwrap().unwrap().email.as_str(), "second@example.com");
});

both_engines!(tokens_rejections_and_signup_are_kept_when_absent, |db: TestDb| async move {
    let s = &db.store;
    let mut u = user(3);
    u.token = Some(sealed("k1", b"\x01\x02sealed"));
    u.rejected_at = Some(at(1));
    s.user_upsert_batch(&[u], at(2)).await.unwrap();
    let plain = user(3); // no token, no rejected_at
    let mut no_signup = plain.clone();
    no_signup.signed_up_at = None;
    s.user_upsert_batch(&[no_signup], at(3)).await.unwrap();
    let got = s.user_get(&id(3)).await.unwrap().unwrap();
    assert!(got.has_token);
    assert_eq!(got.token_key_id.as_deref(), Some("k1"));
    assert_eq!(got.rejected_at, Some(at(1)));
    assert_eq!(got.signed_up_at, Some(at(1)));
    assert_eq!(s.user_token_load(&id(3)).await.unwrap(), Some(sealed("k1", b"\x01\x02sealed")));
    assert!(format!("{got:?}").contains("has_token: true"));

    // a new token replaces the old one
    let mut newer = plain;
    newer.token = Some(sealed("k2", b"other"));
    s.user_upsert_batch(&[newer], at(4)).await.unwrap();
    assert_eq!(s.user_token_load(&id(3)).await.unwrap(), Some(sealed("k2", b"other")));
    assert_eq!(s.user_token_load(&id(4)).await.unwrap_err().to_string(), format!("user not found: {}", id(4)));
});

both_engines!(filters_by_state_region_and_tag, |db: TestDb| async move {
    let s = &db.store;
    let mut rows: Vec<UserUpsert> = (1..=12).map(user).collect();
    rows[0].tags = vec!["vip".into(), "beta_1".into()];
    rows[1].tags = vec!["betax1".into()]; // `_` must not be a wildcard
    rows[2].tags = vec!["VIP".into()]; // tags are case-sensitive on both engines
    rows[3].tags = vec!["vip2".into()];
    s.user_upsert_batch(&rows, at(2)).await.unwrap();
    let count = |f: UserFilter| async move { s.user_count(&f).await.unwrap() };
    assert_eq!(count(UserFilter { state: Some(VerificationState::Rejected), ..Default::default() }).await, 4);
    assert_eq!(count(UserFilter { region: Some(Region::Us), ..Default::default() }).await, 6);
    assert_eq!(
        count(UserFilter { state: Some(VerificationState::Rejected), region: Some(Region::Us), ..Default::default() })
            .await,
        2
    );
    assert_eq!(count(UserFilter { tag: Some("vip".into()), ..Default::default() }).await, 1);
    assert_eq!(count(UserFilter { tag: Some("beta_1".into()), ..Default::default() }).await, 1);
    assert_eq!(count(UserFilter { tag: Some("VIP".into()), ..Default::default() }).await, 1);
    let listed = s.user_list(&UserFilter { tag: Some("vip".into()), ..Default::default() }, None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].tags, vec!["vip".to_owned(), "beta_1".to_owned()]);

    // paging in id order
    let page1 = s.user_list(&UserFilter::default(), None, 5).await.unwrap();
    let page2 = s.user_list(&UserFilter::default(), Some(&page1[4].user_id), 5).await.unwrap();
    let page3 = s.user_list(&UserFilter::default(), Some(&page2[4].user_id), 5).await.unwrap();
    let ids: Vec<UserId> = page1.iter().chain(&page2).chain(&page3).map(|u| u.user_id.clone()).collect();
    assert_eq!(ids, (1..=12).map(id).collect::<Vec<_>>());
});

both_engines!(token_compare_and_swap_and_rekey_work_list, |db: TestDb| async move {
    let s = &db.store;
    let mut a = user(1);
    a.token = Some(sealed("old", b"aaa"));
    let mut b = user(2);
    b.token = Some(sealed("new", b"bbb"));
    let mut c = user(3);
    c.token = Some(sealed("old", b"ccc"));
    s.user_upsert_batch(&[a, b, c, user(4)], at(2)).await.unwrap();
    let todo = s.user_tokens_not_under("new", None, 10).await.unwrap();
    assert_eq!(todo.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>(), vec![id(1), id(3)]);
    let page = s.user_tokens_not_under("new", Some(&id(1)), 10).await.unwrap();
    assert_eq!(page.len(), 1);
    // swap only while the stored token is still the old one
    assert!(s.user_token_replace(&id(1), &todo[0].1, &sealed("new", b"a2"), at(3)).await.unwrap());
    assert!(!s.user_token_replace(&id(1), &todo[0].1, &sealed("new", b"a3"), at(3)).await.unwrap());
    assert_eq!(s.user_token_load(&id(1)).await.unwrap(), Some(sealed("new", b"a2")));
    assert_eq!(s.user_tokens_not_under("new", None, 10).await.unwrap().len(), 1);
});

#[test]
fn tag_column_round_trip() {
    let tags = vec!["a".to_owned(), "b:c".to_owned()];
    assert_eq!(tags_to_column(&tags), ",a,b:c,");
    assert_eq!(tags_from_column(",a,b:c,"), tags);
    assert_eq!(tags_to_column(&[]), "");
    assert!(tags_from_column("").is_empty());
}

#[test]
fn sealed_token_debug_hides_bytes() {
    let d = format!("{:?}", sealed("k", b"secretbytes"));
    assert!(!d.contains("secret") && d.contains("11 bytes"), "{d}");
}

both_engines!(bulk_upsert_matches_batch_semantics, |db: TestDb| async move {
    let s = &db.store;
    let mut existing = user(1);
    existing.token = Some(sealed("k1", b"kept"));
    existing.rejected_at = Some(at(1));
    s.user_upsert_batch(&[existing], at(2)).await.unwrap();

    let mut bulk = s.user_bulk_begin().await.unwrap();
    let mut first = user(2);
    first.email = EmailAddress::parse("first@example.com").unwrap();
    bulk.push(&(3..=1100).map(user).chain([first]).collect::<Vec<_>>()).await.unwrap();
    let mut changed = user(1); // no token, no rejection: both kept
    changed.verification_state = VerificationState::Verified;
    let mut last = user(2);
    last.email = EmailAddress::parse("last@example.com").unwrap();
    bulk.push(&[changed, last]).await.unwrap();
    assert_eq!(bulk.finish(at(3)).await.unwrap(), 1101);

    assert_eq!(s.user_count(&UserFilter::default()).await.unwrap(), 1100);
    assert_eq!(s.user_get(&id(2)).await.unwrap().unwrap().email.as_str(), "last@example.com");
    let u1 = s.user_get(&id(1)).await.unwrap().unwrap();
    assert_eq!(u1.verification_state, VerificationState::Verified);
    assert_eq!((u1.state_changed_at, u1.created_at, u1.updated_at), (Some(at(3)), at(2), at(3)));
    assert_eq!(u1.rejected_at, Some(at(1)));
    assert_eq!(s.user_token_load(&id(1)).await.unwrap(), Some(sealed("k1", b"kept")));
    // a second bulk upsert on the same pooled connection starts from an empty stage
    let mut again = s.user_bulk_begin().await.unwrap();
    again.push(&[user(5000)]).await.unwrap();
    assert_eq!(again.finish(at(4)).await.unwrap(), 1);
    assert_eq!(s.user_count(&UserFilter::default()).await.unwrap(), 1101);
});

both_engines!(an_older_rejection_time_never_replaces_a_newer_one, |db: TestDb| async move {
    let s = &db.store;
    let rejected = |n: u32, h: Option<u32>| UserUpsert { rejected_at: h.map(at), ..user(n) };
    let stored = |n: u32| async move { s.user_get(&id(n)).await.unwrap().unwrap().rejected_at };
    // user 3 by the batch path, user 6 by the bulk path: newer first, then an older file
    s.user_upsert_batch(&[rejected(3, Some(5)), rejected(6, Some(5))], at(6)).await.unwrap();
    s.user_upsert_batch(&[rejected(3, Some(1))], at(7)).await.unwrap();
    let mut bulk = s.user_bulk_begin().await.unwrap();
    bulk.push(&[rejected(6, Some(1))]).await.unwrap();
    bulk.finish(at(7)).await.unwrap();
    assert_eq!((stored(3).await, stored(6).await), (Some(at(5)), Some(at(5))), "the newer time is kept");
    // no time keeps it as well; a newer time still moves it forward
    s.user_upsert_batch(&[rejected(3, None), rejected(6, Some(9))], at(8)).await.unwrap();
    assert_eq!((stored(3).await, stored(6).await), (Some(at(5)), Some(at(9))));
    let mut bulk = s.user_bulk_begin().await.unwrap();
    bulk.push(&[rejected(3, Some(10)), rejected(6, None)]).await.unwrap();
    bulk.finish(at(11)).await.unwrap();
    assert_eq!((stored(3).await, stored(6).await), (Some(at(10)), Some(at(9))));
});

both_engines!(a_rejection_imported_without_a_time_is_dated_when_first_seen, |db: TestDb| async move {
    let s = &db.store;
    let stored = |n: u32| async move { s.user_get(&id(n)).await.unwrap().unwrap().rejected_at };
    // user(3) and user(6) are REJECTED with no time; user(1) is UNVERIFIED
    s.user_upsert_batch(&[user(1), user(3)], at(2)).await.unwrap();
    let mut bulk = s.user_bulk_begin().await.unwrap();
    bulk.push(&[user(6)]).await.unwrap();
    bulk.finish(at(3)).await.unwrap();
    assert_eq!((stored(1).await, stored(3).await, stored(6).await), (None, Some(at(2)), Some(at(3))));
    // importing them again later keeps the first-seen time, by either path
    s.user_upsert_batch(&[user(3), user(6)], at(4)).await.unwrap();
    let mut bulk = s.user_bulk_begin().await.unwrap();
    bulk.push(&[user(3), user(6)]).await.unwrap();
    bulk.finish(at(5)).await.unwrap();
    assert_eq!((stored(3).await, stored(6).await), (Some(at(2)), Some(at(3))));
});
