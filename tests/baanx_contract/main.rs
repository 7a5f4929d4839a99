//! Contract tests of the Baanx client over real HTTP on loopback: against the
//! project's sandbox for the API's behaviour, and against a deliberately broken
//! stub for the answers the sandbox never gives (malformed JSON, a 401 that a fresh
//! token does not cure). One test binary, modules by concern.

mod broken_api;
mod common;
mod sandbox_api;
mod secrecy;
mod tokens;
