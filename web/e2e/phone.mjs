// The owner's phone, end to end: Debian's Chromium, driven by playwright-core,
// opens the built web app and uses it as a person would, against a real
// Mosquitto and robotd on the simulated robot.
//
// Started by tests/webapp.rs inside the phone's network namespace (so every
// ICE candidate is a namespace address). It talks with that harness in lines:
// a request is printed as `@@ {"op":...}` on stdout and its answer is one JSON
// line on stdin. Requests: `status` (robotd status), `stop-broker` (kill
// Mosquitto, as in a crash), `start-broker`, `kill-helper` (SIGKILL robotd's
// media helper), `stop-robot` (robotd stops gracefully: offline), `cut-udp`
// (the carrier drops all UDP: the media path, not the broker), `restore`, and
// `other-call-start`/`other-call-stop` (a second owner, robotctl, in a call). Everything else it prints is a
// progress line for the test's output. Exit status 0 = every step passed.
//
// Environment (set by the harness):
//   APP_URL    the app, served on 127.0.0.1 inside the namespace
//   ROBOT_ID   the robot's client ID
//   QR_VIDEO   a .y4m video of the robot's pairing QR code (the fake camera)
//   TONE_WAV   a .wav tone (the fake microphone)
//   OUT_DIR    where screenshots go
//   CHROMIUM   the browser (default /usr/bin/chromium)
//   STEPS      comma-separated steps to run (default: all, in order)
//   BROKER_PASSWORD  typed into the first-run screen when set
//   PAIR_URI   the robot's pairing URI, for the pair-link step (a link that
//              opens the app with it in the fragment)
//   INSECURE_URL  the app from a plain http:// network address (no secure
//              context), checked with the pair step

import { keepPeerConnections, launchPhoneBrowser, PHONE_VIEWPORT } from './chromium.mjs';
import { ask, closeInput, sleep, until } from './harness.mjs';
import { join } from 'node:path';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`phone.mjs: ${k} is not set`);
  return v;
};
const APP_URL = env('APP_URL');
const ROBOT_ID = env('ROBOT_ID');
const OUT_DIR = env('OUT_DIR');
const ALL = ['refused-login', 'pair', 'pair-link', 'call', 'network-change', 'goto', 'drive', 'talk', 'broker', 'hangup', 'busy', 'media-failed', 'offline'];
const STEPS = (process.env.STEPS || ALL.join(',')).split(',');

// Generous: a busy 2-core machine builds, encodes and decodes at once.
const LONG = 90_000;

const say = (...a) => console.log('phone:', ...a);

const pose = (st) => st.sim;
const dist = (a, b) => Math.hypot(a.x - b.x, a.y - b.y);

const browser = await launchPhoneBrowser([
  `--use-file-for-fake-video-capture=${env('QR_VIDEO')}`,
  `--use-file-for-fake-audio-capture=${env('TONE_WAV')}`,
]);
let failed = false;
try {
  const origin = new URL(APP_URL).origin;
  const context = await browser.newContext(PHONE_VIEWPORT);
  await context.grantPermissions(['camera', 'microphone'], { origin });
  // Keeps the app's RTCPeerConnections, so a wait for frames that fails can
  // say what the browser received (tests/webapp.rs prints it).
  await context.addInitScript(keepPeerConnections);
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') say(`console.${m.type()}:`, m.text());
  });
  page.on('pageerror', (e) => say('page error:', e.message));

  if (STEPS.includes('refused-login')) {
    // Another phone with a wrong broker password: told so, in words.
    const other = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    const p2 = await other.newPage();
    await p2.goto(APP_URL);
    await p2.fill('#phone-number', '+48 555 555 555');
    await p2.fill('#nickname', 'Mallory');
    await p2.fill('#broker-password', 'not-the-password');
    await p2.click('#save-profile');
    const text = await until('the refused-login banner', LONG, async () => {
      const t = (await p2.locator('#banner').isVisible()) && (await p2.textContent('#banner'));
      return t && /refused/.test(t) && t;
    });
    say(`wrong broker password: "${text}"`);
    await other.close();
  }

  const link = STEPS.includes('pair-link') ? `#pair=${encodeURIComponent(env('PAIR_URI'))}` : '';
  if (process.env.INSECURE_URL && STEPS.includes('pair')) {
    // From a plain http:// network address the page is no secure context: it says so.
    const p2 = await context.newPage();
    await p2.goto(process.env.INSECURE_URL);
    await p2.locator('#insecure').waitFor({ timeout: LONG });
    say(`not a secure context: "${(await p2.textContent('#insecure')).trim().replace(/\s+/g, ' ')}"`);
    await p2.close();
  }
  await page.goto(APP_URL + link);
  if (link) {
    // The secret leaves the address bar at once.
    await until('the pairing link out of the address bar', LONG, async () => !page.url().includes('#pair='));
  }
  const attr = (sel, name) => page.locator(sel).getAttribute(name);
  const quality = async () => ({
    frames: Number((await attr('#quality', 'data-frames-decoded')) || 0),
    width: Number((await attr('#quality', 'data-width')) || 0),
    height: Number((await attr('#quality', 'data-height')) || 0),
  });

  // The latest peer connection's video, transport and candidate pair, as the browser counts them.
  const browserMedia = () =>
    page.evaluate(async () => {
      const pc = window.__pcs[window.__pcs.length - 1];
      if (!pc) return 'no RTCPeerConnection';
      const out = { pcs: window.__pcs.length, state: pc.connectionState, ice: pc.iceConnectionState };
      const pick = (s, keys) => Object.fromEntries(keys.filter((k) => s[k] !== undefined).map((k) => [k, s[k]]));
      const all = [...(await pc.getStats()).values()];
      for (const s of all) {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          out.video = pick(s, ['packetsReceived', 'packetsLost', 'bytesReceived', 'framesReceived', 'framesDecoded',
            'keyFramesDecoded', 'framesDropped', 'nackCount', 'pliCount', 'firCount', 'decoderImplementation', 'codecId']);
        }
        if (s.type === 'transport') out.transport = pick(s, ['dtlsState', 'iceState', 'bytesReceived', 'packetsReceived', 'srtpCipher', 'selectedCandidatePairChanges']);
        if (s.type === 'candidate-pair' && s.nominated) out.pair = pick(s, ['state', 'bytesReceived', 'bytesSent']);
      }
      return out;
    }).catch((e) => `getStats failed: ${e.message}`);
  // Wait for frames; on a timeout, say what the robot sent and the browser received.
  const untilFrames = (what, f) =>
    until(what, LONG, f).catch(async (e) => {
      const st = await ask('status').catch(() => ({}));
      throw new Error(`${e.message}; robotd status media: ${JSON.stringify(st.media)}; phone: ${JSON.stringify(await quality())}; browser: ${JSON.stringify(await browserMedia())}`);
    });

  // First run: phone number (shown back in E.164) and nickname.
  await page.locator('#first-run').waitFor({ timeout: LONG });
  await page.fill('#phone-number', '+48 555 555 555');
  await page.fill('#nickname', 'Alice');
  if (process.env.BROKER_PASSWORD) await page.fill('#broker-password', process.env.BROKER_PASSWORD);
  await page.click('#save-profile');
  await until('the E.164 number shown', LONG, async () => (await page.textContent('#e164'))?.includes('+48555555555'));
  say('first run done: +48555555555');

  if (STEPS.includes('pair')) {
    // The fake camera shows the robot's own pairing QR code.
    await page.locator('#contacts').waitFor({ timeout: LONG });
    await page.click('#scan-qr');
    await until('paired', LONG, async () => (await attr('#pair-status', 'data-status')) === 'paired');
    const contact = page.locator(`[data-testid=contact][data-robot-id="${ROBOT_ID}"]`);
    await contact.waitFor({ timeout: LONG });
    await until('the robot shown online', LONG, async () =>
      (await contact.locator('.online').getAttribute('data-online')) === 'true');
    say('paired by scanning the QR code; the robot shows online');
    if (page.url().includes('secret=') || page.url().includes('pair=')) throw new Error(`secret in the URL: ${page.url()}`);
  }

  if (STEPS.includes('pair-link')) {
    await page.locator('#contacts').waitFor({ timeout: LONG });
    const pre = await page.inputValue('#pair-uri');
    if (!pre.startsWith('robotd://pair?')) throw new Error(`the pairing link did not fill the form: ${pre}`);
    await page.click('#pair-submit');
    await until('paired', LONG, async () => (await attr('#pair-status', 'data-status')) === 'paired');
    await page.locator(`[data-testid=contact][data-robot-id="${ROBOT_ID}"]`).waitFor({ timeout: LONG });
    say('paired from a pairing link; the address bar no longer has it');
  }

  if (STEPS.includes('pair') || STEPS.includes('pair-link')) {
    // No secret in localStorage, sessionStorage or the URL (keys live in IndexedDB).
    const stored = await page.evaluate(() => ({ local: localStorage.length, session: sessionStorage.length, url: location.href }));
    if (stored.local || stored.session || /secret|pair=/.test(stored.url)) throw new Error(`secrets outside IndexedDB: ${JSON.stringify(stored)}`);
  }

  if (STEPS.includes('call')) {
    await page.click(`[data-testid=contact][data-robot-id="${ROBOT_ID}"] [data-testid=call]`);
    await until('connected', LONG, async () => (await attr('#call-screen', 'data-state')) === 'connected');
    const q = await untilFrames('30 frames decoded', async () => {
      const v = await quality();
      return v.frames >= 30 && v;
    });
    const video = await page.evaluate(() => {
      const v = document.querySelector('video#remote-video');
      return { w: v.videoWidth, h: v.videoHeight, playsinline: v.hasAttribute('playsinline'), muted: v.muted };
    });
    const st = await ask('status');
    const neg = st.call && st.call.video;
    say(`call connected: ${q.frames} frames decoded, ${q.width}x${q.height}, video element ${video.w}x${video.h}, robot sends ${JSON.stringify(neg)}`);
    if (!video.playsinline || !video.muted) throw new Error(`video element not playsinline+muted: ${JSON.stringify(video)}`);
    if (neg && (video.w !== neg.width || video.h !== neg.height)) throw new Error(`video ${video.w}x${video.h} is not the negotiated ${neg.width}x${neg.height}`);
    if (!neg && (video.w === 0 || video.h === 0)) throw new Error('no video size');
    // robotd status shows what its media helper sends.
    const sent = await until('robotd status media.video', LONG, async () => {
      const v = (await ask('status')).media?.video;
      return v && v.frames_sent > 0 && v.sent_kbps > 0 && v;
    });
    say(`robotd status media.video: ${JSON.stringify(sent)}`);
    say(`browser media: ${JSON.stringify(await browserMedia())}`);
    if (neg && (sent.width !== neg.width || sent.height !== neg.height)) throw new Error(`robotd says it sends ${sent.width}x${sent.height}`);
  }

  if (STEPS.includes('network-change')) {
    // The media path is lost for good (as when the phone leaves a network) while the
    // broker connection stays: the app notices ICE fail and calls again, and the new
    // call replaces the old one on the robot (protocol 7.8).
    const recalls = async () => Number((await attr('#call-screen', 'data-recalls')) || 0);
    const before = await recalls();
    const session = (await ask('status')).call?.session;
    await ask('cut-udp');
    const t0 = Date.now();
    await until('the app calling again', 3 * LONG, async () => (await recalls()) > before, 200);
    const noticed = Date.now() - t0;
    await ask('restore');
    await until('connected again', LONG, async () => (await attr('#call-screen', 'data-state')) === 'connected');
    await untilFrames('frames in the new call', async () => (await quality()).frames >= 10);
    const st = await ask('status');
    if (!st.call || st.call.session === session) throw new Error(`the robot is not in a new call: ${JSON.stringify(st.call)}`);
    say(`network change: the app called again after ${noticed} ms; the new call replaced the old one and decodes`);
  }

  if (STEPS.includes('goto')) {
    await page.locator('[data-testid=destination][data-name=kitchen]').waitFor({ timeout: LONG });
    await page.click('[data-testid=destination][data-name=kitchen]');
    const seen = new Set();
    await until('arrived at the kitchen', 3 * LONG, async () => {
      seen.add(await attr('#goto-status', 'data-status'));
      return (await attr('#goto-status', 'data-status')) === 'arrived' &&
        (await attr('#goto-status', 'data-destination')) === 'kitchen';
    }, 100);
    say(`goto kitchen: ${[...seen].join(' > ')}: "${await page.textContent('#goto-status')}"`);
    if (!seen.has('moving')) throw new Error(`no moving status shown on the way: ${[...seen]}`);
    await page.click('[data-testid=destination][data-name=bedroom]');
    await until('blocked on the way to the bedroom', 3 * LONG, async () =>
      (await attr('#goto-status', 'data-status')) === 'blocked' &&
        (await attr('#goto-status', 'data-destination')) === 'bedroom');
    const text = await page.textContent('#goto-status');
    say(`goto bedroom: blocked: "${text}"`);
    if (!/bedroom/i.test(text)) throw new Error(`the blocked message does not name the bedroom: ${text}`);
    if (process.env.DOOR_UV) {
      // The simulated camera: stopped before the shut door, the door's
      // colour (its U and V; the renderer shades only Y) fills the picture.
      const [du, dv] = process.env.DOOR_UV.split(',').map(Number);
      const share = () => page.evaluate(([du, dv]) => {
        const v = document.querySelector('video#remote-video');
        const c = document.createElement('canvas');
        c.width = v.videoWidth;
        c.height = v.videoHeight;
        const g = c.getContext('2d');
        g.drawImage(v, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
          const [r, gr, b] = [d[i], d[i + 1], d[i + 2]];
          const u = -0.169 * r - 0.331 * gr + 0.5 * b + 128;
          const w = 0.5 * r - 0.419 * gr - 0.081 * b + 128;
          if (Math.abs(u - du) < 25 && Math.abs(w - dv) < 25) n++;
        }
        return n / Math.max(1, d.length / 4);
      }, [du, dv]);
      let last = 0;
      const filled = await until('the shut door filling the picture', LONG, async () => {
        last = await share();
        return last > 0.8 && last;
      }).catch((e) => { throw new Error(`${e.message} (door colour in ${(last * 100).toFixed(0)} % of the picture)`); });
      say(`goto bedroom: the door fills ${(filled * 100).toFixed(0)} % of the picture`);
    }
    await page.screenshot({ path: join(OUT_DIR, 'call-screen.png') });
  }

  if (STEPS.includes('drive')) {
    const pad = await page.locator('#joystick').boundingBox();
    const cx = pad.x + pad.width / 2;
    const cy = pad.y + pad.height / 2;
    const before = pose(await ask('status'));
    // Pull the stick down (reverse: after the blocked goto the robot faces
    // the shut door) and hold it.
    await page.mouse.move(cx, cy);
    await page.mouse.down();
    await page.mouse.move(cx, cy + pad.height * 0.35, { steps: 5 });
    const moved = await until('the robot moving under the joystick', LONG, async () => {
      const st = await ask('status');
      return dist(pose(st), before) > 0.05 && st;
    }, 200);
    say(`joystick held: moved ${dist(pose(moved), before).toFixed(2)} m, motion ${moved.motion}`);
    await page.mouse.up();
    const stopped = await until('the robot stopped after release', LONG, async () => {
      const st = await ask('status');
      return st.motion === 'idle' && st;
    }, 100);
    // The simulated robot brakes to a halt (a few centimetres), then stands.
    await sleep(1000);
    const halted = pose(await ask('status'));
    await sleep(1500);
    const after = pose(await ask('status'));
    say(`joystick released: motion ${stopped.motion}, braked ${dist(halted, pose(stopped)).toFixed(3)} m, then ${dist(after, halted).toFixed(3)} m in 1.5 s`);
    if (dist(halted, pose(stopped)) > 0.1 || dist(after, halted) > 0.005) {
      throw new Error('the robot kept moving after the joystick was released');
    }
  }

  if (STEPS.includes('talk')) {
    // robotd status: media.speaker_level_db (RMS, dBFS) of what the robot's
    // test speaker receives, null before any audio; speaker_receiving false
    // when nothing was decoded within the last second.
    const level = async () => {
      const m = (await ask('status')).media || {};
      return m.speaker_receiving ? m.speaker_level_db : null;
    };
    if ((await attr('#mute', 'aria-pressed')) !== 'false') throw new Error('the microphone is not muted at the start of the call');
    await page.click('#mute');
    if ((await attr('#mute', 'aria-pressed')) !== 'true') throw new Error('#mute did not turn on');
    const loud = await until('the tone at the robot speaker', LONG, async () => {
      const l = await level();
      return l !== null && l > -40 && l;
    });
    await page.click('#mute');
    const quiet = await until('silence at the robot speaker after muting', LONG, async () => {
      const l = await level();
      return (l === null || l < -70) && String(l);
    });
    say(`talk: unmuted ${loud.toFixed(1)} dBFS, muted ${quiet} dBFS`);
  }

  if (STEPS.includes('broker')) {
    const before = (await quality()).frames;
    await ask('stop-broker');
    await until('the broker-lost banner', LONG, async () =>
      (await page.locator('#banner').isVisible()) && (await attr('#banner', 'data-kind')) === 'broker-lost', 100);
    say('broker down: banner shown');
    await ask('start-broker');
    await until('the banner gone', LONG, async () => !(await page.locator('#banner').isVisible()));
    const state = await attr('#call-screen', 'data-state');
    if (state !== 'connected') throw new Error(`the call did not survive the broker restart: ${state}`);
    const after = await untilFrames('frames still decoding', async () => {
      const f = (await quality()).frames;
      return f > before + 30 && f;
    });
    // The call's commands work again: a press on stop is answered.
    await page.click('#stop');
    const st = await ask('status');
    if (!st.call) throw new Error('robotd ended the call during the broker restart');
    say(`broker restarted: banner gone, call still connected, frames ${before} -> ${after}`);
  }

  if (STEPS.includes('hangup')) {
    await page.click('#hangup');
    await until('ended on the phone', LONG, async () => (await attr('#call-screen', 'data-state')) === 'ended');
    const reason = await attr('#call-screen', 'data-end-reason');
    if (reason !== 'hangup') throw new Error(`ended with ${reason}, not hangup`);
    await until('ended on the robot', LONG, async () => (await ask('status')).call === null);
    say('hung up: ended on both sides');
  }

  const contactSel = `[data-testid=contact][data-robot-id="${ROBOT_ID}"]`;
  const backToContacts = async () => {
    if (await page.locator('#back').isVisible()) await page.click('#back');
    await page.locator('#contacts').waitFor({ timeout: LONG });
  };

  if (STEPS.includes('busy')) {
    // Someone else is in a call: the phone is told so.
    await backToContacts();
    await ask('other-call-start');
    await page.click(`${contactSel} [data-testid=call]`);
    await until('busy', LONG, async () => (await attr('#call-screen', 'data-end-reason')) === 'busy');
    say(`busy: "${await page.textContent('#message')}"`);
    await ask('other-call-stop');
  }

  if (STEPS.includes('media-failed')) {
    // The robot's media helper dies mid-call: the phone says so at once.
    await backToContacts();
    await page.click(`${contactSel} [data-testid=call]`);
    await until('connected again', LONG, async () => (await attr('#call-screen', 'data-state')) === 'connected');
    await untilFrames('frames again', async () => (await quality()).frames >= 10);
    await ask('kill-helper');
    await until('the call ended', LONG, async () => (await attr('#call-screen', 'data-state')) === 'ended');
    const reason = await attr('#call-screen', 'data-end-reason');
    const text = (await page.textContent('#message')) || '';
    say(`media helper killed: ended ${reason}: "${text}"`);
    if (reason !== 'media_failed' || !text.trim()) throw new Error(`expected media_failed with a message, got ${reason}: ${text}`);
  }

  if (STEPS.includes('offline')) {
    // The robot goes offline: its dot says so, and a call is not even placed.
    await backToContacts();
    await ask('stop-robot');
    await until('the robot shown offline', LONG, async () =>
      (await page.locator(`${contactSel} .online`).getAttribute('data-online')) === 'false');
    await page.click(`${contactSel} [data-testid=call]`);
    await until('the offline message', LONG, async () => (await attr('#call-screen', 'data-end-reason')) === 'offline');
    const text = (await page.textContent('#message')) || '';
    say(`robot offline: call refused on the phone: "${text}"`);
    if (!text.trim()) throw new Error('no message for an offline robot');
  }
} catch (e) {
  failed = true;
  console.error('phone: FAILED:', e && e.stack ? e.stack : e);
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages[0]) {
      await pages[0].screenshot({ path: join(OUT_DIR, 'failure.png') });
      console.error('phone: page text at failure:\n' + (await pages[0].locator('body').innerText()).slice(0, 2000));
    }
  } catch {}
} finally {
  await browser.close();
  closeInput();
}
process.exit(failed ? 1 : 0);
