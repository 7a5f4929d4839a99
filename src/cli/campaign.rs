//! `reverify campaign …`

use std::path::PathBuf;

use clap::Subcommand;
use reverify::domain::CampaignSpec;

use super::{Context, exit};

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Check a campaign file without touching the database.
    Validate {
        /// Campaign files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub async fn run(cmd: CampaignCommand, _ctx: &Context) -> anyhow::Result<u8> {
    match cmd {
        CampaignCommand::Validate { files } => {
            let mut bad = 0;
            for f in &files {
                match CampaignSpec::from_file(f) {
                    Ok(spec) => println!("{}: ok (campaign {})", f.display(), spec.name),
                    Err(e) => {
                        eprintln!("error: {e}");
                        bad += 1;
                    }
                }
            }
            Ok(if bad == 0 { exit::OK } else { exit::FAILURE })
        }
    }
}
