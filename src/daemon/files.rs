//! The open-file limit and the descriptor table, set once at start.

/// Open files the daemon wants: each warm firm holds a few per connection
/// (see `store::warm`), and each client connection one.
const WANTED_OPEN_FILES: u64 = 65_536;

/// Raises the soft open-file limit towards the hard one (the unit sets
/// `LimitNOFILE`; outside systemd the soft limit is often 1,024). Returns
/// the soft limit now in force.
pub(super) fn raise_open_file_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let want = hard.min(WANTED_OPEN_FILES.max(soft));
    let now = if want > soft && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
        want
    } else {
        soft
    };
    reserve_file_table(now);
    Some(now)
}

/// Grows the process's descriptor table once, now, to `limit` entries (at
/// most [`WANTED_OPEN_FILES`]). The kernel grows the table by doubling when
/// a new descriptor does not fit, and in a threaded process every growth
/// waits out an RCU grace period (10–20 ms): otherwise the request whose
/// cold firm opens the 256th, 512th, 1,024th… file pays that wait. The
/// table costs 8 bytes per entry of kernel memory and never shrinks.
fn reserve_file_table(limit: u64) {
    let Ok(top) = i32::try_from(limit.min(WANTED_OPEN_FILES).saturating_sub(1)) else {
        return;
    };
    if top < 64 {
        return;
    }
    let Ok(null) = std::fs::File::open("/dev/null") else {
        return;
    };
    use nix::fcntl::{FcntlArg, fcntl};
    match fcntl(&null, FcntlArg::F_DUPFD_CLOEXEC(top)) {
        Ok(fd) => {
            let _ = nix::unistd::close(fd);
        }
        Err(e) => tracing::warn!(error = %e, "cannot reserve the descriptor table"),
    }
}
