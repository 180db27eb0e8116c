/**
 * The joystick: a round pad driven by pointer events. While pressed it sends `drive` every
 * 200 ms (and on move, throttled to 100 ms), so the 500 ms deadman is renewed well inside
 * its time; release, cancel, or losing the capture sends `stop`.
 */
import { joystickDrive } from "../proto/control";

const RENEW_MS = 200;
const MOVE_THROTTLE_MS = 100;

export function attachJoystick(
  pad: HTMLElement,
  knob: HTMLElement,
  drive: (linear: number, angular: number) => void,
  stop: () => void,
): { release(): void } {
  let pointer: number | null = null;
  let current = { linear: 0, angular: 0 };
  let timer = 0;
  let lastSent = 0;
  const send = () => {
    lastSent = performance.now();
    drive(current.linear, current.angular);
  };
  const place = (e: PointerEvent) => {
    const r = pad.getBoundingClientRect();
    const radius = r.width / 2;
    const dx = e.clientX - (r.left + radius);
    const dy = e.clientY - (r.top + r.height / 2);
    current = joystickDrive(dx, dy, radius);
    // the knob follows: linear up, angular left
    knob.style.setProperty("--x", `${-current.angular * 50}%`);
    knob.style.setProperty("--y", `${-current.linear * 50}%`);
    pad.dataset.linear = String(current.linear);
    pad.dataset.angular = String(current.angular);
  };
  const release = () => {
    if (pointer === null) return;
    pointer = null;
    clearInterval(timer);
    current = { linear: 0, angular: 0 };
    knob.style.setProperty("--x", "0%");
    knob.style.setProperty("--y", "0%");
    pad.classList.remove("active");
    pad.dataset.linear = "0";
    pad.dataset.angular = "0";
    stop();
  };
  pad.addEventListener("pointerdown", (e) => {
    if (pointer !== null) return;
    e.preventDefault();
    pointer = e.pointerId;
    try {
      pad.setPointerCapture(e.pointerId);
    } catch {
      /* synthetic pointers may not be capturable; the events still come */
    }
    pad.classList.add("active");
    place(e);
    send();
    timer = window.setInterval(send, RENEW_MS);
  });
  pad.addEventListener("pointermove", (e) => {
    if (e.pointerId !== pointer) return;
    place(e);
    if (performance.now() - lastSent >= MOVE_THROTTLE_MS) send();
  });
  for (const ev of ["pointerup", "pointercancel", "lostpointercapture"] as const) {
    pad.addEventListener(ev, (e) => {
      if (e.pointerId === pointer) release();
    });
  }
  return { release };
}
