//! Charts drawn on the server as inline SVG: no script, nothing loaded, readable
//! without colour (every bar carries its number). Colours come from classes in
//! the page's style sheet, so the strict Content-Security-Policy (no inline style)
//! holds.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::html::esc;

/// A progress bar: `done` of `total`.
pub fn progress(done: i64, total: i64, label: &str) -> String {
    let pct = if total > 0 { (100.0 * done as f64 / total as f64).clamp(0.0, 100.0) } else { 0.0 };
    format!(
        "<svg class=\"progress\" viewBox=\"0 0 100 8\" preserveAspectRatio=\"none\" role=\"img\" \
         aria-label=\"{label}: {pct:.0}%\"><title>{label}: {done} of {total} ({pct:.1}%)</title>\
         <rect class=\"track\" x=\"0\" y=\"0\" width=\"100\" height=\"8\" rx=\"2\"/>\
         <rect class=\"fill\" x=\"0\" y=\"0\" width=\"{pct:.2}\" height=\"8\" rx=\"2\"/></svg>",
        label = esc(label)
    )
}

/// A horizontal bar per stage, scaled to the first, with its count and its rate
/// from the stage before.
pub fn funnel(stages: &[(&str, i64)]) -> String {
    let max = stages.first().map_or(0, |s| s.1).max(1) as f64;
    let row = 34;
    let height = row * stages.len() as i64 + 6;
    let mut s = format!(
        "<svg class=\"chart funnel\" viewBox=\"0 0 640 {height}\" role=\"img\" aria-labelledby=\"funnel-title\">\
         <title id=\"funnel-title\">Funnel</title>"
    );
    let mut prev: Option<i64> = None;
    for (i, (label, n)) in stages.iter().enumerate() {
        let y = 4 + row * i as i64;
        let w = (420.0 * *n as f64 / max).max(if *n > 0 { 2.0 } else { 0.0 });
        let rate = match prev {
            Some(p) if p > 0 => format!(" ({:.1}%)", 100.0 * *n as f64 / p as f64),
            Some(_) => " (-)".into(),
            None => String::new(),
        };
        let _ = write!(
            s,
            "<text class=\"label\" x=\"0\" y=\"{ty}\">{label}</text>\
             <rect class=\"bar s{i}\" x=\"110\" y=\"{y}\" width=\"{w:.1}\" height=\"24\" rx=\"3\"/>\
             <text class=\"value\" x=\"{vx:.1}\" y=\"{ty}\">{n}{rate}</text>",
            ty = y + 17,
            label = esc(label),
            vx = 116.0 + w,
        );
        // the rate is from the stage before, except that "rejected" and
        // "verified" are both read from "started"
        if *label != "verified" {
            prev = Some(*n);
        }
    }
    s.push_str("</svg>");
    s
}

/// Merges hourly counts into at most `max_bars` buckets from `start` to `end`.
pub fn rebucket(points: &[(i64, i64)], start: i64, end: i64, max_bars: i64) -> (i64, Vec<i64>) {
    const HOUR: i64 = 3_600_000;
    let hours = ((end - start) / HOUR + 1).max(1);
    let per = (hours + max_bars - 1) / max_bars;
    let width = per * HOUR;
    let n = ((end - start) / width + 1).max(1) as usize;
    let mut out = vec![0; n];
    for (t, c) in points {
        let i = ((t - start) / width).clamp(0, n as i64 - 1) as usize;
        out[i] += c;
    }
    (width, out)
}

fn day_hour(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or_else(String::new, |t| t.format("%d %b %H:00").to_string())
}

/// Sends and conversions over time: a pair of bars per bucket, time along the
/// bottom, the highest count on the left, a legend on top.
pub fn series(sends: &[(i64, i64)], conversions: &[(i64, i64)]) -> String {
    let first = sends.iter().chain(conversions).map(|p| p.0).min();
    let last = sends.iter().chain(conversions).map(|p| p.0).max();
    let (Some(start), Some(end)) = (first, last) else {
        return "<p class=\"muted\">Nothing sent yet.</p>".into();
    };
    let (width, sent) = rebucket(sends, start, end, 48);
    let (_, conv) = rebucket(conversions, start, end, 48);
    let max = sent.iter().chain(&conv).copied().max().unwrap_or(0).max(1);
    let (left, top, plot_w, plot_h) = (48.0, 28.0, 580.0, 160.0);
    let slot = plot_w / sent.len() as f64;
    let bar = (slot / 2.0 - 1.0).max(1.0);
    let mut s = format!(
        "<svg class=\"chart series\" viewBox=\"0 0 640 224\" role=\"img\" aria-labelledby=\"series-title\">\
         <title id=\"series-title\">Sends and conversions per {} hour(s)</title>\
         <rect class=\"key sent\" x=\"{left}\" y=\"4\" width=\"12\" height=\"12\"/>\
         <text class=\"label\" x=\"{lx}\" y=\"14\">Sent</text>\
         <rect class=\"key conv\" x=\"{cx}\" y=\"4\" width=\"12\" height=\"12\"/>\
         <text class=\"label\" x=\"{clx}\" y=\"14\">Converted</text>\
         <line class=\"axis\" x1=\"{left}\" y1=\"{base}\" x2=\"{right}\" y2=\"{base}\"/>\
         <text class=\"tick\" x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{max}</text>\
         <text class=\"tick\" x=\"{tx}\" y=\"{base}\" text-anchor=\"end\">0</text>",
        width / 3_600_000,
        lx = left + 16.0,
        cx = left + 70.0,
        clx = left + 86.0,
        base = top + plot_h,
        right = left + plot_w,
        tx = left - 6.0,
        ty = top + 10.0,
    );
    for (i, (a, b)) in sent.iter().zip(&conv).enumerate() {
        let x = left + slot * i as f64;
        let h = |n: i64| plot_h * n as f64 / max as f64;
        let t = day_hour(start + width * i as i64);
        let _ = write!(
            s,
            "<rect class=\"bar sent\" x=\"{x:.1}\" y=\"{ya:.1}\" width=\"{bar:.1}\" height=\"{ha:.1}\">\
             <title>{t}: {a} sent</title></rect>\
             <rect class=\"bar conv\" x=\"{xb:.1}\" y=\"{yb:.1}\" width=\"{bar:.1}\" height=\"{hb:.1}\">\
             <title>{t}: {b} converted</title></rect>",
            ya = top + plot_h - h(*a),
            ha = h(*a),
            xb = x + bar + 1.0,
            yb = top + plot_h - h(*b),
            hb = h(*b),
        );
    }
    let label_at = |i: usize, anchor: &str| {
        format!(
            "<text class=\"tick\" x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
            left + slot * i as f64 + if anchor == "end" { slot } else { 0.0 },
            top + plot_h + 16.0,
            day_hour(start + width * i as i64)
        )
    };
    s.push_str(&label_at(0, "start"));
    if sent.len() > 1 {
        s.push_str(&label_at(sent.len() - 1, "end"));
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_are_merged_into_at_most_48_bars() {
        let h = 3_600_000;
        let points: Vec<(i64, i64)> = (0..100).map(|i| (i * h, 1)).collect();
        let (width, bars) = rebucket(&points, 0, 99 * h, 48);
        assert_eq!(width, 3 * h);
        assert_eq!(bars.len(), 34);
        assert_eq!(bars.iter().sum::<i64>(), 100);
        let (width, bars) = rebucket(&[(5 * h, 7)], 5 * h, 5 * h, 48);
        assert_eq!((width, bars), (h, vec![7]));
    }

    #[test]
    fn charts_carry_their_labels_and_numbers() {
        let f = funnel(&[("targeted", 10), ("notified", 8), ("started", 4), ("verified", 2), ("rejected", 1)]);
        for want in ["targeted", "8 (80.0%)", "4 (50.0%)", "2 (50.0%)", "1 (25.0%)"] {
            assert!(f.contains(want), "{want} in {f}");
        }
        let s = series(&[(0, 5), (3_600_000, 2)], &[(3_600_000, 1)]);
        assert!(s.contains("Sent") && s.contains("Converted") && s.contains(">5<"), "{s}");
        assert!(progress(1, 4, "done").contains("width=\"25.00\""));
    }
}
