//! The real `reverify` binary: exit codes, interruption and resumption, SIGTERM,
//! and overlapping scheduled runs. The sandbox runs in the test process; the
//! binary talks to it over HTTP.

mod approvals;
mod bounces;
mod common;
mod docs;
mod evidence;
mod exit_codes;
mod followup;
mod gates;
mod ops;
mod scheduled;
mod signed;
mod ui;
