/**
 * The MQTT 5 link to the broker over WebSockets (docs/protocol.md 3.1, 3.3).
 *
 * After every CONNACK, in this order: subscribe to everything the app listens to (MQTT.js
 * is told not to resubscribe by itself, so the order is ours), then publish the retained
 * presence `true` and the profile. The Will is `false` on the same topic.
 */
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from "mqtt";
import { sign, authProps, verify, type AuthProps } from "../proto/mac";
import { utf8 } from "../proto/bytes";
import { matches, presenceTopic, profileTopic } from "../proto/topics";
import { config } from "./config";

/** A received PUBLISH. */
export interface Incoming {
  topic: string;
  payload: Uint8Array;
  retain: boolean;
  user: Record<string, string | string[]> | undefined;
}

export type Handler = (m: Incoming) => void;

export class Link {
  private client: MqttClient;
  private subs = new Map<string, Set<Handler>>();
  private delay = config.reconnectMinMs;
  private stateListeners = new Set<(up: boolean) => void>();
  /** Subscribers (while the link was down) waiting for the next CONNACK's SUBACK. */
  private awaitingGrant: (() => void)[] = [];
  up = false;

  constructor(
    clientId: string,
    private phoneId: string,
    private profile: () => string,
    password?: string,
  ) {
    const opts: IClientOptions = {
      protocolVersion: 5,
      clientId,
      // The broker account is the phone ID (docs/install.md, ACLs with %c); brokers
      // that allow anonymous clients ignore it.
      username: phoneId,
      ...(password ? { password } : {}),
      clean: true,
      keepalive: config.keepAliveS,
      reconnectPeriod: config.reconnectMinMs,
      connectTimeout: 5000,
      resubscribe: false,
      queueQoSZero: false,
      // MQTT.js's default "worker" timers start a Worker from a blob: URL, which the CSP
      // (script-src 'self', no worker-src) refuses; native timers need no exception.
      timerVariant: "native",
      properties: { sessionExpiryInterval: 0, maximumPacketSize: 32768 },
      will: { topic: presenceTopic(phoneId), payload: "false", qos: 1, retain: true },
    };
    this.client = mqtt.connect(config.brokerWs, opts);
    this.client.on("connect", () => this.onConnack());
    this.client.on("close", () => this.onDown());
    this.client.on("offline", () => this.onDown());
    this.client.on("message", (topic, payload, packet: IPublishPacket) => {
      const m: Incoming = {
        topic,
        payload: new Uint8Array(payload),
        retain: !!packet.retain,
        user: packet.properties?.userProperties as Record<string, string | string[]> | undefined,
      };
      for (const [filter, hs] of this.subs) if (matches(filter, topic)) for (const h of hs) h(m);
    });
    this.client.on("error", (e: Error & { code?: number }) => {
      // Shown by the banner through close/offline; MQTT.js retries. A refused login
      // (CONNACK 0x86 bad user name or password, 0x87 not authorized) gets its own words.
      if (e.code === 0x86 || e.code === 0x87) {
        this.refused = true;
        for (const f of this.stateListeners) f(this.up);
      }
    });
  }

  /** The broker refused the last login (user name = phone ID, the broker password). */
  refused = false;

  onState(f: (up: boolean) => void) {
    this.stateListeners.add(f);
    f(this.up);
  }

  private setUp(up: boolean) {
    if (this.up === up) return;
    this.up = up;
    for (const f of this.stateListeners) f(up);
  }

  private onDown() {
    this.setUp(false);
    // bounded exponential backoff between reconnect attempts
    this.client.options.reconnectPeriod = this.delay;
    this.delay = Math.min(this.delay * 2, config.reconnectMaxMs);
  }

  private onConnack() {
    this.refused = false;
    this.delay = config.reconnectMinMs;
    this.client.options.reconnectPeriod = config.reconnectMinMs;
    const filters = [...this.subs.keys()];
    const waiting = this.awaitingGrant.splice(0);
    if (filters.length) this.client.subscribe(filters, { qos: 1 }, () => waiting.forEach((f) => f()));
    this.announce();
    this.setUp(true);
  }

  /** Presence `true` and the profile, retained (3.3). */
  announce() {
    this.client.publish(presenceTopic(this.phoneId), "true", { qos: 1, retain: true });
    this.client.publish(profileTopic(this.phoneId), this.profile(), { qos: 1, retain: true });
  }

  /** Listen on a filter; resolves true once the broker granted it (SUBACK), false after
   * `waitMs` whatever happened, so no flow waits forever. While the link is down the grant is
   * the SUBACK of the next CONNACK's subscriptions: a caller that publishes after it (a
   * pairing or an invite, whose reply comes once) never has its PUBLISH, queued by MQTT.js
   * while connecting and flushed on the CONNACK, reach the broker ahead of the SUBSCRIBE. */
  subscribe(filter: string, h: Handler, waitMs = 5000): Promise<boolean> {
    let hs = this.subs.get(filter);
    const fresh = !hs;
    if (!hs) this.subs.set(filter, (hs = new Set()));
    hs.add(h);
    if (!fresh && this.client.connected) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), waitMs);
      const granted = () => {
        clearTimeout(t);
        resolve(true);
      };
      if (this.client.connected) this.client.subscribe(filter, { qos: 1 }, granted);
      else this.awaitingGrant.push(granted);
    });
  }

  unsubscribe(filter: string, h: Handler) {
    const hs = this.subs.get(filter);
    if (!hs) return;
    hs.delete(h);
    if (hs.size === 0) {
      this.subs.delete(filter);
      if (this.client.connected) this.client.unsubscribe(filter);
    }
  }

  /** Publish an authenticated message (5): the four user properties and the MAC with `key`.
   * Returns false, sending nothing, when `onlyIfUp` and the link is down (so a drive is
   * never queued to arrive late). */
  async publishSigned(
    key: CryptoKey,
    topic: string,
    payload: string,
    seq: number,
    opts: { expiryS?: number; onlyIfUp?: boolean } = {},
  ): Promise<boolean> {
    if (opts.onlyIfUp && !this.client.connected) return false;
    const ts = String(Date.now());
    const s = String(seq);
    const mac = await sign(key, topic, this.phoneId, s, ts, utf8(payload));
    this.client.publish(topic, payload, {
      qos: 1,
      retain: false,
      properties: {
        userProperties: { from: this.phoneId, seq: s, ts, mac },
        ...(opts.expiryS ? { messageExpiryInterval: opts.expiryS } : {}),
      },
    });
    return true;
  }
}

/** Check an authenticated message from `from` with `key`; its properties if it verifies. */
export async function checkSigned(key: CryptoKey, m: Incoming, from: string): Promise<AuthProps | null> {
  const p = authProps(m.user);
  if (!p || p.from !== from) return null;
  return (await verify(key, m.topic, p, m.payload)) ? p : null;
}

/** Parse a JSON object payload, or null. */
export function parseObject(b: Uint8Array): Record<string, unknown> | null {
  try {
    const v: unknown = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(b));
    return v && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}
