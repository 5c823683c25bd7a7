//! The one integration test binary: every test spawns the real `strongroomd`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit;
mod client;
mod datakeys;
mod firms;
mod foundation;
mod hardening;
mod harness;
mod keys;
mod raw_tls;
mod records;
mod retention;
mod secrets;
