//! The Baanx sandbox over real HTTP: the API's checks, its limits at their
//! boundaries, sessions and webhooks, faults, and user generation and export.
//! One test binary with modules, to keep link times down.

mod sandbox {
    pub mod api;
    pub mod common;
    pub mod faults;
    pub mod limits;
    pub mod reuse;
    pub mod sessions;
    pub mod users;
}
