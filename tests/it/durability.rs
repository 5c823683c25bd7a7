//! Durability shown, not assumed: the daemon runs under `strace`, and every
//! answer to an acknowledged write is sent only after an fsync of the firm's
//! WAL that began after the request arrived and ended before the answer.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{Client, Conn};
use crate::firms::create_firm;
use crate::harness::Daemon;

/// One traced system call, as far as this test needs it.
struct Call {
    /// Line of its start, and of its end (the same unless interleaved).
    start: usize,
    end: usize,
    name: String,
    /// The first argument as `strace -yy` decodes it (a path, a socket).
    fd: String,
    ret: i64,
}

/// The first argument's decoded form: `23<TCP:[a->b]>, ...` gives
/// `TCP:[a->b]` (a socket's decoding holds a `>` of its own).
fn decoded_fd(args: &str) -> String {
    let Some(a) = args.find('<') else {
        return String::new();
    };
    let body = &args[a + 1..];
    match [">,", ">)", "> "].iter().filter_map(|e| body.find(e)).min() {
        Some(b) => body[..b].to_owned(),
        None => String::new(),
    }
}

fn return_value(tail: &str) -> i64 {
    tail.rsplit_once(" = ")
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(-1)
}

/// Parses `strace -f -yy` output (`[pid N] ` before each thread's calls),
/// joining `<unfinished ...>` with its `<... resumed>` line on that thread.
fn parse(lines: &[String]) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: std::collections::HashMap<String, (usize, String, String)> =
        Default::default();
    for (i, line) in lines.iter().enumerate() {
        let (pid, rest) = match line.strip_prefix("[pid ") {
            Some(r) => match r.split_once("] ") {
                Some((pid, rest)) => (pid.trim().to_owned(), rest),
                None => continue,
            },
            None => (String::new(), line.as_str()),
        };
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((start, name, fd)) = pending.remove(&pid) else {
                continue;
            };
            if resumed.starts_with(&name) {
                calls.push(Call {
                    start,
                    end: i,
                    name,
                    fd,
                    ret: return_value(resumed),
                });
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        let fd = decoded_fd(args);
        if rest.ends_with("<unfinished ...>") {
            pending.insert(pid, (i, name.to_owned(), fd));
        } else {
            calls.push(Call {
                start: i,
                end: i,
                name: name.to_owned(),
                fd,
                ret: return_value(rest),
            });
        }
    }
    calls
}

/// The trace so far: strace writes to its (unbuffered) stderr, read here
/// line by line as it comes.
struct Trace {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Trace {
    /// Answers a GET on a new connection, closes it and waits until the
    /// trace shows the daemon reading that close: everything the daemon did
    /// before is in the trace by then. Returns the index of that line.
    fn mark(&self, c: &Client) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut conn = c.connect().unwrap();
            let port = conn.stream.sock.local_addr().unwrap().port();
            let r = conn.request("GET", "/healthz", &[], None).unwrap();
            assert_eq!(r.status, 200);
            drop(conn);
            let tag = format!(":{port}]");
            let retry = Instant::now() + Duration::from_secs(2);
            while Instant::now() < retry {
                let lines = self.lines.lock().unwrap().clone();
                let closed = parse(&lines).into_iter().find(|call| {
                    call.fd.contains(&tag)
                        && (call.name == "read" || call.name == "recvfrom")
                        && call.ret == 0
                });
                if let Some(call) = closed {
                    return call.end;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Not attached yet when that connection came and went: again.
            assert!(
                Instant::now() < deadline,
                "strace never showed the daemon answering"
            );
        }
    }
}

#[test]
fn no_write_is_answered_before_the_fsync_that_covers_it() {
    let d = Daemon::start();
    let f = create_firm(&d, "Durable LLP");
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-yy",
            "-e",
            "trace=fsync,fdatasync,read,recvfrom,write,writev,sendto",
            "-p",
            &d.pid().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace runs (packaging/build-deps.sh installs it)");
    let trace = Trace {
        lines: Arc::new(Mutex::new(Vec::new())),
    };
    let reader = {
        let (err, lines) = (strace.stderr.take().unwrap(), trace.lines.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines() {
                lines.lock().unwrap().push(l.unwrap());
            }
        })
    };
    let c = d.client();
    trace.mark(&c);

    // Four clients, each on its own connection (its TLS handshake and a first
    // GET done before the traced part), write at once, so answers come from
    // shared (group) commits as well as lone ones.
    const CLIENTS: usize = 4;
    const WRITES: usize = 15;
    let auth = format!("Bearer {}", f.token);
    let mut conns: Vec<Conn> = (0..CLIENTS).map(|_| c.connect().unwrap()).collect();
    for conn in &mut conns {
        assert_eq!(
            conn.request("GET", "/healthz", &[], None).unwrap().status,
            200
        );
    }
    let ports: Vec<String> = conns
        .iter()
        .map(|c| format!(":{}]", c.stream.sock.local_addr().unwrap().port()))
        .collect();
    let from = trace.mark(&c);
    std::thread::scope(|s| {
        for (t, mut conn) in conns.into_iter().enumerate() {
            let (auth, id) = (&auth, &f.id);
            s.spawn(move || {
                for i in 0..WRITES {
                    let body = format!(r#"{{"display_name":"n{t}-{i}"}}"#);
                    let r = conn
                        .request(
                            "PATCH",
                            &format!("/api/v1/firms/{id}"),
                            &[
                                ("Authorization", auth),
                                ("Content-Type", "application/json"),
                            ],
                            Some(body.as_bytes()),
                        )
                        .unwrap();
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                }
            });
        }
    });
    let to = trace.mark(&c);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(strace.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = strace.wait();
    let _ = reader.join();

    let lines = trace.lines.lock().unwrap().clone();
    let calls = parse(&lines);
    let calls: Vec<&Call> = calls
        .iter()
        .filter(|c| c.start >= from && c.end < to)
        .collect();
    let wal = format!("{}.db-wal", f.id);
    let syncs: Vec<&&Call> = calls
        .iter()
        .filter(|c| (c.name == "fsync" || c.name == "fdatasync") && c.fd.ends_with(&wal))
        .collect();
    assert!(!syncs.is_empty(), "no fsync of {wal} traced");
    // The last request read on each connection, then each answer written.
    let mut asked_at: std::collections::HashMap<&str, usize> = Default::default();
    let mut answers = 0;
    let mut events: Vec<&&Call> = calls
        .iter()
        .filter(|c| c.fd.starts_with("TCP") && ports.iter().any(|p| c.fd.ends_with(p.as_str())))
        .collect();
    events.sort_by_key(|c| c.end);
    for c in events {
        match c.name.as_str() {
            "read" | "recvfrom" if c.ret > 0 => {
                asked_at.insert(&c.fd, c.end);
            }
            "write" | "writev" | "sendto" if c.ret > 0 => {
                let Some(&asked) = asked_at.get(c.fd.as_str()) else {
                    continue;
                };
                answers += 1;
                assert!(
                    syncs.iter().any(|s| s.start > asked && s.end < c.start),
                    "an answer on {} (trace line {}) was sent with no fsync of {wal} \
                     begun after its request (line {}) and ended before it",
                    c.fd,
                    c.start + 1,
                    asked + 1
                );
            }
            _ => {}
        }
    }
    assert!(
        answers >= CLIENTS * WRITES,
        "only {answers} answers were traced for {} writes",
        CLIENTS * WRITES
    );
}
