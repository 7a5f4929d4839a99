//! The dashboard (issue 18): a read-mostly web page for the compliance team,
//! served on `ui_listen` by `reverify serve` and the daemon, never on the public
//! listener (click links, webhooks) nor the operations one (metrics).
//!
//! Decisions:
//! - Server-rendered HTML, its own small style sheet, charts as inline SVG drawn
//!   here; no script, nothing loaded from elsewhere (a strict
//!   Content-Security-Policy says so to the browser). A page of a running campaign
//!   refreshes itself with a meta refresh.
//! - The numbers are `campaign status`'s: the page calls the same
//!   [`Store::campaign_progress`].
//! - Every page needs a login (see [`auth`]); every POST carries the viewer's CSRF
//!   token, and the session cookie is `Secure`, `HttpOnly` and `SameSite=Strict`.
//!   Pause, resume and retry-failed are the CLI's store functions, audited with the
//!   actor `ui:NAME`, and only for the `operator` role.
//! - A proxy's user header (`ui_trusted_user_header`) is believed only from a peer
//!   in `ui_trusted_proxies`; from anyone else it is dropped (and a warning logged
//!   once), and a request carrying it twice is refused (400): see [`proxy_guard`].
//! - Logins under attack: an attempt is counted before its password is hashed, and
//!   at most [`UiConfig::max_hashes`] argon2 hashes (about 19 MiB each) run at once;
//!   the rest wait up to [`UiConfig::hash_wait`] and then get 429.
//! - No page shows a session URL, a link token or a refresh token: none is ever
//!   read here (the store holds no URL, links only as hashes, tokens sealed and
//!   never selected by these queries). Emails are masked and names left out for
//!   the `viewer` role.

pub mod auth;
mod html;
mod pages;
mod snapshot;
pub mod svg;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use tracing::{info, warn};

use self::auth::{LoginLimiter, Role, Sessions, UsersFile, Viewer, same};
use self::pages::{CampaignLine, CampaignView, UserView};
use crate::domain::proxies::TrustedProxies;
use crate::domain::{CampaignName, UserId};
use crate::store::campaigns::{CampaignRecord, CampaignStatus, StatusChange};
use crate::store::{Store, StoreError};

/// The session cookie.
pub const SESSION_COOKIE: &str = "reverify_session";
/// The login form's CSRF cookie (double submit: the form and the cookie agree).
pub const LOGIN_COOKIE: &str = "reverify_login";
/// Events per page of the audit trail.
pub const EVENTS_PER_PAGE: u32 = 25;

/// How the dashboard lets people in. Every field documents its default.
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// `ui_users_file`, read: empty when unset.
    pub users: UsersFile,
    /// `ui_trusted_user_header`: unset by default, and then never read; when set,
    /// read only from a peer in `trusted_proxies`.
    pub trusted_header: Option<HeaderName>,
    /// `ui_trusted_proxies` (none by default): the peers whose user header and
    /// `X-Forwarded-For` are believed.
    pub trusted_proxies: TrustedProxies,
    /// `ui_approvals` (true): whether the page's Approve button works.
    pub approvals: bool,
    /// `approvers_file` is set: approvals need SSH signatures, which a page cannot
    /// carry, so the page refuses them and says to use `campaign approve`.
    pub approvals_signed: bool,
    /// The most argon2 password hashes at once (4), and how long a login waits for
    /// one before it gets 429 (10 s).
    pub max_hashes: usize,
    pub hash_wait: Duration,
    /// How long a login lasts (12 hours).
    pub session_ttl: Duration,
    /// Failed logins allowed per name (5) and per client address (20) in
    /// `login_window` (15 minutes).
    pub failures_per_name: u32,
    pub failures_per_address: u32,
    pub login_window: Duration,
    /// `require_approval`: a campaign without an approval of its version shows as
    /// awaiting one (else as not needing one).
    pub require_approval: bool,
    /// The templates a run would render, for approvals from the page (their
    /// versions are part of what is approved); `None`: approving from the page is
    /// refused with the reason.
    pub templates: Option<Arc<crate::notify::Templates>>,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            users: UsersFile::default(),
            trusted_header: None,
            session_ttl: Duration::from_secs(12 * 3600),
            failures_per_name: 5,
            failures_per_address: 20,
            login_window: Duration::from_secs(15 * 60),
            require_approval: false,
            templates: None,
            trusted_proxies: TrustedProxies::default(),
            approvals: true,
            approvals_signed: false,
            max_hashes: 4,
            hash_wait: Duration::from_secs(10),
        }
    }
}

/// Why the dashboard cannot start.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error(transparent)]
    Users(#[from] auth::UsersFileError),
    #[error("ui_trusted_user_header: {0:?} is not a header name")]
    Header(String),
    #[error(
        "ui_listen is set, but nobody can log in: set ui_users_file (REVERIFY_UI_USERS_FILE) or \
         ui_trusted_user_header (REVERIFY_UI_TRUSTED_USER_HEADER)"
    )]
    NoWayIn,
    #[error(
        "ui_trusted_user_header is set, but ui_trusted_proxies (REVERIFY_UI_TRUSTED_PROXIES) is not: the header \
         would be believed from nobody; list the proxies' addresses (CIDRs)"
    )]
    NoTrustedProxy,
}

impl UiConfig {
    /// From the settings: reads and checks the users file.
    ///
    /// # Errors
    /// [`UiError`]: a malformed users file (file, line, field), a bad header name,
    /// or neither way in set.
    pub fn from_settings(users_file: Option<&PathBuf>, trusted_header: Option<&str>) -> Result<Self, UiError> {
        let users = auth::load_users(users_file)?;
        let trusted_header = trusted_header
            .map(|h| HeaderName::from_bytes(h.trim().as_bytes()).map_err(|_| UiError::Header(h.to_owned())))
            .transpose()?;
        if users_file.is_none() && trusted_header.is_none() {
            return Err(UiError::NoWayIn);
        }
        Ok(Self { users, trusted_header, ..Self::default() })
    }

    /// [`UiConfig::from_settings`] with the rest of the settings: the trusted
    /// proxies, `ui_approvals` and whether approvals need signatures.
    ///
    /// # Errors
    /// As [`UiConfig::from_settings`]; [`UiError::NoTrustedProxy`] for a user header
    /// with no proxy to believe it from.
    pub fn from_all_settings(settings: &crate::Settings) -> Result<Self, UiError> {
        let mut config =
            Self::from_settings(settings.ui_users_file.as_ref(), settings.ui_trusted_user_header.as_deref())?;
        if config.trusted_header.is_some() && settings.ui_trusted_proxies.is_empty() {
            return Err(UiError::NoTrustedProxy);
        }
        config.trusted_proxies = TrustedProxies::new(settings.ui_trusted_proxies.clone());
        config.approvals = settings.ui_approvals;
        config.approvals_signed = settings.approvers_file.is_some();
        Ok(config)
    }
}

#[derive(Clone)]
struct Ui {
    store: Store,
    config: Arc<UiConfig>,
    sessions: Arc<Sessions>,
    limiter: Arc<LoginLimiter>,
    /// Keys the CSRF tokens of people let in by the proxy's header.
    header_key: Arc<[u8; 32]>,
    /// Each campaign's figures, refreshed in the background (see [`snapshot`]).
    figures: Arc<snapshot::Snapshots>,
    /// The argon2 hashes allowed at once.
    hashes: Arc<tokio::sync::Semaphore>,
    /// Whether the user header from an untrusted peer was warned about.
    warned_untrusted: Arc<AtomicBool>,
}

/// How old a campaign's figures may be before a page load refreshes them (in the
/// background: the page shows the snapshot it has).
const FIGURES_MAX_AGE: Duration = Duration::from_secs(4);

/// The dashboard's routes.
pub fn ui_router(store: Store, config: UiConfig) -> Router {
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    let config_hashes = config.max_hashes.max(1);
    let ui = Ui {
        store,
        sessions: Arc::new(Sessions::new(config.session_ttl)),
        limiter: Arc::new(LoginLimiter::new(
            config.login_window,
            config.failures_per_name,
            config.failures_per_address,
        )),
        config: Arc::new(config),
        header_key: Arc::new(key),
        figures: snapshot::Snapshots::new(FIGURES_MAX_AGE),
        hashes: Arc::new(tokio::sync::Semaphore::new(config_hashes)),
        warned_untrusted: Arc::new(AtomicBool::new(false)),
    };
    ui.figures.warm(ui.store.clone());
    Router::new()
        .route("/", get(campaigns_page))
        .route("/ui.css", get(css))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/campaigns/{name}", get(campaign_page))
        .route("/campaigns/{name}/report.csv", get(report_csv))
        .route("/campaigns/{name}/{action}", post(campaign_action))
        .route("/users", get(user_page))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(ui.clone(), proxy_guard))
        .with_state(ui)
}

/// The user header's gate: a request carrying it twice is refused (400), and from
/// a peer outside `ui_trusted_proxies` it is dropped before any handler reads it
/// (with one warning per process, so that a misconfigured proxy is noticed and an
/// attacker cannot fill the log).
async fn proxy_guard(State(ui): State<Ui>, mut req: Request, next: axum::middleware::Next) -> Response {
    if let Some(h) = ui.config.trusted_header.clone() {
        let count = req.headers().get_all(&h).iter().count();
        if count > 1 {
            warn!(header = %h, "dashboard: a request carried the user header twice; refused");
            return html(StatusCode::BAD_REQUEST, pages::message(None, "Refused", "The request named its user twice."));
        }
        if count == 1 {
            let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
            if !peer.is_some_and(|p| ui.config.trusted_proxies.trusts(p)) {
                if !ui.warned_untrusted.swap(true, Ordering::Relaxed) {
                    warn!(
                        header = %h,
                        peer = ?peer,
                        "dashboard: the user header came from a peer outside ui_trusted_proxies and was ignored \
                         (warned once)"
                    );
                }
                req.headers_mut().remove(&h);
            }
        }
    }
    next.run(req).await
}

/// The headers every answer carries.
fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
    );
    r
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    secure_headers(r)
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(r)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(r: &mut Response, name: &str, value: &str, max_age: u64) {
    let c = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

impl Ui {
    /// Who is asking: the proxy's header when that way in is set and the header is
    /// there, else the session cookie.
    fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        if let Some(h) = &self.config.trusted_header
            && let Some(name) = headers.get(h).and_then(|v| v.to_str().ok()).map(str::trim).filter(|n| !n.is_empty())
        {
            let role = self.config.users.get(name).map_or(Role::Viewer, |u| u.role);
            let csrf = {
                use hmac::Mac as _;
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.header_key[..]).expect("any key size");
                mac.update(name.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            };
            return Some(Viewer { name: name.to_owned(), role, csrf });
        }
        cookie(headers, SESSION_COOKIE).and_then(|t| self.sessions.get(&t))
    }
}

/// The viewer, or the answer for somebody not logged in: to the login page.
macro_rules! viewer_or_login {
    ($ui:expr, $headers:expr) => {
        match $ui.viewer(&$headers) {
            Some(v) => v,
            None => return redirect("/login"),
        }
    };
}

fn store_failed(v: Option<&Viewer>, e: &StoreError) -> Response {
    warn!(error = %e, "dashboard: a query failed");
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::message(v, "Database unavailable", "The database did not answer; try again in a moment."),
    )
}

async fn css() -> Response {
    let mut r = pages_css().into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    secure_headers(r)
}

fn pages_css() -> &'static str {
    html::CSS
}

async fn not_found(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let v = ui.viewer(&headers);
    html(StatusCode::NOT_FOUND, pages::message(v.as_ref(), "Not found", "There is no such page."))
}

async fn login_page(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    if ui.viewer(&headers).is_some() {
        return redirect("/");
    }
    login_form(StatusCode::OK, None)
}

fn login_form(status: StatusCode, message: Option<&str>) -> Response {
    let token = auth::random_token();
    let mut r = html(status, pages::login(&token, message));
    set_cookie(&mut r, LOGIN_COOKIE, &token, 3600);
    r
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

async fn login(
    State(ui): State<Ui>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same(&expected, &form.csrf) {
        return html(
            StatusCode::FORBIDDEN,
            pages::message(None, "Refused", "The form had expired or did not come from this page; log in again."),
        );
    }
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let addr = ui.config.trusted_proxies.client(peer.ip(), forwarded);
    let name = form.user.trim().to_owned();
    // counted before the hash: a burst of guesses at once is limited like a series
    if let Err(wait) = ui.limiter.attempt(&name, addr) {
        warn!(user = %name, %addr, "dashboard: login refused, too many attempts");
        return too_many_logins(wait);
    }
    // at most max_hashes argon2 hashes at once (memory), the rest wait a while
    let permit = match tokio::time::timeout(ui.config.hash_wait, ui.hashes.clone().acquire_owned()).await {
        Ok(Ok(p)) => p,
        _ => {
            warn!(user = %name, %addr, "dashboard: login refused, too many at once");
            return too_many_logins(Duration::from_secs(5));
        }
    };
    let users = ui.config.clone();
    let (n, p) = (name.clone(), form.password);
    let found = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        auth::check_login(&users.users, &n, &p)
    })
    .await
    .ok()
    .flatten();
    let Some(user) = found else {
        warn!(user = %name, %addr, "dashboard: login failed");
        return login_form(StatusCode::UNAUTHORIZED, Some("Wrong user name or password."));
    };
    ui.limiter.succeeded(&name, addr);
    info!(user = %user.name, role = user.role.as_str(), "dashboard: logged in");
    let token = ui.sessions.create(&user.name, user.role);
    let mut r = redirect("/");
    set_cookie(&mut r, SESSION_COOKIE, &token, ui.config.session_ttl.as_secs());
    set_cookie(&mut r, LOGIN_COOKIE, "", 0);
    r
}

fn too_many_logins(wait: Duration) -> Response {
    let mut r = login_form(
        StatusCode::TOO_MANY_REQUESTS,
        Some(&format!("Too many logins. Try again in {} minutes.", wait.as_secs().div_ceil(60).max(1))),
    );
    if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
    /// For an approval: the version the page showed.
    #[serde(default)]
    version: Option<i64>,
}

/// Refuses a POST without the viewer's token.
fn refuse_csrf(v: Option<&Viewer>) -> Response {
    html(
        StatusCode::FORBIDDEN,
        pages::message(v, "Refused", "The form did not carry this session's token (CSRF); reload the page and retry."),
    )
}

async fn logout(State(ui): State<Ui>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    let Some(v) = ui.viewer(&headers) else { return redirect("/login") };
    if !same(&v.csrf, &form.csrf) {
        return refuse_csrf(Some(&v));
    }
    if let Some(t) = cookie(&headers, SESSION_COOKIE) {
        ui.sessions.remove(&t);
    }
    let mut r = redirect("/login");
    set_cookie(&mut r, SESSION_COOKIE, "", 0);
    r
}

/// The next run: the schedule's next tick for an active campaign, else as stored.
fn next_run(c: &CampaignRecord) -> Option<chrono::DateTime<Utc>> {
    if c.status != CampaignStatus::Active {
        return None;
    }
    c.spec().ok().and_then(|spec| spec.cron()?.next_after(Utc::now(), spec.tz())).or(c.next_run_at)
}

async fn campaigns_page(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let v = viewer_or_login!(ui, headers);
    let read = async {
        let (records, latest) = futures::try_join!(ui.store.campaign_list(), ui.store.run_latest_each())?;
        let progress = futures::future::try_join_all(records.iter().map(|c| async {
            let (figures, approval) =
                futures::try_join!(ui.figures.get(&ui.store, c.campaign_id), ui.store.approval_current(c))?;
            Ok::<_, StoreError>((figures.progress.clone(), approval))
        }))
        .await?;
        Ok::<_, StoreError>(
            records
                .into_iter()
                .zip(progress)
                .map(|(record, (progress, approval))| CampaignLine {
                    approval,
                    last_run: latest.iter().find(|r| r.campaign_id == record.campaign_id).cloned(),
                    next_run: next_run(&record),
                    record,
                    progress,
                })
                .collect::<Vec<_>>(),
        )
    };
    match read.await {
        Ok(lines) => html(StatusCode::OK, pages::campaigns(&v, &lines, ui.config.require_approval)),
        Err(e) => store_failed(Some(&v), &e),
    }
}

#[derive(Deserialize)]
struct CampaignQuery {
    before: Option<i64>,
    done: Option<String>,
}

async fn find_campaign(ui: &Ui, v: &Viewer, name: &str) -> Result<CampaignRecord, Response> {
    let missing = || {
        html(
            StatusCode::NOT_FOUND,
            pages::message(Some(v), "No such campaign", &format!("No campaign is called {name:?}.")),
        )
    };
    let Ok(name) = CampaignName::parse(name) else { return Err(missing()) };
    match ui.store.campaign_get(&name).await {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(missing()),
        Err(e) => Err(store_failed(Some(v), &e)),
    }
}

async fn campaign_page(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<CampaignQuery>,
) -> Response {
    let v = viewer_or_login!(ui, headers);
    let c = match find_campaign(&ui, &v, &name).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let id = c.campaign_id;
    let s = &ui.store;
    let read = futures::try_join!(
        ui.figures.get(s, id),
        s.run_recent(id, 10),
        s.event_page_desc(id, q.before, EVENTS_PER_PAGE),
        s.approval_current(&c),
        crate::engine::outlook::outlook(s, &c, Utc::now()),
    );
    let (figures, runs, (events, more_events), approval, outlook) = match read {
        Ok(x) => x,
        Err(e) => return store_failed(Some(&v), &e),
    };
    let snapshot::Figures { progress, series, deferred, deferred_next, read_at } = (*figures).clone();
    let notice = q.done.as_deref().and_then(|d| match d {
        "paused" => Some("Paused. No run will start until it is resumed.".to_owned()),
        "resumed" => Some("Resumed. The next scheduled or manual run goes on.".to_owned()),
        "approved" => Some("Approved. This version may run.".to_owned()),
        d if d.starts_with("requeued-") => {
            Some(format!("{} failed targets re-queued for the next run.", d.trim_start_matches("requeued-")))
        }
        _ => None,
    });
    let view = CampaignView {
        next_run: next_run(&c),
        outlook,
        record: c,
        progress,
        series,
        deferred,
        deferred_next,
        runs,
        events,
        more_events,
        notice,
        figures_read_at: read_at,
        approval,
        require_approval: ui.config.require_approval,
        approvals_here: ui.config.approvals && !ui.config.approvals_signed,
    };
    html(StatusCode::OK, pages::campaign(&v, &view))
}

async fn campaign_action(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(v) = ui.viewer(&headers) else {
        return html(StatusCode::FORBIDDEN, pages::message(None, "Refused", "Log in first."));
    };
    if !same(&v.csrf, &form.csrf) {
        warn!(user = %v.name, %action, "dashboard: a POST without its CSRF token was refused");
        return refuse_csrf(Some(&v));
    }
    let allowed = if action == "approve" { v.role.can_approve() } else { v.role.can_operate() };
    if !allowed {
        let why = if action == "approve" {
            "Only an approver can approve a campaign."
        } else {
            "Only an operator can pause, resume or retry a campaign."
        };
        return html(StatusCode::FORBIDDEN, pages::message(Some(&v), "Not allowed", why));
    }
    let c = match find_campaign(&ui, &v, &name).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if action == "approve" {
        return approve(&ui, &v, &c, form.version).await;
    }
    let actor = v.actor();
    let now = Utc::now();
    let done = match action.as_str() {
        "pause" | "resume" => {
            let change = if action == "pause" { StatusChange::Pause } else { StatusChange::Resume };
            match ui.store.campaign_set_status(&c.name, change, &actor, now).await {
                Ok(_) => if action == "pause" { "paused" } else { "resumed" }.to_owned(),
                Err(StoreError::Conflict(why)) => {
                    return html(StatusCode::CONFLICT, pages::message(Some(&v), "Not possible", &why));
                }
                Err(e) => return store_failed(Some(&v), &e),
            }
        }
        "retry-failed" => match ui.store.campaign_retry_failed(c.campaign_id, &actor, now).await {
            Ok(n) => format!("requeued-{n}"),
            Err(e) => return store_failed(Some(&v), &e),
        },
        _ => return not_found(State(ui), headers).await,
    };
    ui.figures.forget(c.campaign_id);
    // the action's event joins the audit chain now, as a CLI command's does
    ui.store.audit_seal_or_warn(now).await;
    info!(user = %v.name, campaign = %c.name, %action, "dashboard: campaign changed");
    redirect(&format!("/campaigns/{}?done={done}", c.name))
}

/// An approval from the page: the same rules and record as `campaign approve` (the
/// approver must not be whoever applied the version, and the version must be the one
/// the page showed).
async fn approve(ui: &Ui, v: &Viewer, c: &CampaignRecord, shown: Option<i64>) -> Response {
    let refuse = |status: StatusCode, why: &str| html(status, pages::message(Some(v), "Not approved", why));
    if !ui.config.approvals {
        return refuse(
            StatusCode::FORBIDDEN,
            "Approving on this page is turned off (ui_approvals = false); use `reverify campaign approve`.",
        );
    }
    if ui.config.approvals_signed {
        return refuse(
            StatusCode::FORBIDDEN,
            "Approvals need an SSH signature here (approvers_file), which this page cannot make: use \
             `reverify campaign approve NAME --sign-with KEY` (or --signature).",
        );
    }
    let Some(loaded) = &ui.config.templates else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "The templates could not be loaded when the dashboard started, so their versions cannot be approved here; \
             use `reverify campaign approve`.",
        );
    };
    let spec = match c.spec() {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::CONFLICT, &format!("The campaign's file cannot be read: {e}")),
    };
    let now = Utc::now();
    let version = shown.unwrap_or(c.version);
    let result = crate::engine::approval::approve(
        &ui.store,
        &crate::engine::approval::ApproveParams { c, spec: &spec, loaded, approver: &v.actor(), version, now },
    )
    .await;
    ui.store.audit_seal_or_warn(now).await;
    match result {
        Ok(a) => {
            info!(user = %v.name, campaign = %c.name, version = a.version, "dashboard: campaign approved");
            redirect(&format!("/campaigns/{}?done=approved", c.name))
        }
        Err(StoreError::Conflict(why)) => refuse(StatusCode::CONFLICT, &why),
        Err(e) => store_failed(Some(v), &e),
    }
}

/// Hands the CSV report to the client as it is written, page by page, with the
/// writer's pace set by the client's (a bounded channel).
async fn report_csv(State(ui): State<Ui>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let v = viewer_or_login!(ui, headers);
    let c = match find_campaign(&ui, &v, &name).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    let store = ui.store.clone();
    let id = c.campaign_id;
    let err_tx = tx.clone();
    tokio::spawn(async move {
        let out = ChannelWriter { tx };
        if let Err(e) = crate::report::write_report(&store, id, crate::report::ReportFormat::Csv, out).await {
            warn!(error = %e, "dashboard: the report stopped");
            let _ = err_tx.send(Err(std::io::Error::other("the report stopped"))).await;
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let mut r = axum::body::Body::from_stream(stream).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(d) = HeaderValue::from_str(&format!("attachment; filename=\"{}.csv\"", c.name)) {
        h.insert(header::CONTENT_DISPOSITION, d);
    }
    secure_headers(r)
}

/// A `Write` into a bounded channel: each write waits for room, on a worker thread
/// of the multi-threaded runtime (`block_in_place`).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let chunk = buf.to_vec();
        tokio::task::block_in_place(|| self.tx.blocking_send(Ok(chunk)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Deserialize)]
struct UserQuery {
    id: Option<String>,
}

async fn user_page(State(ui): State<Ui>, headers: HeaderMap, Query(q): Query<UserQuery>) -> Response {
    let v = viewer_or_login!(ui, headers);
    let Some(raw) = q.id.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
        return html(StatusCode::OK, pages::user_search(&v, None));
    };
    let Ok(id) = UserId::parse(raw) else {
        return html(
            StatusCode::BAD_REQUEST,
            pages::user_search(&v, Some(&format!("{raw:?} is not a user id (a UUID such as 8d3f…-…).",))),
        );
    };
    let s = &ui.store;
    let read =
        futures::try_join!(s.user_get(&id), s.user_targets(&id), s.user_sessions(&id, 50), s.user_events(&id, 50));
    match read {
        Ok((Some(user), targets, sessions, events)) => {
            html(StatusCode::OK, pages::user(&v, &UserView { user, targets, sessions, events }))
        }
        Ok((None, ..)) => {
            html(StatusCode::NOT_FOUND, pages::user_search(&v, Some(&format!("No user {} is on file.", id.as_str()))))
        }
        Err(e) => store_failed(Some(&v), &e),
    }
}
