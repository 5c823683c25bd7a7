#!/usr/bin/env python3
"""Writes the seed inputs under fuzz/seeds/<target>/ from realistic inputs
(the shipped config, request bodies the integration tests send, C2SP note
vectors, a small export that verifies). Crash reproducers are added by hand
as fuzz/seeds/<target>/crash-*; this script leaves them alone."""
import base64
import hashlib
import json
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(ROOT, "seeds")


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def sha(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def b64(b):
    return base64.b64encode(b).decode()


CT = "application/json"
SCHEMA = {
    "fields": {
        "name": {"type": "string", "indexed": True, "required": True, "subject": True},
        "ssn": {"type": "string", "sensitive": True},
        "notes": {"type": "string"},
        "visits": {"type": "integer"},
    },
    "pii": "redact",
}
RECORD = {"name": "Ann Archer", "ssn": "123-45-6789", "visits": 1,
          "notes": "call +44 20 7946 0958 or ann@example.com, card 4111 1111 1111 1111"}
BODIES = [
    RECORD,
    SCHEMA,
    {"name": "ci", "role": "operator", "allow": ["records:read"], "deny": [], "expires_at": "2027-01-01T00:00:00Z"},
    {"login": "ann", "password": "correct horse battery staple", "code": "123456"},
    {"token": "sre_" + "a" * 24 + "_" + "b" * 16 + "_" + "c" * 64, "password": "pw"},
    {"token": "sre_" + "a" * 24 + "_" + "b" * 16 + "_" + "c" * 64, "code": "654321"},
    {"current_password": "old pw", "new_password": "new pw"},
    {"current_password": "old pw"},
    {"code": "123456"},
    {"login": "bob", "display_name": "Bob", "role": "viewer", "allow": [], "deny": ["records:write"]},
    {"display_name": "Bob B", "role": "admin", "allow": None},
    {"value": "s3cret"},
    {"current_password": "old pw"},
    {"display_name": "Acme LLP", "contact_email": "it@acme.example", "mfa_policy": "required"},
]
for i, b in enumerate(BODIES):
    put("api_json", f"body-{i:02}", bytes([i]) + f"{CT}; charset=utf-8\n".encode() + json.dumps(b).encode())
put("api_json", "numbers", b"\x00" + CT.encode() + b"\n" + b'{"a":[1,-0,1.5,1e-7,18446744073709551615,0.30000000000000004,5e-324]}')

for i, q in enumerate([
    "from=0&limit=50&since=2026-11-23T10:00:00Z&until=2026-11-24T10:00:00.5Z&actor=key_0123456789abcdef",
    "seq=3&size=10", "from=1&to=9", "after=rec_0123456789abcdef01234567&limit=10&name=Ann%20Archer",
    "since=2026-11-23T10:00:00%2B05:00",
    # Edges of the representable years, fractional and offset.
    "until=9999-12-30T23:59:59.5Z", "since=9999-12-30T23:59:59-01:00", "since=0000-01-01T00:00:00%2B01:00",
]):
    put("api_query", f"query-{i}", q)

F, K, S = "0123456789abcdef01234567", "89abcdef01234567", "0123456789abcdef" * 4
for i, t in enumerate([f"sr_{F}_{K}_{S}", f"Bearer sr_{F}_{K}_{S}", f"srs_{F}_{K}_{S}", f"sre_{F}_{K}_{S}",
                       f"frm_{F}", f"rec_{F}", f"usr_{K}", "key_" + K, "ses_" + K, "records:read_sensitive",
                       "owner", "required_for_admins"]):
    put("token_ids", f"tok-{i:02}", t)

for i, l in enumerate(['{"v":1,"cmd":"status","args":{}}\n', '{"v":1,"cmd":"firm-create","args":{"name":"acme"}}',
                       '{"v":2,"cmd":"status"}\n', '{"v":1,"ok":false,"error":{"code":"timeout","message":"x"}}',
                       '{"v":1,"ok":true,"result":{"firms":[{"id":"frm_0","state":"active"}]}}']):
    put("admin_line", f"line-{i}", l)

with open(os.path.join(ROOT, "..", "config", "strongroom.toml")) as f:
    put("config", "shipped.toml", f.read())
put("config", "small.toml", 'version = 1\n[storage]\nstate_dir = "/var/lib/strongroom"\n[audit]\nretention = "90d"\n'
    '[people]\nsession_lifetime = "12h"\nsession_idle_timeout = "15m"\n[metrics]\nlisten = "127.0.0.1:9464"\n'
    '[log]\nlevel = "info,strongroom=debug"\n')
put("config", "durations", "90d\n12h\n30m\n10s\n0s\n3162240000s\n")

put("envelope", "short", b"\x03ctx\x01\x00\x00\x00\x2a" + bytes(12) + b"hello" + bytes(16))
put("envelope", "empty", b"")
put("envelope", "plain", b"\x00" + b"some secret payload")

put("stored_rows", "grants", "key_0123456789abcdef\0operator\0[\"records:read\"]\0[\"keys:create\"]\0"
    + json.dumps(RECORD) + "\0" + json.dumps(SCHEMA))
put("stored_rows", "master-hex", "ab" * 32 + "\n")
put("stored_rows", "master-raw", bytes(range(32)))

VEC = json.load(open(os.path.join(ROOT, "..", "tests", "vectors", "merkle_vectors.json")))
for i, case in enumerate(VEC["signed_notes"]):
    put("note", f"vector-note-{i}", case["note"])
    put("note", f"vector-vkey-{i}", case["vkey"])
root = bytes(range(32))
put("note", "checkpoint", f"strongroom/abc/frm_1\n42\n{b64(root)}\n")
put("note", "receipt", f"strongroom/abc/frm_1\npurge-receipt\nbefore 12\nchain {b64(bytes([1]*32))}\n"
    f"tree 40 {b64(bytes([2]*32))}\ncutoff 2026-11-22T10:00:00Z\n")


def leaf_hash(b):
    return sha(b"\x00", b)


def node_hash(l, r):
    return sha(b"\x01", l, r)


FIELDS = ["at", "firm", "actor", "source_ip", "request_id", "action", "resource", "outcome", "decision", "rule"]


def entry(seq, chain, **kw):
    d = {k: kw.get(k, f"{k}-{seq}") for k in FIELDS}
    payload = b"sealed"
    canon = b"SRAUDIT1" + struct.pack(">Q", seq)
    for k in FIELDS:
        v = d[k].encode()
        canon += struct.pack(">I", len(v)) + v
    canon += struct.pack(">I", len(payload)) + payload
    leaf = leaf_hash(canon)
    chain = sha(chain, leaf)
    d.update(seq=seq, payload=b64(payload), leaf_hash=leaf.hex(), chain=chain.hex())
    ev = {"specversion": "1.0", "id": f"frm_1/{seq}", "source": "s", "type": "dev.strongroom.audit.entry",
          "datacontenttype": "application/json", "data": d}
    return ev, leaf, chain


def checkpoint(size, root):
    return {"specversion": "1.0", "type": "dev.strongroom.audit.checkpoint",
            "data": {"tree_size": size, "note": f"strongroom/abc/frm_1\n{size}\n{b64(root)}\n"}}


def lines(evs):
    return "\n".join(json.dumps(e) for e in evs) + "\n"


# Two entries from the start: root = node(leaf0, leaf1).
e0, l0, c0 = entry(0, bytes(32), at="2026-11-22T10:00:00Z")
e1, l1, c1 = entry(1, c0)
put("verify_export", "two-entries", lines([e0, e1, checkpoint(2, node_hash(l0, l1))]))
put("verify_export", "empty", lines([checkpoint(0, sha())]))
# After a purge of 3 entries (prefix nodes: level 1 index 0, level 0 index 2), one more.
p1, p0, chain = bytes([5] * 32), bytes([6] * 32), bytes([9] * 32)
r3 = node_hash(p1, p0)
purge = {"specversion": "1.0", "type": "dev.strongroom.audit.purge",
         "data": {"before": 3, "chain": chain.hex(), "prefix": [p1.hex(), p0.hex()],
                  "receipt": f"strongroom/abc/frm_1\npurge-receipt\nbefore 3\nchain {b64(chain)}\n"
                             f"tree 3 {b64(r3)}\ncutoff 2026-11-22T10:00:00Z\n"}}
e3, l3, _ = entry(3, chain)
put("verify_export", "purged", lines([purge, e3, checkpoint(4, node_hash(p1, node_hash(p0, l3)))]))

for i, (a, b, n) in enumerate([(3, 10, 4), (0, 1, 0), (5, 7, 3), (3, 3, 2)]):
    put("merkle", f"proof-{i}", struct.pack("<QQ", a, b) + b"".join(bytes([j + 1] * 32) for j in range(n + 2)))

put("schema", "ann", json.dumps(SCHEMA) + json.dumps(RECORD))
put("schema", "flag", json.dumps(dict(SCHEMA, pii="flag", allow_unknown=True)) + json.dumps(dict(RECORD, extra=[{"ip": "10.0.0.1"}])))
put("schema", "reject", json.dumps(dict(SCHEMA, pii="reject", retention_class="7y-legal")) + '{"name":"Bob","visits":2}')

for i, t in enumerate([RECORD["notes"], "ssn 123-45-6789; iban GB82 WEST 1234 5698 7654 32 (ok)",
                       "server 192.168.1.20 and fe80::1:2, call (555) 123-4567 or 555.123.4567",
                       "version 1.2.3, date 2026-11-23, id a1b2c3d4e5f6, amount 1234567890123"]):
    put("pii", f"text-{i}", t)

# Backups: a manifest note (the signature line need not verify for peek),
# a WAL of two frames with SQLite's checksums (the second a commit), and
# the validators' inputs.
MANIFEST = {"format": "strongroom-backup/1", "id": "20261201T061500.000Z-0a1b2c3d",
            "appliance_id": "abc", "version": "0.1.0",
            "started_at": "2026-12-01T06:15:00Z", "finished_at": "2026-12-01T06:15:01Z",
            "files": [{"path": "registry.db", "size": 4096, "list": "00" * 32, "chunks": 1},
                      {"path": "firms/frm_0123456789abcdef01234567.db", "size": 8192,
                       "list": "11" * 32, "chunks": 2}],
            "firms": [{"id": "frm_0123456789abcdef01234567", "state": "active",
                       "audit": {"size": 3, "root": "22" * 32}, "writer_pause_us": 40}],
            "system_log": {"size": 1, "root": "33" * 32}}
put("backup_repo", "manifest",
    b"\x00" + f"strongroom/backup/v1\n{json.dumps(MANIFEST, separators=(',', ':'))}\n\n"
    f"\u2014 strongroom/abc {b64(bytes(68))}\n".encode())


def wal_sum(data, s0=0, s1=0):
    for i in range(0, len(data), 8):
        x0, x1 = struct.unpack(">II", data[i:i + 8])
        s0 = (s0 + x0 + s1) & 0xFFFFFFFF
        s1 = (s1 + x1 + s0) & 0xFFFFFFFF
    return s0, s1


def wal(page, frames):
    head = struct.pack(">IIIIII", 0x377F0683, 3007000, page, 0, 0x01020304, 0x05060708)
    s = wal_sum(head)
    out = head + struct.pack(">II", *s)
    for n, (pgno, commit) in enumerate(frames):
        body = bytes([n + 1]) * page
        fh = struct.pack(">IIII", pgno, commit, 0x01020304, 0x05060708)
        s = wal_sum(fh[:8], *s)
        s = wal_sum(body, *s)
        out += fh + struct.pack(">II", *s) + body
    return out


put("backup_repo", "wal-512", b"\x01\x00" + wal(512, [(1, 0), (2, 2)]))
put("backup_repo", "wal-1024-torn", b"\x01\x01" + wal(1024, [(1, 1), (3, 3)])[:-100])
put("backup_repo", "id", b"\x02" + b"20261201T061500.000Z-0a1b2c3d")
put("backup_repo", "path", b"\x02" + b"firms/frm_0123456789abcdef01234567.db-wal")
