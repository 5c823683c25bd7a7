//! Many open firms: the daemon's threads do not grow with them, and every
//! acknowledged write on each survives a restart.

use crate::client::Client;
use crate::firms::{Firm, create_firm};
use crate::harness::{Daemon, Options, ctl_json};

/// `Threads:` of the daemon, from `/proc/<pid>/status`.
fn threads(d: &Daemon) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
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
fn open_firms_share_a_bounded_set_of_writer_threads() {
    const FIRMS: usize = 150;
    let d = Daemon::start();
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
    let now = threads(&d);
    assert!(
        now <= base + 8,
        "{FIRMS} open firms: {now} threads, {base} with one open"
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
