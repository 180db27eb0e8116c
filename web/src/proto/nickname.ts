/** The nickname rule (docs/protocol.md 6.3), applied before sending so a bad one costs no attempt. */

const BIDI = /[\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]/g;
// C0, DEL, C1
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/** The nickname as it will be stored, or an error message for the person typing it. */
export function cleanNickname(typed: string): { ok: true; nickname: string } | { ok: false; error: string } {
  const t = typed.trim();
  if (CONTROL.test(t)) return { ok: false, error: "The nickname cannot contain control characters." };
  const n = [...t.replace(BIDI, "")].length;
  if (n < 1) return { ok: false, error: "Type a nickname." };
  if ([...t].length > 64) return { ok: false, error: "The nickname is at most 64 characters." };
  return { ok: true, nickname: t.replace(BIDI, "") };
}
