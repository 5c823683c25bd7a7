//! Entry points for the cargo-fuzz targets in `fuzz/` (`make fuzz`): one
//! function per target, each taking the fuzzer's bytes and driving a parser
//! that reads outside input. Built only with the `fuzzing` feature.
//!
//! Besides "does not panic", each checks properties that are cheap to state
//! (round trips, a redaction leaving no match behind, a proof that only the
//! honest path verifies). A broken property panics, which the fuzzer reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Map, Value};

use crate::audit::{export, merkle, note};
use crate::auth::policy::Permission;
use crate::auth::{self, Role};
use crate::crypto::envelope;
use crate::crypto::secret::SecretKey;
use crate::crypto::sign::SigningKey;
use crate::ids::{ApiKeyId, FirmId, RecordId, SessionId, UserId};
use crate::records::{pii, schema};

/// The name and key the harnesses sign notes with.
const NOTE_NAME: &str = "fuzz.strongroom.invalid/log";

fn note_key() -> SigningKey {
    SigningKey::from_seed(&SecretKey::from_bytes([3; 32])).expect("Ed25519 key from seed")
}

/// The verifier key of [`note_key`], as `verify-export` is given it.
pub fn note_verifier_key() -> String {
    note::verifier_key(NOTE_NAME, &note_key().public())
}

/// `ApiJson::parse`: `<selector byte><content type>\n<body>`, the body
/// read as the request body type the selector names (any JSON value, a
/// collection schema, the key, session, user, secret and firm bodies).
pub fn api_json(data: &[u8]) {
    crate::http::fuzzing::api_json(data);
}

/// `ApiQuery` over each query type, and the audit list's time bounds.
pub fn api_query(data: &[u8]) {
    crate::http::fuzzing::api_query(data);
}

macro_rules! id_round_trip {
    ($s:expr, $($t:ty),*) => {$(
        if let Some(id) = <$t>::parse($s) {
            assert_eq!(id.as_str(), $s);
            assert_eq!(id.to_string(), $s);
            assert_eq!(<$t>::from_hex(id.hex()), Some(id.clone()));
        }
        if let Some(id) = <$t>::from_hex($s) {
            assert_eq!(id.hex(), $s);
            assert_eq!(<$t>::parse(id.as_str()), Some(id.clone()));
        }
    )*};
}

/// Bearer tokens (API keys, session and enrolment tokens), ids, and the
/// names a request may carry (roles, permissions, policies): whatever
/// parses prints back as the same text.
pub fn token_ids(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let tok = auth::bearer(s).unwrap_or(s);
    if let Some(p) = auth::parse_token(tok) {
        assert_eq!(p.secret.token(&p.firm, &p.key), tok);
    }
    for prefix in [
        crate::people::SESSION_PREFIX,
        crate::people::ENROLMENT_PREFIX,
    ] {
        if let Some(p) = crate::people::parse_token(prefix, tok) {
            let text = format!(
                "{prefix}{}_{}_{}",
                p.firm.hex(),
                p.id_hex,
                p.secret.reveal()
            );
            assert_eq!(text, tok);
        }
    }
    if let Some((firm, session)) = crate::people::session_token_ids(tok) {
        assert!(tok.contains(firm.hex()));
        assert!(SessionId::parse(&session).is_some());
    }
    id_round_trip!(s, FirmId, ApiKeyId, RecordId, UserId, SessionId);
    if let Some(r) = Role::parse(s) {
        assert_eq!(r.as_str(), s);
    }
    if let Some(p) = Permission::parse(s) {
        assert_eq!(p.as_str(), s);
    }
    if let Some(c) = crate::limits::Class::parse(s) {
        assert_eq!(c.as_str(), s);
    }
    let _ = crate::people::MfaPolicy::parse(s);
}

/// One admin socket request line, as the server reads it; and the same
/// bytes as a response line, as `strongroomctl` reads it.
pub fn admin_line(data: &[u8]) {
    if data.len() <= crate::admin::MAX_LINE {
        match crate::admin::server::parse_request(data) {
            Ok(req) => {
                let text = serde_json::to_string(&req).expect("a request re-encodes");
                let again = crate::admin::server::parse_request(text.as_bytes())
                    .expect("a re-encoded request parses");
                assert_eq!((&again.cmd, &again.args), (&req.cmd, &req.args));
            }
            Err(resp) => {
                assert!(!resp.ok && resp.error.is_some());
                let _ = serde_json::to_vec(&resp).expect("a response encodes");
            }
        }
    }
    if let Ok(r) = serde_json::from_slice::<crate::admin::Response>(data) {
        let _ = serde_json::to_string(&r);
    }
}

/// The config file, and durations as it spells them.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = crate::config::Config::parse(text) {
        let _ = (cfg.audit.retention(), cfg.audit.purge_interval());
        let p = &cfg.people;
        assert!(p.session_idle_timeout() <= p.session_lifetime());
        assert!(p.lockout_duration() <= p.lockout_max());
        let _ = (p.invitation_ttl(), cfg.tls_paths(), cfg.tls_is_generated());
    }
    for line in text.lines() {
        if let Some(d) = crate::config::parse_duration(line) {
            assert!(d.as_secs() >= 1 && d.as_secs() <= 100 * 366 * 86_400);
            let secs = format!("{}s", d.as_secs());
            assert_eq!(crate::config::parse_duration(&secs), Some(d));
        }
    }
}

/// Envelopes as read back from storage, under a fixed key: opening junk
/// fails cleanly; sealing the input opens back to it, and any one changed
/// byte makes it fail.
pub fn envelope(data: &[u8]) {
    let key = SecretKey::from_bytes([7; 32]);
    if let Ok(v) = envelope::key_version(data) {
        assert_eq!(data[0], envelope::FORMAT_AES256GCM);
        assert_eq!(v.to_be_bytes(), data[1..5]);
    }
    let (aad, rest) = data.split_at(
        data.first()
            .map_or(0, |&n| usize::from(n % 8).min(data.len())),
    );
    let _ = envelope::open(&key, aad, rest);
    let version = rest
        .iter()
        .fold(0u32, |a, &b| a.rotate_left(5) ^ u32::from(b));
    let sealed = envelope::seal(&key, version, aad, rest).expect("seal");
    assert_eq!(envelope::key_version(&sealed), Ok(version));
    assert_eq!(envelope::open(&key, aad, &sealed).as_deref(), Ok(rest));
    let mut tampered = sealed.clone();
    tampered[data.len() % sealed.len()] ^= 0x80;
    assert!(envelope::open(&key, aad, &tampered).is_err());
}

/// Rows read back from a firm's database (grants, a record's clear
/// fields, a collection's schema) and the master key file, each from a
/// NUL-separated part of the input.
pub fn stored_rows(data: &[u8]) {
    let _ = crate::crypto::keyring::parse_key_bytes(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let mut next = || parts.next().unwrap_or("");
    let (id, role, allow, deny) = (next(), next(), next(), next());
    if let Ok((r, o)) = auth::keys::parse_grants(id, role, allow, deny) {
        assert_eq!(r.as_str(), role);
        assert!(o.allow_names().len() + o.deny_names().len() <= allow.len() + deny.len());
    }
    let clear = next();
    let _ = serde_json::from_str::<Map<String, Value>>(clear);
    if let Ok(s) = serde_json::from_str::<schema::Schema>(next()) {
        let _ = s.check();
    }
}

/// C2SP notes, checkpoints and purge receipts, as `verify-export` reads
/// them: parses, plus round trips through the matching writers, and a
/// note signed here opens to its text.
pub fn note(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = note_key();
    let verifier = note::parse_verifier_key(&note_verifier_key()).expect("own verifier key");
    // Hex case and base64 spelling may vary (as in Go's note package); the
    // key a verifier key names may not.
    if let Ok(v) = note::parse_verifier_key(text) {
        let again = note::verifier_key(&v.name, &v.public);
        assert_eq!(note::parse_verifier_key(&again), Ok(v));
    }
    let _ = note::open(text, &verifier);
    if let Ok((origin, size, root)) = note::parse_checkpoint(text) {
        let body = note::checkpoint_body(&origin, size, &root);
        assert_eq!(note::parse_checkpoint(&body), Ok((origin, size, root)));
    }
    if let Ok(r) = note::parse_purge_receipt(text) {
        assert_eq!(
            note::parse_purge_receipt(&note::purge_receipt_body(&r)),
            Ok(r)
        );
    }
    if text.ends_with('\n') {
        let signed = note::sign(NOTE_NAME, &key, text);
        assert_eq!(note::open(&signed, &verifier), Ok(text));
    }
    // A name the key could carry: its verifier key parses back.
    if !text.is_empty() && !text.contains('+') && !text.contains(char::is_whitespace) {
        let vk = note::verifier_key(text, &key.public());
        let v = note::parse_verifier_key(&vk).expect("a verifier key for a valid name");
        assert_eq!((v.name.as_str(), v.public), (text, key.public()));
    }
}

/// `verify-export` over JSON-lines events. A checkpoint note or purge
/// receipt given unsigned (no blank line) is signed here with the key
/// the export is checked against, so the checks behind the signatures are
/// reached too.
pub fn verify_export(data: &[u8]) {
    let key = note_key();
    let mut events = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let Ok(mut ev) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        for field in ["note", "receipt"] {
            if let Some(Value::String(s)) = ev.pointer_mut(&format!("/data/{field}")) {
                if !s.contains("\n\n") {
                    let body = if s.ends_with('\n') {
                        s.clone()
                    } else {
                        format!("{s}\n")
                    };
                    *s = note::sign(NOTE_NAME, &key, &body);
                }
            }
        }
        events.push(ev);
    }
    let _ = export::verify_export(&events, &note_verifier_key());
}

/// Reads 8 bytes as a u64, or 0 when the input has run out.
fn take_u64(data: &mut &[u8]) -> u64 {
    let n = data.len().min(8);
    let (head, rest) = data.split_at(n);
    *data = rest;
    let mut b = [0u8; 8];
    b[..n].copy_from_slice(head);
    u64::from_le_bytes(b)
}

/// Merkle proofs from outside (`index`, `size`, leaf, root, proof), and a
/// small honest tree in which only the true proof verifies.
pub fn merkle(data: &[u8]) {
    let mut d = data;
    let (a, b) = (take_u64(&mut d), take_u64(&mut d));
    let hashes: Vec<merkle::Hash> = d
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect();
    let (h0, h1) = (
        hashes.first().copied().unwrap_or_default(),
        hashes.get(1).copied().unwrap_or_default(),
    );
    let proof = hashes.get(2..).unwrap_or_default();
    let _ = merkle::verify_inclusion(a, b, &h0, proof, &h1);
    let _ = merkle::verify_consistency(a, b, &h0, &h1, proof);
    // A tree resumed after a purged prefix of `a` leaves.
    if let Ok(mut t) = merkle::MemoryTree::with_prefix(a, hashes.get(2..).unwrap_or_default()) {
        for h in hashes.iter().take(4) {
            let _ = t.push(*h);
        }
        let _ = merkle::root(&t, t.size());
    }
    // An honest tree of up to 64 leaves: the fuzzed proof verifies only
    // where it is the proof the tree gives.
    let size = b % 64 + 1;
    let mut tree = merkle::MemoryTree::new();
    for i in 0..size {
        tree.push(merkle::leaf_hash(&i.to_be_bytes()))
            .expect("push");
    }
    let root = merkle::root(&tree, size).expect("root");
    let index = a % size;
    let leaf = merkle::leaf_hash(&index.to_be_bytes());
    let honest = merkle::inclusion_proof(&tree, index, size).expect("inclusion proof");
    assert!(merkle::verify_inclusion(index, size, &leaf, &honest, &root));
    if merkle::verify_inclusion(index, size, &leaf, proof, &root) {
        assert_eq!(proof, honest.as_slice());
    }
    let old = index + 1;
    let old_root = merkle::root(&tree, old).expect("old root");
    let honest = merkle::consistency_proof(&tree, old, size).expect("consistency proof");
    assert!(merkle::verify_consistency(
        old, size, &old_root, &root, &honest
    ));
    if merkle::verify_consistency(old, size, &old_root, &root, proof) {
        assert_eq!(proof, honest.as_slice());
    }
}

/// A collection schema then a record body (two JSON values in a row):
/// schema checks, the split for storage, index text.
pub fn schema(data: &[u8]) {
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
    let Some(Ok(sv)) = values.next() else {
        return;
    };
    let Ok(sc) = serde_json::from_value::<schema::Schema>(sv) else {
        return;
    };
    let again: schema::Schema =
        serde_json::from_value(serde_json::to_value(&sc).expect("schema encodes"))
            .expect("schema decodes");
    assert_eq!(again, sc);
    if sc.check().is_err() {
        return;
    }
    let body = match values.next() {
        Some(Ok(v)) => v,
        _ => return,
    };
    let Ok(split) = schema::split(&sc, &body) else {
        return;
    };
    let obj = body.as_object().expect("a split body is an object");
    assert_eq!(split.clear.len() + split.sensitive.len(), obj.len());
    for (name, v) in &split.sensitive {
        assert!(sc.fields.get(name).is_some_and(|f| f.sensitive));
        assert_eq!(obj.get(name), Some(v));
    }
    for (name, text) in &split.index {
        let f = sc.fields.get(name).expect("indexed field is declared");
        assert!(f.indexed && !f.sensitive);
        assert_eq!(&schema::index_text(&split.clear[name]), text);
    }
    match sc.pii {
        schema::PiiPolicy::Reject => assert!(split.pii.is_empty()),
        schema::PiiPolicy::Flag => {
            for (name, v) in &split.clear {
                assert_eq!(obj.get(name), Some(v), "flag stores fields as sent");
            }
        }
        schema::PiiPolicy::Redact => {}
    }
}

/// PII scanning and redaction of free text: matches are in order, on
/// character boundaries and apart, and each is masked.
pub fn pii(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let found = pii::scan(text);
    let mut at = 0;
    for f in &found {
        assert!(f.start >= at && f.start < f.end && f.end <= text.len());
        assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
        at = f.end;
    }
    // Each match is replaced by its mask. (Re-scanning the redacted text
    // may still find a number: the scanner reads context, and a mask
    // changes a neighbour's context; see fuzz/seeds/pii/context-*.)
    let redacted = pii::redact(text, &found);
    let masks = found
        .iter()
        .filter(|f| redacted.contains(&f.kind.mask()))
        .count();
    assert_eq!(masks, found.len());
}

/// The backup repository's parsers: `<0><manifest note>`, `<1><page size
/// selector><WAL bytes>`, `<2><snapshot id or state path>`.
pub fn backup_repo(data: &[u8]) {
    use crate::backup::manifest::{Manifest, valid_path, valid_snapshot_id};
    use crate::store::firm::committed_prefix;
    const ID: &str = "20261201T061500.000Z-0a1b2c3d";
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            for m in [
                Manifest::peek(ID, text),
                Manifest::open(ID, text, &note_verifier_key()),
            ]
            .into_iter()
            .flatten()
            {
                // A parsed manifest names itself and only state files, and
                // its text parses back to the same files.
                assert_eq!(m.id, ID);
                assert!(m.files.iter().all(|f| valid_path(&f.path)));
                let again = Manifest::parse_text(ID, &m.text()).unwrap();
                let paths =
                    |m: &Manifest| m.files.iter().map(|f| f.path.clone()).collect::<Vec<_>>();
                assert_eq!(paths(&again), paths(&m));
            }
        }
        1 => {
            let Some((&ps, wal)) = rest.split_first() else {
                return;
            };
            let page = [512usize, 1024, 4096][usize::from(ps) % 3];
            let n = committed_prefix(wal, page);
            // Whole frames after the header, and the kept prefix keeps itself.
            assert!(n <= wal.len());
            assert!(n == 0 || (n - 32) % (24 + page) == 0);
            assert_eq!(committed_prefix(&wal[..n], page), n);
        }
        _ => {
            let Ok(s) = std::str::from_utf8(rest) else {
                return;
            };
            if valid_snapshot_id(s) {
                assert!(s.len() == 29 && !s.contains('/') && !s.contains(".."));
            }
            if valid_path(s) {
                assert!(!s.starts_with('/') && !s.contains("..") && !s.contains('\0'));
            }
        }
    }
}
