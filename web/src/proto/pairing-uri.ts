/** The pairing URI (docs/protocol.md 6.2): `robotd://pair?v=1&robot=..&secret=..&broker=..`. */
import { isId } from "./bytes";

/** A parsed pairing URI. `secret` is S, the 16-byte pairing secret. */
export interface PairingUri {
  robot: string;
  secret: Uint8Array<ArrayBuffer>;
  broker: string;
}

/** Why a pairing URI was refused, in words for the person who pasted it. */
export class PairingUriError extends Error {}

const B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/** RFC 4648 base32, any case, with or without `=` padding; null if not base32. */
export function base32Decode(s: string): Uint8Array<ArrayBuffer> | null {
  const t = s.toUpperCase().replace(/=+$/, "");
  let bits = 0;
  let acc = 0;
  const out: number[] = [];
  for (const c of t) {
    const v = B32.indexOf(c);
    if (v < 0) return null;
    acc = (acc << 5) | v;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >> bits) & 0xff);
    }
  }
  return new Uint8Array(out);
}

/**
 * Parse a pairing URI. Parameters may come in any order and unknown ones are ignored;
 * the secret may be lowercase or padded (people type it). Refused: another scheme, `v`
 * not 1, `robot` not a client ID, a secret that is not 16 bytes, a repeated parameter.
 */
export function parsePairingUri(text: string): PairingUri {
  const t = text.trim();
  const prefix = "robotd://pair?";
  if (t.slice(0, prefix.length).toLowerCase() !== prefix) {
    throw new PairingUriError("This is not a robot pairing link (it should start with robotd://pair?).");
  }
  const q = new URLSearchParams(t.slice(prefix.length));
  const one = (name: string): string | null => {
    const all = q.getAll(name);
    if (all.length > 1) throw new PairingUriError(`The pairing link has "${name}" twice.`);
    return all.length === 1 ? all[0] : null;
  };
  const v = one("v");
  if (v !== "1") throw new PairingUriError(`The pairing link is version ${v ?? "(none)"}; this app knows version 1.`);
  const robot = one("robot");
  if (robot === null || !isId(robot)) {
    throw new PairingUriError("The pairing link's robot ID is not 32 lowercase hex characters.");
  }
  const secretText = one("secret");
  const secret = secretText === null ? null : base32Decode(secretText);
  if (secret === null || secret.length !== 16 || secretText!.replace(/=+$/, "").length !== 26) {
    throw new PairingUriError("The pairing link's secret is not 26 base32 characters (16 bytes); copy it again.");
  }
  const broker = one("broker") ?? "";
  return { robot, secret, broker };
}
