/** Sequence numbers the phone sends and checks (docs/protocol.md 5.5). */

/**
 * The counter for `pair/` and `invite/`: starts at the time in ms and rises by one per
 * message, `max(previous + 1, now)`, so it keeps rising across app restarts.
 */
export class OutsideCounter {
  private last = 0;
  next(now: number): number {
    this.last = Math.max(this.last + 1, Math.floor(now));
    return this.last;
  }
}

/** A rising-`seq` check for what the robot sends on `pair/` and `invite/` responses. */
export class RisingCheck {
  private last: bigint | null = null;
  /** True (and recorded) if `seq` is above the last accepted one. */
  accept(seq: string): boolean {
    const s = BigInt(seq);
    if (this.last !== null && s <= this.last) return false;
    this.last = s;
    return true;
  }
}

/** The 64-wide sliding replay window for `session/` messages. */
export class SessionWindow {
  private high: bigint | null = null;
  private seen = new Set<bigint>();
  /** True (and recorded) if `seq` is new in the window; false for duplicates and stale ones. */
  accept(seq: string): boolean {
    const s = BigInt(seq);
    if (this.high === null || s > this.high) {
      this.high = s;
      this.seen.add(s);
      for (const x of this.seen) if (this.high - x >= 64n) this.seen.delete(x);
      return true;
    }
    if (this.high - s >= 64n || this.seen.has(s)) return false;
    this.seen.add(s);
    return true;
  }
}
