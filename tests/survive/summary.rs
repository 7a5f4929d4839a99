//! The quotable figures: each suite reports one line (`crash: engine=postgres kills=23
//! …`) and its counts; the totals line `survive: kills=.. faults=.. bad_inputs=..
//! violations=..` is rewritten after each. Both go to stderr (seen with or without
//! `--nocapture`, since a passing test's stderr is only shown with it, the file is
//! the record) and to `target/survive-summary.txt`.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

/// Counts one suite contributes to the totals.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub kills: u64,
    pub faults: u64,
    pub bad_inputs: u64,
    pub violations: u64,
}

struct State {
    lines: Vec<String>,
    total: Counts,
}

static STATE: Mutex<State> =
    Mutex::new(State { lines: Vec::new(), total: Counts { kills: 0, faults: 0, bad_inputs: 0, violations: 0 } });

fn file() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("survive-summary.txt")
}

/// Records a suite's line and counts, prints it and the new totals, and rewrites the
/// summary file (this process's lines only: a fresh run starts a fresh file).
pub fn report(line: String, c: Counts) {
    let mut s = STATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    s.total.kills += c.kills;
    s.total.faults += c.faults;
    s.total.bad_inputs += c.bad_inputs;
    s.total.violations += c.violations;
    s.lines.push(line.clone());
    let t = s.total;
    let totals = format!(
        "survive: kills={} faults={} bad_inputs={} violations={}",
        t.kills, t.faults, t.bad_inputs, t.violations
    );
    eprintln!("{line}");
    eprintln!("{totals}");
    let body = format!("{}\n{totals}\n", s.lines.join("\n"));
    let path = file();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::File::create(&path) {
        let _ = f.write_all(body.as_bytes());
    }
}
