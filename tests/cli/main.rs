//! The real `reverify` binary: exit codes, interruption and resumption, SIGTERM,
//! overlapping scheduled runs, and each command group (`campaign …`, `users …`,
//! `sandbox`). The sandbox runs in the test process; the binary talks to it over
//! HTTP.

mod approvals;
mod bounces;
mod campaigns;
mod common;
mod docs;
mod evidence;
mod exit_codes;
mod followup;
mod gates;
mod ops;
mod sandbox;
mod scheduled;
mod signed;
mod ui;
mod users;
