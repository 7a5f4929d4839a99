//! `reverify daemon`: run campaigns when due, until stopped.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use reverify::engine::Worker;
use tokio_util::sync::CancellationToken;

use super::{Context, exit};

/// Run each active campaign at its schedule's ticks until SIGTERM or SIGINT.
///
/// The daemon sleeps until the next tick of any campaign (re-reading the campaigns
/// at least every minute, so that `campaign apply`, `pause` and `resume` take
/// effect), runs what is due under each campaign's lease, and on SIGTERM lets the
/// users in flight finish before it exits.
#[derive(Debug, Args)]
pub struct DaemonArgs {}

pub async fn run(_args: DaemonArgs, ctx: &Context) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let worker = Arc::new(Worker::from_settings(&ctx.settings, store).context("failed to set up the worker")?);
    let stop = CancellationToken::new();
    super::run::stop_on_signals(stop.clone(), None);
    reverify::schedule::daemon::run(worker.clone(), stop).await?;
    worker.store.close().await;
    Ok(exit::OK)
}
