/**
 * Authenticated messages (docs/protocol.md 5, 5.2): the four user properties and the MAC
 *   hex(HMAC-SHA256(key, "robotd/1\n" || topic || "\n" || from || "\n" || seq || "\n" || ts || "\n" || payload))
 */
import { concat, fromHex, toHex, utf8 } from "./bytes";

/** The user properties of an authenticated message. */
export interface AuthProps {
  from: string;
  seq: string;
  ts: string;
  mac: string;
}

/** The exact bytes the MAC covers. */
export function macInput(topic: string, from: string, seq: string, ts: string, payload: Uint8Array): Uint8Array<ArrayBuffer> {
  return concat(utf8(`robotd/1\n${topic}\n${from}\n${seq}\n${ts}\n`), payload);
}

/** The MAC, 64 lowercase hex. */
export async function sign(key: CryptoKey, topic: string, from: string, seq: string, ts: string, payload: Uint8Array): Promise<string> {
  return toHex(await crypto.subtle.sign("HMAC", key, macInput(topic, from, seq, ts, payload)));
}

/** Canonical decimal u64 (5): `0` or `[1-9][0-9]*`, at most 2^64 - 1. */
export function isCanonicalU64(s: string): boolean {
  if (!/^(0|[1-9][0-9]{0,19})$/.test(s)) return false;
  return s.length < 20 || s <= "18446744073709551615";
}

/** The four properties of a received message: each exactly once and well-formed, else null. */
export function authProps(user: Record<string, string | string[]> | undefined): AuthProps | null {
  if (!user) return null;
  const get = (k: string): string | null => {
    const v = user[k];
    return typeof v === "string" ? v : null; // an array is a repeated property
  };
  const from = get("from");
  const seq = get("seq");
  const ts = get("ts");
  const mac = get("mac");
  if (from === null || seq === null || ts === null || mac === null) return null;
  if (!isCanonicalU64(seq) || !isCanonicalU64(ts) || !/^[0-9a-fA-F]{64}$/.test(mac)) return null;
  return { from, seq, ts, mac };
}

/** Verify a MAC over the bytes as received (constant time, by WebCrypto). */
export async function verify(key: CryptoKey, topic: string, p: AuthProps, payload: Uint8Array): Promise<boolean> {
  const mac = fromHex(p.mac);
  if (!mac || mac.length !== 32) return false;
  return crypto.subtle.verify("HMAC", key, mac, macInput(topic, p.from, p.seq, p.ts, payload));
}
