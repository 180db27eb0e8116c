// The line protocol between a page driver (phone.mjs, bench.mjs) and its
// Rust harness (tests/webapp.rs, benches/browser.rs): the driver writes
// `@@ {"op":...}` on stdout and reads one JSON answer per line on stdin
// (`{"error":...}` fails the step). Plus the polling helper both use.
import { createInterface } from 'node:readline';

const lines = createInterface({ input: process.stdin });
const answers = [];
let waiting = null;
lines.on('line', (l) => {
  if (waiting) {
    const w = waiting;
    waiting = null;
    w(l);
  } else answers.push(l);
});

/** Ask the harness to do `op` (with `extra` members); its answer. */
export async function ask(op, extra = {}) {
  process.stdout.write(`@@ ${JSON.stringify({ op, ...extra })}\n`);
  const line = answers.length ? answers.shift() : await new Promise((r) => (waiting = r));
  const v = JSON.parse(line);
  if (v && v.error) throw new Error(`harness: ${op}: ${v.error}`);
  return v;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `f` (async) every `every` ms until it returns a truthy value, for at most `ms`. */
export async function until(what, ms, f, every = 250) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
    await sleep(every);
  }
}

/** Process input closed: lets the driver exit once done. */
export function closeInput() {
  lines.close();
}
