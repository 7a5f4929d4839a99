//! `reverify-bench`: the benchmarks of reverify, kept out of the product binary.
//!
//! Without a subcommand: the whole pipeline (issue 8), one `name: value unit` line
//! per figure, running the real `reverify` binary as child processes (the one next
//! to this executable, or `REVERIFY_BIN`). `sandbox`, `import` and `report` are the
//! sandbox's, the import's and the report's own benchmarks, run in this process.

mod import;
mod pipeline;
mod report;
mod sandbox;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reverify::config::LogFormat;

/// Benchmarks of reverify. Without a subcommand: the whole pipeline (sandbox,
/// import, campaign, worker) and its figures, one `name: value unit` line each.
///
/// Each scenario runs the real binaries: the sandbox and the worker are child
/// processes of `reverify` (the one next to this executable, or REVERIFY_BIN), the
/// worker is measured with /usr/bin/time, the databases are fresh (Postgres at
/// REVERIFY_TEST_POSTGRES_URL, SQLite in a temporary file). Build with --release for
/// meaningful figures (scripts/bench.sh does).
#[derive(Debug, Parser)]
#[command(name = "reverify-bench", version, about, long_about, max_term_width = 100)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    /// Format of the benchmark's own log lines (REVERIFY_LOG_LEVEL sets their level).
    #[arg(long, global = true, value_enum, default_value = "text", env = "REVERIFY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    pipeline: pipeline::PipelineArgs,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Measure the sandbox's requests per second (in-process, over loopback).
    Sandbox(sandbox::SandboxBenchArgs),
    /// Import a generated CSV of 1M users into SQLite and Postgres.
    Import(import::BenchImportArgs),
    /// Stream the report of 1M generated targets to /dev/null.
    Report(report::BenchReportArgs),
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    let level = std::env::var("REVERIFY_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned());
    reverify::telemetry::init(args.log_format, &level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let done = runtime.block_on(async {
        match args.command {
            Some(BenchCommand::Sandbox(a)) => sandbox::run(a).await,
            Some(BenchCommand::Import(a)) => import::run(a).await,
            Some(BenchCommand::Report(a)) => report::run(a).await,
            None => pipeline::run(args.pipeline).await,
        }
    });
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
