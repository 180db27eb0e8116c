// Link.subscribe against a fake MQTT.js client: while the link is down, the grant is the SUBACK
// of the next CONNACK's subscriptions, so what a caller publishes after it follows the SUBSCRIBE.
import { EventEmitter } from "node:events";
import { describe, expect, it, vi } from "vitest";

class FakeClient extends EventEmitter {
  connected = false;
  options: Record<string, unknown> = {};
  sent: string[] = [];
  subacks: (() => void)[] = [];
  subscribe(filters: string | string[], _o: unknown, cb?: () => void) {
    this.sent.push(`SUBSCRIBE ${[filters].flat().join(",")}`);
    if (cb) this.subacks.push(cb);
  }
  publish(topic: string) {
    this.sent.push(`PUBLISH ${topic}`);
  }
  unsubscribe() {}
}
const fake = new FakeClient();
vi.mock("mqtt", () => ({ default: { connect: () => fake } }));
vi.stubGlobal("__ROBOTD_BROKER_WS__", "ws://127.0.0.1:1");
vi.stubGlobal("__ROBOTD_ICE_SERVERS__", []);

describe("Link.subscribe", () => {
  it("while connecting, resolves only on the SUBACK that follows the next CONNACK", async () => {
    const { Link } = await import("../src/app/link");
    const link = new Link("c", "p", () => "{}");
    let granted: boolean | null = null;
    void link.subscribe("pair/r/p/response", () => {}).then((g) => (granted = g));
    await new Promise((r) => setTimeout(r, 20));
    expect(granted).toBeNull();
    fake.connected = true;
    fake.emit("connect");
    expect(fake.sent[0]).toBe("SUBSCRIBE pair/r/p/response");
    await new Promise((r) => setTimeout(r, 20));
    expect(granted).toBeNull();
    fake.subacks.shift()!();
    await new Promise((r) => setTimeout(r, 0));
    expect(granted).toBe(true);
  });

  it("connected: resolves on the SUBACK, and false when none comes in time", async () => {
    const { Link } = await import("../src/app/link");
    const link = new Link("c", "p", () => "{}");
    fake.connected = true;
    const ok = link.subscribe("a/b", () => {});
    fake.subacks.pop()!();
    expect(await ok).toBe(true);
    expect(await link.subscribe("c/d", () => {}, 10)).toBe(false);
  });
});
