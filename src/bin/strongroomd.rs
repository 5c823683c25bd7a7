//! `strongroomd`: the Strongroom appliance daemon.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

fn main() -> std::process::ExitCode {
    strongroom::daemon::main()
}
