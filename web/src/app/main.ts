/** The phone web app: screens and wiring. The protocol lives in src/proto, the flows in
 * pairing.ts and call.ts; this file only connects them to the page (web/README.md). */
import { randomHex16 } from "../proto/bytes";
import { gotoText } from "../proto/control";
import { md5ClientId, normaliseE164, PhoneNumberError } from "../proto/identity";
import { cleanNickname } from "../proto/nickname";
import { PairingUriError, parsePairingUri } from "../proto/pairing-uri";
import { OutsideCounter, RisingCheck } from "../proto/seq";
import { presenceTopic, profileTopic } from "../proto/topics";
import { Call, type CallState } from "./call";
import { attachJoystick } from "./joystick";
import { Link, parseObject, type Incoming } from "./link";
import { pair } from "./pairing";
import { scanQr, type Scan } from "./qr";
import { QualityMeter, qualityText } from "./stats";
import { store, type Me, type PairedRobot } from "./store";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el as T;
};

const screens = ["insecure", "first-run", "contacts", "call-screen"] as const;
function show(screen: (typeof screens)[number]) {
  for (const s of screens) $(s).hidden = s !== screen;
}

/** Take a pairing link out of the address bar at once: it carries the secret. */
function takePairingFragment(): string | null {
  const h = location.hash;
  if (!h.startsWith("#pair=")) return null;
  let uri: string | null = null;
  try {
    uri = decodeURIComponent(h.slice("#pair=".length));
  } catch {
    uri = null;
  }
  history.replaceState(null, "", location.pathname + location.search);
  return uri;
}

interface Contact {
  robot: PairedRobot;
  nickname: string;
  photo: string | null;
  online: boolean | undefined;
  el: HTMLLIElement;
}

class App {
  private link!: Link;
  private me!: Me;
  private counter = new OutsideCounter();
  /** Per robot: its invite responses' seq must rise (5.5). */
  private inviteChecks = new Map<string, RisingCheck>();
  private contacts = new Map<string, Contact>();
  private call: Call | null = null;
  private scan: Scan | null = null;
  private lastPaired: string | null = null;
  private pairing = false;
  private meter = new QualityMeter();
  private statsTimer = 0;
  private everUp = false;
  private recalls = 0;
  private joystick!: { release(): void };

  constructor(private pendingUri: string | null) {}

  async run() {
    if (this.pendingUri !== null) ($("pair-uri") as HTMLTextAreaElement).value = this.pendingUri;
    this.pendingUri = null;
    const me = await store.me();
    if (me) return this.start(me);
    show("first-run");
    $("save-profile").addEventListener("click", () => void this.saveProfile());
  }

  private async saveProfile() {
    const err = $("phone-error");
    let e164: string;
    try {
      e164 = normaliseE164(($("phone-number") as HTMLInputElement).value);
    } catch (e) {
      err.textContent = e instanceof PhoneNumberError ? e.message : "That number could not be read.";
      err.hidden = false;
      return;
    }
    const nick = cleanNickname(($("nickname") as HTMLInputElement).value);
    if (!nick.ok) {
      err.textContent = nick.error;
      err.hidden = false;
      return;
    }
    err.hidden = true;
    const me: Me = { e164, nickname: nick.nickname, phoneId: md5ClientId(e164) };
    const password = ($("broker-password") as HTMLInputElement).value;
    if (password) await store.setBrokerPassword(password);
    ($("broker-password") as HTMLInputElement).value = "";
    await store.setMe(me);
    await this.start(me);
  }

  private async start(me: Me) {
    this.me = me;
    $("e164").textContent = me.e164;
    $("me-nickname").textContent = me.nickname;
    $("phone-id").textContent = me.phoneId;
    show("contacts");
    let clientId = await store.mqttClientId();
    if (!clientId) {
      clientId = randomHex16(); // private, never published (2.1)
      await store.setMqttClientId(clientId);
    }
    const profile = JSON.stringify({ nickname: me.nickname, kind: "phone" });
    const password = (await store.brokerPassword()) || undefined;
    this.link = new Link(clientId, me.phoneId, () => profile, password);
    this.link.onState((up) => this.onLink(up));
    for (const r of await store.robots()) this.addContact(r);
    this.wire();
  }

  private onLink(up: boolean) {
    const b = $("banner");
    b.dataset.kind = "broker-lost";
    b.textContent = this.link.refused
      ? `The broker refused the login of phone ID ${this.me.phoneId}: check its account and the broker password.`
      : this.everUp
        ? "Connection to the broker lost — reconnecting…"
        : "Connecting to the broker…";
    b.hidden = up;
    if (up) this.everUp = true;
    if (this.call && this.call.state !== "ended") {
      const m = $("message");
      if (!up) {
        m.textContent = "Connection to the broker lost — reconnecting; the call goes on.";
        m.dataset.kind = "broker-lost";
      } else if (m.dataset.kind === "broker-lost") {
        m.textContent = "";
        delete m.dataset.kind;
      }
    }
  }

  // ---- contacts -------------------------------------------------------------------------

  private addContact(r: PairedRobot) {
    const old = this.contacts.get(r.robot);
    if (old) {
      old.robot = r;
      return this.renderContact(old);
    }
    const el = document.createElement("li");
    el.className = "contact";
    el.dataset.testid = "contact";
    el.setAttribute("data-testid", "contact");
    el.dataset.robotId = r.robot;
    const c: Contact = { robot: r, nickname: r.nickname, photo: null, online: undefined, el };
    this.contacts.set(r.robot, c);
    $("contact-list").append(el);
    this.renderContact(c);
    void this.link.subscribe(presenceTopic(r.robot), (m) => this.onPresence(c, m));
    void this.link.subscribe(profileTopic(r.robot), (m) => this.onProfile(c, m));
  }

  private onPresence(c: Contact, m: Incoming) {
    const t = new TextDecoder().decode(m.payload);
    const was = c.online;
    c.online = t === "true" ? true : t === "false" ? false : c.online;
    this.renderContact(c);
    const call = this.call;
    if (call && call.state !== "ended" && call.robot.robot === c.robot.robot && c.online !== was) {
      const m = $("message");
      if (c.online === false) {
        m.textContent = `${c.nickname} went offline; waiting for it to come back…`;
        m.dataset.kind = "robot-offline";
      } else if (m.dataset.kind === "robot-offline") {
        m.textContent = "";
        delete m.dataset.kind;
      }
    }
  }

  private onProfile(c: Contact, m: Incoming) {
    const p = parseObject(m.payload);
    if (!p) return;
    if (typeof p.nickname === "string" && p.nickname.trim() !== "") c.nickname = p.nickname.trim().slice(0, 64);
    c.photo = typeof p.photo === "string" && p.photo !== "" ? p.photo : null;
    this.renderContact(c);
  }

  private renderContact(c: Contact) {
    $("no-robots").hidden = this.contacts.size > 0;
    const el = c.el;
    el.replaceChildren();
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    const initials = document.createElement("span");
    initials.className = "initials";
    initials.textContent = [...c.nickname].slice(0, 2).join("").toUpperCase();
    if (c.photo) {
      const img = document.createElement("img");
      img.alt = "";
      img.src = c.photo;
      img.onerror = () => img.replaceWith(initials);
      avatar.append(img);
    } else {
      avatar.append(initials);
    }
    const dot = document.createElement("span");
    dot.className = "online";
    dot.dataset.online = String(c.online === true);
    dot.title = c.online === true ? "online" : c.online === false ? "offline" : "not known";
    avatar.append(dot);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.nickname;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "call-button";
    button.setAttribute("data-testid", "call");
    button.textContent = "Call";
    button.addEventListener("click", () => void this.placeCall(c));
    el.append(avatar, name, button);
  }

  // ---- pairing --------------------------------------------------------------------------

  private pairStatus(status: "pending" | "paired" | "error", text: string) {
    const s = $("pair-status");
    s.dataset.status = status;
    s.textContent = text;
  }

  private async submitPairing() {
    if (this.pairing) return;
    const text = ($("pair-uri") as HTMLTextAreaElement).value.trim();
    let uri;
    try {
      uri = parsePairingUri(text);
    } catch (e) {
      return this.pairStatus("error", e instanceof PairingUriError ? e.message : "That pairing link could not be read.");
    }
    if (text === this.lastPaired && this.contacts.has(uri.robot)) {
      uri.secret.fill(0);
      return this.pairStatus("paired", `Already paired with ${this.contacts.get(uri.robot)!.nickname}.`);
    }
    this.pairing = true;
    ($("pair-submit") as HTMLButtonElement).disabled = true;
    this.pairStatus("pending", "Pairing…");
    try {
      const robot = await pair(this.link, this.me, uri, this.counter, (why) =>
        this.pairStatus("pending", `Pairing… the robot said: ${why}. Still waiting for a valid answer.`),
      );
      await store.upsertRobot(robot);
      this.addContact(robot);
      this.lastPaired = text;
      ($("pair-uri") as HTMLTextAreaElement).value = "";
      this.pairStatus("paired", `Paired with ${robot.nickname}.`);
    } catch (e) {
      this.pairStatus("error", e instanceof Error ? e.message : "Pairing failed.");
    } finally {
      this.pairing = false;
      ($("pair-submit") as HTMLButtonElement).disabled = false;
    }
  }

  private startScan() {
    if (this.scan) return;
    $("scan-cancel").hidden = false;
    $("scan-qr").hidden = true;
    this.pairStatus("pending", "Point the camera at the robot's code…");
    this.scan = scanQr($("scan-video") as HTMLVideoElement, (t) => t.trim().toLowerCase().startsWith("robotd://pair?"));
    void this.scan.done.then((text) => {
      this.scan = null;
      $("scan-cancel").hidden = true;
      $("scan-qr").hidden = false;
      if (text) {
        ($("pair-uri") as HTMLTextAreaElement).value = text;
        void this.submitPairing(); // a scanned code pairs at once
      } else {
        this.pairStatus("error", "No code was read (camera refused, cancelled, or no code within a minute).");
      }
    });
  }

  // ---- calls ----------------------------------------------------------------------------

  private async placeCall(c: Contact, again = false) {
    if (this.call && this.call.state !== "ended") return;
    // Calls placed by the app itself after a lost media path (at most 3 in a row).
    this.recalls = again ? this.recalls + 1 : 0;
    $("call-screen").dataset.recalls = String(this.recalls);
    const screen = $("call-screen");
    delete screen.dataset.endReason;
    delete screen.dataset.rejectReason;
    $("message").textContent = "";
    delete $("message").dataset.kind;
    $("destinations").replaceChildren();
    const gs = $("goto-status");
    gs.textContent = "";
    delete gs.dataset.status;
    delete gs.dataset.destination;
    $("quality").textContent = "";
    $("call-title").textContent = c.nickname;
    $("hangup").hidden = false;
    $("back").hidden = true;
    const mute = $("mute") as HTMLButtonElement;
    mute.setAttribute("aria-pressed", "false");
    mute.textContent = "Talk";
    mute.disabled = true;
    show("call-screen");
    const call = new Call(this.link, this.me, { ...c.robot, nickname: c.nickname }, this.counter, this.inviteCheckOf(c.robot.robot), {
      state: (s, reason, message, rejectReason) => this.onCallState(call, s, reason, message, rejectReason),
      message: (t) => ($("message").textContent = t),
      remote: (stream) => {
        ($("remote-video") as HTMLVideoElement).srcObject = stream;
        ($("remote-audio") as HTMLAudioElement).srcObject = stream;
      },
      micAvailable: (yes) => {
        mute.disabled = !yes;
        mute.title = yes ? "Talk to the room" : "No microphone";
      },
      destinations: (places) => this.renderDestinations(call, places),
      gotoStatus: (msg) => this.renderGoto(msg),
    });
    this.call = call;
    await call.start(c.online);
  }

  private inviteCheckOf(robot: string): RisingCheck {
    let r = this.inviteChecks.get(robot);
    if (!r) this.inviteChecks.set(robot, (r = new RisingCheck()));
    return r;
  }

  private onCallState(call: Call, s: CallState, reason?: string, message?: string, rejectReason?: string) {
    if (call !== this.call) return;
    const screen = $("call-screen");
    screen.dataset.state = s;
    if (s === "connecting" || s === "connected") this.startStats(call);
    if (s !== "ended") return;
    this.joystick.release();
    const contact = this.contacts.get(call.robot.robot);
    if (reason === "network_lost" && contact && this.recalls < 3) {
      // Protocol 7.8: a new invite at once; the robot lets it replace the lost call.
      $("message").textContent = message ?? "";
      window.setTimeout(() => void this.placeCall(contact, true), 500);
      return;
    }
    clearInterval(this.statsTimer);
    if (reason) screen.dataset.endReason = reason;
    if (rejectReason) screen.dataset.rejectReason = rejectReason;
    const m = $("message");
    m.textContent = message ?? "";
    delete m.dataset.kind;
    ($("remote-video") as HTMLVideoElement).srcObject = null;
    ($("remote-audio") as HTMLAudioElement).srcObject = null;
    $("hangup").hidden = true;
    $("back").hidden = false;
    const mute = $("mute") as HTMLButtonElement;
    mute.setAttribute("aria-pressed", "false");
    mute.disabled = true;
  }

  private startStats(call: Call) {
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.meter = new QualityMeter();
    this.statsTimer = window.setInterval(async () => {
      const pc = call.peer;
      if (!pc || call.state === "ended") return;
      const q = await this.meter.sample(pc).catch(() => null);
      if (!q || (call.state as CallState) === "ended") return;
      const el = $("quality");
      el.textContent = qualityText(q);
      el.dataset.framesDecoded = String(q.framesDecoded);
      el.dataset.kbps = String(q.kbps);
      el.dataset.fps = String(q.fps);
      el.dataset.rttMs = q.rttMs === null ? "" : String(q.rttMs);
      el.dataset.width = String(q.width);
      el.dataset.height = String(q.height);
    }, 1000);
  }

  private renderDestinations(call: Call, places: string[]) {
    const box = $("destinations");
    box.replaceChildren(
      ...places.map((p) => {
        const b = document.createElement("button");
        b.type = "button";
        b.setAttribute("data-testid", "destination");
        b.dataset.name = p;
        b.textContent = p;
        b.addEventListener("click", () => {
          this.renderGoto({ destination: p, status: "accepted" }, "Asking to go to " + p + "…");
          void call.motion("goto", { destination: p });
        });
        return b;
      }),
    );
  }

  private renderGoto(msg: Record<string, unknown>, text?: string) {
    const gs = $("goto-status");
    if (typeof msg.destination === "string") gs.dataset.destination = msg.destination;
    if (typeof msg.status === "string") gs.dataset.status = msg.status;
    gs.textContent = text ?? gotoText(msg);
  }

  private stopNow() {
    this.joystick.release();
    if (this.call && this.call.state !== "ended") this.call.stopMotors();
  }

  // ---- wiring ---------------------------------------------------------------------------

  private wire() {
    $("pair-submit").addEventListener("click", () => void this.submitPairing());
    $("scan-qr").addEventListener("click", () => this.startScan());
    $("scan-cancel").addEventListener("click", () => this.scan?.cancel());
    const pad = $("joystick");
    this.joystick = attachJoystick(
      pad,
      pad.querySelector<HTMLElement>(".knob")!,
      (linear, angular) => void this.call?.motion("drive", { linear, angular, ms: 500 }),
      () => this.call?.stopMotors(),
    );
    $("stop").addEventListener("click", () => this.stopNow());
    $("mute").addEventListener("click", () => {
      const mute = $("mute");
      const talking = mute.getAttribute("aria-pressed") !== "true";
      const live = this.call?.setTalking(talking) ?? false;
      mute.setAttribute("aria-pressed", String(live));
      mute.textContent = live ? "Talking… (tap to mute)" : "Talk";
    });
    $("hangup").addEventListener("click", () => void this.call?.hangup());
    $("back").addEventListener("click", () => {
      if (this.call && this.call.state !== "ended") return;
      this.call = null;
      $("call-screen").dataset.state = "calling";
      show("contacts");
    });
    window.addEventListener("blur", () => this.stopNow());
    // leaving the page: stop and hang up (the broker may not deliver it; the robot then
    // ends the call when our Will arrives, 7.7)
    window.addEventListener("pagehide", () => {
      this.stopNow();
      void this.call?.hangup();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") this.stopNow();
    });
  }
}

function main() {
  const pending = takePairingFragment();
  if (!window.isSecureContext) {
    show("insecure");
    return;
  }
  void new App(pending).run();
}

main();
