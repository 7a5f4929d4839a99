//! The dashboard's pages, rendered from what the store read. Nothing here reads
//! the database: `super` gathers the data, these functions only draw it.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::auth::{Viewer, mask_email};
use super::html::{csrf_field, esc, num, page, time};
use super::svg;
use crate::domain::TargetStatus;
use crate::store::approvals::Approval;
use crate::store::campaigns::{CampaignRecord, CampaignStatus};
use crate::store::dashboard::{DeferredBucket, DeferredTarget, RunRow, Series, UserSession, UserTarget};
use crate::store::events::Event;
use crate::store::progress::CampaignProgress;
use crate::store::users::User;

/// Seconds between refreshes of a page of a running campaign.
pub const REFRESH_SECONDS: u32 = 5;

/// One row of the campaigns page.
pub struct CampaignLine {
    pub record: CampaignRecord,
    pub progress: CampaignProgress,
    pub next_run: Option<DateTime<Utc>>,
    pub last_run: Option<RunRow>,
    /// The approval of the campaign's current version, if any.
    pub approval: Option<Approval>,
}

/// Targets in a final state: everything but pending, claimed and deferred.
pub fn settled(p: &CampaignProgress) -> i64 {
    p.targeted - TargetStatus::ALL.iter().filter(|s| s.is_waiting()).map(|s| p.count(*s)).sum::<i64>()
}

fn badge(s: &str) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", esc(s))
}

/// APPROVAL (issue 17, built in parallel): the approval state of a campaign goes
/// here. Until then every campaign shows "not required".
/// The approval state of a campaign's current version (four eyes, `require_approval`).
fn approval_cell(approval: Option<&Approval>, required: bool) -> String {
    match (approval, required) {
        (Some(a), _) => format!(
            "<span class=\"badge approved\" data-approval=\"approved\" title=\"{}\">approved by {}</span>",
            esc(&a.approved_at.format("%Y-%m-%d %H:%M UTC").to_string()),
            esc(&a.approver)
        ),
        (None, true) => "<span class=\"badge paused\" data-approval=\"missing\">awaiting approval</span>".into(),
        (None, false) => {
            "<span class=\"badge pending-approval\" data-approval=\"not-required\">not required</span>".into()
        }
    }
}

fn rate(p: &CampaignProgress) -> String {
    format!("{:.2}/s", p.rate_per_second())
}

fn last_run_cell(r: Option<&RunRow>) -> String {
    r.map_or_else(
        || "<span class=\"muted\">never</span>".into(),
        |r| format!("{} <span class=\"muted\">{}</span>", badge(&r.outcome), time(Some(r.started_at))),
    )
}

/// Whether a page should refresh itself: a run is in progress.
pub fn running(last: Option<&RunRow>) -> bool {
    last.is_some_and(|r| r.outcome == "running")
}

/// The campaigns page.
pub fn campaigns(v: &Viewer, lines: &[CampaignLine], require_approval: bool) -> String {
    let mut rows = String::new();
    for l in lines {
        let c = &l.record;
        let p = &l.progress;
        let done = settled(p);
        let pct = if p.targeted > 0 { 100.0 * done as f64 / p.targeted as f64 } else { 0.0 };
        let _ = write!(
            rows,
            "<tr><td><a href=\"/campaigns/{name}\">{name}</a></td><td>{status}</td><td>{approval}</td>\
             <td>{bar}<span class=\"muted\">{done} of {targeted} ({pct:.0}%)</span></td>\
             <td class=\"hide-phone\">{next}</td><td>{last}</td><td class=\"n\">{rate}</td></tr>",
            name = esc(c.name.as_str()),
            status = badge(c.status.as_str()),
            approval = approval_cell(l.approval.as_ref(), require_approval),
            bar = svg::progress(done, p.targeted, "settled"),
            done = num(done),
            targeted = num(p.targeted),
            next = time(l.next_run),
            last = last_run_cell(l.last_run.as_ref()),
            rate = rate(p),
        );
    }
    if lines.is_empty() {
        rows.push_str("<tr><td colspan=\"7\" class=\"muted\">No campaign has been applied yet.</td></tr>");
    }
    let body = format!(
        "<h1>Campaigns</h1><div class=\"card\"><table><thead><tr><th>Campaign</th><th>Status</th>\
         <th>Approval</th><th>Progress</th><th class=\"hide-phone\">Next run</th><th>Last run</th>\
         <th class=\"n\">Rate</th></tr></thead><tbody>{rows}</tbody></table></div>"
    );
    let refresh = lines.iter().any(|l| running(l.last_run.as_ref())).then_some(REFRESH_SECONDS);
    page("Campaigns · reverify", Some(v), refresh, &body)
}

/// Everything the campaign page shows.
pub struct CampaignView {
    pub record: CampaignRecord,
    pub progress: CampaignProgress,
    pub series: Series,
    pub deferred: Vec<DeferredBucket>,
    pub deferred_next: Vec<DeferredTarget>,
    pub runs: Vec<RunRow>,
    pub events: Vec<Event>,
    pub more_events: bool,
    pub next_run: Option<DateTime<Utc>>,
    /// The next tick and the next follow-up (and the campaign's life).
    pub outlook: crate::engine::outlook::Outlook,
    /// A message after an action ("paused").
    pub notice: Option<String>,
    /// When the figures (progress, funnel, series, deferred) were read.
    pub figures_read_at: DateTime<Utc>,
    /// The approval of the campaign's current version, if any.
    pub approval: Option<Approval>,
    /// Whether versions need one (`require_approval`).
    pub require_approval: bool,
    /// Whether the page may approve (`ui_approvals`, and no signature required).
    pub approvals_here: bool,
}

fn stat(label: &str, value: &str) -> String {
    format!("<div class=\"stat\"><b>{value}</b><span>{}</span></div>", esc(label))
}

fn pct_of(n: i64, of: i64) -> String {
    if of > 0 { format!("{:.1}%", 100.0 * n as f64 / of as f64) } else { "-".into() }
}

fn eta(p: &CampaignProgress) -> String {
    match p.eta_seconds() {
        _ if p.due_now == 0 => "none due".into(),
        Some(s) => humantime::format_duration(std::time::Duration::from_secs(s.max(0.0).round() as u64)).to_string(),
        None => "unknown".into(),
    }
}

fn actions(v: &Viewer, c: &CampaignRecord, approval: Option<&Approval>, approvals_here: bool) -> String {
    let name = esc(c.name.as_str());
    let mut s = String::from("<div class=\"actions\">");
    if v.role.can_operate() {
        let button = |action: &str, label: &str, class: &str| {
            format!(
                "<form method=\"post\" action=\"/campaigns/{name}/{action}\">{}\
                 <button type=\"submit\" class=\"{class}\">{label}</button></form>",
                csrf_field(v)
            )
        };
        match c.status {
            CampaignStatus::Active => s.push_str(&button("pause", "Pause", "")),
            CampaignStatus::Paused => s.push_str(&button("resume", "Resume", "")),
            _ => {}
        }
        s.push_str(&button("retry-failed", "Retry failed", "secondary"));
    }
    if approvals_here && v.role.can_approve() && approval.is_none() && c.status != CampaignStatus::Cancelled {
        let _ = write!(
            s,
            "<form method=\"post\" action=\"/campaigns/{name}/approve\">{}\
             <input type=\"hidden\" name=\"version\" value=\"{}\">\
             <button type=\"submit\">Approve version {}</button></form>",
            csrf_field(v),
            c.version,
            c.version
        );
    }
    let _ = write!(s, "<a class=\"button\" href=\"/campaigns/{name}/report.csv\">Report (CSV)</a></div>");
    s
}

/// The page of one campaign.
pub fn campaign(v: &Viewer, cv: &CampaignView) -> String {
    let c = &cv.record;
    let p = &cv.progress;
    let f = &p.funnel;
    let name = esc(c.name.as_str());
    let mut b = String::new();
    let _ = write!(
        b,
        "<p class=\"muted\"><a href=\"/\">Campaigns</a> /</p><h1>{name} {status}</h1>\
         <p class=\"muted\">Version {version} · approval {approval} · next run {next} · last run {last} · \
         figures read {read}</p>",
        status = badge(c.status.as_str()),
        read = time(Some(cv.figures_read_at)),
        version = c.version,
        approval = approval_cell(cv.approval.as_ref(), cv.require_approval),
        next = time(cv.next_run),
        last = last_run_cell(cv.runs.first()),
    );
    let outlook: Vec<String> = cv
        .outlook
        .lines(c.status)
        .into_iter()
        .map(|(label, text)| format!("<span class=\"outlook\"><b>{}</b> {}</span>", esc(label), esc(&text)))
        .collect();
    let _ = write!(b, "<p class=\"muted\" id=\"outlook\">{}</p>", outlook.join(" · "));
    if let Some(n) = &cv.notice {
        let _ = write!(b, "<div class=\"notice\">{}</div>", esc(n));
    }
    b.push_str(&actions(v, c, cv.approval.as_ref(), cv.approvals_here));
    let done = settled(p);
    b.push_str("<div class=\"stats\">");
    for (label, value) in [
        ("targeted", num(p.targeted)),
        ("notified", num(p.count(TargetStatus::Notified))),
        ("converted", num(p.count(TargetStatus::Converted))),
        ("deferred", num(p.count(TargetStatus::Deferred))),
        ("failed", num(p.count(TargetStatus::Failed))),
        ("sessions issued", num(p.sessions_issued)),
        ("rate, last minute", rate(p)),
        ("ETA", eta(p)),
    ] {
        b.push_str(&stat(label, &value));
    }
    b.push_str("</div>");
    let _ = write!(
        b,
        "<div class=\"card\"><h2>Progress</h2>{}<p class=\"muted\">{} of {} targets settled; {} due now{}</p></div>",
        svg::progress(done, p.targeted, "settled"),
        num(done),
        num(p.targeted),
        num(p.due_now),
        p.next_deferred_at.map_or_else(String::new, |t| format!("; deferred users become due from {}", time(Some(t)))),
    );

    // the funnel, as `campaign status` counts it
    let mut stages = vec![("targeted", f.targeted), ("notified", f.notified)];
    if f.clicked > 0 {
        stages.push(("clicked", f.clicked));
    }
    stages.extend([("started", f.started), ("verified", f.verified), ("rejected", f.rejected)]);
    // the table has the bounced stage beside notified (its share of notified is the
    // bounce rate); the chart keeps the conversion path, each bar a share of the last
    let mut rows = stages.clone();
    if f.bounced > 0 || f.fallback_sent > 0 {
        rows.splice(2..2, [("bounced", f.bounced), ("fallback sent", f.fallback_sent)]);
    }
    let mut conv = String::new();
    for (label, n) in &rows {
        let _ = write!(
            conv,
            "<tr><td>{label}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            num(*n),
            if *label == "targeted" { "-".into() } else { pct_of(*n, f.notified.max(0)) }
        );
    }
    let median = f.median_seconds_to_verify.map_or_else(
        || "-".into(),
        |s| humantime::format_duration(std::time::Duration::from_secs(s.max(0.0).round() as u64)).to_string(),
    );
    let _ = write!(
        conv,
        "<tr><td>no response after expiry</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\
         <tr><td>median time to verify</td><td class=\"n\" colspan=\"2\">{median}</td></tr>",
        num(f.no_response_after_expiry),
        pct_of(f.no_response_after_expiry, f.notified),
    );
    let _ = write!(
        b,
        "<div class=\"grid\"><div class=\"card\"><h2>Funnel</h2>{chart}\
         <table><thead><tr><th>Stage</th><th class=\"n\">Users</th><th class=\"n\">Of notified</th></tr></thead>\
         <tbody>{conv}</tbody></table></div>",
        chart = svg::funnel(&stages),
    );

    // targets by status and reason
    let mut t = String::new();
    for (status, n, reasons) in p.listing() {
        let _ = write!(t, "<tr><td>{}</td><td class=\"n\">{}</td></tr>", badge(status.as_str()), num(n));
        for (reason, n) in reasons {
            let _ =
                write!(t, "<tr class=\"sub\"><td>{}</td><td class=\"n\">{}</td></tr>", esc(reason.as_str()), num(n));
        }
    }
    let _ = write!(
        b,
        "<div class=\"card\"><h2>Targets by status and reason</h2><table><thead><tr><th>Status / reason</th>\
         <th class=\"n\">Targets</th></tr></thead><tbody>{t}</tbody></table></div></div>"
    );

    let _ = write!(
        b,
        "<div class=\"card\"><h2>Sends and conversions over time</h2>{}</div>",
        svg::series(&cv.series.sends, &cv.series.conversions)
    );

    // who is deferred and until when
    let mut d = String::new();
    for bucket in &cv.deferred {
        let _ = write!(
            d,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            esc(&bucket.reason),
            time(DateTime::from_timestamp_millis(bucket.hour)),
            num(bucket.count)
        );
    }
    if cv.deferred.is_empty() {
        d.push_str("<tr><td colspan=\"3\" class=\"muted\">Nobody is deferred.</td></tr>");
    }
    let mut who = String::new();
    for t in &cv.deferred_next {
        let _ = write!(
            who,
            "<tr><td><a class=\"mono\" href=\"/users?id={id}\">{id}</a></td><td>{}</td><td>{}</td></tr>",
            esc(&t.reason),
            time(Some(t.not_before)),
            id = esc(&t.user_id)
        );
    }
    let who = if who.is_empty() {
        String::new()
    } else {
        format!(
            "<h2>First to become due</h2><table><thead><tr><th>User</th><th>Reason</th><th>Until</th></tr></thead>\
             <tbody>{who}</tbody></table>"
        )
    };
    let _ = write!(
        b,
        "<div class=\"grid\"><div class=\"card\"><h2>Deferred, by reason and hour due</h2><table><thead><tr>\
         <th>Reason</th><th>Due from (hour)</th><th class=\"n\">Targets</th></tr></thead><tbody>{d}</tbody></table>\
         </div><div class=\"card\">{who}{none}</div></div>",
        none = if cv.deferred_next.is_empty() { "<h2>First to become due</h2><p class=\"muted\">-</p>" } else { "" },
    );

    // recent runs
    let mut r = String::new();
    for run in &cv.runs {
        let _ = write!(
            r,
            "<tr><td>{id}</td><td>{start}</td><td>{outcome}</td><td class=\"n\">{t}</td><td class=\"n\">{n}</td>\
             <td class=\"n hide-phone\">{s}</td><td class=\"n hide-phone\">{d}</td><td class=\"n\">{f}</td></tr>",
            id = run.run_id,
            start = time(Some(run.started_at)),
            outcome = badge(&run.outcome),
            t = num(run.targeted),
            n = num(run.notified),
            s = num(run.skipped),
            d = num(run.deferred),
            f = num(run.failed),
        );
    }
    if cv.runs.is_empty() {
        r.push_str("<tr><td colspan=\"8\" class=\"muted\">No run yet.</td></tr>");
    }
    let _ = write!(
        b,
        "<div class=\"card\"><h2>Recent runs</h2><table><thead><tr><th>Run</th><th>Started</th><th>Outcome</th>\
         <th class=\"n\">Targeted</th><th class=\"n\">Notified</th><th class=\"n hide-phone\">Skipped</th>\
         <th class=\"n hide-phone\">Deferred</th><th class=\"n\">Failed</th></tr></thead><tbody>{r}</tbody></table></div>"
    );

    // the audit trail, a page at a time
    let _ = write!(b, "<div class=\"card\" id=\"audit\"><h2>Audit trail</h2>{}", events_table(&cv.events));
    b.push_str("<div class=\"pager\">");
    if cv.more_events
        && let Some(last) = cv.events.last()
    {
        let _ = write!(b, "<a href=\"/campaigns/{name}?before={}#audit\">Older events</a>", last.event_id);
    }
    b.push_str(&format!("<a href=\"/campaigns/{name}#audit\">Newest</a></div></div>"));
    let refresh = running(cv.runs.first()).then_some(REFRESH_SECONDS);
    page(&format!("{} · reverify", c.name), Some(v), refresh, &b)
}

fn events_table(events: &[Event]) -> String {
    let mut e = String::new();
    for ev in events {
        let user = ev
            .user_id
            .as_deref()
            .map_or_else(String::new, |u| format!("<a class=\"mono\" href=\"/users?id={0}\">{0}</a>", esc(u)));
        let detail = ev.detail.as_ref().map_or_else(String::new, |d| esc(&d.to_string()));
        let _ = write!(
            e,
            "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{user}</td>\
             <td class=\"mono hide-phone\">{detail}</td></tr>",
            time(Some(ev.at)),
            esc(&ev.kind),
            esc(&ev.actor),
        );
    }
    if events.is_empty() {
        e.push_str("<tr><td colspan=\"5\" class=\"muted\">No event.</td></tr>");
    }
    format!(
        "<table><thead><tr><th>When</th><th>What</th><th>Who</th><th>User</th><th class=\"hide-phone\">Detail</th>\
         </tr></thead><tbody>{e}</tbody></table>"
    )
}

/// The user search, with an answer when there is one.
pub fn user_search(v: &Viewer, message: Option<&str>) -> String {
    let msg = message.map_or_else(String::new, |m| format!("<div class=\"error\">{}</div>", esc(m)));
    let body = format!(
        "<h1>Find a user</h1>{msg}<div class=\"card\"><form method=\"get\" action=\"/users\">\
         <label for=\"uid\">Baanx user id</label> <input id=\"uid\" name=\"id\" size=\"38\"> \
         <button type=\"submit\">Find</button></form></div>"
    );
    page("Find a user · reverify", Some(v), None, &body)
}

/// Everything the user page shows.
pub struct UserView {
    pub user: User,
    pub targets: Vec<UserTarget>,
    pub sessions: Vec<UserSession>,
    pub events: Vec<Event>,
}

/// The page of one user: their targets, sessions and events across campaigns. The
/// email is masked and the name left out unless the viewer's role allows them.
pub fn user(v: &Viewer, uv: &UserView) -> String {
    let u = &uv.user;
    let id = esc(u.user_id.as_str());
    let mut b = format!("<p class=\"muted\"><a href=\"/\">Campaigns</a> /</p><h1 class=\"mono\">{id}</h1>");
    let email = if v.role.sees_personal_data() { u.email.as_str().to_owned() } else { mask_email(u.email.as_str()) };
    let mut facts = vec![
        ("Email", esc(&email)),
        ("State", badge(u.verification_state.as_str())),
        ("Region", esc(u.region.as_str())),
        ("Country", esc(u.country.as_deref().unwrap_or("-"))),
        ("State changed", time(u.state_changed_at)),
        ("Rejected at", time(u.rejected_at)),
        ("Consent required since", time(u.consent_required_at)),
    ];
    if v.role.sees_personal_data() {
        let name =
            [u.first_name.as_deref(), u.last_name.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" ");
        facts.insert(0, ("Name", esc(if name.is_empty() { "-" } else { &name })));
    }
    b.push_str("<div class=\"card\"><table><tbody>");
    for (k, val) in facts {
        let _ = write!(b, "<tr><th>{k}</th><td>{val}</td></tr>");
    }
    b.push_str("</tbody></table></div>");

    let mut t = String::new();
    for x in &uv.targets {
        let _ = write!(
            t,
            "<tr><td><a href=\"/campaigns/{c}\">{c}</a></td><td>{status}</td><td>{reason}</td><td class=\"n\">{step}</td>\
             <td>{notified}</td><td class=\"hide-phone\">{clicked}</td><td class=\"hide-phone\">{started}</td>\
             <td>{outcome}</td><td class=\"hide-phone\">{until}</td></tr>",
            c = esc(&x.campaign),
            status = badge(&x.status),
            reason = esc(x.reason.as_deref().unwrap_or("-")),
            step = x.step,
            notified = time(x.notified_at.or(x.first_notified_at)),
            clicked = time(x.clicked_at),
            started = time(x.started_at),
            outcome = x.outcome.as_deref().map_or_else(|| "-".into(), |o| format!("{} {}", esc(o), time(x.outcome_at))),
            until = time(x.not_before),
        );
    }
    if uv.targets.is_empty() {
        t.push_str("<tr><td colspan=\"9\" class=\"muted\">Not targeted by any campaign.</td></tr>");
    }
    let _ = write!(
        b,
        "<div class=\"card\"><h2>Targets</h2><table><thead><tr><th>Campaign</th><th>Status</th><th>Reason</th>\
         <th class=\"n\">Step</th><th>Notified</th><th class=\"hide-phone\">Clicked</th>\
         <th class=\"hide-phone\">Started</th><th>Outcome</th><th class=\"hide-phone\">Not before</th></tr></thead>\
         <tbody>{t}</tbody></table></div>"
    );

    // one timeline: the ledger's sessions and the audit trail's events, newest first
    let mut timeline: Vec<(DateTime<Utc>, String, String, String)> = Vec::new();
    // the expiry as the user read it in the email and on the page (the one
    // formatter, in their locale and zone), when their zone is known
    let zone = u.timezone.as_deref().and_then(|z| z.trim().parse::<chrono_tz::Tz>().ok());
    let as_read = |at| {
        zone.map_or_else(String::new, |tz| {
            let tag = u.locale.as_deref().unwrap_or("en");
            format!(" ({})", crate::domain::locale::format_datetime_in(at, tz, tag))
        })
    };
    for s in &uv.sessions {
        timeline.push((
            s.reserved_at,
            format!("session {}", s.status),
            s.campaign.clone().unwrap_or_default(),
            format!("step {}; expires {}{}", s.step, time(Some(s.expires_at)), as_read(s.expires_at)),
        ));
    }
    for e in &uv.events {
        timeline.push((
            e.at,
            e.kind.clone(),
            e.actor.clone(),
            e.detail.as_ref().map(ToString::to_string).unwrap_or_default(),
        ));
    }
    timeline.sort_by_key(|b| std::cmp::Reverse(b.0));
    let mut tl = String::new();
    for (at, what, who, detail) in &timeline {
        let _ = write!(
            tl,
            "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"mono hide-phone\">{}</td></tr>",
            time(Some(*at)),
            esc(what),
            esc(who),
            esc(detail)
        );
    }
    if timeline.is_empty() {
        tl.push_str("<tr><td colspan=\"4\" class=\"muted\">Nothing recorded.</td></tr>");
    }
    let _ = write!(
        b,
        "<div class=\"card\"><h2>Timeline</h2><table><thead><tr><th>When</th><th>What</th>\
         <th>Campaign / who</th><th class=\"hide-phone\">Detail</th></tr></thead><tbody>{tl}</tbody></table></div>"
    );
    page(&format!("User {} · reverify", u.user_id.as_str()), Some(v), None, &b)
}

/// The login page. `csrf` is the login form's token (also in a cookie).
pub fn login(csrf: &str, message: Option<&str>) -> String {
    let msg = message.map_or_else(String::new, |m| format!("<div class=\"error\">{}</div>", esc(m)));
    let body = format!(
        "<div class=\"card login\"><h1>Log in</h1>{msg}<form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label for=\"user\">User name</label><input id=\"user\" name=\"user\" autocomplete=\"username\" required>\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Log in</button></form></div>",
        csrf = esc(csrf),
    );
    page("Log in · reverify", None, None, &body)
}

/// A page that only says something (a refusal, a missing campaign).
pub fn message(v: Option<&Viewer>, title: &str, text: &str) -> String {
    page(
        &format!("{title} · reverify"),
        v,
        None,
        &format!(
            "<h1>{}</h1><div class=\"card\"><p>{}</p><p><a href=\"/\">Campaigns</a></p></div>",
            esc(title),
            esc(text)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_approval_cell_says_who_approved_or_what_is_awaited() {
        let a = Approval {
            approval_id: 1,
            version: 2,
            approver: "carol <x>".into(),
            approved_at: chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap(),
            digest: "d".into(),
            templates: Default::default(),
            plan: Default::default(),
            signature: None,
        };
        let approved = approval_cell(Some(&a), true);
        assert!(approved.contains("data-approval=\"approved\"") && approved.contains("approved by carol &lt;x&gt;"));
        assert!(approval_cell(None, true).contains("awaiting approval"));
        assert!(approval_cell(None, false).contains("not required"));
    }
}
