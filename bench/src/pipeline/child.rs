//! The processes of one benchmark scenario, each the real `reverify` binary: the
//! sandbox (`reverify sandbox`), the import (`reverify users import`), the campaign
//! (`reverify campaign apply`) and the measured worker (`reverify run`), the last one
//! under `/usr/bin/time` so that its wall time, CPU and peak RSS are the kernel's own
//! figures for that process alone.
//!
//! Every child starts from a clean environment as far as reverify is concerned: no
//! `REVERIFY_*` variable of the caller, no settings file (`REVERIFY_CONFIG=/dev/null`),
//! and the scenario's directory as its working directory (so the built-in templates
//! are used and no `./reverify.toml` is read).
//!
//! The binary is the `reverify` next to this executable (cargo builds both into the
//! same target directory), or the one `REVERIFY_BIN` names.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use reverify::sandbox::Stats;

/// GNU time, from the Debian package `time` (scripts/install-test-deps.sh).
pub const TIME: &str = "/usr/bin/time";

/// The `reverify` binary the scenarios run: `REVERIFY_BIN`, else the `reverify`
/// next to this executable.
pub fn reverify_exe() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("REVERIFY_BIN") {
        let path = PathBuf::from(path);
        ensure!(path.is_file(), "REVERIFY_BIN={}: no such file", path.display());
        return Ok(path);
    }
    let me = std::env::current_exe().context("cannot find this executable")?;
    let exe = me.with_file_name(format!("reverify{}", std::env::consts::EXE_SUFFIX));
    ensure!(
        exe.is_file(),
        "the reverify binary is missing: no {}; build it with cargo build --release --workspace \
         (or name it in REVERIFY_BIN)",
        exe.display()
    );
    Ok(exe)
}

/// A `reverify` command with a clean environment, run in `dir`.
pub fn reverify(exe: &Path, dir: &Path) -> Command {
    clean(Command::new(exe), dir)
}

/// Removes the caller's `REVERIFY_*` variables, points the settings file at nothing
/// and runs in `dir`.
fn clean(mut c: Command, dir: &Path) -> Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("REVERIFY_") {
            c.env_remove(k);
        }
    }
    c.current_dir(dir).env("REVERIFY_CONFIG", "/dev/null").env("REVERIFY_LOG_LEVEL", "warn");
    c
}

/// The last lines of a log file, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Runs a short command to its end; an error carries its output.
pub fn run_to_end(mut cmd: Command, what: &str) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("failed to start {what}"))?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((stdout, took))
}

/// A sandbox child process on a free loopback port, killed when dropped.
pub struct SandboxChild {
    child: Child,
    /// `http://127.0.0.1:PORT/`
    pub base_url: String,
    /// The generated users in the import format, refresh tokens included.
    pub users_file: PathBuf,
    /// Kept open so that the sandbox never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

/// The client key the sandbox accepts and the worker sends.
pub const CLIENT_KEY: &str = "bench-client-key";

impl SandboxChild {
    /// Starts `reverify sandbox` with `users` generated UNVERIFIED users (plus
    /// `extra` flags), exporting them to `dir/users.csv`; returns once it listens.
    pub fn start(exe: &Path, dir: &Path, users: usize, extra: &[&str]) -> anyhow::Result<Self> {
        let users_file = dir.join("users.csv");
        let log = dir.join("sandbox.log");
        let mut cmd = reverify(exe, dir);
        cmd.args(["sandbox", "--listen", "127.0.0.1:0", "--all-unverified", "--client-key", CLIENT_KEY, "--users"])
            .arg(users.to_string())
            .arg("--export-users")
            .arg(&users_file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = cmd.spawn().context("failed to start the sandbox")?;
        let mut stdout = BufReader::new(child.stdout.take().context("the sandbox's stdout")?);
        let mut line = String::new();
        let base_url = loop {
            line.clear();
            if stdout.read_line(&mut line)? == 0 {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the sandbox stopped before listening:\n{}", tail(&log));
            }
            if let Some(url) = line.trim().strip_prefix("sandbox listening on ") {
                break url.to_owned();
            }
        };
        Ok(Self { child, base_url, users_file, _stdout: stdout })
    }

    /// The sandbox's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /_sandbox/stats`.
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        let url = format!("{}_sandbox/stats", self.base_url);
        let r = reqwest::get(&url).await.with_context(|| format!("failed to read {url}"))?;
        ensure!(r.status().is_success(), "{url} answered {}", r.status());
        r.json::<Stats>().await.with_context(|| format!("{url} is not the stats document"))
    }
}

impl Drop for SandboxChild {
    fn drop(&mut self) {
        // nothing of the sandbox outlives a scenario: SIGKILL is enough
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `reverify serve` as a child on a free loopback port, killed when dropped.
pub struct ServeChild {
    child: Child,
    /// `http://127.0.0.1:PORT`, no trailing slash: the `public_url`.
    pub url: String,
    log: PathBuf,
    _stdout: BufReader<ChildStdout>,
}

impl ServeChild {
    /// Starts `reverify serve --listen 127.0.0.1:0` with `env`; returns once it
    /// listens with the click routes.
    pub fn start(exe: &Path, dir: &Path, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let log = dir.join("serve.log");
        let mut cmd = reverify(exe, dir);
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = cmd.spawn().context("failed to start reverify serve")?;
        let mut stdout = BufReader::new(child.stdout.take().context("the server's stdout")?);
        let mut line = String::new();
        // "listening on http://127.0.0.1:PORT/v/{token} (and /healthz)", the webhook's
        // URL first when it is served too
        let url = loop {
            line.clear();
            if stdout.read_line(&mut line)? == 0 {
                let _ = child.kill();
                let _ = child.wait();
                bail!("reverify serve stopped before listening:\n{}", tail(&log));
            }
            if let Some(rest) = line.trim().strip_prefix("listening on ") {
                let Some(link) = rest.split([' ', ',', ';']).find(|w| w.contains("/v/")) else {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("reverify serve does not serve the click routes ({rest}):\n{}", tail(&log));
                };
                break link.split("/v/").next().unwrap_or(link).to_owned();
            }
        };
        Ok(Self { child, url, log, _stdout: stdout })
    }

    /// The server's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for an error message.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `/usr/bin/time` measured of the worker.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub wall: f64,
    pub user: f64,
    pub system: f64,
    pub max_rss_mb: f64,
}

impl Measured {
    /// User + system CPU seconds.
    pub fn cpu(&self) -> f64 {
        self.user + self.system
    }
}

/// Parses the `%e %U %S %M` line GNU time writes (the last line: a note such as
/// "Command exited with non-zero status 4" may come first).
pub fn parse_time(text: &str) -> Option<Measured> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let v: Vec<f64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
    match v[..] {
        [wall, user, system, rss_kb] => Some(Measured { wall, user, system, max_rss_mb: rss_kb / 1024.0 }),
        _ => None,
    }
}

/// The worker's outcome counts, from `reverify run`'s report line
/// (`NAME: finished (run 1): 0 newly targeted, 10 notified, 0 skipped, ...`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub targeted: u64,
    pub notified: u64,
    pub skipped: u64,
    pub deferred: u64,
    pub failed: u64,
}

/// Parses the report line of `reverify run`.
pub fn parse_report(stdout: &str, campaign: &str) -> Option<Report> {
    let line = stdout.lines().find(|l| l.starts_with(&format!("{campaign}: ")))?;
    let (_, counts) = line.split_once("): ")?;
    let mut r = Report::default();
    for part in counts.split(", ") {
        let (n, what) = part.split_once(' ')?;
        let n: u64 = n.parse().ok()?;
        match what {
            "newly targeted" => r.targeted = n,
            "notified" => r.notified = n,
            "skipped" => r.skipped = n,
            "deferred" => r.deferred = n,
            "failed" => r.failed = n,
            _ => {}
        }
    }
    Some(r)
}

/// Runs `reverify run NAME --progress none` under `/usr/bin/time` with `env`, and
/// waits for it; the caller samples the rest of the machine meanwhile.
pub fn run_worker(
    exe: &Path,
    dir: &Path,
    campaign: &str,
    env: &[(&str, String)],
) -> anyhow::Result<(Measured, Report)> {
    ensure!(
        Path::new(TIME).exists(),
        "{TIME} is missing: install the Debian package `time` (scripts/install-test-deps.sh does)"
    );
    let time_file = dir.join("worker.time");
    let log = dir.join("worker.log");
    // time execs the worker itself: the figures are the worker's alone
    let mut cmd = clean(Command::new(TIME), dir);
    cmd.args(["-f", "%e %U %S %M", "-o"])
        .arg(&time_file)
        .arg(exe)
        .args(["run", campaign, "--progress", "none"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?);
    let mut child = cmd.spawn().context("failed to start the worker under /usr/bin/time")?;
    let mut stdout = String::new();
    child.stdout.take().context("the worker's stdout")?.read_to_string(&mut stdout)?;
    let status = child.wait()?;
    ensure!(status.success(), "the worker exited with {status}:\n{stdout}\n{}", tail(&log));
    let time_text = std::fs::read_to_string(&time_file).context("failed to read /usr/bin/time's output")?;
    let measured =
        parse_time(&time_text).with_context(|| format!("cannot parse /usr/bin/time's output {time_text:?}"))?;
    let report =
        parse_report(&stdout, campaign).with_context(|| format!("no report line in the worker's output:\n{stdout}"))?;
    Ok((measured, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gnu_time() {
        let m = parse_time("12.34 10.50 1.25 51200\n").unwrap();
        assert_eq!((m.wall, m.cpu(), m.max_rss_mb), (12.34, 11.75, 50.0));
        let m = parse_time("Command exited with non-zero status 4\n1.00 0.50 0.10 2048\n").unwrap();
        assert_eq!(m.max_rss_mb, 2.0);
        assert!(parse_time("Command terminated by signal 9\n").is_none());
    }

    #[test]
    fn parses_the_run_report() {
        let out = "bench-a: finished (run 1): 100 newly targeted, 97 notified, 1 skipped, 2 deferred, 0 failed\n";
        let r = parse_report(out, "bench-a").unwrap();
        assert_eq!(r, Report { targeted: 100, notified: 97, skipped: 1, deferred: 2, failed: 0 });
        assert!(parse_report(out, "bench-b").is_none());
    }
}
