// thinserve browser terminal: this browser's key, and the proof of it.
//
// The page keeps one ECDSA P-256 key pair in IndexedDB (database
// "thinserve-terminal", store "key", record "terminal").  Its private half is
// not extractable, so the terminal's identity cannot be copied out of the
// browser; clearing the site's data makes a new key, hence a new terminal.
//
// With the WebSocket subprotocol thinserve-key.v1 the server first sends a
// 32-byte nonce; the page answers with one binary message:
//   u16 big-endian length of the public key, the public key (SPKI DER),
//   the 64-byte signature (r || s) of "thinserve-terminal-key-proof-v1\0" + nonce.
// The terminal's id is "key-" and the first 26 characters of the key's
// fingerprint: SHA-256 of the SPKI in lower-case base32, without padding.

export const KEY_PROTOCOL = "thinserve-key.v1";

const DB_NAME = "thinserve-terminal";
const STORE = "key";
const RECORD = "terminal";
const KEY_ALGORITHM = { name: "ECDSA", namedCurve: "P-256" };
const SIGNATURE_ALGORITHM = { name: "ECDSA", hash: "SHA-256" };
const CONTEXT = new TextEncoder().encode("thinserve-terminal-key-proof-v1\0");
const NONCE_BYTES = 32;
const ID_CHARS = 26;
const BASE32 = "abcdefghijklmnopqrstuvwxyz234567";

// Why this browser cannot keep a key, or "" when it can.
export function keyUnavailable() {
  if (!window.isSecureContext) {
    return "the page is not a secure context (use https)";
  }
  if (!window.crypto?.subtle) {
    return "the browser has no WebCrypto";
  }
  if (!window.indexedDB) {
    return "the browser has no IndexedDB";
  }
  return "";
}

// The terminal's key, made and stored on first use: { privateKey, spki, id }.
export async function loadKey() {
  const db = await openDatabase();
  try {
    let pair = await request(db.transaction(STORE).objectStore(STORE).get(RECORD));
    if (!pair) {
      const made = await crypto.subtle.generateKey(KEY_ALGORITHM, false, ["sign"]);
      pair = { privateKey: made.privateKey, publicKey: made.publicKey };
      try {
        await add(db, pair);
      } catch (error) {
        if (error?.name !== "ConstraintError") {
          throw error;
        }
        // Another tab stored its key first: this terminal is that one.
        pair = await request(db.transaction(STORE).objectStore(STORE).get(RECORD));
      }
    }
    const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", spki));
    return { privateKey: pair.privateKey, spki, id: "key-" + base32(digest).slice(0, ID_CHARS) };
  } finally {
    db.close();
  }
}

// The answer to the server's nonce (an ArrayBuffer), as bytes to send.
export async function keyProof(key, nonce) {
  const bytes = new Uint8Array(nonce);
  if (bytes.length !== NONCE_BYTES) {
    throw new Error(`the server sent a ${bytes.length}-byte nonce, not ${NONCE_BYTES}`);
  }
  const message = new Uint8Array(CONTEXT.length + bytes.length);
  message.set(CONTEXT);
  message.set(bytes, CONTEXT.length);
  const signature = new Uint8Array(
    await crypto.subtle.sign(SIGNATURE_ALGORITHM, key.privateKey, message));
  const proof = new Uint8Array(2 + key.spki.length + signature.length);
  new DataView(proof.buffer).setUint16(0, key.spki.length);
  proof.set(key.spki, 2);
  proof.set(signature, 2 + key.spki.length);
  return proof;
}

function base32(bytes) {
  let text = "";
  let value = 0;
  let bits = 0;
  for (const byte of bytes) {
    value = ((value << 8) | byte) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      text += BASE32[(value >>> bits) & 31];
    }
  }
  return bits > 0 ? text + BASE32[(value << (5 - bits)) & 31] : text;
}

function openDatabase() {
  return new Promise((resolve, reject) => {
    const opening = indexedDB.open(DB_NAME, 1);
    opening.onupgradeneeded = () => opening.result.createObjectStore(STORE);
    opening.onsuccess = () => resolve(opening.result);
    opening.onerror = () => reject(opening.error);
  });
}

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function add(db, pair) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).add(pair, RECORD);
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error);
  });
}
