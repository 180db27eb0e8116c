//! Congestion control for the robot's video: Google Congestion Control
//! (`rtpgccbwe` from gst-plugins-rs, crate `gst-plugin-rtp`, registered
//! statically by [`super::init`]) estimates the path's capacity from the
//! phone's transport-cc feedback; [`Adapter`] turns the estimate into the
//! encoder's bitrate and, when the estimate stays far below what the frame
//! size needs, a smaller frame size.
//!
//! The thresholds (docs/webrtc.md, "Bandwidth adaptation"):
//! - encoder bitrate = [`HEADROOM`] × estimate, within
//!   [[`FLOOR_KBPS`] (or the call's rate if lower), the call's `kbps`];
//! - a frame size "needs" [`need_kbps`]: 600 kbit/s for 1280x720 at 30 fps,
//!   proportional to pixels per second (libwebrtc's minimum for 720p; it
//!   gives its 150 kbit/s for 360p30 too);
//! - step down one size (half width and height, at most twice) when the
//!   mean estimate over the last [`DOWN_WINDOW`] is below the current size's
//!   need (and the encoder uses its target, below);
//! - step back up when the mean over the last [`UP_WINDOW`] is at least
//!   [`UP_FACTOR`] × the larger size's need.
//!
//! Means, not every reading: GCC's estimate saws (on a link that drops
//! rather than queues, it falls on loss and climbs back by up to 28 % a
//! second), and the size follows the level, not the teeth. A window starts
//! afresh at each size change, so two changes are at least a window apart.
//!
//! webrtcbin 1.22's `rtprtxsend` has no `stuffing-kbps` (padding probes), so
//! the estimator cannot probe above what is sent: GCC lets the estimate grow
//! to at most 1.5 × the received rate. A cheap scene (a still picture) that
//! leaves the encoder well under its target keeps the estimate low; the
//! frame size steps down only when the encoder actually uses its target
//! (at least [`BUSY_SHARE`] of it), so a still scene does not shrink the
//! picture. The bitrate still follows the low estimate: when the scene
//! starts moving, the estimate climbs by GCC's increase (about 8 % a second,
//! up to 1.5 × what is sent), not at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::{VideoSpec, WebrtcError};

/// Lowest encoder bitrate, kbit/s (unless the call's rate is lower).
pub const FLOOR_KBPS: u32 = 100;
/// Share of the estimate given to the encoder: the rest is for RTP/SRTP
/// headers and retransmissions.
pub const HEADROOM: f64 = 0.9;
/// The window of the mean estimate that steps the size down.
pub const DOWN_WINDOW: Duration = Duration::from_secs(3);
/// The window of the mean estimate that steps the size up.
pub const UP_WINDOW: Duration = Duration::from_secs(5);
/// Hysteresis: the larger size needs this many times its need to come back.
pub const UP_FACTOR: f64 = 1.5;
/// The encoder counts as using its target when it produces at least this
/// share of it (measured over [`RATE_WINDOW`]). x264 at a constant bitrate
/// on a busy scene makes about all of its target; on a still scene the
/// target follows an estimate held at 1.5 × the sent rate, so the encoder
/// makes 1 / (1.5 × [`HEADROOM`]) = 74 % of it: the line lies between.
pub const BUSY_SHARE: f64 = 0.85;
/// Smaller sizes below the call's (half, then a quarter of each side).
pub const MAX_STEPS: u8 = 2;
/// The window of the measured encoder output rate.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// How often the estimate is read and the encoder adjusted.
pub const TICK: Duration = Duration::from_millis(250);
/// Bitrate changes smaller than this share of the current one are skipped
/// (each change reconfigures x264).
const MIN_CHANGE: f64 = 0.05;

/// What a frame size needs, kbit/s: 600 for 1280x720 at 30 fps, in
/// proportion to pixels per second.
pub fn need_kbps(width: u32, height: u32, fps: u32) -> u32 {
    let px = u64::from(width) * u64::from(height) * u64::from(fps);
    (px * 600 / (1280 * 720 * 30)) as u32
}

/// What the encoder should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Encoder bitrate, kbit/s.
    pub kbps: u32,
    pub width: u32,
    pub height: u32,
}

/// The owner's `video` command in a version 2 call: the frame size, rate
/// and maximum bitrate the adaptation works below from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub kbps: u32,
}

/// The pure controller: estimates and the encoder's output in, [`Target`] out.
#[derive(Debug)]
pub struct Adapter {
    width: u32,
    height: u32,
    fps: u32,
    max_kbps: u32,
    floor_kbps: u32,
    /// 0: the call's size; each step halves both sides.
    step: u8,
    kbps: u32,
    /// Readings since the last size change (at most [`UP_WINDOW`] old):
    /// `(when, estimate kbit/s, target kbit/s, sent kbit/s)`.
    window: std::collections::VecDeque<(Instant, u32, u32, u32)>,
    changed_at: Instant,
}

impl Adapter {
    /// Starts at the call's size and rate.
    pub fn new(video: &VideoSpec, now: Instant) -> Adapter {
        Adapter {
            width: video.width,
            height: video.height,
            fps: video.fps,
            max_kbps: video.kbps,
            floor_kbps: FLOOR_KBPS.min(video.kbps),
            step: 0,
            kbps: video.kbps,
            window: Default::default(),
            changed_at: now,
        }
    }

    /// New limits (the `video` command): the size steps start again from
    /// `limits`' size, the bitrate never goes above `limits.kbps` (and is
    /// brought down to it at once).
    pub fn set_limits(&mut self, limits: Limits, now: Instant) {
        self.width = limits.width;
        self.height = limits.height;
        self.fps = limits.fps.max(1);
        self.max_kbps = limits.kbps;
        self.floor_kbps = FLOOR_KBPS.min(limits.kbps);
        self.kbps = self.kbps.clamp(self.floor_kbps, self.max_kbps);
        self.change(0, now);
    }

    /// The estimator's bounds and start, bit/s: `(min, start, max)`. The
    /// maximum leaves [`HEADROOM`] so the encoder can reach the call's rate.
    pub fn estimator_bounds(&self) -> (u32, u32, u32) {
        let bps = |kbps: u32| (f64::from(kbps) * 1000.0 / HEADROOM) as u32;
        (bps(self.floor_kbps), bps(self.max_kbps), bps(self.max_kbps))
    }

    fn size(&self, step: u8) -> (u32, u32) {
        // Even sides (I420), never below 16.
        let side = |s: u32| ((s >> step) & !1).max(16);
        (side(self.width), side(self.height))
    }

    /// Mean (estimate, target, sent) over the last `span`, once the readings
    /// since the last change cover it.
    fn means(&self, span: Duration, now: Instant) -> Option<(f64, f64, f64)> {
        if now.duration_since(self.changed_at) < span {
            return None;
        }
        let recent: Vec<_> = self.window.iter().filter(|r| now.duration_since(r.0) <= span).collect();
        let n = recent.len() as f64;
        if n == 0.0 {
            return None;
        }
        let mean = |f: fn(&(Instant, u32, u32, u32)) -> u32| recent.iter().map(|r| f64::from(f(r))).sum::<f64>() / n;
        Some((mean(|r| r.1), mean(|r| r.2), mean(|r| r.3)))
    }

    fn change(&mut self, step: u8, now: Instant) {
        self.step = step;
        self.changed_at = now;
        self.window.clear();
    }

    /// The current target.
    pub fn target(&self) -> Target {
        let (width, height) = self.size(self.step);
        Target { kbps: self.kbps, width, height }
    }

    /// A new reading: `estimate_bps` from the estimator, `sent_kbps` the
    /// encoder's measured output.
    pub fn update(&mut self, estimate_bps: u32, sent_kbps: u32, now: Instant) -> Target {
        let estimate_kbps = estimate_bps / 1000;
        let want = ((f64::from(estimate_bps) * HEADROOM / 1000.0) as u32).clamp(self.floor_kbps, self.max_kbps);
        if f64::from(want.abs_diff(self.kbps)) >= MIN_CHANGE * f64::from(self.kbps) || want == self.max_kbps {
            self.kbps = want;
        }
        self.window.push_back((now, estimate_kbps, self.kbps, sent_kbps));
        while self.window.front().is_some_and(|r| now.duration_since(r.0) > UP_WINDOW) {
            self.window.pop_front();
        }
        let (w, h) = self.size(self.step);
        let can_shrink = self.step < MAX_STEPS && self.size(self.step + 1) != (w, h);
        if can_shrink && let Some((estimate, target, sent)) = self.means(DOWN_WINDOW, now) {
            let busy = sent >= BUSY_SHARE * target;
            if estimate < f64::from(need_kbps(w, h, self.fps)) && busy {
                self.change(self.step + 1, now);
                return self.target();
            }
        }
        if self.step > 0
            && let Some((estimate, _, _)) = self.means(UP_WINDOW, now)
        {
            let (uw, uh) = self.size(self.step - 1);
            if estimate >= UP_FACTOR * f64::from(need_kbps(uw, uh, self.fps)) {
                self.change(self.step - 1, now);
            }
        }
        self.target()
    }
}

/// What the helper reports (`Stats`), shared with the adaptation thread.
#[derive(Debug, Default)]
pub struct Readings {
    /// The estimator's latest estimate, kbit/s (0 before the first one).
    pub estimate_kbps: AtomicU32,
    /// The encoder's bitrate setting, kbit/s.
    pub encoder_kbps: AtomicU32,
    /// Encoded bytes out of the encoder since the call started.
    pub bytes_encoded: AtomicU64,
    pub width: AtomicU32,
    pub height: AtomicU32,
    /// New [`Limits`] for the adaptation thread to take at its next tick.
    pub limits: std::sync::Mutex<Option<Limits>>,
}

/// Plug `rtpgccbwe` into `webrtc` (its `request-aux-sender`) and drive
/// `encoder` (its bitrate, by [`crate::video::Encoder::set_bitrate`]) and `size` (a capsfilter before it) from
/// its estimate, every [`TICK`], until `stop`.
pub fn install(
    webrtc: &gst::Element,
    (encoder, kind): (&gst::Element, crate::video::Encoder),
    size: &gst::Element,
    video: &VideoSpec,
    stop: Arc<AtomicBool>,
) -> Result<Arc<Readings>, WebrtcError> {
    let bwe = gst::ElementFactory::make("rtpgccbwe")
        .build()
        .map_err(|e| WebrtcError::Pipeline(format!("rtpgccbwe (gst-plugin-rtp, registered at init): {e}")))?;
    let mut adapter = Adapter::new(video, Instant::now());
    let (min, start, max) = adapter.estimator_bounds();
    bwe.set_property("min-bitrate", min);
    bwe.set_property("max-bitrate", max);
    bwe.set_property("estimated-bitrate", start);
    {
        // webrtcbin asks once per transport (one with max-bundle).
        let bwe = bwe.clone();
        let used = AtomicBool::new(false);
        webrtc.connect("request-aux-sender", false, move |_| {
            if used.swap(true, Ordering::Relaxed) {
                return None;
            }
            Some(bwe.to_value())
        });
    }
    let readings = Arc::new(Readings::default());
    let first = adapter.target();
    readings.encoder_kbps.store(first.kbps, Ordering::Relaxed);
    readings.width.store(first.width, Ordering::Relaxed);
    readings.height.store(first.height, Ordering::Relaxed);
    if let Some(pad) = encoder.static_pad("src") {
        let readings = readings.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(buf) = info.buffer() {
                readings.bytes_encoded.fetch_add(buf.size() as u64, Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
    }
    let (encoder, size, r) = (encoder.clone(), size.clone(), readings.clone());
    std::thread::Builder::new()
        .name("congestion".into())
        .spawn(move || {
            let mut window: std::collections::VecDeque<(Instant, u64)> = Default::default();
            let mut applied = first;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                let now = Instant::now();
                let bytes = r.bytes_encoded.load(Ordering::Relaxed);
                window.push_back((now, bytes));
                while window.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
                    window.pop_front();
                }
                let sent_kbps = match window.front() {
                    Some((t, b)) if now > *t => {
                        ((bytes - b) as f64 * 8.0 / now.duration_since(*t).as_secs_f64() / 1000.0) as u32
                    }
                    _ => 0,
                };
                let limits = r.limits.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(l) = limits {
                    adapter.set_limits(l, now);
                    let (min, _, max) = adapter.estimator_bounds();
                    bwe.set_property("min-bitrate", min);
                    bwe.set_property("max-bitrate", max);
                    tracing::info!(
                        width = l.width,
                        height = l.height,
                        fps = l.fps,
                        kbps = l.kbps,
                        "video limits changed"
                    );
                }
                let estimate: u32 = bwe.property("estimated-bitrate");
                r.estimate_kbps.store(estimate / 1000, Ordering::Relaxed);
                let t = adapter.update(estimate, sent_kbps, now);
                if t.kbps != applied.kbps || limits.is_some() {
                    kind.set_bitrate(&encoder, t.kbps, adapter.fps);
                    r.encoder_kbps.store(t.kbps, Ordering::Relaxed);
                }
                if (t.width, t.height) != (applied.width, applied.height) || limits.is_some() {
                    tracing::info!(
                        width = t.width,
                        height = t.height,
                        estimate_kbps = estimate / 1000,
                        "bandwidth: frame size changed"
                    );
                    size.set_property("caps", size_caps(t.width, t.height));
                    r.width.store(t.width, Ordering::Relaxed);
                    r.height.store(t.height, Ordering::Relaxed);
                }
                if t != applied {
                    tracing::debug!(estimate_kbps = estimate / 1000, sent_kbps, encoder_kbps = t.kbps, "bandwidth");
                }
                applied = t;
            }
        })
        .map_err(|e| WebrtcError::Pipeline(format!("congestion thread: {e}")))?;
    Ok(readings)
}

/// The caps of the size capsfilter before the encoder.
pub fn size_caps(width: u32, height: u32) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("width", width as i32)
        .field("height", height as i32)
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hd() -> VideoSpec {
        VideoSpec { device: "test".into(), width: 1280, height: 720, fps: 30, kbps: 2000, encoder: "auto".into() }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_video_commands_limits_cap_the_bitrate_and_set_the_size() {
        let t0 = Instant::now();
        let mut a = Adapter::new(&hd(), t0);
        assert_eq!(a.update(9_000_000, 2000, t0).kbps, 2000);
        a.set_limits(Limits { width: 640, height: 360, fps: 15, kbps: 300 }, t0);
        // At once, whatever the estimate; and the estimator is bounded to match.
        assert_eq!(a.target(), Target { kbps: 300, width: 640, height: 360 });
        assert_eq!(a.estimator_bounds().2, 333_333);
        assert_eq!(a.update(9_000_000, 300, t0 + S).kbps, 300);
        // Below the cap the estimate still rules.
        assert_eq!(a.update(200_000, 180, t0 + 2 * S).kbps, 180);
        // Lifting the cap lets the estimate climb to the new one.
        a.set_limits(Limits { width: 1280, height: 720, fps: 30, kbps: 2000 }, t0 + 3 * S);
        assert_eq!(a.update(9_000_000, 180, t0 + 4 * S).kbps, 2000);
        assert_eq!((a.target().width, a.target().height), (1280, 720));
    }

    #[test]
    fn needs_follow_libwebrtcs_minimums() {
        assert_eq!(need_kbps(1280, 720, 30), 600);
        assert_eq!(need_kbps(640, 360, 30), 150);
        assert_eq!(need_kbps(320, 180, 30), 37);
    }

    #[test]
    fn the_encoder_follows_the_estimate_within_floor_and_call_rate() {
        let t0 = Instant::now();
        let mut a = Adapter::new(&hd(), t0);
        assert_eq!(a.estimator_bounds(), (111_111, 2_222_222, 2_222_222));
        assert_eq!(a.target(), Target { kbps: 2000, width: 1280, height: 720 });
        assert_eq!(a.update(1_000_000, 900, t0).kbps, 900);
        // Small wobbles do not reconfigure the encoder.
        assert_eq!(a.update(1_020_000, 900, t0).kbps, 900);
        assert_eq!(a.update(50_000, 900, t0).kbps, FLOOR_KBPS);
        assert_eq!(a.update(9_000_000, 100, t0).kbps, 2000);
        let low = VideoSpec { kbps: 60, ..hd() };
        assert_eq!(Adapter::new(&low, t0).update(10_000, 60, t0).kbps, 60);
    }

    /// Readings every 250 ms from `from` for `secs`, as `f(t)` gives them.
    fn feed(a: &mut Adapter, t0: Instant, from: f64, secs: f64, f: impl Fn(f64) -> (u32, u32)) -> Target {
        let mut t = from;
        let mut last = a.target();
        while t < from + secs {
            let (est, sent) = f(t);
            last = a.update(est, sent, t0 + Duration::from_secs_f64(t));
            t += 0.25;
        }
        last
    }

    #[test]
    fn a_narrow_link_steps_the_size_down_with_hysteresis_and_back_up() {
        let t0 = Instant::now();
        let mut a = Adapter::new(&hd(), t0);
        // 500 kbit/s < 600 for 720p30; the encoder uses its 450.
        assert_eq!(feed(&mut a, t0, 0.0, 2.5, |_| (500_000, 440)).width, 1280, "not before DOWN_WINDOW");
        let t = feed(&mut a, t0, 2.5, 1.0, |_| (500_000, 440));
        assert_eq!((t.width, t.height), (640, 360));
        // 400 kbit/s is plenty for 360p (150): stays.
        assert_eq!(feed(&mut a, t0, 3.5, 10.0, |_| (400_000, 350)).width, 640);
        // Recovery to 850 kbit/s < 1.5 × 600: no step up.
        assert_eq!(feed(&mut a, t0, 13.5, 20.0, |_| (850_000, 760)).width, 640);
        // 950 kbit/s >= 900: back to 720p once the 5 s mean is there.
        assert_eq!(feed(&mut a, t0, 33.5, 2.0, |_| (950_000, 850)).width, 640);
        assert_eq!(feed(&mut a, t0, 35.5, 5.0, |_| (950_000, 850)).width, 1280);
    }

    #[test]
    fn the_size_follows_the_mean_of_a_sawing_estimate_and_at_most_two_steps() {
        let t0 = Instant::now();
        let mut a = Adapter::new(&hd(), t0);
        // Teeth down to 300 kbit/s, a mean of 900: 720p30 (needs 600) stays.
        let saw = |t: f64| if t.fract() < 0.5 { (300_000, 280) } else { (1_500_000, 1300) };
        assert_eq!(feed(&mut a, t0, 0.0, 20.0, saw).width, 1280);
        // A mean of 450 (teeth to 1000): down to 360p, and no further (needs 150).
        let low = |t: f64| if t.fract() < 0.75 { (267_000, 240) } else { (1_000_000, 900) };
        assert_eq!(feed(&mut a, t0, 20.0, 20.0, low).width, 640);
        // Starved: down to 320x180, never below.
        let t = feed(&mut a, t0, 40.0, 30.0, |_| (20_000, 100));
        assert_eq!((t.width, t.height), (320, 180));
    }

    #[test]
    fn a_still_scene_that_leaves_the_encoder_idle_keeps_its_size() {
        let t0 = Instant::now();
        let mut a = Adapter::new(&hd(), t0);
        for i in 0..20 {
            // GCC caps the estimate at 1.5 × what is sent: 150 of a 2000 target.
            a.update(225_000, 150, t0 + i * S);
        }
        assert_eq!(a.target().width, 1280);
        assert_eq!(a.target().kbps, 202);
    }
}
