//! Rates mean what they say (issue 14, item 10): a campaign's
//! `throttle.requests_per_second` counts every Baanx request made for the campaign
//! (token refreshes, profiles, sessions), as the worker's limiter does. Before, it
//! paced the profile and session calls only: a campaign at 30 let 47 requests through
//! in its busiest second. The sandbox's own per-second histogram is the measure.

use chrono::Utc;
use reverify::both_engines;
use reverify::sandbox::{SandboxConfig, UserSource};
use reverify::store::testing::TestDb;

use crate::common::Env;

const USERS: usize = 90;
const RPS: u64 = 30;

both_engines!(the_campaign_rate_counts_every_request_it_makes, |db: TestDb| async move {
    let users = reverify::sandbox::users::generate_unverified(USERS, 9, Utc::now());
    let env =
        Env::with_sandbox(db, SandboxConfig { users: UserSource::Records(users), ..SandboxConfig::default() }).await;
    let toml = format!(
        "name = \"paced\"\n[delivery]\nfrom = \"Compliance <compliance@example.com>\"\n\
         [throttle]\nrequests_per_second = {RPS}\nconcurrency = 16\n"
    );
    let c = env.apply(&toml).await;
    let report = env.run(&c).await;
    assert_eq!(report.counts.notified, USERS as i64, "{report:?}");
    let stats = env.sandbox.stats().await;
    let requests: u64 = ["POST /v1/auth/oauth/token", "GET /v1/user", "GET /v1/user/verification"]
        .iter()
        .map(|e| stats.requests.get(*e).copied().unwrap_or(0))
        .sum();
    assert_eq!(requests, 3 * USERS as u64, "a token, a profile and a session per user: {stats:?}");
    // one second's worth, plus the campaign's burst of 1
    assert!(
        stats.api_busiest_second <= RPS + 1,
        "the busiest second held {} requests at a campaign rate of {RPS}: {:?}",
        stats.api_busiest_second,
        stats.api_per_second
    );
});
