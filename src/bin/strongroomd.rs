//! `strongroomd`: the Strongroom appliance daemon.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// mimalloc instead of glibc malloc (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    strongroom::daemon::main()
}
