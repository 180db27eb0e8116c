/**
 * A version 2 call (docs/protocol.md 7.8, 8): the phone offers in the invite, the robot
 * answers in the accept, candidates trickle both ways on `session/{sid}/ice/...`, every
 * message MACed (K for the invite, Ks after it), `drive`/`goto` carry the latest token (5.7).
 */
import { randomHex16 } from "../proto/bytes";
import { h264Preferences } from "../proto/control";
import { deriveSessionKey } from "../proto/keys";
import { OutsideCounter, RisingCheck, SessionWindow } from "../proto/seq";
import { inviteResponseTopic, inviteTopic, requestTopic, responseCommand, responseFilter } from "../proto/topics";
import { config } from "./config";
import { checkSigned, parseObject, type Incoming, type Link } from "./link";
import type { Me, PairedRobot } from "./store";

export type CallState = "calling" | "connecting" | "connected" | "ended";

/** What the call tells the screen. */
export interface CallView {
  state(s: CallState, endReason?: string, message?: string, rejectReason?: string): void;
  message(text: string): void;
  remote(stream: MediaStream): void;
  micAvailable(yes: boolean): void;
  destinations(places: string[], at: string | null): void;
  gotoStatus(msg: Record<string, unknown>): void;
}

/** Words for the ways a call ends or is refused. */
export function endText(reason: string, nickname: string, detail?: string): string {
  const d = detail ? ` (${detail})` : "";
  switch (reason) {
    case "hangup":
      return "Call ended.";
    case "busy":
      return `${nickname} is busy in another call. Try again later.`;
    case "stale":
      return "The call was refused as stale: check that this phone's clock is right.";
    case "offline":
      return `${nickname} is offline.`;
    case "no_answer":
      return `${nickname} did not answer.`;
    case "broker_lost":
      return "The connection to the broker is lost; the call could not be placed.";
    case "network_lost":
      return `The connection to ${nickname} dropped (did the network change?); calling again…`;
    case "replaced":
      return "This call was replaced by a newer one.";
    case "media_failed":
      return `The call's media failed on the robot${d}.`;
    case "ice_failed":
      return `No media connection to ${nickname}: the networks may need a TURN server${d}.`;
    case "caller_offline":
      return "The robot lost sight of this phone; the call ended.";
    case "timeout":
      return "The call timed out (nothing got through for 15 s).";
    case "video_failed":
      return `The robot's camera failed${d}.`;
    case "shutdown":
      return `${nickname} is shutting down.`;
    case "revoked":
      return "This phone is no longer an owner of the robot.";
    case "fingerprint_mismatch":
      return "The media connection did not match the call's offer; the call ended.";
    case "no_video":
      return "This browser cannot receive H.264 video.";
    default:
      return `The call ended (${reason})${d}.`;
  }
}

/** A token older than this is refreshed with a ping before a drive or goto (5.7). */
const TOKEN_REFRESH_MS = 1000;

export class Call {
  readonly sid = randomHex16();
  private pc: RTCPeerConnection | null = null;
  private mic: MediaStreamTrack | null = null;
  private ks: CryptoKey | null = null;
  private seq = 0;
  private window = new SessionWindow();
  private early: Incoming[] = [];
  private pendingCandidates: { mline: number; candidate: string }[] = [];
  private gatheringDone = false;
  private token: { value: string; at: number } | null = null;
  private waiters = new Map<number, (msg: Record<string, unknown>) => void>();
  private refreshing: Promise<void> | null = null;
  private lastSent = 0;
  private timers: number[] = [];
  private inviteDone = false;
  private wasConnected = false;
  private handleSession = (m: Incoming) => void this.onSession(m);
  private handleInvite = (m: Incoming) => void this.onInviteResponse(m);
  state: CallState = "calling";

  constructor(
    private link: Link,
    private me: Me,
    readonly robot: PairedRobot,
    private counter: OutsideCounter,
    private inviteCheck: RisingCheck,
    private view: CallView,
  ) {}

  get peer(): RTCPeerConnection | null {
    return this.pc;
  }

  /** Place the call. `online` is the robot's retained presence (undefined: not known). */
  async start(online: boolean | undefined): Promise<void> {
    this.view.state("calling");
    if (online === false) return this.end("offline");
    if (!this.link.up) return this.end("broker_lost");
    try {
      const pc = new RTCPeerConnection({ iceServers: config.iceServers, bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
      this.pc = pc;
      const video = pc.addTransceiver("video", { direction: "recvonly" });
      const prefs = h264Preferences(RTCRtpReceiver.getCapabilities("video")?.codecs ?? []);
      if (prefs.length === 0) return this.end("no_video");
      video.setCodecPreferences(prefs);
      try {
        const ms = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false },
          video: false,
        });
        this.mic = ms.getAudioTracks()[0] ?? null;
      } catch {
        this.mic = null;
      }
      if ((this.state as CallState) === "ended") return this.stopMic();
      let audio: RTCRtpTransceiver;
      if (this.mic) {
        this.mic.enabled = false; // muted until the person talks
        audio = pc.addTransceiver(this.mic, { direction: "sendrecv" });
      } else {
        audio = pc.addTransceiver("audio", { direction: "recvonly" });
      }
      const opus = (RTCRtpReceiver.getCapabilities("audio")?.codecs ?? []).filter((c) => c.mimeType.toLowerCase() === "audio/opus");
      if (opus.length) audio.setCodecPreferences(opus);
      this.view.micAvailable(!!this.mic);
      pc.ontrack = (e) => this.view.remote(e.streams[0] ?? new MediaStream([e.track]));
      pc.onicecandidate = (e) => {
        if (e.candidate && e.candidate.candidate) {
          this.pendingCandidates.push({ mline: e.candidate.sdpMLineIndex ?? 0, candidate: e.candidate.candidate });
        } else if (!e.candidate) {
          this.gatheringDone = true;
        }
        void this.flushCandidates();
      };
      pc.onconnectionstatechange = () => {
        if (this.state === "ended") return;
        if (pc.connectionState === "connected") {
          this.wasConnected = true;
          this.view.state((this.state = "connected"));
        } else if (pc.connectionState === "failed") {
          // After it worked, a lost media path is a network change or cut (protocol 7.8):
          // the app calls again and the robot lets the new call replace this one, so no
          // hangup. Never connected: no path at all.
          if (this.wasConnected) this.end("network_lost");
          else void this.hangup("ice_failed");
        }
      };
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      const sdp = pc.localDescription?.sdp ?? offer.sdp ?? "";
      // Subscribe to the responses first: the robot's candidates follow its accept at once.
      await this.link.subscribe(responseFilter(this.sid), this.handleSession);
      await this.link.subscribe(inviteResponseTopic(this.robot.robot, this.sid), this.handleInvite);
      const payload = JSON.stringify({ v: 2, sdp: { type: "offer", sdp }, video: config.video });
      if ((this.state as CallState) === "ended") return;
      await this.link.publishSigned(this.robot.key.mac, inviteTopic(this.robot.robot, this.sid), payload, this.counter.next(Date.now()), {
        expiryS: 30,
      });
      this.timers.push(
        window.setTimeout(() => {
          if (!this.inviteDone) this.end("no_answer");
        }, config.inviteTimeoutMs),
      );
    } catch (e) {
      this.end("media_failed", e instanceof Error ? e.message : String(e));
    }
  }

  private async onInviteResponse(m: Incoming) {
    if (this.inviteDone || this.state === "ended") return;
    const p = await checkSigned(this.robot.key.mac, m, this.robot.robot);
    if (!p || !this.inviteCheck.accept(p.seq)) return;
    const msg = parseObject(m.payload);
    if (!msg) return;
    this.inviteDone = true;
    const detail = typeof msg.detail === "string" ? msg.detail : undefined;
    if (msg.status === "busy") return this.end("busy");
    if (msg.status === "rejected") {
      const reason = typeof msg.reason === "string" ? msg.reason : "rejected";
      if (reason === "stale") return this.end("stale", detail);
      return this.end("rejected", undefined, `${this.robot.nickname} refused the call: ${reason}${detail ? ` — ${detail}` : ""}.`, reason);
    }
    if (msg.status !== "accepted" || msg.v !== 2 || typeof msg.nonce !== "string") {
      return this.end("rejected", undefined, `${this.robot.nickname} answered with something this app does not understand.`, "unexpected");
    }
    const answer = msg.sdp as { type?: unknown; sdp?: unknown } | undefined;
    if (!answer || answer.type !== "answer" || typeof answer.sdp !== "string") {
      return this.end("rejected", undefined, "The robot's answer had no SDP.", "unexpected");
    }
    this.keepToken(msg);
    try {
      this.ks = await deriveSessionKey(this.robot.key.hkdf, this.sid, msg.nonce);
    } catch {
      return this.end("rejected", undefined, "The robot's answer had a bad nonce.", "unexpected");
    }
    this.view.state((this.state = "connecting"));
    try {
      await this.pc!.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    } catch (e) {
      return this.hangup("media_failed", e instanceof Error ? e.message : String(e));
    }
    for (const e of this.early.splice(0)) await this.onSession(e);
    void this.flushCandidates();
    void this.request("destinations", {});
    this.timers.push(
      window.setInterval(() => {
        if (Date.now() - this.lastSent > 2500) void this.request("ping", {});
      }, 1000),
    );
  }

  private keepToken(msg: Record<string, unknown>) {
    if (typeof msg.token === "string") this.token = { value: msg.token, at: performance.now() };
  }

  private async onSession(m: Incoming) {
    if (this.state === "ended") return;
    const command = responseCommand(m.topic, this.sid);
    if (!command) return;
    if (!this.ks) {
      if (this.early.length < 64) this.early.push(m);
      return;
    }
    const p = await checkSigned(this.ks, m, this.robot.robot);
    if (!p || !this.window.accept(p.seq)) return;
    const msg = parseObject(m.payload);
    if (!msg) return;
    this.keepToken(msg);
    const re = typeof msg.re === "number" ? msg.re : null;
    if (re !== null) {
      const w = this.waiters.get(re);
      if (w) {
        this.waiters.delete(re);
        w(msg);
      }
    }
    if (msg.status === "ended") {
      const reason = typeof msg.reason === "string" ? msg.reason : "hangup";
      return this.end(reason, typeof msg.detail === "string" ? msg.detail : undefined);
    }
    switch (command) {
      case "ice":
        if (re === null) await this.addRemoteCandidates(msg);
        break;
      case "destinations":
        if (Array.isArray(msg.destinations)) {
          this.view.destinations(
            msg.destinations.filter((x): x is string => typeof x === "string"),
            typeof msg.at === "string" ? msg.at : null,
          );
        }
        break;
      case "goto":
        this.view.gotoStatus(msg);
        break;
      case "drive":
        if (msg.status === "rejected" && msg.reason === "estop") {
          this.view.message("The robot's emergency stop is on; it will not move until it is cleared on the robot.");
        }
        break;
    }
  }

  private async addRemoteCandidates(msg: Record<string, unknown>) {
    if (!this.pc || !Array.isArray(msg.candidates)) return;
    for (const c of msg.candidates as { mline?: unknown; candidate?: unknown }[]) {
      if (typeof c?.candidate !== "string") continue;
      const candidate = c.candidate.startsWith("a=") ? c.candidate.slice(2) : c.candidate;
      const mline = typeof c.mline === "number" ? c.mline : 0;
      try {
        await this.pc.addIceCandidate({ candidate, sdpMLineIndex: mline });
      } catch {
        /* a candidate this browser cannot use: the others may do */
      }
    }
  }

  /** Send our candidates once Ks exists, one per message (one odd candidate, refused by the
   * robot, then costs only itself), and the end of gathering. */
  private async flushCandidates() {
    if (!this.ks || this.state === "ended") return;
    while (this.pendingCandidates.length) {
      const c = this.pendingCandidates.shift()!;
      await this.request("ice", { gen: 0, candidates: [c], end: false });
    }
    if (this.gatheringDone) {
      this.gatheringDone = false;
      await this.request("ice", { gen: 0, candidates: [], end: true });
    }
  }

  /** Send a session request; resolves with its seq (or null when not sent). */
  async request(command: string, body: Record<string, unknown>, onlyIfUp = false): Promise<number | null> {
    if (!this.ks || this.state === "ended") return null;
    const seq = ++this.seq;
    this.lastSent = Date.now();
    const ok = await this.link.publishSigned(this.ks, requestTopic(this.sid, command), JSON.stringify(body), seq, { onlyIfUp });
    return ok ? seq : null;
  }

  /** A ping that resolves on its answer (which carries a fresh token), or after 1.5 s. */
  private refreshToken(): Promise<void> {
    this.refreshing ??= (async () => {
      const seq = await this.request("ping", {}, true);
      if (seq !== null) {
        await new Promise<void>((resolve) => {
          const t = window.setTimeout(() => {
            this.waiters.delete(seq);
            resolve();
          }, 1500);
          this.waiters.set(seq, () => {
            clearTimeout(t);
            resolve();
          });
        });
      }
    })().finally(() => (this.refreshing = null));
    return this.refreshing;
  }

  /** `drive` or `goto` with the latest token, refreshed first if it is old (5.7). */
  async motion(command: "drive" | "goto", body: Record<string, unknown>): Promise<void> {
    if (!this.ks || this.state === "ended") return;
    if (!this.token || performance.now() - this.token.at > TOKEN_REFRESH_MS) await this.refreshToken();
    if (!this.token) return;
    await this.request(command, { ...body, token: this.token.value }, true);
  }

  stopMotors() {
    void this.request("stop", {});
  }

  /** Talk (enable the mic track) or mute. Returns whether the mic is now live. */
  setTalking(on: boolean): boolean {
    if (!this.mic) return false;
    this.mic.enabled = on;
    return on;
  }

  async hangup(reason = "hangup", detail?: string) {
    if (this.state === "ended") return;
    await this.request("hangup", {});
    this.end(reason, detail);
  }

  private stopMic() {
    this.mic?.stop();
    this.mic = null;
  }

  /** End here: close the peer, free the topics, tell the screen. */
  end(reason: string, detail?: string, message?: string, rejectReason?: string) {
    if (this.state === "ended") return;
    this.state = "ended";
    for (const t of this.timers) {
      clearTimeout(t);
      clearInterval(t);
    }
    this.pc?.close();
    this.stopMic();
    this.link.unsubscribe(responseFilter(this.sid), this.handleSession);
    this.link.unsubscribe(inviteResponseTopic(this.robot.robot, this.sid), this.handleInvite);
    this.ks = null;
    this.view.state("ended", reason, message ?? endText(reason, this.robot.nickname, detail), rejectReason);
  }

  get phone(): Me {
    return this.me;
  }
}
