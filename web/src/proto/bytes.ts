/** Byte helpers shared by the protocol code (docs/protocol.md section 1: hex is lowercase). */

const enc = new TextEncoder();

/** UTF-8 bytes of a string. */
export function utf8(s: string): Uint8Array<ArrayBuffer> {
  return enc.encode(s) as Uint8Array<ArrayBuffer>;
}

/** Lowercase hex of bytes. */
export function toHex(b: Uint8Array | ArrayBuffer): string {
  const u = b instanceof Uint8Array ? b : new Uint8Array(b);
  let s = "";
  for (const x of u) s += x.toString(16).padStart(2, "0");
  return s;
}

/** Bytes of an even-length hex string (either case), or null if it is not hex. */
export function fromHex(h: string): Uint8Array<ArrayBuffer> | null {
  if (h.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(h)) return null;
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Concatenation of byte strings. */
export function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** `n` bytes from the platform's cryptographically secure generator (2.4). */
export function randomBytes(n: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return b;
}

/** 32 lowercase hex from 16 random bytes: session IDs, nonces, MQTT client identifiers. */
export function randomHex16(): string {
  return toHex(randomBytes(16));
}

/** A client ID, session ID or nonce: exactly 32 lowercase hex (2.1). */
export const ID_RE = /^[0-9a-f]{32}$/;

export function isId(s: string): boolean {
  return ID_RE.test(s);
}

/** Constant-time comparison of two strings of equal length (5.2). */
export function constantTimeEqual(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return d === 0;
}
