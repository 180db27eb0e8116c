// The steps of web/tools/netns-smoke.sh (run it, not this file). Manual evidence, not a CI test.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";
import { execSync } from "node:child_process";

const run = process.env.SMOKE_RUN;
const app = process.env.SMOKE_APP;
const robotd = process.env.SMOKE_ROBOTD;
const status = () => JSON.parse(execSync(`${robotd} status`).toString());
let failed = 0;
const step = async (name, f) => {
  try {
    const r = await f();
    console.log("ok  ", name, typeof r === "string" ? r : "");
  } catch (e) {
    failed++;
    console.log("FAIL", name, e.message.split("\n")[0]);
  }
};
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
});
const withMic = !!process.env.SMOKE_MIC;
async function phone(number, name, uri, { mic = withMic } = {}) {
  const ctx = await browser.newContext({ viewport: { width: 390, height: 844 }, hasTouch: true, isMobile: true });
  const page = await ctx.newPage();
  // without SMOKE_MIC the phone has no microphone (the robot's audio support is then not needed)
  if (!mic) await page.addInitScript(() => { navigator.mediaDevices.getUserMedia = () => Promise.reject(new Error("no mic")); });
  await page.goto(app + "#pair=" + encodeURIComponent(uri));
  if (page.url().includes("#")) throw new Error(`the pairing link stayed in the address bar: ${page.url()}`);
  await page.fill("#phone-number", number);
  await page.fill("#nickname", name);
  await page.click("#save-profile");
  await page.waitForSelector("#banner[hidden]", { state: "attached", timeout: 10000 });
  await page.click("#pair-submit");
  await page.waitForSelector('#pair-status[data-status="paired"]', { timeout: 20000 });
  await page.waitForSelector('[data-testid=contact] .online[data-online="true"]', { timeout: 10000 });
  return page;
}

{
  // plain http on an address other than localhost is not a secure context
  const p = await (await browser.newContext()).newPage();
  await p.goto(app.replace("127.0.0.1", "10.99.0.1"));
  await step("insecure page", async () => {
    await p.waitForSelector("#insecure:not([hidden])", { timeout: 5000 });
    if (await p.isVisible("#first-run")) throw new Error("first run shown too");
  });
}
const a = await phone("+48 555 555 555", "Alice", readFileSync(`${run}/uri`, "utf8").trim());
console.log("ok   Alice paired (link in the fragment)");
await a.click("[data-testid=call]");
await step("connected", () => a.waitForSelector('#call-screen[data-state="connected"]', { timeout: 30000 }));
await step("frames decoded", async () => {
  await a.waitForFunction(() => Number(document.querySelector("#quality").dataset.framesDecoded ?? 0) > 30, null, { timeout: 20000 });
  return a.textContent("#quality");
});
await step("destinations", () => a.waitForSelector('[data-testid=destination][data-name="kitchen"]', { timeout: 10000 }));
await a.click('[data-testid=destination][data-name="kitchen"]');
await step("goto kitchen", async () => {
  await a.waitForSelector('#goto-status[data-status="arrived"]', { timeout: 60000 });
  return a.textContent("#goto-status");
});
await a.click('[data-testid=destination][data-name="bedroom"]');
await step("goto bedroom", async () => {
  await a.waitForSelector('#goto-status[data-status="blocked"]', { timeout: 60000 });
  return a.textContent("#goto-status");
});
// a second owner calls while Alice is in the call
const uri2 = execSync(`${robotd} pair`).toString().match(/robotd:\/\/pair[^\s"']*/)[0];
const b = await phone("+48 555 555 556", "Bob", uri2);
await b.click("[data-testid=call]");
await step("busy", async () => {
  await b.waitForSelector('#call-screen[data-state="ended"][data-end-reason="busy"]', { timeout: 15000 });
  return b.textContent("#message");
});
if (withMic) {
  const level = () => status().media?.speaker_level_db;
  await a.waitForTimeout(1500);
  const muted0 = level();
  await a.click("#mute");
  await step("talking", async () => {
    if ((await a.getAttribute("#mute", "aria-pressed")) !== "true") throw new Error("aria-pressed is not true");
    await a.waitForTimeout(2500);
    const l = level();
    // Chromium's built-in fake microphone beeps briefly once a second: its RMS is low
    if (!(typeof l === "number" && l > (muted0 ?? -120) + 20)) throw new Error(`speaker level ${l} dB (muted: ${muted0})`);
    return `speaker level ${muted0} -> ${l} dB`;
  });
  await a.click("#mute");
  await a.waitForTimeout(2500);
  await step("muted again", async () => {
    const l = level();
    if (!(typeof l !== "number" || l < -60)) throw new Error(`speaker level ${l} dB`);
    return `speaker level ${l} dB`;
  });
}
const box = await a.locator("#joystick").boundingBox();
const cx = box.x + box.width / 2;
const cy = box.y + box.height / 2;
const before = status().sim;
await a.mouse.move(cx, cy);
await a.mouse.down();
await a.mouse.move(cx, cy - box.height * 0.4, { steps: 4 });
await a.waitForTimeout(1500);
await step("joystick drives", () => {
  const s = status();
  if (s.motion !== "driving") throw new Error(`motion ${s.motion}`);
});
await a.mouse.up();
await a.waitForTimeout(800);
await step("release stops", () => {
  const s = status();
  if (s.motion !== "idle") throw new Error(`motion ${s.motion}`);
  return `moved from (${before.x.toFixed(2)}, ${before.y.toFixed(2)}) to (${s.sim.x.toFixed(2)}, ${s.sim.y.toFixed(2)})`;
});
const f0 = Number(await a.getAttribute("#quality", "data-frames-decoded"));
execSync(`kill -TERM $(cat ${run}/mosq.pid)`);
await step("banner while the broker is down", () => a.waitForSelector("#banner:not([hidden])", { timeout: 20000 }));
await a.waitForTimeout(2000);
execSync(`mosquitto -c ${run}/mosquitto.conf 2>>${run}/mosquitto.log >/dev/null </dev/null & echo $! > ${run}/mosq.pid`, { stdio: "ignore" });
await step("banner gone after the restart", () => a.waitForSelector("#banner[hidden]", { state: "attached", timeout: 20000 }));
await a.waitForTimeout(3000);
await step("the call goes on", async () => {
  const f1 = Number(await a.getAttribute("#quality", "data-frames-decoded"));
  const st = await a.getAttribute("#call-screen", "data-state");
  if (st !== "connected" || f1 <= f0) throw new Error(`state ${st}, frames ${f0} -> ${f1}`);
  return `frames ${f0} -> ${f1}`;
});
await a.screenshot({ path: `${run}/call.png` });
await a.setViewportSize({ width: 844, height: 390 });
await a.screenshot({ path: `${run}/call-landscape.png` });
await a.click("#hangup");
await step("hang-up", () => a.waitForSelector('#call-screen[data-state="ended"][data-end-reason="hangup"]', { timeout: 10000 }));
await step("robot's call ended", () => {
  if (status().call !== null) throw new Error("robotd still has a call");
});
console.log(`screenshot: ${run}/call.png`);
await browser.close();
process.exit(failed ? 1 : 0);
