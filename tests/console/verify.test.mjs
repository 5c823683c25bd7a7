// The console's in-browser verifier (src/http/console/static/verify.js)
// against the RFC 6962/9162 Merkle vectors and the C2SP signed-note vectors
// in tests/vectors/merkle_vectors.json, under Node.js's WebCrypto.
// Run by tests/it/console.rs; prints "OK <counts>" or throws.

import { readFileSync } from 'node:fs';
import {
  merkleRoot, verifyInclusion, parseVerifierKey, openNote, parseCheckpoint, sha256, unhex, hex,
} from '../../src/http/console/static/verify.js';

const v = JSON.parse(readFileSync(new URL('../vectors/merkle_vectors.json', import.meta.url), 'utf8'));
const leafHash = (h) => sha256(Uint8Array.of(0), unhex(h));
const fail = (m) => {
  throw new Error(m);
};

let n = 0;
const leaves = await Promise.all(v.leaves.map(leafHash));
for (const [size, want] of Object.entries(v.roots_by_size)) {
  const got = hex(await merkleRoot(leaves.slice(0, Number(size))));
  if (got !== want) fail(`root of ${size}: ${got} != ${want}`);
  n++;
}
for (const c of v.inclusion) {
  const ok = await verifyInclusion(c.leaf_index, c.tree_size, await leafHash(c.leaf_input),
    c.proof.map(unhex), unhex(c.root));
  if (!ok) fail(`inclusion ${c.leaf_index}/${c.tree_size} rejected`);
  n++;
}
for (const p of v.probes.inclusion) {
  let ok;
  try {
    ok = await verifyInclusion(p.leaf_index, p.tree_size, unhex(p.leaf_hash), p.proof.map(unhex), unhex(p.root))
      && unhex(p.root).length === 32 && p.proof.every((h) => h.length === 64);
  } catch {
    ok = false;
  }
  if (ok === p.want_err) fail(`probe ${p.file}: accepted=${ok}`);
  n++;
}
let notes = 0;
for (const s of v.signed_notes) {
  let verified;
  try {
    verified = (await openNote(s.note, await parseVerifierKey(s.vkey))) !== null;
  } catch {
    verified = false;
  }
  if (verified !== s.want_verified) fail(`note from ${s.source}: verified=${verified}`);
  notes++;
}
for (const c of v.checkpoint_examples_unverifiable) {
  const body = c.note.slice(0, c.note.lastIndexOf('\n\n') + 1);
  const cp = parseCheckpoint(body);
  if (cp.origin !== c.origin || cp.size !== c.size) fail(`checkpoint ${c.source}`);
}
console.log(`OK ${n} Merkle vectors, ${notes} signed notes`);
