//! reverify: identity re-verification campaigns on the Baanx API.
//!
//! The library holds every piece of logic; the `reverify` binary maps commands and
//! settings onto it and owns the exit codes. See `../shared/design.md` for the
//! architecture: `domain` (pure rules) at the bottom, then `store`, `baanx`, `notify`,
//! then `engine` and `schedule` on top.

pub mod baanx;
pub mod bounces;
pub mod click;
pub mod config;
pub mod crypto;
pub mod directory;
pub mod domain;
pub mod engine;
pub mod evidence;
pub mod notify;
pub mod report;
pub mod sandbox;
pub mod schedule;
pub mod store;
pub mod telemetry;
pub mod ui;
pub mod webhooks;

pub use config::{Secret, Settings};
