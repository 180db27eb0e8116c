import { describe, expect, it } from "vitest";
import { gotoText, h264Preferences, joystickDrive } from "../src/proto/control";
import { OutsideCounter, RisingCheck, SessionWindow } from "../src/proto/seq";
import { cleanNickname } from "../src/proto/nickname";

describe("joystick", () => {
  it("up is forward, left is turn left, clamped to 1", () => {
    expect(joystickDrive(0, -50, 100)).toEqual({ linear: 0.5, angular: 0 });
    expect(joystickDrive(-100, 0, 100)).toEqual({ linear: 0, angular: 1 });
    expect(joystickDrive(0, 300, 100)).toEqual({ linear: -1, angular: 0 });
    const d = joystickDrive(300, -300, 100);
    expect(Math.hypot(d.linear, d.angular)).toBeCloseTo(1, 2);
    expect(d.angular).toBeLessThan(0);
    expect(JSON.stringify(joystickDrive(0, 0, 100))).toBe('{"linear":0,"angular":0}');
  });
});

describe("goto status text", () => {
  it("speaks the stream", () => {
    expect(gotoText({ destination: "kitchen", status: "moving", progress: 0.4 })).toBe("Going to kitchen — 40 %");
    expect(gotoText({ destination: "kitchen", status: "arrived" })).toBe("Arrived at kitchen");
    expect(gotoText({ destination: "bedroom", status: "blocked" })).toBe(
      "Blocked on the way to bedroom: something is in the way (a shut door?)",
    );
    expect(gotoText({ destination: "bedroom", status: "blocked", detail: "the bedroom door is shut" })).toBe(
      "Blocked on the way to bedroom: the bedroom door is shut",
    );
  });
});

describe("codec preferences", () => {
  it("keeps H.264 (42e01f, mode 1 first) and rtx only", () => {
    const c = [
      { mimeType: "video/VP8" },
      { mimeType: "video/H264", sdpFmtpLine: "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f" },
      { mimeType: "video/rtx", sdpFmtpLine: "apt=96" },
      { mimeType: "video/H264", sdpFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f" },
      { mimeType: "video/H264", sdpFmtpLine: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f" },
      { mimeType: "video/AV1" },
    ];
    const p = h264Preferences(c);
    expect(p.map((x) => x.mimeType)).toEqual(["video/H264", "video/H264", "video/H264", "video/rtx"]);
    expect(p[0].sdpFmtpLine).toContain("packetization-mode=1;profile-level-id=42e01f");
    expect(h264Preferences([{ mimeType: "video/VP8" }])).toEqual([]);
  });
});

describe("sequence numbers (5.5)", () => {
  it("outside calls: max(previous + 1, now)", () => {
    const c = new OutsideCounter();
    expect(c.next(1000)).toBe(1000);
    expect(c.next(1000)).toBe(1001);
    expect(c.next(500)).toBe(1002);
    expect(c.next(5000)).toBe(5000);
  });
  it("rising check", () => {
    const r = new RisingCheck();
    expect(r.accept("5")).toBe(true);
    expect(r.accept("5")).toBe(false);
    expect(r.accept("4")).toBe(false);
    expect(r.accept("6")).toBe(true);
  });
  it("the 64-wide session window", () => {
    const w = new SessionWindow();
    expect(w.accept("1")).toBe(true);
    expect(w.accept("1")).toBe(false);
    expect(w.accept("100")).toBe(true);
    expect(w.accept("37")).toBe(true);
    expect(w.accept("37")).toBe(false);
    expect(w.accept("36")).toBe(false); // 100 - 36 = 64
    expect(w.accept("99")).toBe(true);
  });
});

describe("nickname (6.3)", () => {
  it("trims, removes bidi overrides, refuses control characters and long ones", () => {
    expect(cleanNickname("  Alice ")).toEqual({ ok: true, nickname: "Alice" });
    expect(cleanNickname("Al\u202eice")).toEqual({ ok: true, nickname: "Alice" });
    expect(cleanNickname("A\nB").ok).toBe(false);
    expect(cleanNickname("   ").ok).toBe(false);
    expect(cleanNickname("x".repeat(65)).ok).toBe(false);
    expect(cleanNickname("x".repeat(64)).ok).toBe(true);
  });
});
