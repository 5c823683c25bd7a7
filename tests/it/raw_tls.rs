//! Hand-built ClientHellos, for offers no modern TLS library will make
//! (TLS 1.1, CBC-only suites), and a reader for what the server answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const TLS1_1: u16 = 0x0302;
pub const TLS1_2: u16 = 0x0303;

/// CBC suites (ECDHE and static RSA), none of which may be accepted.
pub const CBC_SUITES: &[u16] = &[
    0xC009, 0xC00A, 0xC013, 0xC014, 0xC023, 0xC024, 0xC027, 0xC028, 0x002F, 0x0035, 0x003C, 0x003D,
];
/// ECDHE AES-GCM suites (the positive control).
pub const GCM_SUITES: &[u16] = &[0xC02B, 0xC02C, 0xC02F, 0xC030];

#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The server picked parameters and answered with a ServerHello.
    ServerHello { version: u16, suite: u16 },
    /// A fatal alert with this description code.
    Alert(u8),
    /// The connection closed without either.
    Closed,
}

fn ext(out: &mut Vec<u8>, ty: u16, body: &[u8]) {
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

fn u16_list(items: &[u16]) -> Vec<u8> {
    let mut v = ((items.len() * 2) as u16).to_be_bytes().to_vec();
    for i in items {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

/// A TLS ≤1.2-style ClientHello (no supported_versions extension).
pub fn client_hello(version: u16, suites: &[u16], groups: &[u16]) -> Vec<u8> {
    let mut exts = Vec::new();
    let mut sni = Vec::new();
    let host = b"localhost";
    sni.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    ext(&mut exts, 0x0000, &sni);
    ext(&mut exts, 0x000a, &u16_list(groups)); // supported_groups
    ext(&mut exts, 0x000b, &[1, 0]); // ec_point_formats: uncompressed
    ext(
        &mut exts,
        0x000d,
        &u16_list(&[0x0403, 0x0503, 0x0804, 0x0805, 0x0401, 0x0501]),
    ); // signature_algorithms
    ext(&mut exts, 0x0017, &[]); // extended_master_secret
    ext(&mut exts, 0xff01, &[0]); // renegotiation_info

    let mut hello = Vec::new();
    hello.extend_from_slice(&version.to_be_bytes());
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&u16_list(suites));
    hello.extend_from_slice(&[1, 0]); // compression: null
    hello.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    hello.extend_from_slice(&exts);

    let mut hs = vec![0x01];
    hs.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&hello);

    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Sends `hello` and classifies the server's first record.
pub fn offer(addr: SocketAddr, hello: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(hello).unwrap();
    let mut header = [0u8; 5];
    if s.read_exact(&mut header).is_err() {
        return Answer::Closed;
    }
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    let mut body = vec![0u8; len];
    if s.read_exact(&mut body).is_err() {
        return Answer::Closed;
    }
    match header[0] {
        0x15 if body.len() >= 2 => Answer::Alert(body[1]),
        0x16 if body.first() == Some(&0x02) && body.len() >= 40 => {
            let version = u16::from_be_bytes([body[4], body[5]]);
            let sid_len = body[38] as usize;
            let at = 39 + sid_len;
            Answer::ServerHello {
                version,
                suite: u16::from_be_bytes([body[at], body[at + 1]]),
            }
        }
        _ => Answer::Closed,
    }
}
