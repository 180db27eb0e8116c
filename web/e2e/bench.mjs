// The page driver of benches/browser.rs (docs/benchmarks.md, "In a real
// browser"): Debian's Chromium, driven by playwright-core, opens the built
// app in a phone-sized viewport and measures what a person sees.
//
// Started by the bench inside a phone's network namespace. Requests to the
// harness are printed as `@@ {"op":...}` and answered with one JSON line on
// stdin: `status` (robotd status), `floor-offer` (the bench's bare webrtcbin
// sender answers the page's offer), `floor-stop`. The figures are printed as
// one `RESULT {json}` line; everything else is progress.
//
// Environment: APP_URL, ROBOT_ID, PAIR_URI (paired from a pairing link),
// MODE (`lan`: everything; `turn`: time to first frame only), ROUNDS,
// SECONDS (glass-to-glass measuring time per sender and round), DIST (the
// built app, to name the files not downloaded on opening), CHROMIUM.

import { keepPeerConnections, launchPhoneBrowser, PHONE_VIEWPORT } from './chromium.mjs';
import { ask, closeInput, until as untilEvery } from './harness.mjs';
import { readdirSync } from 'node:fs';
import { gzipSync, brotliCompressSync } from 'node:zlib';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`bench.mjs: ${k} is not set`);
  return v;
};
const APP_URL = env('APP_URL');
const ROBOT_ID = env('ROBOT_ID');
const MODE = env('MODE', 'lan');
const ROUNDS = Number(env('ROUNDS', '3'));
const SECONDS = Number(env('SECONDS', '10'));
// Floor variants, each measured every round (benches/browser.rs floor_sender).
const FLOORS = env('FLOORS', 'bare').split(',').filter(Boolean);
const LONG = 90_000;

const say = (...a) => console.log('bench:', ...a);

const until = (what, ms, f, every = 100) => untilEvery(what, ms, f, every);

// Installed in the page before its own scripts (after keepPeerConnections):
// notes when the robot is first shown online, and the measuring functions.
const CONTACT = `[data-testid=contact][data-robot-id="${ROBOT_ID}"]`;
function pageKit(contact) {
  window.__online = null;
  const seen = () => {
    if (window.__online !== null) return;
    const el = document.querySelector(`${contact} .online`);
    if (el && el.getAttribute('data-online') === 'true') window.__online = performance.now();
  };
  new MutationObserver(seen).observe(document, { subtree: true, childList: true, attributes: true });

  // The time code of src/video/simview.rs: 40 blocks along the bottom-left
  // edge, each max(2, floor(width / 80)) px square; 32 bits of capture ms,
  // then 8 check bits (bytes XOR 0x5a). Samples each block's middle.
  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  window.__readCode = (video) => {
    const W = video.videoWidth, H = video.videoHeight;
    const b = Math.max(2, Math.floor(W / 80));
    if (!W || 40 * b > W) return null;
    canvas.width = 40 * b;
    canvas.height = b;
    ctx.drawImage(video, 0, H - b, 40 * b, b, 0, 0, 40 * b, b);
    const d = ctx.getImageData(0, Math.floor(b / 2), 40 * b, 1).data;
    const bits = [];
    for (let i = 0; i < 40; i++) {
      const x = (i * b + Math.floor(b / 2)) * 4;
      bits.push(0.299 * d[x] + 0.587 * d[x + 1] + 0.114 * d[x + 2] >= 128 ? 1 : 0);
    }
    const byte = (k) => bits.slice(8 * k, 8 * k + 8).reduce((a, v) => (a << 1) | v, 0);
    const bytes = [0, 1, 2, 3].map(byte);
    if ((bytes.reduce((a, v) => a ^ v, 0x5a) & 0xff) !== byte(4)) return null;
    return ((bytes[0] << 24) >>> 0) + (bytes[1] << 16) + (bytes[2] << 8) + bytes[3];
  };
  // Frames presented for `ms`: capture (from the code, the low 32 bits of
  // the wall clock's ms put back next to the presentation time) to
  // expectedDisplayTime on the same wall clock.
  window.__g2g = (video, ms) => new Promise((resolve) => {
    const out = { ms: [], recv_to_display: [], unreadable: 0, presented: 0, skew: [] };
    const end = performance.now() + ms;
    let first = null, last = null;
    const cb = (now, md) => {
      if (first === null) first = md.presentedFrames;
      last = md.presentedFrames;
      const code = window.__readCode(video);
      const shown = performance.timeOrigin + md.expectedDisplayTime;
      if (code === null) out.unreadable++;
      else {
        const low = shown % 2 ** 32;
        let delta = low - code;
        if (delta < -(2 ** 31)) delta += 2 ** 32;
        out.ms.push(Math.round(delta * 10) / 10);
        if (md.receiveTime) out.recv_to_display.push(Math.round((md.expectedDisplayTime - md.receiveTime) * 10) / 10);
      }
      out.skew.push(Date.now() - (performance.timeOrigin + performance.now()));
      if (performance.now() < end) video.requestVideoFrameCallback(cb);
      else {
        out.presented = last - first + 1;
        resolve(out);
      }
    };
    video.requestVideoFrameCallback(cb);
    setTimeout(() => resolve(out), ms + 10_000);
  });
  // Tap "call", then the first frame presented: ms from the tap to that
  // frame's expectedDisplayTime.
  window.__ttff = (sel) => new Promise((resolve, reject) => {
    const v = document.querySelector('video#remote-video');
    const t0 = performance.now();
    v.requestVideoFrameCallback((now, md) => resolve(md.expectedDisplayTime - t0));
    document.querySelector(sel).click();
    setTimeout(() => reject(new Error('no frame within 30 s of the tap')), 30_000);
  });
  window.__inbound = async (pc) => {
    for (const s of (await pc.getStats()).values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'video') return s;
    }
    return null;
  };
}

const browser = await launchPhoneBrowser();
let failed = false;
const result = { mode: MODE, ttff: [], connected: [], g2g: {}, open: {} };
try {
  const context = await browser.newContext(PHONE_VIEWPORT);
  await context.grantPermissions(['camera', 'microphone'], { origin: new URL(APP_URL).origin });
  await context.addInitScript(keepPeerConnections);
  await context.addInitScript(pageKit, CONTACT);
  const page = await context.newPage();
  page.on('pageerror', (e) => say('page error:', e.message));
  const attr = (sel, name) => page.locator(sel).getAttribute(name);

  // First open: the first-run screen, then paired from a pairing link.
  await page.goto(APP_URL + `#pair=${encodeURIComponent(env('PAIR_URI'))}`);
  await page.locator('#first-run').waitFor({ timeout: LONG });
  await page.fill('#phone-number', '+48 555 555 555');
  await page.fill('#nickname', 'Alice');
  await page.click('#save-profile');
  await page.locator('#contacts').waitFor({ timeout: LONG });
  await until('the pairing form filled', LONG, async () => (await page.inputValue('#pair-uri')).startsWith('robotd://pair?'));
  await page.click('#pair-submit');
  await until('paired', LONG, async () => (await attr('#pair-status', 'data-status')) === 'paired');
  await until('the robot online', LONG, async () => (await page.evaluate(() => window.__online)) !== null);
  say('paired; the robot shows online');

  if (MODE === 'lan') {
    // Opening the page with an empty cache (as after a browser update):
    // what it downloads, compressed as a server would, and when the robot
    // is shown online. The app is served uncompressed; gzip -6 and brotli
    // of each response body are what a compressing server would send.
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
    result.open = { online_ms: [], dcl_ms: [], files: [], lazy: [] };
    const opens = 5;
    for (let i = 0; i < opens; i++) {
      const got = [];
      const onResponse = async (r) => {
        try {
          const body = await r.body();
          got.push({ path: new URL(r.url()).pathname, bytes: body.length, gzip: gzipSync(body, { level: 6 }).length, brotli: brotliCompressSync(body).length });
        } catch {}
      };
      page.on('response', onResponse);
      await page.reload();
      await until('the robot online after opening', LONG, async () => (await page.evaluate(() => window.__online)) !== null, 20);
      const t = await page.evaluate(() => ({ online: window.__online, dcl: performance.getEntriesByType('navigation')[0]?.domContentLoadedEventEnd }));
      page.off('response', onResponse);
      result.open.online_ms.push(Math.round(t.online));
      result.open.dcl_ms.push(Math.round(t.dcl));
      if (i === 0) result.open.files = got.sort((a, b) => b.gzip - a.gzip);
    }
    await cdp.send('Network.setCacheDisabled', { cacheDisabled: false });
    const loaded = new Set(result.open.files.map((f) => f.path));
    try {
      result.open.lazy = readdirSync(`${env('DIST')}/assets`).map((f) => `/assets/${f}`).filter((f) => !loaded.has(f));
    } catch {}
    say(`opening: ${result.open.files.length} files; robot online after ${result.open.online_ms.join(', ')} ms`);
  }

  const callOnce = async () => {
    await page.locator(`${CONTACT} [data-testid=call]`).waitFor({ timeout: LONG });
    const tap = Date.now();
    let ttff;
    try {
      ttff = await page.evaluate((sel) => window.__ttff(sel), `${CONTACT} [data-testid=call]`);
    } catch (e) {
      // Counted, not fatal: the report gives the calls that showed nothing.
      result.no_frame = (result.no_frame || 0) + 1;
      say(`a call showed no frame: ${e.message}; call-screen ${await attr('#call-screen', 'data-state')}`);
      return null;
    }
    await until('connected', LONG, async () => (await attr('#call-screen', 'data-state')) === 'connected', 20);
    result.ttff.push(Math.round(ttff));
    result.connected.push(Date.now() - tap);
    return ttff;
  };
  const hangUp = async () => {
    if (await page.locator('#hangup').isVisible()) await page.click('#hangup');
    await until('ended', LONG, async () => (await attr('#call-screen', 'data-state')) === 'ended');
    await until('ended on the robot', LONG, async () => (await ask('status')).call === null);
    if (await page.locator('#back').isVisible()) await page.click('#back');
    await page.locator('#contacts').waitFor({ timeout: LONG });
    // A person does not call again within a second of hanging up.
    await page.waitForTimeout(2000);
  };
  const stats = async (pcExpr) => page.evaluate(async (expr) => {
    const pc = eval(expr);
    const s = pc && (await window.__inbound(pc));
    return s && {
      jitterBufferDelay: s.jitterBufferDelay, jitterBufferEmittedCount: s.jitterBufferEmittedCount,
      jitterBufferTargetDelay: s.jitterBufferTargetDelay, jitterBufferMinimumDelay: s.jitterBufferMinimumDelay,
      totalDecodeTime: s.totalDecodeTime, framesDecoded: s.framesDecoded, framesDropped: s.framesDropped,
      freezeCount: s.freezeCount, packetsLost: s.packetsLost, nackCount: s.nackCount, frameWidth: s.frameWidth, frameHeight: s.frameHeight,
    };
  }, pcExpr);
  const perFrame = (a, b) => {
    if (!a || !b) return {};
    const n = b.jitterBufferEmittedCount - a.jitterBufferEmittedCount;
    const f = b.framesDecoded - a.framesDecoded;
    return {
      jitter_ms: n > 0 ? (1000 * (b.jitterBufferDelay - a.jitterBufferDelay)) / n : null,
      target_ms: n > 0 && b.jitterBufferTargetDelay !== undefined ? (1000 * (b.jitterBufferTargetDelay - a.jitterBufferTargetDelay)) / n : null,
      decode_ms: f > 0 ? (1000 * (b.totalDecodeTime - a.totalDecodeTime)) / f : null,
      dropped: b.framesDropped - a.framesDropped, lost: b.packetsLost - a.packetsLost, size: `${b.frameWidth}x${b.frameHeight}`,
    };
  };
  const add = (who, m, st) => {
    const g = (result.g2g[who] ??= { ms: [], recv_to_display: [], unreadable: 0, presented: 0, jitter_ms: [], decode_ms: [], target_ms: [], rounds: [] });
    g.ms.push(...m.ms);
    g.recv_to_display.push(...m.recv_to_display);
    g.unreadable += m.unreadable;
    g.presented += m.presented;
    if (st.jitter_ms != null) g.jitter_ms.push(st.jitter_ms);
    if (st.decode_ms != null) g.decode_ms.push(st.decode_ms);
    if (st.target_ms != null) g.target_ms.push(st.target_ms);
    const sorted = [...m.ms].sort((a, b) => a - b);
    g.rounds.push({ n: m.ms.length, p50: sorted[Math.floor(sorted.length / 2)], ...st });
    say(`${who}: ${m.ms.length} frames read (${m.unreadable} unreadable), p50 ${sorted[Math.floor(sorted.length / 2)]} ms, ${JSON.stringify(st)}`);
  };

  for (let round = 0; round < ROUNDS; round++) {
    // The app's call: tap -> first frame, then glass-to-glass.
    const ttff = await callOnce();
    say(`round ${round}: tap -> first frame ${ttff === null ? 'none' : Math.round(ttff)} ms`);
    if (SECONDS > 0 && ttff !== null) {
      // Settle (the encoder's first keyframe, the congestion controller's start).
      await page.waitForTimeout(2000);
      const pc = 'window.__pcs[window.__pcs.length - 1]';
      const a = await stats(pc);
      const m = await page.evaluate((ms) => window.__g2g(document.querySelector('video#remote-video'), ms), SECONDS * 1000);
      add('app', m, perFrame(a, await stats(pc)));
    }
    await hangUp();

    for (const variant of MODE === 'lan' && SECONDS > 0 ? FLOORS : []) {
      // The floor: a bare webrtcbin sender to a video element of the same size on the same page.
      const offer = await page.evaluate(async () => {
        const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
        window.__floor = pc;
        pc.addTransceiver('video', { direction: 'recvonly' });
        const v = document.createElement('video');
        v.id = 'floor-video';
        v.muted = true;
        v.autoplay = true;
        v.playsInline = true;
        v.style.cssText = 'position:fixed;left:0;top:0;width:390px;height:219px;z-index:99;background:#000';
        document.body.appendChild(v);
        pc.ontrack = (e) => { v.srcObject = e.streams[0] || new MediaStream([e.track]); };
        await pc.setLocalDescription(await pc.createOffer());
        await new Promise((r) => {
          if (pc.iceGatheringState === 'complete') return r();
          pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r();
          setTimeout(r, 5000);
        });
        return { type: 'offer', sdp: pc.localDescription.sdp };
      });
      const answer = await ask('floor-offer', { offer, variant });
      await page.evaluate(async (sdp) => {
        await window.__floor.setRemoteDescription({ type: 'answer', sdp });
        const v = document.getElementById('floor-video');
        await new Promise((r, j) => {
          v.requestVideoFrameCallback(() => r());
          setTimeout(() => j(new Error('no floor frame within 30 s')), 30_000);
        });
      }, answer.sdp);
      await page.waitForTimeout(2000);
      const a = await stats('window.__floor');
      const m = await page.evaluate((ms) => window.__g2g(document.getElementById('floor-video'), ms), SECONDS * 1000);
      add(`floor:${variant}`, m, perFrame(a, await stats('window.__floor')));
      await page.evaluate(() => {
        window.__floor.close();
        document.getElementById('floor-video').remove();
      });
      await ask('floor-stop');
    }
  }
} catch (e) {
  failed = true;
  console.error('bench: FAILED:', e && e.stack ? e.stack : e);
  try {
    const p = browser.contexts()[0]?.pages()[0];
    if (p) {
      const text = async (sel) => ((await p.locator(sel).count()) ? (await p.locator(sel).first().textContent()) : null);
      console.error(`bench: at failure: pair-status ${JSON.stringify(await p.locator('#pair-status').getAttribute('data-status').catch(() => null))} "${await text('#pair-status')}", banner "${await text('#banner')}"`);
    }
  } catch {}
} finally {
  console.log(`RESULT ${JSON.stringify(result)}`);
  await browser.close();
  closeInput();
}
process.exit(failed ? 1 : 0);
