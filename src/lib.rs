//! Strongroom: an air-gapped, on-premise vault and tamper-evident audit
//! appliance. This library holds everything; the binaries are thin.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::await_holding_lock,
    unsafe_op_in_unsafe_fn
)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod erasure;
pub mod errors;
pub mod evidence;
pub mod firms;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod limits;
pub mod people;
pub mod records;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod vault;
pub mod webhooks;

/// Package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this binary was built from (`unknown` outside a git checkout).
pub const BUILD_COMMIT: &str = env!("STRONGROOM_BUILD_COMMIT");

/// sysexits.h EX_CONFIG: the daemon refuses to start (bad config, no FIPS, bad key).
pub const EXIT_CONFIG: u8 = 78;
