//! Survival suites (issue 7): crashes, faults, overlapping workers, bad input and
//! secrets, against the real binary, a real sandbox over HTTP, a real SMTP server and
//! real databases. Each prints a quotable summary line; the totals go to
//! `target/survive-summary.txt`.

mod common;
mod corpus;
mod crash;
mod faults;
mod overlap;
mod pgstop;
mod race;
mod secrets;
mod stall;
mod summary;
