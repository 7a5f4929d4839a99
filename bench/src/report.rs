//! `reverify-bench report`: fills a throw-away database with N targets of
//! one campaign and streams `campaign report` of it to /dev/null, timing it and
//! watching memory. Run it from `scripts/bench-report.sh` (release build).
//!
//! Flat memory is shown two ways: the peak (VmHWM, reset through
//! `/proc/self/clear_refs` after the fill) and the resident size sampled every
//! 8 MB of output, whose spread should stay within a few MB from first page to last.

use std::io::Write;
use std::time::Instant;

use chrono::Utc;
use reverify::domain::CampaignSpec;
use reverify::report::{ReportFormat, write_report};
use reverify::store::Store;
use reverify::store::testing::TestDb;

#[derive(Debug, clap::Args)]
pub struct BenchReportArgs {
    /// Targets to generate.
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    #[arg(long, value_enum, default_value = "csv")]
    format: ReportFormat,
    #[arg(long)]
    skip_sqlite: bool,
    #[arg(long)]
    skip_postgres: bool,
}

fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// /dev/null that samples the resident size every 8 MB written.
struct Sink {
    written: u64,
    next_sample: u64,
    samples: Vec<f64>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len() as u64;
        if self.written >= self.next_sample {
            self.next_sample += 8 << 20;
            if let Some(rss) = proc_status_mb("VmRSS:") {
                self.samples.push(rss);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn label(rows: i64) -> String {
    if rows > 0 && rows % 1_000_000 == 0 { format!("{}m", rows / 1_000_000) } else { rows.to_string() }
}

async fn bench(store: &Store, engine: &str, args: &BenchReportArgs) -> anyhow::Result<()> {
    let spec = CampaignSpec::from_toml("name = \"bench-report\"\n", "bench.toml")?;
    let (_, c) = store.campaign_apply(&spec, "name = \"bench-report\"\n", "bench", Utc::now()).await?;
    let started = Instant::now();
    store.report_bench_fill(c.campaign_id, args.rows, Utc::now()).await?;
    println!("fill_{}_{engine}: {:.1} s", label(args.rows), started.elapsed().as_secs_f64());
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = proc_status_mb("VmRSS:").unwrap_or(f64::NAN);
    let mut sink = Sink { written: 0, next_sample: 0, samples: vec![] };
    let started = Instant::now();
    let rows = write_report(store, c.campaign_id, args.format, &mut sink).await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(rows == args.rows as u64, "{rows} rows written, expected {}", args.rows);
    let peak = proc_status_mb("VmHWM:").unwrap_or(f64::NAN);
    let (lo, hi) = sink.samples.iter().fold((f64::MAX, 0f64), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
    println!(
        "report_{}_seconds: {secs:.1} s ({engine}, {:.0} MB written)",
        label(args.rows),
        sink.written as f64 / 1e6
    );
    println!("report_peak_rss: {peak:.0} MB ({engine}; {before:.0} MB before the report)");
    println!("report_rss_samples: {} samples, {lo:.0}..{hi:.0} MB ({engine})", sink.samples.len());
    Ok(())
}

pub async fn run(args: BenchReportArgs) -> anyhow::Result<()> {
    if !args.skip_sqlite {
        let db = TestDb::sqlite().await;
        bench(&db.store, "sqlite", &args).await?;
    }
    if !args.skip_postgres {
        let db = TestDb::postgres().await;
        bench(&db.store, "postgres", &args).await?;
    }
    Ok(())
}
