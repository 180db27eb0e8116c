/**
 * Pairing (docs/protocol.md 6.3-6.5): prove S, derive K, keep K only once the robot's
 * `paired` reply verified with it. Rejections carry no MAC, so they are shown but the wait
 * goes on until a valid `paired` or the timeout.
 */
import { randomBytes, toHex } from "../proto/bytes";
import { deriveOwnerKeyBytes, hmacKey, importOwnerKey } from "../proto/keys";
import type { PairingUri } from "../proto/pairing-uri";
import { OutsideCounter, RisingCheck } from "../proto/seq";
import { pairResponseTopic, pairTopic } from "../proto/topics";
import { config } from "./config";
import { checkSigned, parseObject, type Incoming, type Link } from "./link";
import type { Me, PairedRobot } from "./store";

/** Human words for the robot's rejection reasons (6.5). */
export function pairRejectText(reason: string): string {
  switch (reason) {
    case "window_closed":
      return "the robot is not accepting pairings now (open a pairing window on the robot and scan its new code)";
    case "bad_mac":
      return "the code was not accepted (an old or mistyped code?)";
    case "stale":
      return "the phone's clock or the robot's is wrong";
    case "malformed":
      return "the robot did not understand the request (check your nickname)";
    case "too_many_attempts":
      return "too many failed attempts; open a new pairing window on the robot";
    case "already_paired":
      return "this phone is already paired; the robot's admin must allow a re-pairing (robotd pair --replace)";
    case "internal_error":
      return "the robot could not store the pairing (its storage needs fixing)";
    default:
      return `refused (${reason})`;
  }
}

export async function pair(
  link: Link,
  me: Me,
  uri: PairingUri,
  counter: OutsideCounter,
  onRejected: (text: string) => void,
): Promise<PairedRobot> {
  const nonce = randomBytes(16);
  const owner = await importOwnerKey(await deriveOwnerKeyBytes(uri.secret, nonce, uri.robot, me.phoneId));
  const sKey = await hmacKey(new Uint8Array(uri.secret));
  const respTopic = pairResponseTopic(uri.robot, me.phoneId);
  const rising = new RisingCheck();
  let lastReject: string | null = null;
  let handler: (m: Incoming) => void = () => {};
  try {
    const paired = new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(lastReject ? `The robot said: ${lastReject}.` : "The robot did not answer. Is it online, and is its pairing window open?")),
        config.pairTimeoutMs,
      );
      handler = (m: Incoming) => {
        void (async () => {
          const msg = parseObject(m.payload);
          if (!msg) return;
          if (msg.status === "rejected") {
            // unauthenticated: show it, keep waiting (6.5)
            lastReject = pairRejectText(typeof msg.reason === "string" ? msg.reason : "unknown");
            onRejected(lastReject);
            return;
          }
          const p = await checkSigned(owner.mac, m, uri.robot);
          if (!p || !rising.accept(p.seq)) return;
          if (msg.status === "paired" && msg.robot === uri.robot) {
            clearTimeout(timer);
            resolve(typeof msg.nickname === "string" ? msg.nickname : "Robot");
          }
        })();
      };
    });
    // Granted (SUBACK) before the request goes out: the robot's `paired` reply comes once.
    if (!(await link.subscribe(respTopic, handler, config.pairTimeoutMs))) {
      throw new Error("The phone is not connected to the broker. Check the network and try again.");
    }
    const payload = JSON.stringify({ nickname: me.nickname, nonce: toHex(nonce) });
    const seq = counter.next(Date.now());
    await link.publishSigned(sKey, pairTopic(uri.robot, me.phoneId), payload, seq);
    const nickname = await paired;
    return { robot: uri.robot, nickname, broker: uri.broker, key: owner, pairedAt: Date.now() };
  } finally {
    link.unsubscribe(respTopic, handler);
    uri.secret.fill(0);
  }
}

