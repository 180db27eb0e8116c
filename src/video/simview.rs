//! The simulated robot's camera: a first-person view of the simulator's
//! world (`[[hardware.sim.obstacles]]`) from a pose, as an I420 frame.
//!
//! One ray per column (the simulator's own ray test, [`crate::hal::sim`]),
//! so a frame costs `width` ray casts over the obstacles plus one pass over
//! the pixels; see docs/benchmarks.md for the figures. Floor and ceiling are
//! neutral grey (chroma 128) shaded towards the horizon; every obstacle is a
//! coloured wall (its own hue, darker with distance), so "wall pixels" can be
//! told from the room by their chroma even after H.264. A small overlay in
//! the top-left corner gives the capture time (ms, wrapping at 10^8) and the
//! robot's state in a built-in 3x5 font, and a machine-readable time code
//! along the bottom edge ([`TIMECODE_BITS`] large black/white blocks: the
//! capture time's low 32 bits of ms and an 8-bit check, [`read_timecode`]),
//! which a browser decodes from a canvas to measure glass-to-glass latency
//! (benches/browser.rs, web/e2e/bench.mjs).
//!
//! Pure: no GStreamer, no I/O; `robotd-media` feeds its frames to an `appsrc`.

use serde::{Deserialize, Serialize};

use crate::hal::config::Obstacle;
use crate::hal::sim::ray_hit;

/// Horizontal field of view of the simulated camera, degrees.
pub const FOV_DEG: f64 = 60.0;
/// Camera height above the floor, metres.
pub const EYE_HEIGHT_M: f64 = 0.25;
/// Height of every obstacle (walls, doors), metres.
pub const WALL_HEIGHT_M: f64 = 2.0;
/// Rays go no further than this, metres.
const MAX_RANGE_M: f64 = 50.0;

/// Where the camera is and what the robot is doing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ViewPose {
    /// Metres.
    pub x: f64,
    /// Metres.
    pub y: f64,
    /// Radians, 0 along +x, counter-clockwise positive.
    pub heading: f64,
    /// The robot's state for the overlay (`idle`, `driving`, `blocked`, ...).
    #[serde(default)]
    pub state: String,
}

/// What one column's ray met.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Index of the obstacle in the world.
    pub obstacle: usize,
    /// Distance along the view axis (no fish-eye), metres.
    pub depth: f64,
}

/// The nearest obstacle of each of `width` columns (`None`: nothing within range).
pub fn cast(world: &[Obstacle], pose: &ViewPose, width: u32) -> Vec<Option<Hit>> {
    let half = (FOV_DEG.to_radians() / 2.0).tan();
    (0..width)
        .map(|col| {
            // Screen x from +1 (left) to -1 (right); left is counter-clockwise.
            let sx = 1.0 - 2.0 * (col as f64 + 0.5) / width as f64;
            let off = (sx * half).atan();
            let a = pose.heading + off;
            let dir = [a.cos(), a.sin()];
            world
                .iter()
                .enumerate()
                .filter_map(|(i, o)| ray_hit(o, [pose.x, pose.y], dir).map(|t| (i, t)))
                .filter(|(_, t)| *t <= MAX_RANGE_M)
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(obstacle, t)| Hit { obstacle, depth: (t * off.cos()).max(0.01) })
        })
        .collect()
}

/// The overlay's text: capture time and state.
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    /// Capture time, ms (e.g. since the Unix epoch; shown modulo 10^8).
    pub time_ms: u64,
}

/// Blocks in the time code: 32 bits of the capture time (ms, modulo 2^32)
/// and 8 check bits, most significant first.
pub const TIMECODE_BITS: usize = 40;

/// Side of one time-code block in pixels for a `width`-wide frame: the code
/// spans half the width, so each block is a multiple of the 16x16
/// macroblock at 1280 and several pixels even at 160.
pub fn timecode_block(width: u32) -> usize {
    (width as usize / (2 * TIMECODE_BITS)).max(2)
}

/// The 8 check bits of a 32-bit code: its bytes XORed with 0x5a, so an
/// all-black or all-white strip is never a valid code.
fn timecode_check(code: u32) -> u8 {
    code.to_be_bytes().iter().fold(0x5a, |a, b| a ^ b)
}

fn timecode_word(time_ms: u64) -> u64 {
    let code = time_ms as u32;
    (u64::from(code) << 8) | u64::from(timecode_check(code))
}

/// Draw the time code of `time_ms` along the bottom-left edge of `luma`.
fn draw_timecode(luma: &mut [u8], w: usize, h: usize, time_ms: u64) {
    let b = timecode_block(w as u32);
    if b * TIMECODE_BITS > w || b > h {
        return;
    }
    let word = timecode_word(time_ms);
    for row in h - b..h {
        for (i, block) in luma[row * w..row * w + b * TIMECODE_BITS].chunks_exact_mut(b).enumerate() {
            let bit = (word >> (TIMECODE_BITS - 1 - i)) & 1;
            block.fill(if bit == 1 { 235 } else { 16 });
        }
    }
}

/// Read the time code from a frame's luma plane (`width` x `height`, e.g.
/// decoded after H.264): the capture time's low 32 bits of ms, `None` when
/// the check bits do not match. Samples the middle of each block and
/// thresholds at mid-grey; web/e2e/bench.mjs does the same on RGB.
pub fn read_timecode(luma: &[u8], width: u32, height: u32) -> Option<u32> {
    let (w, h) = (width as usize, height as usize);
    let b = timecode_block(width);
    if b * TIMECODE_BITS > w || b > h || luma.len() < w * h {
        return None;
    }
    let row = h - b + b / 2;
    let word = (0..TIMECODE_BITS).fold(0u64, |acc, i| (acc << 1) | u64::from(luma[row * w + i * b + b / 2] >= 128));
    let code = (word >> 8) as u32;
    (timecode_check(code) == word as u8).then_some(code)
}

/// Bytes of an I420 frame of `width` x `height` (both even).
pub fn i420_len(width: u32, height: u32) -> usize {
    let (w, h) = (width as usize, height as usize);
    w * h + 2 * (w.div_ceil(2) * h.div_ceil(2))
}

/// A wall's colour (Y, U, V) at full brightness, by obstacle index (the
/// shading changes only Y).
pub fn wall_colour(i: usize) -> (f64, u8, u8) {
    const HUES: [(f64, u8, u8); 6] =
        [(150.0, 90, 190), (140.0, 190, 90), (160.0, 70, 100), (130.0, 180, 170), (170.0, 60, 160), (120.0, 150, 60)];
    HUES[i % HUES.len()]
}

/// One column's wall: rows `[top, bottom)` and its colour.
struct Span {
    top: usize,
    bottom: usize,
    y: u8,
    u: u8,
    v: u8,
}

/// Render the view into `out` (resized to [`i420_len`]) as I420.
pub fn render_i420(
    world: &[Obstacle],
    pose: &ViewPose,
    overlay: Option<&Overlay>,
    width: u32,
    height: u32,
    out: &mut Vec<u8>,
) {
    let (w, h) = (width as usize, height as usize);
    out.clear();
    out.resize(i420_len(width, height), 128);
    if w == 0 || h == 0 {
        return;
    }
    let hits = cast(world, pose, width);
    let focal = (w as f64 / 2.0) / (FOV_DEG.to_radians() / 2.0).tan();
    let horizon = h as f64 / 2.0;
    // Per column: the wall's rows [top, bottom) and colour.
    let spans: Vec<Option<Span>> = hits
        .iter()
        .map(|hit| {
            hit.map(|hit| {
                let top = horizon - focal * (WALL_HEIGHT_M - EYE_HEIGHT_M) / hit.depth;
                let bottom = horizon + focal * EYE_HEIGHT_M / hit.depth;
                let (y, u, v) = wall_colour(hit.obstacle);
                let shade = 1.0 / (1.0 + 0.15 * hit.depth);
                let clamp = |r: f64| r.clamp(0.0, h as f64) as usize;
                Span { top: clamp(top), bottom: clamp(bottom), y: (y * shade + 20.0) as u8, u, v }
            })
        })
        .collect();
    let (luma, chroma) = out.split_at_mut(w * h);
    // Floor and ceiling: grey, lighter far from the horizon.
    for (row, line) in luma.chunks_exact_mut(w).enumerate() {
        let d = (row as f64 + 0.5 - horizon).abs() / horizon;
        let base = if (row as f64) < horizon { 60.0 + 120.0 * d } else { 40.0 + 90.0 * d };
        line.fill(base as u8);
    }
    for (col, span) in spans.iter().enumerate() {
        if let Some(s) = span {
            for row in s.top..s.bottom {
                luma[row * w + col] = s.y;
            }
        }
    }
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let (us, vs) = chroma.split_at_mut(cw * ch);
    for (ccol, pair) in spans.chunks(2).enumerate() {
        if let Some(s) = &pair[0] {
            for crow in s.top.div_ceil(2)..s.bottom / 2 {
                us[crow * cw + ccol] = s.u;
                vs[crow * cw + ccol] = s.v;
            }
        }
    }
    if let Some(o) = overlay {
        draw_overlay(luma, w, h, o, &pose.state);
        draw_timecode(luma, w, h, o.time_ms);
    }
}

/// 3x5 glyphs, rows top to bottom, 3 bits each (MSB left).
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [7, 4, 4, 4, 7],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'G' => [7, 4, 5, 5, 7],
        'I' => [7, 2, 2, 2, 7],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [7, 5, 5, 5, 7],
        'P' => [7, 5, 7, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'S' => [7, 4, 7, 1, 7],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        ' ' | '_' | '-' => [0, 0, 0, 0, 0],
        _ => return None,
    })
}

/// The capture time and state, white on black, in the top-left corner.
fn draw_overlay(luma: &mut [u8], w: usize, h: usize, o: &Overlay, state: &str) {
    let text = format!("{:08} {}", o.time_ms % 100_000_000, state.to_ascii_uppercase());
    // Glyph pixels are `scale` x `scale` so the digits survive the encoder.
    let scale = (h / 120).max(2);
    let (gw, gh) = (4 * scale, 7 * scale);
    let chars: Vec<[u8; 5]> = text.chars().filter_map(glyph).collect();
    let box_w = (chars.len() * gw + scale).min(w);
    let box_h = gh.min(h);
    for row in 0..box_h {
        luma[row * w..row * w + box_w].fill(16);
    }
    for (i, g) in chars.iter().enumerate() {
        for (gy, bits) in g.iter().enumerate() {
            for gx in 0..3 {
                if bits & (4 >> gx) == 0 {
                    continue;
                }
                let (x0, y0) = (scale + i * gw + gx * scale, scale + gy * scale);
                for y in y0..(y0 + scale).min(h) {
                    for x in x0..(x0 + scale).min(w) {
                        luma[y * w + x] = 235;
                    }
                }
            }
        }
    }
}

/// Fraction of the frame's chroma samples that are coloured (a wall), for
/// tests on rendered or decoded I420 frames.
pub fn wall_fraction(frame: &[u8], width: u32, height: u32) -> f64 {
    let (w, h) = (width as usize, height as usize);
    let n = w.div_ceil(2) * h.div_ceil(2);
    if frame.len() < w * h + 2 * n || n == 0 {
        return 0.0;
    }
    let (us, vs) = frame[w * h..].split_at(n);
    let coloured = us.iter().zip(&vs[..n]).filter(|(u, v)| u.abs_diff(128) > 24 || v.abs_diff(128) > 24).count();
    coloured as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shut door across the way, 3 m ahead of the origin (config/flat.toml's).
    fn door() -> Vec<Obstacle> {
        vec![Obstacle::Box { min: [3.0, -0.6], max: [3.05, 0.6] }]
    }

    fn at(x: f64) -> ViewPose {
        ViewPose { x, ..ViewPose::default() }
    }

    fn wall_columns(world: &[Obstacle], pose: &ViewPose) -> usize {
        cast(world, pose, 320).iter().filter(|h| h.is_some()).count()
    }

    #[test]
    fn an_obstacle_ahead_covers_more_columns_when_closer() {
        let far = wall_columns(&door(), &at(0.0));
        let near = wall_columns(&door(), &at(2.0));
        assert!(far > 0, "the door is in view");
        assert!(near > far, "near {near} vs far {far}");
        let mut a = Vec::new();
        let mut b = Vec::new();
        render_i420(&door(), &at(0.0), None, 320, 240, &mut a);
        render_i420(&door(), &at(2.0), None, 320, 240, &mut b);
        assert!(wall_fraction(&b, 320, 240) > 2.0 * wall_fraction(&a, 320, 240));
    }

    #[test]
    fn nothing_ahead_means_no_wall_columns() {
        let behind = ViewPose { heading: std::f64::consts::PI, ..ViewPose::default() };
        assert_eq!(wall_columns(&door(), &behind), 0);
        assert_eq!(wall_columns(&[], &at(0.0)), 0);
        let mut f = Vec::new();
        render_i420(&door(), &behind, Some(&Overlay { time_ms: 1234 }), 320, 240, &mut f);
        assert_eq!(wall_fraction(&f, 320, 240), 0.0);
    }

    #[test]
    fn the_obstacle_is_seen_on_the_side_it_is_on() {
        // Turned 20° right (clockwise), the door moves to the left of the picture.
        let pose = ViewPose { heading: -20f64.to_radians(), ..ViewPose::default() };
        let hits = cast(&door(), &pose, 320);
        let first = hits.iter().position(Option::is_some).unwrap();
        let last = hits.iter().rposition(Option::is_some).unwrap();
        assert!((first + last) / 2 < 160, "{first}..{last}");
    }

    #[test]
    fn the_image_is_the_size_asked() {
        let mut f = Vec::new();
        for (w, h) in [(640, 480), (1280, 720), (16, 16), (322, 242)] {
            render_i420(&door(), &at(1.0), Some(&Overlay { time_ms: 99 }), w, h, &mut f);
            assert_eq!(f.len(), i420_len(w, h));
            assert_eq!(f.len(), (w * h * 3 / 2) as usize);
        }
    }

    #[test]
    fn the_time_code_round_trips() {
        let mut f = Vec::new();
        for (w, h) in [(1280, 720), (640, 480), (320, 240), (160, 120)] {
            for t in [0u64, 1, 1_764_650_000_123, u64::from(u32::MAX), 0xdead_beef_cafe] {
                render_i420(&door(), &at(2.9), Some(&Overlay { time_ms: t }), w, h, &mut f);
                assert_eq!(read_timecode(&f, w, h), Some(t as u32), "{w}x{h} at {t}");
            }
        }
        // No overlay, no code: a plain picture does not read as one.
        render_i420(&door(), &at(0.0), None, 320, 240, &mut f);
        assert_eq!(read_timecode(&f, 320, 240), None);
        // One block flipped (as a decoding error would): refused, not misread.
        render_i420(&door(), &at(0.0), Some(&Overlay { time_ms: 77 }), 320, 240, &mut f);
        let b = timecode_block(320);
        let (x, y) = (5 * b + b / 2, 240 - b + b / 2);
        f[y * 320 + x] = 255 - f[y * 320 + x];
        assert_eq!(read_timecode(&f, 320, 240), None);
    }

    #[test]
    fn the_overlay_draws_the_time() {
        let mut plain = Vec::new();
        let mut with = Vec::new();
        let pose = ViewPose { state: "blocked".into(), ..at(0.0) };
        render_i420(&door(), &pose, None, 320, 240, &mut plain);
        render_i420(&door(), &pose, Some(&Overlay { time_ms: 12_345_678 }), 320, 240, &mut with);
        let bright = with[..320 * 20].iter().filter(|&&y| y == 235).count();
        assert!(bright > 50, "{bright}");
        assert_ne!(plain, with);
        for c in "0123456789 IDLE DRIVING BLOCKED".chars() {
            assert!(glyph(c).is_some(), "{c}");
        }
    }
}
