/**
 * Scan a pairing QR code with the camera: getUserMedia (the back camera), a <video>, and a
 * canvas loop decoding with jsQR a few times a second. Bounded: it gives up after 60 s, and
 * the camera is stopped on success, cancel and timeout alike. jsQR is loaded only when a scan
 * starts (its own chunk), so opening the app does not download it.
 */

export interface Scan {
  cancel(): void;
  done: Promise<string | null>;
}

const SCAN_LIMIT_MS = 60_000;
const SCAN_EVERY_MS = 150;

export function scanQr(video: HTMLVideoElement, accept: (text: string) => boolean): Scan {
  let stream: MediaStream | null = null;
  let timer = 0;
  let stopped = false;
  let finish: (v: string | null) => void = () => {};
  const done = new Promise<string | null>((resolve) => (finish = resolve));
  const stop = (v: string | null) => {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
    stream?.getTracks().forEach((t) => t.stop());
    video.srcObject = null;
    video.hidden = true;
    finish(v);
  };
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const started = performance.now();
  (async () => {
    const decoder = import("jsqr"); // fetched while the camera starts
    let jsQR: (typeof import("jsqr"))["default"];
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
      jsQR = (await decoder).default;
    } catch {
      return stop(null); // stops the camera too, if it had started
    }
    if (stopped) return stop(null);
    video.srcObject = stream;
    video.hidden = false;
    await video.play().catch(() => undefined);
    timer = window.setInterval(() => {
      if (performance.now() - started > SCAN_LIMIT_MS) return stop(null);
      const w = video.videoWidth;
      const h = video.videoHeight;
      if (!ctx || !w || !h) return;
      // decode at most 640 px wide: enough for a code that fills part of the picture
      const scale = Math.min(1, 640 / w);
      canvas.width = Math.round(w * scale);
      canvas.height = Math.round(h * scale);
      ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
      const img = ctx.getImageData(0, 0, canvas.width, canvas.height);
      const code = jsQR(img.data, img.width, img.height, { inversionAttempts: "attemptBoth" });
      if (code && accept(code.data)) stop(code.data);
    }, SCAN_EVERY_MS);
  })();
  return { cancel: () => stop(null), done };
}
