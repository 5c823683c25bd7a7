//! The one integration test binary: every test spawns the real `strongroomd`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The tests drive a real process and bound their waits in real time; they
// never sleep to let the daemon's time pass (they move its clock instead).
#![allow(clippy::disallowed_methods)]

mod audit;
mod backup;
mod client;
mod console;
mod datakeys;
mod durability;
mod erasure;
mod evidence;
mod firms;
mod foundation;
mod hardening;
mod harness;
mod keys;
mod many_firms;
mod openapi;
mod operations;
mod page_format;
mod people;
mod raw_tls;
mod record_retention;
mod records;
mod retention;
mod secrets;
mod subjects;
mod webhooks;
