//! Campaign files checked as `campaign validate` and a run check them: read,
//! parsed, and served by these settings (shared by apply and `campaign digest`).

use std::path::{Path, PathBuf};

use reverify::domain::CampaignSpec;
use reverify::notify::CampaignCheck;

use super::Context;

/// What a run would check, from the settings: see [`reverify::notify::check_campaign`].
pub fn campaign_check(ctx: &Context) -> anyhow::Result<CampaignCheck> {
    CampaignCheck::from_settings(&ctx.settings)
        .map_err(|e| anyhow::anyhow!("the settings cannot serve any campaign: {e}"))
}

/// A campaign file read, parsed and checked: its name as shown, spec and text.
pub struct Checked {
    pub shown: String,
    pub spec: CampaignSpec,
    pub text: String,
}

/// Reads, parses and checks one file; the error names the file (and the line, the
/// field or the setting).
pub fn check_file(f: &Path, check: &CampaignCheck) -> Result<Checked, String> {
    let shown = f.display().to_string();
    let text = reverify::config::files::read_spec_text(f).map_err(|e| e.to_string())?;
    let spec = CampaignSpec::from_toml(&text, &shown).map_err(|e| e.to_string())?;
    check.check(&spec).map_err(|e| format!("{shown}: {e}"))?;
    Ok(Checked { shown, spec, text })
}

/// Checks `files`, refusing a second file for a campaign name already seen; returns
/// the good ones, and each bad one with its error line.
pub fn check_files(files: &[PathBuf], check: &CampaignCheck) -> (Vec<Checked>, Vec<(String, String)>) {
    let mut good: Vec<Checked> = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for f in files {
        match check_file(f, check) {
            Ok(c) => match good.iter().find(|g| g.spec.name == c.spec.name) {
                Some(other) => {
                    let e = format!("{}: campaign {} is also defined in {}", c.shown, c.spec.name, other.shown);
                    errors.push((c.shown, e));
                }
                None => good.push(c),
            },
            Err(e) => errors.push((f.display().to_string(), e)),
        }
    }
    (good, errors)
}
