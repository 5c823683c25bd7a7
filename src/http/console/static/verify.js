// Verifies a firm's audit log in the browser, with WebCrypto only, so the
// user need not take the server's word for it:
// - the latest checkpoint (a C2SP signed note) against the appliance's
//   verifier key, pinned in this browser on first use (Ed25519);
// - every exported entry: its leaf hash recomputed from its fields, and the
//   hash chain (SHA-256);
// - the RFC 9162 Merkle root of the first tree_size leaves against the
//   signed checkpoint's root;
// - one entry's inclusion proof against that root.

const enc = new TextEncoder();
const DASH = '\u2014 ';

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export function unhex(s) {
  if (typeof s !== 'string' || s.length % 2 !== 0 || /[^0-9a-f]/.test(s)) {
    throw new Error('not lowercase hex');
  }
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function unbase64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export async function sha256(...parts) {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', concat(...parts)));
}

const nodeHash = (l, r) => sha256(Uint8Array.of(1), l, r);

/// `name+hash+base64(0x01 ‖ public key)`, its hash checked.
export async function parseVerifierKey(text) {
  // Names never contain '+'; the base64 key may.
  const t = text.trim();
  const i = t.indexOf('+');
  const j = t.indexOf('+', i + 1);
  if (i < 1 || j < 0) throw new Error('malformed verifier key');
  const name = t.slice(0, i);
  const hash = t.slice(i + 1, j);
  if (hash.length !== 8) throw new Error('malformed verifier key');
  const typed = unbase64(t.slice(j + 1));
  if (typed.length !== 33 || typed[0] !== 1) throw new Error('not an Ed25519 verifier key');
  const pub = typed.slice(1);
  const h = await sha256(enc.encode(name + '\n'), Uint8Array.of(1), pub);
  if (hex(h.slice(0, 4)) !== hash) throw new Error('the verifier key\'s hash does not match it');
  return { name, hash: unhex(hash), pub };
}

/// Opens a signed note: the text it signs, if a signature by `v` verifies.
export async function openNote(note, v) {
  const split = note.lastIndexOf('\n\n');
  if (split < 0) throw new Error('malformed note');
  const text = note.slice(0, split + 1);
  const key = await crypto.subtle.importKey('raw', v.pub, { name: 'Ed25519' }, false, ['verify']);
  for (const line of note.slice(split + 2).split('\n')) {
    if (!line.startsWith(DASH)) continue;
    const [name, b64] = line.slice(DASH.length).split(' ');
    if (name !== v.name) continue;
    const blob = unbase64(b64);
    if (blob.length !== 68 || !equal(blob.slice(0, 4), v.hash)) continue;
    if (await crypto.subtle.verify({ name: 'Ed25519' }, key, blob.slice(4), enc.encode(text))) {
      return text;
    }
  }
  return null;
}

export function parseCheckpoint(text) {
  const lines = text.split('\n');
  const size = Number(lines[1]);
  if (lines.length < 4 || !/^[0-9]+$/.test(lines[1] || '') || !Number.isSafeInteger(size)) {
    throw new Error('malformed checkpoint');
  }
  return { origin: lines[0], size, root: unbase64(lines[2]) };
}

function u32(n) {
  return Uint8Array.of((n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
}

function u64(n) {
  const hi = Math.floor(n / 2 ** 32);
  return concat(u32(hi), u32(n >>> 0));
}

const FIELDS = ['at', 'firm', 'actor', 'source_ip', 'request_id', 'action', 'resource',
  'outcome', 'decision', 'rule'];

/// The RFC 9162 leaf hash of an exported entry, from its fields.
export async function leafOf(d) {
  const parts = [enc.encode('SRAUDIT1'), u64(d.seq)];
  for (const f of FIELDS) {
    const b = enc.encode(d[f]);
    parts.push(u32(b.length), b);
  }
  const payload = unbase64(d.payload);
  parts.push(u32(payload.length), payload);
  return sha256(Uint8Array.of(0), ...parts);
}

/// The root of a tree given as perfect subtrees, largest first.
async function fold(stack) {
  if (stack.length === 0) return sha256();
  let r = stack[stack.length - 1].hash;
  for (let i = stack.length - 2; i >= 0; i--) r = await nodeHash(stack[i].hash, r);
  return r;
}

async function push(stack, hash) {
  let item = { size: 1, hash };
  while (stack.length && stack[stack.length - 1].size === item.size) {
    const left = stack.pop();
    item = { size: left.size * 2, hash: await nodeHash(left.hash, item.hash) };
  }
  stack.push(item);
}

/// The RFC 9162 root of a tree with these leaf hashes.
export async function merkleRoot(leafHashes) {
  const stack = [];
  for (const l of leafHashes) await push(stack, l);
  return fold(stack);
}

/// RFC 9162 §2.1.3.2: does `proof` take `leaf` at `index` to `root`?
export async function verifyInclusion(index, size, leaf, proof, root) {
  if (index >= size) return false;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      while (fn % 2 === 0 && fn !== 0) {
        fn = Math.floor(fn / 2);
        sn = Math.floor(sn / 2);
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && equal(r, root);
}

const PIN = (firm) => `strongroom.verifier-key.${firm}`;

/// Runs every check; `get(path)` fetches a firm route's body as text.
/// Returns the checks, each `{ name, ok, detail }`, in the order run.
export async function verifyLog(firm, get, seqWanted) {
  const checks = [];
  const add = (name, ok, detail) => checks.push({ name, ok, detail });
  const base = `/api/v1/audit/${firm}`;

  const server = JSON.parse(await get(`${base}/verify`));
  add('The server\'s own verification', server.ok === true, server.ok
    ? `${server.tree_size} entries verified by the appliance`
    : `the appliance reports entry ${server.first_bad_seq}: ${server.reason}`);

  const keyText = (await get(`${base}/verifier-key`)).trim();
  let v;
  try {
    v = await parseVerifierKey(keyText);
  } catch (e) {
    add('Verifier key', false, e.message);
    return checks;
  }
  const pinned = localStorage.getItem(PIN(firm));
  if (pinned === null) {
    localStorage.setItem(PIN(firm), keyText);
    add('Verifier key pinned', true, `first use: pinned ${keyText} (compare it with \`strongroomctl audit verifier-key\`)`);
  } else {
    add('Verifier key matches the pinned key', pinned === keyText,
      pinned === keyText ? keyText : `the server now offers ${keyText}, pinned was ${pinned}`);
    if (pinned !== keyText) return checks;
  }

  const note = await get(`${base}/checkpoint`);
  const body = await openNote(note, v);
  add('Checkpoint signature (Ed25519, in this browser)', body !== null,
    body !== null ? `signed by ${v.name}` : 'no valid signature by the pinned key');
  if (body === null) return checks;
  const cp = parseCheckpoint(body);
  add('Checkpoint names this firm', cp.origin.endsWith(`/${firm}`), cp.origin);

  const events = (await get(`${base}/export`)).split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
  const stack = [];
  let chain = new Uint8Array(32);
  let first = 0;
  const leaves = new Map();
  let bad = null;
  for (const ev of events) {
    if (ev.type === 'dev.strongroom.audit.purge') {
      const receipt = await openNote(ev.data.receipt, v);
      if (receipt === null) {
        bad = 'the purge receipt is not signed by the pinned key';
        break;
      }
      first = ev.data.before;
      chain = unhex(ev.data.chain);
      let left = first;
      for (const h of ev.data.prefix) {
        const size = 2 ** Math.floor(Math.log2(left));
        stack.push({ size, hash: unhex(h) });
        left -= size;
      }
      continue;
    }
    if (ev.type !== 'dev.strongroom.audit.entry') continue;
    const d = ev.data;
    if (d.seq >= cp.size) break;
    const leaf = await leafOf(d);
    if (hex(leaf) !== d.leaf_hash) {
      bad = `entry ${d.seq} (${d.action} on ${d.resource}): its fields do not hash to its recorded leaf; it was changed after it was written`;
      break;
    }
    chain = await sha256(chain, leaf);
    if (hex(chain) !== d.chain) {
      bad = `entry ${d.seq}: the hash chain breaks here (an entry before it is missing or reordered)`;
      break;
    }
    leaves.set(d.seq, leaf);
    await push(stack, leaf);
  }
  const counted = stack.reduce((n, s) => n + s.size, 0);
  if (bad === null && counted !== cp.size) bad = `the export holds ${counted} entries, the checkpoint ${cp.size}`;
  add(`Every entry's leaf hash and the hash chain (${counted - first} entries, in this browser)`, bad === null,
    bad ?? `entries ${first} to ${cp.size - 1} recomputed from their fields`);
  if (bad !== null) return checks;
  const root = await fold(stack);
  add('Merkle tree root equals the signed checkpoint\'s', equal(root, cp.root),
    `tree of ${cp.size} entries, root ${hex(cp.root)}`);

  const seq = seqWanted !== undefined && seqWanted !== null && seqWanted < cp.size ? seqWanted : cp.size - 1;
  const leaf = leaves.get(seq);
  if (leaf === undefined) {
    add(`Inclusion proof of entry ${seq}`, false, 'that entry is not in the export');
    return checks;
  }
  const proof = JSON.parse(await get(`${base}/proof/inclusion?seq=${seq}&size=${cp.size}`));
  const ok = await verifyInclusion(seq, cp.size, leaf, proof.hashes.map(unhex), cp.root);
  add(`Inclusion proof of entry ${seq} against the signed checkpoint`, ok,
    `${proof.hashes.length} hashes; leaf ${hex(leaf)} recomputed in this browser`);
  return checks;
}
