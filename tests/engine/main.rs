//! End-to-end campaign runs: the real worker against the sandbox over HTTP, a real
//! SQLite file or Postgres database, and a real outbox directory or SMTP server.

mod bounces;
mod browser;
mod click;
mod common;
mod dashboard;
mod followup;
mod freshness;
mod gates;
mod locales;
mod metrics;
mod outcomes;
mod overlap;
mod proof;
mod runs;
mod throttle;
mod webhooks;
mod windows;
