// Debian's Chromium as the phone, for phone.mjs (the browser test) and
// bench.mjs (the browser bench): headless, no GPU, fake media devices
// (`extra` adds e.g. the files they play), timers kept honest in a
// background tab (never --virtual-time-budget: time matters here).
import { chromium } from 'playwright-core';

export const PHONE_VIEWPORT = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };

export function launchPhoneBrowser(extra = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      ...extra,
      '--disable-background-timer-throttling',
      '--disable-renderer-backgrounding',
    ],
  });
}

/**
 * Installed in the page before its own scripts (`context.addInitScript(keepPeerConnections)`):
 * keeps every RTCPeerConnection the app makes in `window.__pcs`, for getStats.
 */
export function keepPeerConnections() {
  window.__pcs = [];
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = function (...a) {
    const pc = new Native(...a);
    window.__pcs.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Native.prototype;
  Object.setPrototypeOf(window.RTCPeerConnection, Native);
}
