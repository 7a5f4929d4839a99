//! What every provider's bounce receiver shares (`ses`, `sendgrid`, `postmark`):
//! where reports go, the refusals counted and logged, the keys and ids a report is
//! made of. `http` mounts the receivers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::{info, warn};

use super::{BounceKey, BounceReport, BounceSink, BounceSource, Recorded};
use crate::domain::bounce::scrub_diagnostic;
use crate::domain::{Clock, EmailAddress};
use crate::telemetry::LogThrottle;

/// At most one log line per this, per provider, about refused unauthenticated posts.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// The longest dedupe id kept (longer provider ids are cut).
pub const DEDUPE_ID_MAX_CHARS: usize = 200;

/// What every provider's receiver shares: where reports go, the clock, and the
/// throttle on refusal log lines.
pub(crate) struct Intake {
    pub(crate) source: BounceSource,
    sink: Arc<dyn BounceSink>,
    pub(crate) clock: Arc<dyn Clock>,
    refusals: LogThrottle,
}

impl Intake {
    pub(crate) fn new(source: BounceSource, sink: Arc<dyn BounceSink>, clock: Arc<dyn Clock>) -> Self {
        Self { source, sink, clock, refusals: LogThrottle::new(REFUSAL_LOG_EVERY) }
    }

    /// Counts `reason` for this provider.
    pub(crate) fn count(&self, reason: &'static str) {
        crate::telemetry::global().bounce_rejected(self.source.as_str(), reason);
    }

    /// Refuses a post nobody authenticated (or a replay): counted, and logged at
    /// most once per [`REFUSAL_LOG_EVERY`]. Logged words are scrubbed of addresses
    /// (a parse error may quote the body).
    pub(crate) fn refuse_quietly(&self, reason: &'static str, status: StatusCode, result: &str) -> Response {
        self.count(reason);
        if let Some(held_back) = self.refusals.admit(Instant::now()) {
            let source = self.source.as_str();
            let result = scrub_diagnostic(result);
            warn!(
                source,
                reason,
                held_back,
                "bounce webhook refused ({source}: {reason}: {result}); {held_back} more refused since the last such \
                 line. These refusals are logged at most once a minute and counted in reverify_bounce_rejected_total"
            );
        }
        answer(status, result)
    }

    /// Refuses an authenticated post that makes no sense: counted and logged (only
    /// the provider can send these).
    pub(crate) fn refuse(&self, reason: &'static str, status: StatusCode, result: &str) -> Response {
        self.count(reason);
        warn!(source = self.source.as_str(), reason, "bounce webhook refused: {}", scrub_diagnostic(result));
        answer(status, result)
    }

    /// The answer to a body that could not be read: 413 for one over
    /// `http::MAX_BODY_BYTES`, else 400.
    pub(crate) fn unreadable(&self, rejection: BytesRejection) -> Response {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return self.refuse_quietly("too_large", StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
        self.refuse_quietly("malformed", StatusCode::BAD_REQUEST, &format!("unreadable body: {rejection}"))
    }

    /// Hands `reports` to the sink in order: 200 once all are recorded, 503 at
    /// the first the sink could not record (the provider retries the whole post;
    /// the sink ignores the reports it already has).
    pub(crate) async fn deliver(&self, reports: Vec<BounceReport>) -> Response {
        let source = self.source.as_str();
        if reports.is_empty() {
            info!(source, "bounce webhook: nothing to record (no bounce or complaint)");
            return answer(StatusCode::OK, "ignored");
        }
        let total = reports.len();
        for report in reports {
            let dedupe_id = report.dedupe_id.clone();
            match self.sink.record(report).await {
                Ok(Recorded::Applied) => {}
                Ok(Recorded::Duplicate) => self.count("duplicate"),
                Ok(Recorded::Unmatched) => {
                    info!(source, dedupe_id, "bounce report matches no message of ours; recorded as unmatched");
                    self.count("unmatched");
                }
                Ok(Recorded::UnknownToken) => {
                    info!(source, dedupe_id, "bounce report names a VERP token no key of ours made; ignored");
                    self.count("unknown_token");
                }
                Err(e) => {
                    warn!(source, dedupe_id, error = %e, "bounce report not recorded; the provider will retry");
                    return answer(StatusCode::SERVICE_UNAVAILABLE, "try again");
                }
            }
        }
        info!(source, reports = total, "bounce webhook recorded");
        answer(StatusCode::OK, "recorded")
    }
}

/// `{"result": result}` with `status`.
pub(crate) fn answer(status: StatusCode, result: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "result": result }))).into_response()
}

/// `s` without surrounding white space and angle brackets (`<id@host>` → `id@host`).
pub(crate) fn strip_angle(s: &str) -> &str {
    s.trim().trim_start_matches('<').trim_end_matches('>').trim()
}

/// A [`BounceKey::MessageId`] from a Message-ID header value, when it has one.
pub(crate) fn message_id_key(header: Option<&str>) -> Option<BounceKey> {
    let id = strip_angle(header?);
    (!id.is_empty()).then(|| BounceKey::MessageId(id.to_owned()))
}

/// A [`BounceKey::Address`] from a recipient's address, when it parses.
pub(crate) fn address_key(address: Option<&str>) -> Option<BounceKey> {
    EmailAddress::parse(strip_angle(address?)).ok().map(BounceKey::Address)
}

/// `id` cut at [`DEDUPE_ID_MAX_CHARS`].
pub(crate) fn dedupe_id(id: &str) -> String {
    id.trim().chars().take(DEDUPE_ID_MAX_CHARS).collect()
}
