//! Many open firms: the daemon's threads do not grow with them, nor do its
//! open files past the warm bound (512 firms keep their connections), and
//! every acknowledged write on each survives a restart.

use crate::client::Client;
use crate::firms::{Firm, create_firm, firm_db};
use crate::harness::{Daemon, Options, ctl_json};

/// A numeric field of the daemon's `/proc/<pid>/status`.
fn status_field(d: &Daemon, name: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn threads(d: &Daemon) -> usize {
    status_field(d, "Threads:")
}

/// The daemon's soft open-file limit, from `/proc/<pid>/limits`.
fn open_file_limit(d: &Daemon) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn set_name(c: &Client, f: &Firm, name: &str) -> u16 {
    let auth = format!("Bearer {}", f.token);
    let body = format!(r#"{{"display_name":"{name}"}}"#);
    c.request(
        "PATCH",
        &format!("/api/v1/firms/{}", f.id),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body.as_bytes()),
    )
    .status
}

#[test]
fn open_firms_share_bounded_writer_threads_and_open_files() {
    // More than the warm bound (512), so the least recently used park.
    const FIRMS: usize = 600;
    let d = Daemon::start();
    // The descriptor table was grown once at start to the open-file limit
    // (up to 65,536), so no cold firm's open waits for the kernel to grow it.
    assert!(
        status_field(&d, "FDSize:") >= open_file_limit(&d).min(65_536),
        "FDSize {} for a limit of {}",
        status_field(&d, "FDSize:"),
        open_file_limit(&d)
    );
    let c = d.client();
    let first = create_firm(&d, "Many 0");
    assert_eq!(set_name(&c, &first, "n0"), 200);
    // One firm open and written: the writer pool exists from here on.
    let base = threads(&d);
    let mut firms = vec![first];
    for i in 1..FIRMS {
        let f = create_firm(&d, &format!("Many {i}"));
        assert_eq!(set_name(&c, &f, &format!("n{i}")), 200);
        firms.push(f);
    }
    // Every firm is open (created, then written through its writer), and
    // the thread count did not grow with them.
    let status = ctl_json(&d.admin_socket, &["status"]);
    assert_eq!(status["firms_open"], FIRMS, "{status}");
    // A warm firm holds three descriptors or more (database, WAL, shared
    // memory); a parked one none.
    let paths: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.contains("/firms/frm_"))
        .collect();
    let firms_with_files = paths
        .iter()
        .map(|p| p.split(".db").next().unwrap_or_default())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(
        firms_with_files <= 520,
        "{} firm files open, of {firms_with_files} firms, for {FIRMS} open firms",
        paths.len()
    );
    let now = threads(&d);
    assert!(
        now <= base + 8,
        "{FIRMS} open firms: {now} threads, {base} with one open"
    );
    // A clean stop keeps each firm's -wal and -shm (persistent WAL: no
    // files to create again at the next open); a warm firm's WAL is
    // checkpointed and emptied, a parked one's frames wait for its next open.
    let mut d = d;
    assert_eq!(d.stop().code(), Some(0));
    for f in &firms {
        let db = firm_db(&d, &f.id);
        for side in ["-wal", "-shm"] {
            let mut p = db.clone().into_os_string();
            p.push(side);
            assert!(std::path::Path::new(&p).exists(), "{p:?} kept");
        }
    }
    let last = firm_db(&d, &firms[FIRMS - 1].id);
    let wal = std::fs::metadata(format!("{}-wal", last.display())).unwrap();
    assert_eq!(
        wal.len(),
        0,
        "the last-used firm's WAL is emptied at the stop"
    );
    // Every acknowledged write is there after a restart.
    let d = d.restart(Options::default());
    let c = d.client();
    for (i, f) in firms.iter().enumerate() {
        let auth = format!("Bearer {}", f.token);
        let r = c.request(
            "GET",
            &format!("/api/v1/firms/{}", f.id),
            &[("Authorization", &auth)],
            None,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["profile"]["display_name"], format!("n{i}"));
    }
}
