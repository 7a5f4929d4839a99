//! What the benchmark reads from `/proc` besides the worker's own figures: the
//! machine line, the CPU time of the sandbox and of the bench database's Postgres
//! backends, and how busy the whole machine was. These are evidence for the report
//! (is the worker, the sandbox, Postgres or a neighbour using the cores?), never
//! figures themselves. Linux only; elsewhere they read as absent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::pgstat::{self, PgCounters};

/// Clock ticks per second of `/proc/*/stat` times: the kernel's USER_HZ, 100 on
/// every Linux this runs on (reading `sysconf` would need the libc crate).
const TICKS: f64 = 100.0;

/// `machine: 2 cores, <CPU model>, 23.5 GB RAM, load 5.1 4.2 3.9`.
pub fn machine_line() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.split_whitespace().collect::<Vec<_>>().join(" "));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or_else(|| "unknown".to_owned(), |kb| format!("{:.1}", kb / 1024.0 / 1024.0));
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("machine: {cores} cores, {model}, {mem_gb} GB RAM, load {load}")
}

/// User + system CPU seconds of a `/proc/<pid>/stat` line (fields 14 and 15).
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // the command name may hold spaces and parentheses: fields restart after the last ')'
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

/// CPU seconds a live process has used so far.
pub fn process_cpu(pid: u32) -> Option<f64> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds of a process from the scheduler's nanosecond counts (every thread's
/// `/proc/PID/task/TID/schedstat`): precise where `stat`'s 10 ms ticks read 0.
pub fn process_cpu_precise(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns: u64 = 0;
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

/// (busy, total) jiffies of the whole machine from the `cpu` line of `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    // idle and iowait are the 4th and 5th
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU seconds of every Postgres backend serving `database` (its command line,
/// `postgres: 15/main: user db 127.0.0.1(port) state`, names the database).
fn postgres_backends(database: &str) -> HashMap<u32, f64> {
    let mut found = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return found };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with("postgres:")
            && cmdline.split_whitespace().any(|w| w == database)
            && let Some(cpu) = process_cpu(pid)
        {
            found.insert(pid, cpu);
        }
    }
    found
}

/// What a [`Sampler`] saw between its start and its end.
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    /// CPU seconds of the bench database's Postgres backends (those born during the
    /// run count from zero; one that lived less than a sampling period is missed).
    pub postgres_cpu: Option<f64>,
    /// Average busy cores of the whole machine (every process, neighbours included).
    pub machine_busy_cores: Option<f64>,
    /// The marks the run passed ([`Watch`]): the start, each mark, the end.
    pub marks: Vec<Mark>,
}

/// Where a run stood at one moment: users done, seconds since the start, the
/// Postgres backends' CPU seconds so far, and the database's counters.
#[derive(Debug, Clone)]
pub struct Mark {
    pub done: u64,
    pub secs: f64,
    pub postgres_cpu: f64,
    pub counters: Option<PgCounters>,
}

/// What a [`Sampler`] watches beyond CPU: a count of users done so far, and the
/// counts at which to snapshot the database's counters.
pub struct Watch {
    pub done: Box<dyn Fn() -> u64 + Send>,
    pub at: Vec<u64>,
    pub admin_url: String,
    pub rt: Handle,
}

/// Each backend's CPU seconds: when first seen, when last seen, by pid.
type Backends = HashMap<u32, (f64, f64)>;

/// Samples Postgres backends every 200 ms on a thread of its own while a run goes.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Backends, Vec<Mark>)>,
    database: Option<String>,
    machine_start: Option<(u64, u64)>,
}

impl Sampler {
    /// Starts sampling; `database` is the Postgres database to watch, if any.
    pub fn start(database: Option<String>, watch: Option<Watch>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let machine_start = machine_jiffies();
        let thread = {
            let (stop, database) = (stop.clone(), database.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                // pid -> (CPU when first seen, CPU when last seen)
                let mut seen: Backends = HashMap::new();
                let mut marks = Vec::new();
                let Some(db) = database else { return (seen, marks) };
                let snap = |w: &Watch| w.rt.block_on(pgstat::snapshot(&w.admin_url, &db));
                let mut next_mark = 0;
                let mut first_pass = true;
                loop {
                    let done = stop.load(Ordering::Relaxed);
                    for (pid, cpu) in postgres_backends(&db) {
                        // a backend already there at the start counts from then; a new one from zero
                        let base = if first_pass { cpu } else { 0.0 };
                        seen.entry(pid).and_modify(|e| e.1 = cpu).or_insert((base, cpu));
                    }
                    if let Some(w) = &watch {
                        let count = (w.done)();
                        let due = first_pass || done || w.at.get(next_mark).is_some_and(|&m| count >= m);
                        if due {
                            if !first_pass && !done {
                                next_mark += 1;
                            }
                            let postgres_cpu = seen.values().map(|(a, b)| b - a).sum::<f64>();
                            let counters = snap(w);
                            marks.push(Mark {
                                done: count,
                                secs: started.elapsed().as_secs_f64(),
                                postgres_cpu,
                                counters,
                            });
                        }
                    }
                    first_pass = false;
                    if done {
                        return (seen, marks);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Self { stop, thread, database, machine_start }
    }

    /// Stops sampling and sums up.
    pub fn finish(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        let (seen, marks) = self.thread.join().unwrap_or_default();
        let postgres_cpu = self.database.is_some().then(|| seen.values().map(|(a, b)| b - a).sum::<f64>());
        let machine_busy_cores = self.machine_start.zip(machine_jiffies()).and_then(|((b0, t0), (b1, t1))| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            (t1 > t0).then(|| cores * (b1 - b0) as f64 / (t1 - t0) as f64)
        });
        Sampled { postgres_cpu, machine_busy_cores, marks }
    }
}

/// Counts the messages in a file outbox and deletes them: at the end of the run, or,
/// when `during` is set, also once a second while it goes, so that a
/// million-message run does not fill the disk (each `.eml` is a few KB). Deleting
/// during the run is not free for the worker: ext4 then searches longer for a free
/// inode when the outbox creates its next file (`recently_deleted` in a profile), so
/// runs that fit on the disk delete only at the end. Only finished messages are
/// touched ([`reverify::notify::is_message_name`]): the outbox renames each into place
/// from a temporary file. The count is a check of the worker's own `notified` figure.
pub struct OutboxDrain {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl OutboxDrain {
    /// Starts watching `dir` (which need not exist yet).
    pub fn start(dir: &Path, during: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, dir) = (stop.clone(), dir.to_path_buf());
            std::thread::spawn(move || {
                let mut count = 0u64;
                loop {
                    let done = stop.load(Ordering::Relaxed);
                    if !(done || during) {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    if let Ok(entries) = std::fs::read_dir(&dir) {
                        // a temporary file is a message still being written (the outbox
                        // renames it into place once durable), or one a crash left
                        for e in entries.flatten().filter(|e| reverify::notify::is_message_name(&e.file_name())) {
                            if std::fs::remove_file(e.path()).is_ok() {
                                count += 1;
                            }
                        }
                    }
                    if done {
                        return count;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        };
        Self { stop, thread }
    }

    /// Drains what is left and returns how many messages there were.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_from_a_stat_line() {
        let line = "4321 (postgres: x (y)) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(line), Some(2.0));
        assert_eq!(parse_stat_cpu("nonsense"), None);
    }

    #[test]
    fn the_machine_line_names_cores_and_memory() {
        let line = machine_line();
        assert!(line.starts_with("machine: ") && line.contains(" cores, ") && line.contains(" GB RAM"), "{line}");
    }

    #[test]
    fn the_drain_counts_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let drain = OutboxDrain::start(dir.path(), true);
        for i in 0..5 {
            std::fs::write(dir.path().join(format!("{i}.eml")), "x").unwrap();
        }
        std::fs::write(dir.path().join(".tmp-writing.part"), "x").unwrap();
        assert_eq!(drain.finish(), 5);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a message being written is left alone");

        // not during the run: everything is counted at the end
        let later = OutboxDrain::start(dir.path(), false);
        std::fs::write(dir.path().join("6.eml"), "x").unwrap();
        assert_eq!(later.finish(), 1);
    }
}
