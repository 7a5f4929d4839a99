//! The Baanx API client: the only code that speaks HTTP to Baanx.
//!
//! It owns the headers (`x-client-key`, the bearer, `x-us-env`), access tokens and
//! refresh-token rotation, the global rate limiter and concurrency cap, and the
//! classification of every failure (retryable, permanent, re-consent needed, rate
//! limited) with bounded retries. It knows nothing of the database: refresh tokens
//! are persisted through the [`TokenVault`] seam, implemented over the store in
//! `engine::adapters::StoreTokenVault`. It keeps no metrics either: it tells an
//! [`ApiObserver`] what it does.
//!
//! Secrets: a session URL only ever exists inside [`crate::domain::SessionUrl`];
//! tokens only inside zeroizing strings that no `Debug` shows; error messages carry
//! at most a scrubbed excerpt of a body.

mod client;
mod error;
mod limiter;
mod model;
mod observer;
mod refresh;
mod retry;
mod tokens;

pub use client::{BaanxClient, BaanxConfig, Pacer};
pub use error::{ApiEndpoint, BaanxError, ConsentReason, ErrorClass, TransportKind, VaultError, scrub_excerpt};
pub use limiter::{Admission, Limiter, LimiterStats};
pub use model::UserProfile;
pub use observer::{ApiObserver, Unobserved};
pub use retry::{ApiRetryPolicy, parse_retry_after};
pub use tokens::{Checkout, CheckoutAsk, Grant, LeasedRefresh, MemoryVault, StoredAccess, TokenVault};
