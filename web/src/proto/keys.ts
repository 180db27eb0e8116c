/**
 * The key schedule (docs/protocol.md 5.3), all in WebCrypto.
 *
 * WebCrypto cannot use an HMAC key as an HKDF base key, so the owner key K is derived
 * once as bytes and imported twice, both non-extractable: as an HMAC key (for the MACs
 * of invites) and as an HKDF key (to derive each call's Ks). The bytes are then dropped.
 */
import { concat, fromHex, utf8 } from "./bytes";

/** K in its two non-extractable forms. */
export interface OwnerKey {
  mac: CryptoKey;
  hkdf: CryptoKey;
}

/** info of K: `"robotd owner v1\n" || robotId || "\n" || phoneId`. */
export function ownerInfo(robotId: string, phoneId: string): Uint8Array<ArrayBuffer> {
  return utf8(`robotd owner v1\n${robotId}\n${phoneId}`);
}

async function hkdfBits(base: CryptoKey, salt: Uint8Array<ArrayBuffer>, info: Uint8Array<ArrayBuffer>, bytes: number) {
  const bits = await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, base, bytes * 8);
  return new Uint8Array(bits);
}

/** The 32 bytes of K = HKDF(IKM = S, salt = pairing nonce, info = ownerInfo). */
export async function deriveOwnerKeyBytes(
  secret: Uint8Array<ArrayBuffer>,
  nonce: Uint8Array<ArrayBuffer>,
  robotId: string,
  phoneId: string,
): Promise<Uint8Array<ArrayBuffer>> {
  const base = await crypto.subtle.importKey("raw", secret, "HKDF", false, ["deriveBits"]);
  return hkdfBits(base, nonce, ownerInfo(robotId, phoneId), 32);
}

/** Import 32 bytes of K as the two non-extractable keys, and wipe the bytes. */
export async function importOwnerKey(k: Uint8Array<ArrayBuffer>): Promise<OwnerKey> {
  const mac = await hmacKey(k);
  const hkdf = await crypto.subtle.importKey("raw", k, "HKDF", false, ["deriveBits"]);
  k.fill(0);
  return { mac, hkdf };
}

/** A non-extractable HMAC-SHA256 key for signing and verifying. */
export function hmacKey(raw: Uint8Array<ArrayBuffer>): Promise<CryptoKey> {
  return crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
}

/** The call salt: hexdecode(sessionId) || robotNonce (32 bytes). */
function callSalt(sessionId: string, robotNonce: string): Uint8Array<ArrayBuffer> {
  const a = fromHex(sessionId);
  const b = fromHex(robotNonce);
  if (!a || a.length !== 16 || !b || b.length !== 16) throw new Error("sessionId and robotNonce must be 32 hex each");
  return concat(a, b);
}

/** The 32 bytes of Ks = HKDF(IKM = K, salt = sessionId || robotNonce, "robotd session v1"). */
export function deriveSessionKeyBytes(k: CryptoKey, sessionId: string, robotNonce: string): Promise<Uint8Array<ArrayBuffer>> {
  return hkdfBits(k, callSalt(sessionId, robotNonce), utf8("robotd session v1"), 32);
}

/** Ks as a non-extractable HMAC key (its bytes are wiped). */
export async function deriveSessionKey(k: CryptoKey, sessionId: string, robotNonce: string): Promise<CryptoKey> {
  const bytes = await deriveSessionKeyBytes(k, sessionId, robotNonce);
  const key = await hmacKey(bytes);
  bytes.fill(0);
  return key;
}
