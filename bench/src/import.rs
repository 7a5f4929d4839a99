//! `reverify-bench import`: generates a CSV of N users, every one with a refresh
//! token, and times `users import` of it into a fresh SQLite file and a fresh
//! Postgres database. Run it from `scripts/bench-import.sh` (release build).
//!
//! Peak memory is the process's VmHWM, reset through `/proc/self/clear_refs` before
//! each import so that each engine's figure is its own.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::Rng as _;
use reverify::crypto::TokenCipher;
use reverify::directory::{ImportOptions, import_file};
use reverify::store::Store;
use reverify::store::testing::TestDb;
use reverify::store::users::UserFilter;

#[derive(Debug, clap::Args)]
pub struct BenchImportArgs {
    /// Users to generate.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Where the CSV goes (default: a temporary directory). The databases are
    /// throw-away ones, as in the tests: a temporary SQLite file, and a new database
    /// on the Postgres at REVERIFY_TEST_POSTGRES_URL, dropped afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    skip_sqlite: bool,
    #[arg(long)]
    skip_postgres: bool,
}

fn label(rows: u64) -> String {
    if rows > 0 && rows.is_multiple_of(1_000_000) { format!("{}m", rows / 1_000_000) } else { rows.to_string() }
}

/// Peak resident memory since the last reset, in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Writes `rows` users in the import format, each with a refresh token: 60 %
/// UNVERIFIED, 20 % REJECTED long ago, 10 % PENDING, 10 % VERIFIED, or every one
/// UNVERIFIED when `all_unverified` (the targeting benchmark wants all eligible).
pub fn generate(path: &Path, rows: u64, all_unverified: bool) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(
        out,
        "user_id,email,first_name,last_name,locale,timezone,region,country,verification_state,rejected_at,refresh_token,tags,signed_up_at"
    )?;
    let mut rng = rand::rng();
    for i in 0..rows {
        let id = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        let (region, country, tz) =
            if i % 4 == 0 { ("us", "US", "America/New_York") } else { ("intl", "GB", "Europe/London") };
        let (state, rejected) = match if all_unverified { 0 } else { i % 10 } {
            0..=5 => ("UNVERIFIED", ""),
            6 | 7 => ("REJECTED", "2026-01-15T10:30:00Z"),
            8 => ("PENDING", ""),
            _ => ("VERIFIED", ""),
        };
        let token: [u8; 24] = rng.random();
        writeln!(
            out,
            "{id},user{i}@example.com,First{i},Last{i},en-GB,{tz},{region},{country},{state},{rejected},rt_{},cohort-{};beta,2025-06-01T00:00:00Z",
            hex::encode(token),
            i % 12
        )?;
    }
    out.flush()?;
    Ok(())
}

async fn time_import(store: &Store, csv: &Path, cipher: &Arc<TokenCipher>, rows: u64) -> anyhow::Result<(f64, f64)> {
    let opts = ImportOptions {
        format: None,
        strict: false,
        cipher: Some(cipher.clone()),
        actor: "bench".into(),
        now: chrono::Utc::now(),
    };
    reset_peak_rss();
    let started = Instant::now();
    let report = import_file(store, csv, &opts).await?;
    let secs = started.elapsed().as_secs_f64();
    let peak = peak_rss_mb().unwrap_or(f64::NAN);
    anyhow::ensure!(report.imported == rows && report.bad == 0, "import was not clean: {report:?}");
    let stored = store.user_count(&UserFilter::default()).await?;
    anyhow::ensure!(stored as u64 == rows, "{stored} users stored, expected {rows}");
    Ok((secs, peak))
}

pub async fn run(args: BenchImportArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let csv = dir.join("bench-users.csv");
    let rows = args.rows;
    let started = Instant::now();
    let path = csv.clone();
    tokio::task::spawn_blocking(move || generate(&path, rows, false)).await??;
    let size = std::fs::metadata(&csv)?.len() as f64 / 1e6;
    println!("generate_{}_csv: {:.1} s ({size:.0} MB)", label(rows), started.elapsed().as_secs_f64());
    let cipher = Arc::new(TokenCipher::from_secrets(Some(&reverify::Secret::new(TokenCipher::generate_key())), None)?);
    let mut peak = 0f64;

    if !args.skip_sqlite {
        let db = TestDb::sqlite().await;
        let (secs, p) = time_import(&db.store, &csv, &cipher, rows).await?;
        println!("import_{}_sqlite: {secs:.1} s", label(rows));
        peak = peak.max(p);
    }
    if !args.skip_postgres {
        let db = TestDb::postgres().await;
        let (secs, p) = time_import(&db.store, &csv, &cipher, rows).await?;
        println!("import_{}_postgres: {secs:.1} s", label(rows));
        peak = peak.max(p);
    }
    println!("import_peak_rss: {peak:.0} MB");
    Ok(())
}
