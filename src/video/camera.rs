//! Camera discovery (V4L2) and the choice of capture format.
//!
//! `robotd cameras` prints [`list_cameras`] with [`format_cameras`]. When a call
//! starts, [`choose_capture`] picks how to read the camera: native H.264 is passed
//! through untouched (no re-encode, cheapest on a Pi), else MJPEG is decoded, else
//! a raw format is converted; the last two are then scaled and encoded.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use v4l::video::Capture;

use super::VideoError;

/// One V4L2 capture device and what it can deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraInfo {
    /// Device node, e.g. `/dev/video0`.
    pub path: PathBuf,
    /// Human name reported by the driver (`card`).
    pub card: String,
    /// Kernel driver, e.g. `uvcvideo`.
    pub driver: String,
    /// Bus, e.g. `usb-0000:01:00.0-1.2`.
    pub bus: String,
    /// Capture formats in the driver's order.
    pub formats: Vec<CameraFormat>,
}

/// One pixel format of a camera.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraFormat {
    /// The V4L2 fourcc, e.g. `MJPG`, `YUYV`, `H264`.
    pub fourcc: String,
    /// The driver's description, e.g. `Motion-JPEG`.
    pub description: String,
    /// Whether the format is compressed (H.264, MJPEG, ...).
    pub compressed: bool,
    /// Frame sizes with their frame rates. Stepwise ranges are reduced to their
    /// extremes and the common sizes inside them.
    pub sizes: Vec<FrameSize>,
}

/// A frame size and the frame rates offered at that size.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameSize {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frame rates, as offered by the driver.
    pub rates: Vec<FrameRate>,
}

/// A frame rate in frames per second, as the fraction `num/den`
/// (V4L2 reports intervals; this is their inverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRate {
    /// Numerator (frames).
    pub num: u32,
    /// Denominator (seconds).
    pub den: u32,
}

impl FrameRate {
    /// Frames per second as a float.
    pub fn fps(self) -> f64 {
        if self.den == 0 { 0.0 } else { f64::from(self.num) / f64::from(self.den) }
    }
}

impl fmt::Display for FrameRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 { write!(f, "{}", self.num) } else { write!(f, "{:.2}", self.fps()) }
    }
}

/// How the sender reads a camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureKind {
    /// The camera encodes H.264 itself; it is parsed and sent as is.
    H264,
    /// Motion JPEG, decoded with `jpegdec`, then scaled and encoded.
    Mjpeg,
    /// An uncompressed format, converted, scaled and encoded.
    Raw,
}

/// The chosen capture mode: format, size and rate to ask the camera for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureMode {
    /// How the stream is handled.
    pub kind: CaptureKind,
    /// The V4L2 fourcc.
    pub fourcc: String,
    /// Capture width.
    pub width: u32,
    /// Capture height.
    pub height: u32,
    /// Capture frame rate.
    pub rate: FrameRate,
}

impl CameraFormat {
    /// How robotd would handle this format, or `None` if it cannot.
    pub fn capture_kind(&self) -> Option<CaptureKind> {
        match self.fourcc.as_str() {
            "H264" => Some(CaptureKind::H264),
            "MJPG" | "JPEG" => Some(CaptureKind::Mjpeg),
            _ if !self.compressed => Some(CaptureKind::Raw),
            _ => None,
        }
    }
}

/// List the V4L2 video capture devices (`/dev/video*`), sorted by path.
///
/// Nodes that are not capture devices (codecs, ISP, UVC metadata nodes) are left
/// out; nodes that cannot be opened are logged and skipped.
pub fn list_cameras() -> Vec<CameraInfo> {
    let mut paths: Vec<PathBuf> = v4l::context::enum_devices().iter().map(|n| n.path().to_path_buf()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| match probe_camera(&p) {
            Ok(Some(info)) => Some(info),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "skipping video device");
                None
            }
        })
        .collect()
}

/// Query one device. `Ok(None)` when it is not a video capture device.
pub fn probe_camera(path: &Path) -> Result<Option<CameraInfo>, VideoError> {
    // v4l 0.14 unwraps the driver's names and format descriptions as UTF-8; a
    // camera with an odd name must not take the daemon down with it.
    std::panic::catch_unwind(|| probe(path)).unwrap_or_else(|_| {
        Err(VideoError::Camera {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the driver reported a name that is not UTF-8",
            ),
        })
    })
}

fn probe(path: &Path) -> Result<Option<CameraInfo>, VideoError> {
    let err = |source| VideoError::Camera { path: path.to_path_buf(), source };
    let dev = v4l::Device::with_path(path).map_err(err)?;
    let caps = dev.query_caps().map_err(err)?;
    if !caps.capabilities.contains(v4l::capability::Flags::VIDEO_CAPTURE) {
        return Ok(None);
    }
    let mut formats = Vec::new();
    for desc in dev.enum_formats().map_err(err)? {
        let fourcc = desc.fourcc.str().unwrap_or("????").to_string();
        let compressed = desc.flags.contains(v4l::format::description::Flags::COMPRESSED);
        let mut sizes = Vec::new();
        for fs in dev.enum_framesizes(desc.fourcc).unwrap_or_default() {
            for (width, height) in size_candidates(&fs.size) {
                let rates = dev
                    .enum_frameintervals(desc.fourcc, width, height)
                    .map(|ivs| ivs.iter().flat_map(|iv| rates_of(&iv.interval)).collect())
                    .unwrap_or_default();
                sizes.push(FrameSize { width, height, rates });
            }
        }
        formats.push(CameraFormat { fourcc, description: desc.description.clone(), compressed, sizes });
    }
    Ok(Some(CameraInfo { path: path.to_path_buf(), card: caps.card, driver: caps.driver, bus: caps.bus, formats }))
}

/// Sizes worth listing for a V4L2 frame-size entry: the discrete size, or for a
/// stepwise range its minimum, maximum and the usual sizes inside it.
fn size_candidates(size: &v4l::framesize::FrameSizeEnum) -> Vec<(u32, u32)> {
    use v4l::framesize::FrameSizeEnum;
    match size {
        FrameSizeEnum::Discrete(d) => vec![(d.width, d.height)],
        FrameSizeEnum::Stepwise(s) => {
            let fits = |w: u32, h: u32| {
                let step_ok = |v: u32, min: u32, step: u32| step == 0 || (v - min) % step == 0;
                (s.min_width..=s.max_width).contains(&w)
                    && (s.min_height..=s.max_height).contains(&h)
                    && step_ok(w, s.min_width, s.step_width)
                    && step_ok(h, s.min_height, s.step_height)
            };
            let mut out = vec![(s.min_width, s.min_height)];
            for (w, h) in [(320, 240), (640, 360), (640, 480), (1280, 720), (1920, 1080)] {
                if fits(w, h) {
                    out.push((w, h));
                }
            }
            out.push((s.max_width, s.max_height));
            out.dedup();
            out
        }
    }
}

fn rates_of(interval: &v4l::frameinterval::FrameIntervalEnum) -> Vec<FrameRate> {
    use v4l::frameinterval::FrameIntervalEnum;
    // An interval of n/d seconds is a rate of d/n frames per second.
    let inv = |f: &v4l::fraction::Fraction| FrameRate { num: f.denominator, den: f.numerator };
    match interval {
        FrameIntervalEnum::Discrete(f) => vec![inv(f)],
        // The shortest interval is the highest rate.
        FrameIntervalEnum::Stepwise(s) => vec![inv(&s.min), inv(&s.max)],
    }
}

/// Render cameras for `robotd cameras`: one block per device, one line per format
/// and size with its frame rates, and the mode a 1280x720@30 call would use.
pub fn format_cameras(cameras: &[CameraInfo]) -> String {
    let mut out = String::new();
    if cameras.is_empty() {
        out.push_str("no V4L2 capture devices found (is the camera connected? is robotd in the video group?)\n");
        out.push_str("use video.device = \"test\" for a test pattern\n");
        return out;
    }
    for cam in cameras {
        let _ = writeln!(out, "{}: {} (driver {}, bus {})", cam.path.display(), cam.card, cam.driver, cam.bus);
        for f in &cam.formats {
            let how = match f.capture_kind() {
                Some(CaptureKind::H264) => "native H.264, passed through",
                Some(CaptureKind::Mjpeg) => "MJPEG, decoded and re-encoded",
                Some(CaptureKind::Raw) => "raw, converted and encoded",
                None => "not usable",
            };
            let _ = writeln!(out, "  {} ({}): {}", f.fourcc, f.description, how);
            for s in &f.sizes {
                let rates: Vec<String> = s.rates.iter().map(|r| r.to_string()).collect();
                let _ = writeln!(out, "    {}x{} @ {} fps", s.width, s.height, rates.join(", "));
            }
        }
        match choose_capture(&cam.formats, 1280, 720, 30) {
            Some(m) => {
                let _ = writeln!(
                    out,
                    "  a 1280x720@30 call would capture {} {}x{} @ {} fps",
                    m.fourcc, m.width, m.height, m.rate
                );
            }
            None => out.push_str("  no usable capture format\n"),
        }
    }
    out
}

/// Choose how to capture for an output of at most `width`x`height` at `fps`.
///
/// - Native H.264 is preferred, but only at a size and rate within the request,
///   since it is sent as is (largest such size, then highest such rate).
/// - Otherwise MJPEG, else raw, is captured at the smallest size covering the
///   request with a rate of at least `fps` (then scaled down); failing that, the
///   largest size and fastest rate offered. MJPEG wins over raw when both cover the
///   request, because raw at large sizes is limited by USB bandwidth.
pub fn choose_capture(formats: &[CameraFormat], width: u32, height: u32, fps: u32) -> Option<CaptureMode> {
    let want_fps = f64::from(fps);
    let modes = |kind: CaptureKind| {
        formats.iter().filter(move |f| f.capture_kind() == Some(kind)).flat_map(move |f| {
            f.sizes.iter().flat_map(move |s| {
                s.rates.iter().map(move |r| CaptureMode {
                    kind,
                    fourcc: f.fourcc.clone(),
                    width: s.width,
                    height: s.height,
                    rate: *r,
                })
            })
        })
    };
    let area = |m: &CaptureMode| u64::from(m.width) * u64::from(m.height);

    // Native H.264: within the request.
    let h264 = modes(CaptureKind::H264)
        .filter(|m| m.width <= width && m.height <= height && m.rate.fps() <= want_fps + 0.5)
        .max_by(|a, b| area(a).cmp(&area(b)).then(a.rate.fps().total_cmp(&b.rate.fps())));
    if h264.is_some() {
        return h264;
    }

    // Scaled: covering the request, smallest first.
    let covering = |kind| {
        modes(kind)
            .filter(|m| m.width >= width && m.height >= height && m.rate.fps() >= want_fps - 0.5)
            .min_by(|a, b| area(a).cmp(&area(b)).then(a.rate.fps().total_cmp(&b.rate.fps())))
    };
    if let Some(m) = covering(CaptureKind::Mjpeg).or_else(|| covering(CaptureKind::Raw)) {
        return Some(m);
    }
    // Best effort: the largest, then fastest, MJPEG or raw mode.
    let best = |kind| modes(kind).max_by(|a, b| area(a).cmp(&area(b)).then(a.rate.fps().total_cmp(&b.rate.fps())));
    match (best(CaptureKind::Mjpeg), best(CaptureKind::Raw)) {
        (Some(m), Some(r)) if area(&r) > area(&m) => Some(r),
        (Some(m), _) => Some(m),
        (None, r) => r,
    }
}
