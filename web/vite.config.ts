// Build configuration of the phone web app. Everything that differs between
// deployments comes from the environment at build time (web/README.md):
//   ROBOTD_BROKER_WS    the broker's WebSockets URL (default ws://127.0.0.1:9001)
//   ROBOTD_ICE_SERVERS  JSON array of RTCIceServer (default: none)
//   ROBOTD_WEB_OUTDIR   where to build (default web/dist)
import type { Plugin } from "vite";
import { defineConfig } from "vitest/config";
import { resolve } from "node:path";

function brokerUrl(): string {
  const raw = process.env.ROBOTD_BROKER_WS ?? "ws://127.0.0.1:9001";
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`ROBOTD_BROKER_WS=${raw} is not a URL; give e.g. ws://127.0.0.1:9001 or wss://broker.example/mqtt`);
  }
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new Error(`ROBOTD_BROKER_WS=${raw} must start with ws:// or wss:// (the broker's WebSockets listener)`);
  }
  return raw;
}

function iceServers(): unknown[] {
  const raw = process.env.ROBOTD_ICE_SERVERS;
  if (!raw) return [];
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new Error("ROBOTD_ICE_SERVERS is not JSON; give an array of RTCIceServer, e.g. [{\"urls\":\"turn:turn.example:3478\",\"username\":\"u\",\"credential\":\"p\"}]");
  }
  if (!Array.isArray(v)) throw new Error("ROBOTD_ICE_SERVERS must be a JSON array of RTCIceServer");
  return v;
}

const broker = brokerUrl();
const ice = iceServers();

/** The Content-Security-Policy: the app itself and exactly the broker's origin. */
function csp(): Plugin {
  const origin = new URL(broker).origin;
  const policy = [
    "default-src 'self'",
    `connect-src 'self' ${origin}`,
    "img-src 'self' data: blob:",
    "media-src 'self' blob: mediastream:",
    "style-src 'self'",
    "script-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
  ].join("; ");
  return {
    name: "robotd-csp",
    apply: "build",
    transformIndexHtml(html) {
      return html.replace(
        "<!--CSP-->",
        `<meta http-equiv="Content-Security-Policy" content="${policy}">`,
      );
    },
  };
}

export default defineConfig({
  base: "./",
  define: {
    __ROBOTD_BROKER_WS__: JSON.stringify(broker),
    __ROBOTD_ICE_SERVERS__: JSON.stringify(ice),
  },
  plugins: [csp()],
  build: {
    outDir: process.env.ROBOTD_WEB_OUTDIR ? resolve(process.env.ROBOTD_WEB_OUTDIR) : "dist",
    emptyOutDir: true,
    modulePreload: { polyfill: false },
    target: "es2020",
    // terser instead of esbuild's minifier: the app downloads 142 kB gzip
    // instead of 151 kB (issue 17's goal is 150 kB; docs/benchmarks.md), for
    // ~15 s more build time. A second compress pass saved only 50 bytes.
    minify: "terser",
    terserOptions: { module: true },
    // MQTT.js alone is ~340 kB minified; the whole app is one ~500 kB chunk (~140 kB gzip)
    chunkSizeWarningLimit: 700,
  },
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
  },
});
