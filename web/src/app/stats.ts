/** The quality line: bitrate, frame rate and RTT from getStats, once a second. */

export interface Quality {
  framesDecoded: number;
  kbps: number;
  fps: number;
  rttMs: number | null;
  width: number;
  height: number;
}

export class QualityMeter {
  private lastBytes = 0;
  private lastAt = 0;

  async sample(pc: RTCPeerConnection): Promise<Quality | null> {
    const report = await pc.getStats();
    let video: Record<string, unknown> | null = null;
    let rtt: number | null = null;
    report.forEach((s: Record<string, unknown>) => {
      if (s.type === "inbound-rtp" && s.kind === "video") video = s;
      if (s.type === "candidate-pair" && (s.nominated || s.state === "succeeded") && typeof s.currentRoundTripTime === "number") {
        rtt = Math.round(s.currentRoundTripTime * 1000);
      }
    });
    if (!video) return null;
    const v = video as Record<string, unknown>;
    const num = (x: unknown) => (typeof x === "number" ? x : 0);
    const bytes = num(v.bytesReceived);
    const at = num(v.timestamp) || performance.now();
    const kbps = this.lastAt && at > this.lastAt ? Math.round(((bytes - this.lastBytes) * 8) / (at - this.lastAt)) : 0;
    this.lastBytes = bytes;
    this.lastAt = at;
    return {
      framesDecoded: num(v.framesDecoded),
      kbps: Math.max(0, kbps),
      fps: Math.round(num(v.framesPerSecond)),
      rttMs: rtt,
      width: num(v.frameWidth),
      height: num(v.frameHeight),
    };
  }
}

export function qualityText(q: Quality): string {
  const rate = q.kbps >= 1000 ? `${(q.kbps / 1000).toFixed(1)} Mbit/s` : `${q.kbps} kbit/s`;
  return `${rate} · ${q.fps} fps · RTT ${q.rttMs ?? "?"} ms`;
}
