//! Reading the small files the tool is given (campaign files, the settings file):
//! the edge where their bytes become text. Parsing stays pure in `domain`
//! ([`CampaignSpec::from_toml`]).

use std::path::Path;

use crate::domain::spec::{MAX_SPEC_BYTES, line_col};
use crate::domain::{CampaignSpec, SpecError};

/// The text of a small settings-like file (a campaign file, a config): at most
/// `max` bytes, and UTF-8, or an error that says where the first bad byte is.
///
/// # Errors
/// A message starting with the file name (and `:line:column` for bad bytes).
pub fn read_small_text(path: &Path, max: u64) -> Result<String, String> {
    use std::io::Read as _;
    let file = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|e| format!("{file}: cannot read: {e}"))?;
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes).map_err(|e| format!("{file}: cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("{file}: larger than {} MiB; this is not a settings file", max >> 20));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let text = String::from_utf8_lossy(&bytes[..good]);
        let (line, column) = line_col(&text, good);
        let hint = if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
            " (the file is UTF-16)"
        } else {
            ""
        };
        format!("{file}:{line}:{column}: byte 0x{:02X} is not UTF-8{hint}; save the file as UTF-8", bytes[good])
    })
}

/// A campaign file's text: at most [`MAX_SPEC_BYTES`], and UTF-8.
///
/// # Errors
/// [`SpecError::Unusable`] naming the file (and where a bad byte is).
pub fn read_spec_text(path: &Path) -> Result<String, SpecError> {
    read_small_text(path, MAX_SPEC_BYTES)
        .map_err(|message| SpecError::Unusable { file: path.display().to_string(), message })
}

/// Reads and validates a campaign file ([`read_spec_text`], then
/// [`CampaignSpec::from_toml`]).
///
/// # Errors
/// [`SpecError`] naming the file, and the line and column or the field.
pub fn read_spec(path: &Path) -> Result<CampaignSpec, SpecError> {
    let text = read_spec_text(path)?;
    CampaignSpec::from_toml(&text, &path.display().to_string())
}
