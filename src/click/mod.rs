//! The public click-through routes: `GET /v/{token}` shows a page with a button,
//! and only the person's submitted `POST /v/{token}` makes a verification session,
//! under every per-user limit, and answers `303 See Other` to the session URL.
//!
//! Decisions:
//! - **A GET never makes a session, nor changes anything** (design.md invariant 8):
//!   mail scanners and link previews fetch links. HEAD is a GET without a body.
//! - **One session per click, at most one per 30 s per link**: the click's first
//!   write takes the link's right to make a session; a second POST within 30 s
//!   (a double click, a reload) is told the first is on its way. A click that made
//!   no session (the limits, the user's state, an API refusal) gives the right back.
//! - **Every limit, the same ledger**: the reservation is the runs' (the user's row
//!   locked, the sessions read after the lock), so clicks and runs together never
//!   break one. The access token comes under the one-refresh-at-a-time rule.
//! - **Secrets**: the token is only ever stored as its hash; the session URL goes
//!   into the `Location` header and nowhere else (not a log line, not the page).
//!   Unknown, expired and revoked links get the same few words whoever asks, with
//!   no hint whether the user exists.
//! - **Abuse**: POSTs are rate-limited per link and every request per client
//!   address: the peer's, or, from a peer in `trusted_proxies` (an ingress), the
//!   address `X-Forwarded-For` names (read from the right, see
//!   [`crate::domain::proxies`]), so that one client cannot use up everybody's
//!   limit behind the ingress. The answer is a 429 page. The limiters forget idle
//!   keys every [`PRUNE_EVERY`] requests, so rotating addresses cannot grow them
//!   without bound. The pages load nothing from elsewhere (a strict Content-Security-Policy,
//!   whose `form-action` lets the POST's redirect go to the session page), and are
//!   not cached or indexed.

mod pages;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tracing::warn;

use crate::domain::freshness::{Feed, FreshStateAge, FreshStateSettings};
use crate::domain::proxies::TrustedProxies;
use crate::domain::{Clock, Region, SystemClock};
use crate::engine::ports::{ApiFailure, ApiUser, VerificationApi};
use crate::store::Store;
use crate::store::clicks::{ClickRecordParams, ClickReservation, ClickReserveParams, ClickSession, ClickStart};
use crate::store::links::{LinkRow, link_token_hash};
use crate::store::outcomes::Fresh;
use crate::store::sessions::SessionLife;
pub use pages::{Lang, Page, Reader};

/// The path of a link: `/v/{token}`.
pub const LINK_PATH: &str = "/v/{token}";

/// How often (in requests) the rate limiters drop the keys they no longer need.
pub const PRUNE_EVERY: u64 = 1024;

/// How the click routes behave. Every field documents its default.
#[derive(Debug, Clone)]
pub struct ClickConfig {
    /// A session's life at the API and the ledger's margin (24 h, 5 min).
    pub life: SessionLife,
    /// POSTs per link per minute (default 6).
    pub per_link_per_minute: u32,
    /// Requests per client address per minute (default 120).
    pub per_address_per_minute: u32,
    /// `trusted_proxies` (none by default): the peers whose `X-Forwarded-For` names
    /// the client.
    pub trusted_proxies: TrustedProxies,
    /// `fresh_state_max_age` and the webhook feed (none, none, 24 h by default); a
    /// link's campaign key overrides the age.
    pub freshness: FreshStateSettings,
}

impl Default for ClickConfig {
    fn default() -> Self {
        Self {
            life: SessionLife {
                ttl: std::time::Duration::from_secs(24 * 3600),
                margin: std::time::Duration::from_secs(300),
            },
            per_link_per_minute: 6,
            per_address_per_minute: 120,
            trusted_proxies: TrustedProxies::default(),
            freshness: FreshStateSettings::default(),
        }
    }
}

struct Clicks {
    store: Store,
    api: Arc<dyn VerificationApi>,
    clock: Arc<dyn Clock>,
    config: ClickConfig,
    /// By link id (the token itself is not kept).
    per_link: Limiter<i64>,
    per_address: Limiter<IpAddr>,
}

/// A keyed rate limiter that forgets, every [`PRUNE_EVERY`] checks, the keys whose
/// state is back to fresh: its map holds only the keys seen within about one
/// quota period, however many addresses rotate through it.
struct Limiter<K: std::hash::Hash + Eq + Clone> {
    inner: DefaultKeyedRateLimiter<K>,
    seen: std::sync::atomic::AtomicU64,
}

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    fn per_minute(n: u32) -> Self {
        Self { inner: RateLimiter::keyed(per_minute(n)), seen: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Counts a request for `key`; false when over its rate.
    fn check(&self, key: &K) -> bool {
        if self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.inner.retain_recent();
            self.inner.shrink_to_fit();
        }
        self.inner.check_key(key).is_ok()
    }
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least 1"))
}

/// The router for `GET`/`HEAD`/`POST /v/{token}`. Serve it with the peer address
/// ([`serve_public`] does), never on the operations listener.
pub fn click_router(store: Store, api: Arc<dyn VerificationApi>, config: ClickConfig) -> Router {
    click_router_with_clock(store, api, config, Arc::new(SystemClock))
}

/// [`click_router`] on a given clock.
pub fn click_router_with_clock(
    store: Store,
    api: Arc<dyn VerificationApi>,
    config: ClickConfig,
    clock: Arc<dyn Clock>,
) -> Router {
    let state = Arc::new(Clicks {
        store,
        api,
        clock,
        per_link: Limiter::per_minute(config.per_link_per_minute),
        per_address: Limiter::per_minute(config.per_address_per_minute),
        config,
    });
    Router::new().route(LINK_PATH, get(show).post(click)).with_state(state).layer(axum::middleware::from_fn(counted))
}

/// Counts each click-through request by what it came to, and times it
/// (`reverify_click_requests_total`, `reverify_click_duration_seconds`).
async fn counted(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let result = match response.status() {
        StatusCode::SEE_OTHER => "redirected",
        StatusCode::NOT_FOUND | StatusCode::GONE => "not_found",
        StatusCode::TOO_MANY_REQUESTS => "limited",
        s if s.is_server_error() => "error",
        _ => "page",
    };
    crate::telemetry::global().click_answered(result, started.elapsed());
    response
}

/// Serves the public routes: see [`crate::telemetry::serve_public`] (with each
/// request's peer address, which the per-address limit needs, and `/healthz`).
pub use crate::telemetry::{serve_public, serve_public_on};

/// A page as a response, with the headers every page carries.
fn respond(status: StatusCode, page: &Page, lang: Reader) -> Response {
    let mut r = (status, page.render(lang)).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("x-robots-tag", HeaderValue::from_static("noindex, nofollow"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    // `form-action` is checked against the redirect after the POST too (Chromium
    // blocks a 303 to another origin under `form-action 'self'`), and the session
    // page's origin is Baanx's, known only from the API's answer: the form posts to
    // this page and may then go to any web page, nothing else
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https: http:; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
    );
    r
}

/// The language of a page shown before the link is known (an unknown link, the
/// per-address limit): the first of the browser's `Accept-Language` that we
/// write, else English.
fn browser_lang(headers: &HeaderMap) -> Reader {
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(|range| range.split(';').next().map(str::trim))
        .find(|tag| crate::domain::locale::Lang::known(tag).is_some())
        .map_or(Reader::EN, |tag| Reader::of(Some(tag)))
}

/// What a token leads to before anything is done: the link, or the page to show.
async fn find(s: &Clicks, token: &str, now: DateTime<Utc>, hint: Reader) -> Result<LinkRow, Response> {
    // a token is 43 characters of URL-safe base64; anything else is not one of ours
    if token.len() > 128 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(respond(StatusCode::NOT_FOUND, &Page::NotFound, hint));
    }
    match s.store.link_find(&link_token_hash(token)).await {
        Ok(Some(link)) if link.revoked || link.expires_at <= now => {
            Err(respond(StatusCode::GONE, &Page::Gone, Reader::of(link.locale.as_deref())))
        }
        Ok(Some(link)) => Ok(link),
        Ok(None) => Err(respond(StatusCode::NOT_FOUND, &Page::NotFound, hint)),
        Err(e) => {
            warn!(error = %e, "click: the database failed");
            Err(respond(StatusCode::SERVICE_UNAVAILABLE, &Page::TryLater, hint))
        }
    }
}

fn too_many(lang: Reader) -> Response {
    let mut r = respond(StatusCode::TOO_MANY_REQUESTS, &Page::TooMany, lang);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    r
}

/// The link of `token` and its user's language, within the address's rate; or the
/// page to answer instead.
async fn open(
    s: &Clicks,
    peer: SocketAddr,
    headers: &HeaderMap,
    token: &str,
    now: DateTime<Utc>,
) -> Result<(LinkRow, Reader), Response> {
    let hint = browser_lang(headers);
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let client = s.config.trusted_proxies.client(peer.ip(), forwarded);
    if !s.per_address.check(&client) {
        return Err(too_many(hint));
    }
    let link = find(s, token, now, hint).await?;
    let lang = Reader::of(link.locale.as_deref());
    Ok((link, lang))
}

/// `GET /v/{token}`: the page with the button. Reads, never writes.
async fn show(
    State(s): State<Arc<Clicks>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let now = s.clock.now();
    let (link, lang) = match open(&s, peer, &headers, &token, now).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let expires = pages::when(link.expires_at, link.zone(), lang);
    respond(StatusCode::OK, &Page::Landing { expires }, lang)
}

/// `POST /v/{token}`: the person's click. Makes at most one session.
async fn click(
    State(s): State<Arc<Clicks>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let now = s.clock.now();
    let (link, lang) = match open(&s, peer, &headers, &token, now).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    drop(token);
    if !s.per_link.check(&link.link_id) {
        return too_many(lang);
    }
    match s.store.link_click_start(&link, "click", now).await {
        Ok(ClickStart::Go) => {}
        Ok(ClickStart::OnItsWay { .. }) => return respond(StatusCode::OK, &Page::OnItsWay, lang),
        Err(e) => {
            warn!(error = %e, "click: the database failed");
            return respond(StatusCode::SERVICE_UNAVAILABLE, &Page::TryLater, lang);
        }
    }
    let answer = make_session(&s, &link, lang, now).await;
    if answer.status() != StatusCode::SEE_OTHER
        && let Err(e) = s.store.link_click_release(link.link_id).await
    {
        warn!(error = %e, "click: could not give the link's turn back; the next click waits 30 s");
    }
    answer
}

/// The `fresh_state_max_age` for a click of `link` (see `domain::freshness`): its
/// campaign's key as sent, else the setting, with the feed as it stands. A store
/// that cannot say how the feed is counts as a silent feed: the state is asked.
async fn fresh_age(s: &Clicks, link: &LinkRow, now: DateTime<Utc>) -> FreshStateAge {
    let settings = s.config.freshness;
    let feed = if settings.webhook_feed {
        match s.store.feed_marks().await {
            Ok(marks) => Feed::judge(true, marks.last_heard(), settings.max_silence, now),
            Err(e) => {
                warn!(error = %e, "click: could not read the webhook feed's health; asking the state");
                Feed::Silent
            }
        }
    } else {
        Feed::None
    };
    FreshStateAge::resolve(link.fresh_state_max_age, settings.max_age, feed)
}

/// The fresh state, the reservation, the session; the page or the redirect.
async fn make_session(s: &Clicks, link: &LinkRow, lang: Reader, now: DateTime<Utc>) -> Response {
    let (Ok(user_id), Ok(region)) = (crate::store::links::link_user(link), link.region.parse::<Region>()) else {
        return respond(StatusCode::SERVICE_UNAVAILABLE, &Page::TryLater, lang);
    };
    let user = ApiUser { user_id, region };
    // the state, asked fresh unless the stored one was confirmed recently enough
    let fresh = if fresh_age(s, link, now).await.trusts(link.state_confirmed_at, now) {
        None
    } else {
        let asked_at = s.clock.now();
        match s.api.fresh_state(&user, None).await {
            Ok(state) => Some(Fresh { state, asked_at }),
            Err(f) => return api_trouble(&f, lang),
        }
    };
    let reserved = s
        .store
        .session_reserve_click(ClickReserveParams {
            campaign_id: link.campaign_id,
            user_id: &link.user_id,
            step: link.step,
            link_id: link.link_id,
            now,
            life: s.config.life,
            fresh,
        })
        .await;
    let session_id = match reserved {
        Ok(ClickReservation::Reserved { session_id }) => session_id,
        Ok(ClickReservation::Skipped(crate::domain::SkipReason::AlreadyVerified)) => {
            return respond(StatusCode::OK, &Page::Verified, lang);
        }
        Ok(ClickReservation::Skipped(crate::domain::SkipReason::Pending)) => {
            return respond(StatusCode::OK, &Page::Pending, lang);
        }
        Ok(ClickReservation::Deferred { until, reason }) => {
            let at = pages::when(until, link.zone(), lang);
            let tomorrow = pages::is_another_day(now, until, link.zone());
            return respond(StatusCode::OK, &Page::NotYet { at, why: Some(reason), tomorrow }, lang);
        }
        Err(e) => {
            warn!(error = %e, "click: the database failed");
            return respond(StatusCode::SERVICE_UNAVAILABLE, &Page::TryLater, lang);
        }
    };
    match s.api.start_session(&user, None).await {
        Ok(url) => {
            if let Err(e) = s
                .store
                .session_record_click(ClickRecordParams {
                    session_id,
                    outcome: ClickSession::Delivered,
                    now: s.clock.now(),
                    life: s.config.life,
                })
                .await
            {
                // the row stays `reserved` and counts; the person can click again
                warn!(error = %e, "click: could not record the session; it is not handed out");
                return respond(StatusCode::SERVICE_UNAVAILABLE, &Page::TryLater, lang);
            }
            crate::telemetry::global().session_issued(&link.campaign_name);
            let mut r = StatusCode::SEE_OTHER.into_response();
            let h = r.headers_mut();
            match HeaderValue::from_str(url.expose()) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    h.insert(header::LOCATION, v);
                }
                Err(_) => return respond(StatusCode::SERVICE_UNAVAILABLE, &Page::TryLater, lang),
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            r
        }
        Err(f) => {
            let outcome = match f {
                ApiFailure::Unavailable(_) => ClickSession::Unknown,
                _ => ClickSession::Refused,
            };
            if let Err(e) = s
                .store
                .session_record_click(ClickRecordParams {
                    session_id,
                    outcome,
                    now: s.clock.now(),
                    life: s.config.life,
                })
                .await
            {
                warn!(error = %e, "click: could not record the failed session call; the row keeps counting");
            }
            api_trouble(&f, lang)
        }
    }
}

/// The page for an API failure; nothing of the failure is shown.
fn api_trouble(f: &ApiFailure, lang: Reader) -> Response {
    warn!(error = %f, "click: the Baanx call failed");
    match f {
        ApiFailure::UserLimited { .. } => {
            respond(StatusCode::OK, &Page::NotYet { at: None, why: None, tomorrow: false }, lang)
        }
        ApiFailure::ConsentRequired | ApiFailure::Forbidden(_) => respond(StatusCode::OK, &Page::Contact, lang),
        _ => respond(StatusCode::SERVICE_UNAVAILABLE, &Page::TryLater, lang),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotating_addresses_do_not_grow_the_limiter() {
        let l: Limiter<IpAddr> = Limiter::per_minute(120);
        let addr = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..20_000 {
            assert!(l.check(&addr(i)), "a new address is allowed");
        }
        // one request at 120 a minute is forgotten about a second later
        std::thread::sleep(std::time::Duration::from_millis(1500));
        for i in 0..u32::try_from(PRUNE_EVERY).unwrap() {
            l.check(&addr(1_000_000 + i));
        }
        assert!(l.inner.len() <= PRUNE_EVERY as usize, "{} keys kept", l.inner.len());
        // and a limited address stays limited
        let one = addr(7_000_000);
        let allowed = (0..200).filter(|_| l.check(&one)).count();
        assert_eq!(allowed, 120, "120 at once, then 429");
    }
}
