//! The race suite (issue 13): the fleet production runs, on one database, with no
//! crash at all. Four campaigns over the same 300 UNVERIFIED users, each run by two
//! processes of the real binary at once (`--no-fresh-state`, so that nothing but the
//! ledger stands between a user and a fourth concurrent session), and `users sync`
//! looping beside them, against a sandbox that revokes a user's whole token chain
//! when a rotated refresh token is presented again (`--refresh-reuse
//! revoke-family`).
//!
//! Expected: no sandbox violation of any kind (no per-user limit broken, no refresh
//! token reused), no user marked `consent_required`, and every user with exactly 3
//! sessions and 3 messages: three campaigns reserve a session each, and the fourth
//! finds three active and defers the user for concurrency.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use reverify::notify::testing::SmtpServer;
use reverify::sandbox::{Faults, Latency, RefreshReuse, SandboxConfig, UserSource};
use reverify::store::testing::TestDb;
use sqlx::Row;

use crate::common::{Rig, campaign, check_delivery, per_target, text};
use crate::summary::{Counts, report};

const USERS: usize = 300;
const CAMPAIGNS: usize = 4;
const PROCESSES_PER_CAMPAIGN: usize = 2;

async fn race(db: TestDb) {
    let engine = db.backend().as_str();
    let users = reverify::sandbox::users::generate_unverified(USERS, 41, chrono::Utc::now());
    let config = SandboxConfig {
        users: UserSource::Records(users),
        seed: 41,
        faults: Faults { latency: Latency::Fixed(Duration::from_millis(2)), ..Faults::default() },
        refresh_reuse: RefreshReuse::RevokeFamily,
        ..SandboxConfig::default()
    };
    let mut rig = Rig::with_sandbox(db, config).await;
    let smtp = SmtpServer::start();
    rig.smtp_url = Some(smtp.url());
    let names: Vec<String> = (0..CAMPAIGNS).map(|i| format!("race-{i}")).collect();
    let mut ids = Vec::new();
    for name in &names {
        ids.push(rig.apply(&campaign(name, 400, 16)).await.campaign_id);
    }

    // users sync, again and again, while the runs go on
    let rig = Arc::new(rig);
    let stop = Arc::new(AtomicBool::new(false));
    let syncs = Arc::new(AtomicU32::new(0));
    let sync_loop = {
        let (rig, stop, syncs) = (rig.clone(), stop.clone(), syncs.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let o = rig.command(&["users", "sync"]).output().unwrap();
                assert!(o.status.success(), "users sync: {}", text(&o));
                syncs.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let children: Vec<_> = names
        .iter()
        .flat_map(|name| (0..PROCESSES_PER_CAMPAIGN).map(move |i| (name.clone(), i)))
        .map(|(name, i)| {
            let log = rig.path(&format!("{name}-{i}.log"));
            let child = rig
                .command(&["run", &name, "--progress", "none", "--no-fresh-state"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            (name, log, child)
        })
        .collect();
    for (name, log, mut child) in children {
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(status.success(), "{name}: {status}: {out}");
    }
    // at least one whole sync ran beside the runs
    while syncs.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || sync_loop.join()).await.unwrap().expect("the sync loop");

    let stats = rig.sandbox.stats().await;
    let consent_lost: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE consent_required_at IS NOT NULL")
        .fetch_one(rig.db.pool())
        .await
        .unwrap()
        .get("n");
    let views = rig.sandbox.user_views();
    let refreshes: u64 = views.iter().map(|v| v.token_refreshes).sum();
    let mails = smtp.messages();
    let per_user_mails = {
        let mut m = std::collections::HashMap::<String, usize>::new();
        for ((_, to, _), n) in per_target(&mails) {
            *m.entry(to).or_default() += n;
        }
        m
    };
    let wrong_sessions: Vec<_> =
        views.iter().filter(|v| v.sessions_issued != 3).map(|v| (v.user_id.clone(), v.sessions_issued)).collect();
    let wrong_mails: Vec<_> = views
        .iter()
        .filter(|v| per_user_mails.get(&v.email).copied().unwrap_or(0) != 3)
        .map(|v| (v.email.clone(), per_user_mails.get(&v.email).copied().unwrap_or(0)))
        .collect();
    report(
        format!(
            "race: engine={engine} users={USERS} campaigns={CAMPAIGNS} processes={} syncs={} refreshes={refreshes} \
             consent_lost={consent_lost} violations={} refresh_reuse={} concurrency={} sessions={} messages={}",
            CAMPAIGNS * PROCESSES_PER_CAMPAIGN,
            syncs.load(Ordering::Relaxed),
            stats.violations,
            stats.refresh_token_reuses,
            stats.violations_by_kind.get("concurrency").copied().unwrap_or(0),
            stats.sessions_issued,
            mails.len(),
        ),
        Counts { violations: stats.violations, ..Counts::default() },
    );
    // what each campaign made of a user short of 3 sessions, for the failure message
    let mut short = Vec::new();
    for (user, n) in &wrong_sessions {
        let mut seen = Vec::new();
        for id in &ids {
            let t = rig.targets(*id).await.into_iter().find(|t| &t.user_id == user);
            seen.push(t.map(|t| format!("{}/{}", t.status, t.reason.unwrap_or_default())));
        }
        short.push(format!("{user}: {n} sessions, targets {seen:?}"));
    }
    assert_eq!(stats.violations, 0, "{stats:?}");
    assert_eq!(stats.refresh_token_reuses, 0, "{stats:?}");
    assert_eq!(consent_lost, 0, "users whose consent was lost");
    assert!(wrong_sessions.is_empty(), "users without exactly 3 sessions:\n{}", short.join("\n"));
    assert!(wrong_mails.is_empty(), "users without exactly 3 messages: {wrong_mails:?}");
    for (name, id) in names.iter().zip(&ids) {
        let targets = rig.targets(*id).await;
        check_delivery(name, &targets, &mails, false);
    }
    // every process sealed the audit chain as it went and at its end, taking turns on
    // its head: the chain checks whole, every event in it
    let chain = rig.db.store.audit_verify(chrono::Utc::now()).await.unwrap();
    assert!(chain.problem.is_none(), "{:?}", chain.problem);
    assert!(chain.checked > 0 && chain.unsealed == 0, "checked {}, unsealed {}", chain.checked, chain.unsealed);
}

// On Postgres, and with two processes per campaign on one SQLite file:
// `race::four_campaigns_two_processes_each::{postgres,sqlite}`.
reverify::both_engines!(four_campaigns_two_processes_each, race);
