/** Pure helpers of the call screen: joystick mapping, goto status text, codec order. */

/** A drive command from a point relative to the pad's centre (y grows downwards, as on screen). */
export function joystickDrive(dx: number, dy: number, radius: number): { linear: number; angular: number } {
  let x = dx / radius;
  let y = dy / radius;
  const m = Math.hypot(x, y);
  if (m > 1) {
    x /= m;
    y /= m;
  }
  const r = (v: number) => Math.round(v * 1000) / 1000 + 0; // + 0 turns -0 into 0
  // up = forward (linear +), left = turn left (angular +)
  return { linear: r(-y), angular: r(-x) };
}

/** A goto response's status in words (section 8). */
export function gotoText(msg: { destination?: unknown; status?: unknown; progress?: unknown; detail?: unknown; reason?: unknown; waiting?: unknown }): string {
  const place = typeof msg.destination === "string" ? msg.destination : "?";
  const detail = typeof msg.detail === "string" && msg.detail !== "" ? msg.detail : null;
  switch (msg.status) {
    case "accepted":
      return `Going to ${place}`;
    case "moving": {
      const p = typeof msg.progress === "number" ? Math.round(msg.progress * 100) : 0;
      const w = msg.waiting === "obstacle" ? " (waiting: something is in the way)" : "";
      return `Going to ${place} — ${p} %${w}`;
    }
    case "arrived":
      return `Arrived at ${place}`;
    case "blocked":
      return `Blocked on the way to ${place}: ${detail ?? "something is in the way (a shut door?)"}`;
    case "cancelled":
      return `Stopped going to ${place}`;
    case "failed":
      return `Could not get to ${place}: ${detail ?? String(msg.reason ?? "failed")}`;
    case "rejected":
      return `The robot will not go to ${place}: ${detail ?? String(msg.reason ?? "refused")}`;
    default:
      return `${place}: ${String(msg.status)}`;
  }
}

/** The shape of RTCRtpCodec that matters here (no DOM types in proto). */
export interface Codec {
  mimeType: string;
  sdpFmtpLine?: string;
}

/**
 * H.264 only (plus retransmission), with Constrained Baseline 42e01f, packetization-mode=1
 * first (7.8: what the robot sends).
 */
export function h264Preferences<C extends Codec>(codecs: C[]): C[] {
  const h264 = codecs.filter((c) => c.mimeType.toLowerCase() === "video/h264");
  const rtx = codecs.filter((c) => c.mimeType.toLowerCase() === "video/rtx");
  const score = (c: C) => {
    const f = (c.sdpFmtpLine ?? "").toLowerCase();
    let s = 0;
    if (f.includes("profile-level-id=42e01f")) s += 2;
    if (f.includes("packetization-mode=1")) s += 1;
    return s;
  };
  const sorted = [...h264].sort((a, b) => score(b) - score(a));
  return sorted.length ? [...sorted, ...rtx] : [];
}
