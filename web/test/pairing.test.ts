// The pairing flow (6.3-6.5) against a fake broker link that plays the robot.
import { describe, expect, it, vi } from "vitest";
import { fromHex, toHex, utf8 } from "../src/proto/bytes";
import { deriveOwnerKeyBytes, hmacKey } from "../src/proto/keys";
import { sign, verify, authProps } from "../src/proto/mac";
import { OutsideCounter } from "../src/proto/seq";
import { pair } from "../src/app/pairing";
import type { Incoming, Link } from "../src/app/link";
import type { Me } from "../src/app/store";

const ROBOT = "0123456789abcdef0123456789abcdef";
const ME: Me = { e164: "+48555555555", nickname: "Alice", phoneId: "36940d0ece18aebf69d0ef6825534e24" };
const S_HEX = "000102030405060708090a0b0c0d0e0f";
const uri = () => ({ robot: ROBOT, secret: fromHex(S_HEX)!, broker: "mqtt://127.0.0.1:1883" });

/** A link whose "robot" answers each pairing request with `answers(request)`. */
function fakeLink(answers: (req: { topic: string; payload: string; seq: number; mac: string; k: Uint8Array<ArrayBuffer> }) => Promise<Incoming[]>) {
  const handlers = new Map<string, (m: Incoming) => void>();
  const link = {
    subscribe: async (f: string, h: (m: Incoming) => void) => (handlers.set(f, h), true),
    unsubscribe: (f: string) => void handlers.delete(f),
    publishSigned: async (key: CryptoKey, topic: string, payload: string, seq: number) => {
      const ts = String(Date.now());
      const mac = await sign(key, topic, ME.phoneId, String(seq), ts, utf8(payload));
      // the robot checks the MAC with S and derives K from the request's nonce
      const sKey = await hmacKey(fromHex(S_HEX)!);
      const ok = await verify(sKey, topic, authProps({ from: ME.phoneId, seq: String(seq), ts, mac })!, utf8(payload));
      expect(ok).toBe(true);
      const nonce = fromHex(JSON.parse(payload).nonce)!;
      const k = await deriveOwnerKeyBytes(fromHex(S_HEX)!, nonce, ROBOT, ME.phoneId);
      for (const m of await answers({ topic, payload, seq, mac, k })) handlers.get(`${topic}/response`)?.(m);
      return true;
    },
  };
  return { link: link as unknown as Link, handlers };
}

async function robotMessage(k: Uint8Array<ArrayBuffer> | null, payload: string, seq = 1764071000001): Promise<Incoming> {
  const topic = `pair/${ROBOT}/${ME.phoneId}/response`;
  const user: Record<string, string> = { from: ROBOT, seq: String(seq), ts: String(Date.now()) };
  if (k) user.mac = await sign(await hmacKey(k), topic, ROBOT, user.seq, user.ts, utf8(payload));
  return { topic, payload: utf8(payload), retain: false, user };
}

const PAIRED = `{"status":"paired","robot":"${ROBOT}","nickname":"Rover"}`;

describe("pairing", () => {
  it("sends a request MACed with S and keeps K once the paired reply verifies", async () => {
    const { link } = fakeLink(async ({ payload, k }) => {
      const p = JSON.parse(payload);
      expect(p.nickname).toBe("Alice");
      expect(p.nonce).toMatch(/^[0-9a-f]{32}$/);
      return [await robotMessage(k, PAIRED)];
    });
    const r = await pair(link, ME, uri(), new OutsideCounter(), () => {});
    expect(r.robot).toBe(ROBOT);
    expect(r.nickname).toBe("Rover");
    expect(r.key.mac.extractable).toBe(false);
    expect(r.broker).toBe("mqtt://127.0.0.1:1883");
  });

  it("a forged rejection and a paired reply with a bad MAC do not end the wait", async () => {
    const rejections: string[] = [];
    const { link } = fakeLink(async ({ k }) => {
      const wrong = new Uint8Array(k);
      wrong[0] ^= 1;
      return [
        await robotMessage(null, '{"status":"rejected","reason":"bad_mac"}'),
        await robotMessage(wrong, `{"status":"paired","robot":"${ROBOT}","nickname":"Mallory"}`, 1764071000002),
        await robotMessage(k, PAIRED, 1764071000003),
      ];
    });
    const r = await pair(link, ME, uri(), new OutsideCounter(), (t) => rejections.push(t));
    expect(r.nickname).toBe("Rover");
    expect(rejections).toHaveLength(1);
  });

  it("with only a rejection, fails after the timeout saying what the robot said", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    try {
      const { link } = fakeLink(async () => [await robotMessage(null, '{"status":"rejected","reason":"window_closed"}')]);
      const p = pair(link, ME, uri(), new OutsideCounter(), () => {});
      const settled = p.then(
        () => "paired",
        (e: Error) => e.message,
      );
      await vi.waitFor(async () => {
        await vi.advanceTimersByTimeAsync(1000);
        expect(await Promise.race([settled, Promise.resolve("pending")])).not.toBe("pending");
      }, { timeout: 5000, interval: 1 });
      expect(await settled).toMatch(/not accepting pairings/);
    } finally {
      vi.useRealTimers();
    }
  });

  it("sends the request only once the broker granted the response topic", async () => {
    const events: string[] = [];
    let grant: () => void = () => {};
    const { link } = fakeLink(async ({ k }) => [await robotMessage(k, PAIRED)]);
    const l = link as unknown as Record<string, unknown>;
    const [subscribe, publish] = [l.subscribe as (...a: unknown[]) => Promise<boolean>, l.publishSigned as (...a: unknown[]) => Promise<boolean>];
    l.subscribe = (...a: unknown[]) =>
      new Promise<boolean>((r) => (grant = () => (events.push("granted"), r(subscribe(...a)))));
    l.publishSigned = (...a: unknown[]) => (events.push("publish"), publish(...a));
    const p = pair(link, ME, uri(), new OutsideCounter(), () => {});
    await new Promise((r) => setTimeout(r, 20));
    expect(events).toEqual([]);
    grant();
    expect((await p).nickname).toBe("Rover");
    expect(events).toEqual(["granted", "publish"]);
  });

  it("says so when the broker does not grant the response topic, and still zeroes the secret", async () => {
    const u = uri();
    const { link } = fakeLink(async () => []);
    (link as unknown as Record<string, unknown>).subscribe = async () => false;
    await expect(pair(link, ME, u, new OutsideCounter(), () => {})).rejects.toThrow(/not connected to the broker/);
    expect(toHex(u.secret)).toBe("00".repeat(16));
  });

  it("zeroes the secret afterwards", async () => {
    const u = uri();
    const { link } = fakeLink(async ({ k }) => [await robotMessage(k, PAIRED)]);
    await pair(link, ME, u, new OutsideCounter(), () => {});
    expect(toHex(u.secret)).toBe("00".repeat(16));
  });
});
