//! Invariant 2 at the client's edge: with tracing at TRACE for every crate, a run
//! with injected errors leaves no session URL and no token in the output.

use std::io::Write;
use std::sync::{Arc, Mutex};

use reverify::baanx::{BaanxClient, MemoryVault};
use reverify::domain::VerificationState;
use reverify::sandbox::ScriptedFault;
use tracing_subscriber::fmt::MakeWriter;

use crate::common::{fast_config, start_sandbox};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Runs of `prefix` followed by 16 or more hex digits: the sandbox's token shapes.
fn token_shaped(log: &str, prefix: &str) -> Vec<String> {
    log.match_indices(prefix)
        .filter_map(|(i, _)| {
            let rest = &log[i + prefix.len()..];
            let n = rest.chars().take_while(char::is_ascii_hexdigit).count();
            (n >= 16).then(|| log[i..i + prefix.len() + n].to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_output_holds_no_session_url_and_no_token() {
    let capture = Capture::default();
    // the process-wide subscriber, as the binary installs it (log records included)
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .try_init()
        .expect("no other test installs a global subscriber");

    let sb = start_sandbox(60, |_| {}).await;
    let users: Vec<_> =
        sb.users().into_iter().filter(|u| u.verification_state != VerificationState::Rejected).take(12).collect();
    let initial_tokens: Vec<String> = sb.users().iter().filter_map(|u| u.refresh_token.clone()).collect();
    let vault = MemoryVault::new();
    for u in &users {
        vault.insert(&u.user_id, u.refresh_token.as_deref().unwrap());
    }
    let c = BaanxClient::new(fast_config(sb.base_url(), sb.client_key()), Arc::new(vault.clone())).unwrap();

    sb.expire_tokens(&users[1].user_id).unwrap();
    sb.suspend(&users[2].user_id).unwrap();
    sb.revoke(&users[3].user_id).unwrap();
    let mut urls = Vec::new();
    let mut failures = 0;
    for (i, u) in users.iter().enumerate() {
        match i {
            4 => sb.fail_next(ScriptedFault::ServerError, 2),
            5 => sb.fail_next(ScriptedFault::Throttle { retry_after_secs: 1 }, 1),
            6 => sb.fail_next(ScriptedFault::Timeout, 1),
            _ => {}
        }
        if let Err(e) = c.get_user(&u.user_id, u.region).await {
            // the engine logs errors like this: their Display must be safe too
            tracing::error!(error = %e, debug = ?e, "get_user failed");
            failures += 1;
        }
        match c.start_verification(&u.user_id, u.region).await {
            Ok(url) => {
                tracing::info!(session = %url, debug = ?url, "session started");
                urls.push(url);
            }
            Err(e) => {
                tracing::error!(error = %e, debug = ?e, "start_verification failed");
                failures += 1;
            }
        }
        // a 401 on the way: the access token expires between the two calls
        if i == 8 {
            sb.expire_tokens(&u.user_id).unwrap();
            let url = c.start_verification(&u.user_id, u.region).await.unwrap();
            urls.push(url);
        }
    }
    sb.fail_next(ScriptedFault::Timeout, 1);
    if let Err(e) = c.start_verification(&users[0].user_id, users[0].region).await {
        tracing::error!(error = %e, debug = ?e, "start_verification failed");
        failures += 1;
    }
    sb.shutdown().await;

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    // the capture worked and saw the run, so the checks below can fail
    assert!(log.contains("baanx answered") && log.contains("status=500"), "capture is empty or partial");
    assert!(log.contains("status=429") && log.contains("status=401") && log.contains("status=403"));
    assert!(failures >= 4, "suspended (x2), revoked (x2) and the session timeout fail: {failures}");
    assert!(urls.len() >= 8, "{}", urls.len());

    for url in &urls {
        let full = url.expose();
        let id = full.rsplit('/').next().unwrap();
        assert!(!log.contains(full) && !log.contains(id), "a session URL reached the log");
    }
    let mut tokens = initial_tokens;
    tokens.extend(sb.users().into_iter().filter_map(|u| u.refresh_token));
    for t in &tokens {
        assert!(!log.contains(t.as_str()), "a refresh token reached the log");
    }
    let shaped: Vec<_> = ["at_", "rt_"].iter().flat_map(|p| token_shaped(&log, p)).collect();
    assert!(shaped.is_empty(), "token-shaped strings in the log: {}", shaped.len());
    assert!(!log.contains("Bearer "), "an Authorization header reached the log");
}
