//! The page frame, escaping, and the style sheet. Pages are strings built here
//! rather than templates: each is a few tables and a chart, and every value goes
//! through [`esc`].

use chrono::{DateTime, Utc};

use super::auth::Viewer;

/// HTML-escapes text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A time as the pages show it (UTC, to the minute), or a dash.
pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

/// A count with thousands separated: 1,000,000.
pub fn num(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A hidden field with the viewer's CSRF token.
pub fn csrf_field(v: &Viewer) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(&v.csrf))
}

/// A whole page: head, the bar with the search and the viewer, `body`.
/// `refresh` adds a meta refresh (a running campaign).
pub fn page(title: &str, viewer: Option<&Viewer>, refresh: Option<u32>, body: &str) -> String {
    // a viewer sees every address on every page masked: the user's, and any an
    // actor, an event's detail or an error text holds (the audit trail included)
    let masked;
    let body = match viewer {
        Some(v) if !v.role.sees_personal_data() => {
            masked = crate::domain::personal::map_addresses(body, super::auth::mask_email);
            masked.as_str()
        }
        _ => body,
    };
    let refresh = refresh.map_or_else(String::new, |s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"));
    let bar = match viewer {
        Some(v) => format!(
            "<form class=\"search\" method=\"get\" action=\"/users\"><label for=\"q\" class=\"sr\">User id</label>\
             <input id=\"q\" name=\"id\" placeholder=\"Find a user id\" size=\"38\" autocomplete=\"off\">\
             <button type=\"submit\">Find</button></form>\
             <form class=\"who\" method=\"post\" action=\"/logout\">{csrf}<span>{name} ({role})</span>\
             <button type=\"submit\" class=\"link\">Log out</button></form>",
            csrf = csrf_field(v),
            name = esc(&v.name),
            role = v.role.as_str(),
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{refresh}\
         <meta name=\"robots\" content=\"noindex\"><title>{title}</title>\
         <link rel=\"stylesheet\" href=\"/ui.css\"></head><body>\
         <header><a class=\"brand\" href=\"/\">reverify</a>{bar}</header><main>{body}</main></body></html>",
        title = esc(title),
    )
}

/// The style sheet, served as `/ui.css`.
pub const CSS: &str = r#"
:root { --ink: #1d2330; --muted: #5b6475; --line: #dde1e8; --bg: #f5f6f8; --card: #fff;
  --accent: #2458d3; --ok: #1f8a4c; --warn: #b26a00; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: var(--bg); }
header { display: flex; flex-wrap: wrap; gap: .6rem 1rem; align-items: center; padding: .6rem 1rem;
  background: #1d2330; color: #fff; }
header .brand { color: #fff; font-weight: 700; text-decoration: none; font-size: 1.1rem; margin-right: auto; }
header form { display: flex; gap: .4rem; align-items: center; margin: 0; min-width: 0; }
header input { padding: .35rem .5rem; border-radius: 4px; border: 1px solid #49526a; min-width: 0;
  width: 100%; background: #2c3446; color: #fff; flex: 1; }
header .search { flex: 1 1 18rem; max-width: 30rem; }
header .who span { color: #c9cfdb; font-size: .9rem; }
main { max-width: 1200px; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.5rem; margin: .2rem 0 .6rem; word-break: break-word; }
h2 { font-size: 1.1rem; margin: 0 0 .6rem; }
a { color: var(--accent); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 1rem;
  margin-bottom: 1rem; overflow-x: auto; }
.grid { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); }
.stats { display: grid; gap: .6rem; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); margin-bottom: 1rem; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .6rem .8rem; }
.stat b { display: block; font-size: 1.35rem; }
.stat span { color: var(--muted); font-size: .85rem; }
table { border-collapse: collapse; width: 100%; font-size: .92rem; }
th, td { text-align: left; padding: .4rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: .82rem; text-transform: uppercase; letter-spacing: .02em; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.sub td:first-child { padding-left: 1.6rem; color: var(--muted); }
.badge { display: inline-block; padding: .05rem .5rem; border-radius: 999px; font-size: .8rem; font-weight: 600;
  background: #e8ebf1; color: var(--ink); }
.badge.active, .badge.finished, .badge.converted, .badge.approved { background: #dcf3e5; color: var(--ok); }
.badge.paused, .badge.deferred, .badge.interrupted, .badge.running { background: #fdf0d8; color: var(--warn); }
.badge.cancelled, .badge.failed { background: #fbe1df; color: var(--bad); }
.badge.pending-approval { background: #eceff4; color: var(--muted); font-weight: 500; }
.muted { color: var(--muted); }
.actions { display: flex; flex-wrap: wrap; gap: .5rem; margin: .4rem 0 1rem; }
.actions form { margin: 0; }
button { font: inherit; padding: .4rem .9rem; border-radius: 6px; border: 1px solid var(--accent);
  background: var(--accent); color: #fff; cursor: pointer; }
button.secondary, a.button { background: #fff; color: var(--accent); border: 1px solid var(--accent);
  padding: .4rem .9rem; border-radius: 6px; text-decoration: none; display: inline-block; }
button.link { background: none; border: none; color: #c9cfdb; text-decoration: underline; padding: 0; }
.notice { background: #e7f0ff; border: 1px solid #b8cdf5; padding: .6rem .8rem; border-radius: 6px; margin-bottom: 1rem; }
.error { background: #fbe1df; border: 1px solid #efb5b0; padding: .6rem .8rem; border-radius: 6px; margin-bottom: 1rem; }
svg.progress { width: 100%; min-width: 80px; height: 10px; display: block; }
svg.progress .track { fill: #e6e9ef; } svg.progress .fill { fill: var(--ok); }
svg.chart { width: 100%; height: auto; max-width: 720px; display: block; }
svg.chart .label, svg.chart .value, svg.chart .tick { font-size: 13px; fill: var(--ink); }
svg.chart .tick { fill: var(--muted); font-size: 11px; }
svg.chart .axis { stroke: #aab1bf; }
svg.funnel .bar { fill: #6b8fe3; } svg.funnel .bar.s0 { fill: #9aa8c4; }
svg.series .sent { fill: #6b8fe3; } svg.series .conv { fill: var(--ok); }
.login { max-width: 360px; margin: 3rem auto; }
.login label { display: block; margin: .6rem 0 .2rem; font-weight: 600; }
.login input { width: 100%; padding: .5rem; border: 1px solid var(--line); border-radius: 6px; font: inherit; }
.login button { margin-top: 1rem; width: 100%; }
.pager { display: flex; gap: 1rem; margin-top: .6rem; }
.sr { position: absolute; left: -9999px; }
h1.mono { font-size: 1.25rem; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .85rem; word-break: break-all; }
@media (max-width: 640px) {
  main { padding: .6rem; }
  th, td { padding: .35rem .3rem; }
  .hide-phone { display: none; }
  header .who span { display: none; }
}
"#;
