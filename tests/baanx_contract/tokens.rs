//! Token lifetimes and rotation across restarts, against the sandbox.

use std::sync::Arc;

use chrono::{Duration as ChronoDuration, Utc};
use reverify::baanx::BaanxClient;
use reverify::crypto::TokenCipher;
use reverify::domain::{ManualClock, Region, SystemClock, UserId, VerificationState};
use reverify::engine::adapters::StoreTokenVault;
use reverify::store::Store;
use reverify::store::group::GroupCommit;
use reverify::store::testing::TestDb;
use reverify::{Secret, sandbox::UserRecord};
use sqlx::Row;

use crate::common::{fast_config, requests, start_sandbox};

fn pick(users: &[UserRecord], region: Region) -> UserRecord {
    users.iter().find(|u| u.region == region && u.verification_state != VerificationState::Rejected).unwrap().clone()
}

#[tokio::test]
async fn access_tokens_are_refreshed_before_they_expire_not_after() {
    let clock = ManualClock::new(Utc::now());
    let sb = start_sandbox(40, |c| c.clock = Arc::new(clock.clone())).await;
    let vault = reverify::baanx::MemoryVault::new();
    let user = pick(&sb.users(), Region::Us);
    vault.insert(&user.user_id, user.refresh_token.as_deref().unwrap());
    let mut cfg = fast_config(sb.base_url(), sb.client_key());
    cfg.clock = Arc::new(clock.clone());
    let c = BaanxClient::new(cfg, Arc::new(vault.clone())).unwrap();

    c.get_user(&user.user_id, Region::Us).await.unwrap();
    // 5 h 54 min later the 6 h token is still used
    clock.advance(ChronoDuration::minutes(6 * 60 - 6));
    c.get_user(&user.user_id, Region::Us).await.unwrap();
    assert_eq!(requests(&sb.stats().await, "POST /v1/auth/oauth/token"), 1);
    // 4 min before expiry it is replaced before use: no 401 on the way
    clock.advance(ChronoDuration::minutes(2));
    c.get_user(&user.user_id, Region::Us).await.unwrap();
    let stats = sb.stats().await;
    assert_eq!(requests(&stats, "POST /v1/auth/oauth/token"), 2);
    assert_eq!(requests(&stats, "GET /v1/user"), 3, "no call was refused");
    assert_eq!(vault.token(&user.user_id).unwrap(), sb.user(&user.user_id).unwrap().refresh_token);
}

async fn insert_user(url: &str, user: &UserId, region: Region) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::query(
        "INSERT INTO users (user_id, email, region, verification_state, created_at, updated_at) \
         VALUES ($1, 'someone@example.com', $2, 'UNVERIFIED', 0, 0)",
    )
    .bind(user.as_str())
    .bind(region.as_str())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn a_rotated_token_survives_a_restart_of_the_worker() {
    let sb = start_sandbox(40, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("worker.db").display());
    let key = Secret::new(TokenCipher::generate_key());
    let user = pick(&sb.users(), Region::Intl);
    let first_token = user.refresh_token.clone().unwrap();

    // the first worker process: import the consented token, make calls, exit
    {
        let store = Store::open(&url).await.unwrap();
        insert_user(&url, &user.user_id, Region::Intl).await;
        let cipher = Arc::new(TokenCipher::from_secrets(Some(&key), None).unwrap());
        let vault = StoreTokenVault::new(store.clone(), cipher, Arc::new(SystemClock));
        vault.put_consented(&user.user_id, &first_token).await.unwrap();
        let c = BaanxClient::new(fast_config(sb.base_url(), sb.client_key()), Arc::new(vault.clone())).unwrap();
        c.start_verification(&user.user_id, Region::Intl).await.unwrap();
        let stored = vault.refresh_token(&user.user_id).await.unwrap().unwrap();
        assert_ne!(stored.as_str(), first_token, "rotated");
        assert_eq!(stored.as_str(), sb.user(&user.user_id).unwrap().refresh_token);
        drop(c);
        store.close().await;
    }
    let raw = std::fs::read(dir.path().join("worker.db")).unwrap();
    let current = sb.user(&user.user_id).unwrap().refresh_token;
    assert!(!raw.windows(current.len()).any(|w| w == current.as_bytes()), "the token is at rest in clear");

    // the second process: a new store and client over the same file
    let store = Store::open(&url).await.unwrap();
    let cipher = Arc::new(TokenCipher::from_secrets(Some(&key), None).unwrap());
    let vault = StoreTokenVault::new(store.clone(), cipher, Arc::new(SystemClock));
    let c = BaanxClient::new(fast_config(sb.base_url(), sb.client_key()), Arc::new(vault.clone())).unwrap();
    let p = c.get_user(&user.user_id, Region::Intl).await.unwrap();
    assert_eq!(p.id, user.user_id);
    let stats = sb.stats().await;
    assert_eq!(
        requests(&stats, "POST /v1/auth/oauth/token"),
        1,
        "the second process uses the access token the first one stored: no refresh"
    );
    assert_eq!(
        vault.refresh_token(&user.user_id).await.unwrap().unwrap().as_str(),
        sb.user(&user.user_id).unwrap().refresh_token
    );
    store.close().await;
}

/// Two clients over one database, as two processes would be (each with its own
/// pool; one groups its writes as a run does), ask for the same users at the same
/// moment: each user is refreshed once, by one of them, and the other takes the
/// stored access token. Before the shared lease and the stored access token, both
/// refreshed, and the second presented a rotated token (`invalid_grant`: the user's
/// consent was lost).
async fn one_refresh_per_user(db: TestDb) {
    const USERS: usize = 24;
    let sb = start_sandbox(USERS, |_| {}).await;
    let key = Secret::new(TokenCipher::generate_key());
    let cipher = Arc::new(TokenCipher::from_secrets(Some(&key), None).unwrap());
    let users: Vec<UserRecord> = sb.users();
    for u in &users {
        insert_user(&db.url, &u.user_id, u.region).await;
        StoreTokenVault::new(db.store.clone(), cipher.clone(), Arc::new(SystemClock))
            .put_consented(&u.user_id, u.refresh_token.as_deref().unwrap())
            .await
            .unwrap();
    }
    let mut clients = Vec::new();
    for grouped in [false, true] {
        let store = Store::connect(&db.url).await.unwrap();
        let store = if grouped { store.with_group_commit(GroupCommit::for_backend(store.backend())) } else { store };
        let vault = StoreTokenVault::new(store, cipher.clone(), Arc::new(SystemClock));
        clients.push(BaanxClient::new(fast_config(sb.base_url(), sb.client_key()), Arc::new(vault)).unwrap());
    }
    let mut calls = tokio::task::JoinSet::new();
    for u in &users {
        for c in &clients {
            let (c, id, region) = (c.clone(), u.user_id.clone(), u.region);
            calls.spawn(async move { c.get_user(&id, region).await.map(|p| p.id) });
        }
    }
    let mut ok = 0;
    while let Some(r) = calls.join_next().await {
        r.unwrap().unwrap_or_else(|e| panic!("a call failed: {e}"));
        ok += 1;
    }
    assert_eq!(ok, 2 * USERS);
    let stats = sb.stats().await;
    assert_eq!(requests(&stats, "POST /v1/auth/oauth/token"), USERS as u64, "one refresh per user: {stats:?}");
    let lost: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE consent_required_at IS NOT NULL")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    assert_eq!(lost, 0, "no consent lost");
    // a third "process" later within the token's life makes no refresh at all
    let vault = StoreTokenVault::new(Store::connect(&db.url).await.unwrap(), cipher.clone(), Arc::new(SystemClock));
    let third = BaanxClient::new(fast_config(sb.base_url(), sb.client_key()), Arc::new(vault)).unwrap();
    for u in &users {
        third.get_user(&u.user_id, u.region).await.unwrap();
    }
    assert_eq!(requests(&sb.stats().await, "POST /v1/auth/oauth/token"), USERS as u64);
}

reverify::both_engines!(two_processes, one_refresh_per_user);

#[tokio::test]
async fn an_expired_stored_access_token_is_refreshed_once() {
    let clock = ManualClock::new(Utc::now());
    let sb = start_sandbox(10, |c| c.clock = Arc::new(clock.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let store = Store::open(&url).await.unwrap();
    let user = pick(&sb.users(), Region::Intl);
    insert_user(&url, &user.user_id, Region::Intl).await;
    let cipher = Arc::new(TokenCipher::from_secrets(Some(&Secret::new(TokenCipher::generate_key())), None).unwrap());
    let vault = StoreTokenVault::new(store.clone(), cipher, Arc::new(clock.clone()));
    vault.put_consented(&user.user_id, user.refresh_token.as_deref().unwrap()).await.unwrap();
    let client = |v: &StoreTokenVault| {
        let mut cfg = fast_config(sb.base_url(), sb.client_key());
        cfg.clock = Arc::new(clock.clone());
        BaanxClient::new(cfg, Arc::new(v.clone())).unwrap()
    };
    client(&vault).get_user(&user.user_id, Region::Intl).await.unwrap();
    // a new client (process) within the life: the stored token
    client(&vault).get_user(&user.user_id, Region::Intl).await.unwrap();
    assert_eq!(requests(&sb.stats().await, "POST /v1/auth/oauth/token"), 1);
    // past the usable part of its life: a new process refreshes, once
    clock.advance(ChronoDuration::minutes(6 * 60 - 4));
    let c = client(&vault);
    c.get_user(&user.user_id, Region::Intl).await.unwrap();
    c.get_user(&user.user_id, Region::Intl).await.unwrap();
    assert_eq!(requests(&sb.stats().await, "POST /v1/auth/oauth/token"), 2);
    store.close().await;
}
