/**
 * Client IDs of humans (docs/protocol.md 2.2): md5(E.164) by default, or the keyed
 * scheme HMAC-SHA256(deployment secret, E.164) truncated to 16 bytes.
 */
import { md5 } from "js-md5";
import { parsePhoneNumberFromString } from "libphonenumber-js";
import { toHex, utf8 } from "./bytes";

/** Why a typed phone number was refused, in words for the person typing it. */
export class PhoneNumberError extends Error {}

/**
 * The E.164 form of a typed number (`+48 555 555 555` -> `+48555555555`).
 * Numbers without a country code are refused rather than guessed (2.2).
 */
export function normaliseE164(typed: string): string {
  const t = typed.trim();
  if (t === "") throw new PhoneNumberError("Type your phone number, starting with + and the country code.");
  const plain = t.replace(/^00/, "+");
  if (!plain.startsWith("+")) {
    throw new PhoneNumberError("Start with + and the country code (for example +48 555 555 555).");
  }
  const n = parsePhoneNumberFromString(plain);
  if (!n || !n.isPossible()) {
    throw new PhoneNumberError("That is not a phone number we know; check the country code and the digits.");
  }
  return n.number;
}

/** md5(E.164) as 32 hex: the default human client ID. */
export function md5ClientId(e164: string): string {
  return md5(e164);
}

/** The keyed scheme: first 16 bytes of HMAC-SHA256(secret, E.164), as 32 hex. */
export async function keyedClientId(secret: Uint8Array<ArrayBuffer>, e164: string): Promise<string> {
  const key = await crypto.subtle.importKey("raw", secret, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = await crypto.subtle.sign("HMAC", key, utf8(e164));
  return toHex(new Uint8Array(mac).slice(0, 16));
}
