//! Video (and audio) media for calls: camera discovery, the sending pipeline and a
//! receiving pipeline for the phone side.
//!
//! The robot sends H.264 in RTP (payload type 96, packetization-mode 1, SPS/PPS
//! with every IDR, a keyframe at least every 2 s) protected with SRTP
//! `AES_CM_128_HMAC_SHA1_80`, to the host and port the caller named in its invite.
//! See `docs/protocol.md`, "Calls".
//!
//! - [`camera`]: lists V4L2 devices with their formats, sizes and frame rates and
//!   chooses how to capture (native H.264 passed through, else MJPEG, else raw).
//! - [`encoder`]: picks the H.264 encoder from what is installed
//!   (`v4l2h264enc`, else `x264enc`, else `openh264enc`) and drives its bitrate.
//! - [`sender`]: [`VideoSender`], the camera -> encoder -> RTP -> SRTP -> UDP pipeline,
//!   with bitrate and size/fps changes while running.
//! - [`audio`]: [`AudioSender`], microphone -> Opus -> RTP -> SRTP -> UDP.
//! - [`simview`]: the simulated robot's camera, a ray-cast first-person view of the
//!   simulator's obstacles as I420 frames (pure; `robotd-media` renders it for `video.device = "sim"`).
//! - [`simcam`]: [`simcam::SimScene`] and the thread that renders it into an `appsrc`
//!   (both senders use it for `video.device = "sim"`).
//! - [`receiver`]: [`Receiver`], UDP -> SRTP -> depay -> decode, counting frames,
//!   optionally recording to Matroska and saving a PNG snapshot (used by `robotctl`
//!   and by the tests); [`AudioReceiver`] does the same for Opus.
//!
//! GStreamer is initialised lazily, by the first pipeline built, so an idle daemon
//! never loads its plugins. Every pipeline is watched by a bus thread that turns an
//! error or end-of-stream into a failure report ([`VideoSender::failed`]), so a camera
//! unplugged mid-call ends the call with `video_failed` instead of hanging it, and
//! every `stop` is bounded by a timeout.

pub mod audio;
pub mod camera;
pub mod encoder;
pub mod receiver;
pub mod sender;
pub mod simcam;
pub mod simview;
mod supervise;

use std::path::PathBuf;
use std::sync::OnceLock;

use gstreamer as gst;

pub use audio::{AudioParams, AudioSender, AudioSource};
pub use camera::{CameraFormat, CameraInfo, CaptureKind, CaptureMode, FrameRate, FrameSize};
pub use encoder::{Encoder, EncoderPreference};
pub use receiver::{AudioReceiver, AudioReceiverParams, Receiver, ReceiverParams};
pub use sender::{SenderParams, VideoSender, VideoSettings, VideoSource};

/// RTP payload type of the video stream (H.264), fixed by the protocol.
pub const VIDEO_PAYLOAD_TYPE: u8 = 96;
/// RTP clock rate of the video stream.
pub const VIDEO_CLOCK_RATE: u32 = 90_000;
/// RTP payload type of the audio stream (Opus), fixed by the protocol.
pub const AUDIO_PAYLOAD_TYPE: u8 = 111;
/// RTP clock rate of the audio stream.
pub const AUDIO_CLOCK_RATE: u32 = 48_000;
/// How long `stop` waits for a pipeline to reach the NULL state before giving up.
pub const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Everything that can go wrong building, running or stopping a media pipeline.
///
/// Each message says what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// GStreamer itself could not be initialised (library missing or broken
    /// registry). Install `libgstreamer1.0-0` and the plugin packages, and check
    /// `GST_PLUGIN_PATH` / `GST_REGISTRY` if they are set.
    #[error("GStreamer could not be initialised: {0}; install libgstreamer1.0-0 and gstreamer1.0-plugins-base")]
    Init(String),
    /// A GStreamer element the pipeline needs is not installed. The message
    /// names the Debian package that provides it.
    #[error("GStreamer element {element} not found: install {package}")]
    MissingElement {
        /// Element factory name, e.g. `x264enc`.
        element: &'static str,
        /// Debian package that ships it.
        package: &'static str,
    },
    /// No H.264 encoder is installed at all.
    #[error(
        "no H.264 encoder found (tried v4l2h264enc, x264enc, openh264enc): install gstreamer1.0-plugins-ugly for x264enc"
    )]
    NoEncoder,
    /// No H.264 decoder is installed (receiving side).
    #[error("no H.264 decoder found (tried avdec_h264, openh264dec): install gstreamer1.0-libav")]
    NoDecoder,
    /// An element exists but could not be created with the given settings.
    #[error(
        "cannot create GStreamer element {element}: {detail}; check the plugin installation (gst-inspect-1.0 {element})"
    )]
    Element {
        /// Element factory name.
        element: &'static str,
        /// What GStreamer said.
        detail: String,
    },
    /// Two elements could not be linked: their capabilities do not fit. This is a
    /// bug in robotd's pipeline or an unusual plugin version; run with
    /// `GST_DEBUG=3` and report it.
    #[error("cannot link {from} -> {to}: {detail}; run with GST_DEBUG=3 and report this as a robotd bug")]
    Link {
        /// Upstream element name.
        from: String,
        /// Downstream element name.
        to: String,
        /// What GStreamer said.
        detail: String,
    },
    /// The pipeline refused to start. The detail carries the first error the
    /// pipeline posted (device busy or missing, port in use, ...).
    #[error("{pipeline} pipeline failed to start: {detail}")]
    Start {
        /// Which pipeline (`video sender`, `receiver`, ...).
        pipeline: &'static str,
        /// The first error posted on the bus, or the state-change result.
        detail: String,
    },
    /// The camera device could not be opened or queried. Check that it exists
    /// (`robotd cameras`) and that the robotd user is in the `video` group.
    #[error(
        "camera {path}: {source}; check the device exists (robotd cameras) and the robotd user is in the video group"
    )]
    Camera {
        /// Device node, e.g. `/dev/video0`.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// The camera offers no format robotd can use (H.264, MJPEG or a raw format).
    #[error(
        "camera {path} offers no usable capture format (H.264, MJPEG or raw); pick another device (robotd cameras)"
    )]
    NoCaptureFormat {
        /// Device node.
        path: PathBuf,
    },
    /// A parameter is out of range. The message names it and the allowed range.
    #[error("invalid media parameter: {0}")]
    InvalidParams(String),
    /// The operation is not possible with the current capture mode.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The pipeline did not reach the NULL state in time, usually because a
    /// driver is stuck (camera unplugged). Its threads are abandoned; restarting
    /// robotd frees them.
    #[error("{pipeline} pipeline did not stop within {secs} s (stuck camera driver?); restart robotd if this repeats")]
    StopTimeout {
        /// Which pipeline.
        pipeline: &'static str,
        /// The timeout that ran out.
        secs: u64,
    },
    /// Saving a snapshot failed.
    #[error("cannot save snapshot {path}: {detail}; check the directory exists and is writable")]
    Snapshot {
        /// Target file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

pub use crate::wire::keys::SrtpKey;

/// The key as the buffer `srtpenc` / `srtpdec` caps take.
pub(crate) fn srtp_key_buffer(key: &SrtpKey) -> gst::Buffer {
    gst::Buffer::from_slice(key.0)
}

/// Initialise GStreamer once; later calls are free.
pub(crate) fn ensure_init() -> Result<(), VideoError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| e.to_string())).clone().map_err(VideoError::Init)
}

/// The Debian package that ships a GStreamer element, for error messages (and
/// for the project's setup script, which must install all of them).
pub fn package_for(element: &str) -> &'static str {
    match element {
        "videotestsrc" | "audiotestsrc" | "videoconvert" | "videoscale" | "videorate" | "audioconvert"
        | "audioresample" | "opusenc" | "opusdec" | "appsink" => "gstreamer1.0-plugins-base",
        "v4l2src" | "v4l2h264enc" | "jpegdec" | "rtph264pay" | "rtph264depay" | "rtpopuspay" | "rtpopusdepay"
        | "udpsink" | "udpsrc" | "rtpjitterbuffer" | "matroskamux" | "pngenc" => "gstreamer1.0-plugins-good",
        "h264parse" | "srtpenc" | "srtpdec" | "openh264enc" | "openh264dec" => "gstreamer1.0-plugins-bad",
        "x264enc" => "gstreamer1.0-plugins-ugly",
        "avdec_h264" => "gstreamer1.0-libav",
        "alsasrc" => "gstreamer1.0-alsa",
        _ => "libgstreamer1.0-0",
    }
}

/// Whether an element factory is installed (GStreamer must be initialised).
pub(crate) fn has_element(name: &str) -> bool {
    gst::ElementFactory::find(name).is_some()
}

/// Start building element `factory` named `name`, failing with the package to
/// install when it is missing.
pub(crate) fn element<'a>(
    factory: &'static str,
    name: &'a str,
) -> Result<gst::element_factory::ElementBuilder<'a>, VideoError> {
    if !has_element(factory) {
        return Err(VideoError::MissingElement { element: factory, package: package_for(factory) });
    }
    Ok(gst::ElementFactory::make(factory).name(name))
}

/// Build an element and turn a failure into [`VideoError::Element`].
pub(crate) fn build(
    factory: &'static str,
    builder: gst::element_factory::ElementBuilder<'_>,
) -> Result<gst::Element, VideoError> {
    builder.build().map_err(|e| VideoError::Element { element: factory, detail: e.to_string() })
}

/// Link a chain of elements, naming the pair that failed.
pub(crate) fn link_chain(elements: &[&gst::Element]) -> Result<(), VideoError> {
    use gst::prelude::*;
    for pair in elements.windows(2) {
        pair[0].link(pair[1]).map_err(|e| VideoError::Link {
            from: pair[0].name().to_string(),
            to: pair[1].name().to_string(),
            detail: e.to_string(),
        })?;
    }
    Ok(())
}

/// A short unique prefix for element names, so the threads of one pipeline can
/// be told apart (GStreamer names streaming threads `element:pad`).
pub(crate) fn unique_prefix(kind: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    format!("{kind}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Check a width/height/fps triple against the limits robotd supports.
pub(crate) fn validate_format(width: u32, height: u32, fps: u32) -> Result<(), VideoError> {
    if !(16..=4096).contains(&width) || width % 2 != 0 {
        return Err(VideoError::InvalidParams(format!("width {width} must be even and within 16..=4096")));
    }
    if !(16..=4096).contains(&height) || height % 2 != 0 {
        return Err(VideoError::InvalidParams(format!("height {height} must be even and within 16..=4096")));
    }
    if !(1..=120).contains(&fps) {
        return Err(VideoError::InvalidParams(format!("fps {fps} must be within 1..=120")));
    }
    Ok(())
}

/// Why a native H.264 camera's size and frame rate cannot change.
pub(crate) const PASSTHROUGH_FIXED: &str = "the camera sends H.264 itself: size and frame rate cannot change during a call; \
     force re-encoding by choosing a camera format without H.264";

/// A version 1 sender's settings as robotd keeps them (the sender runs in
/// the media helper): the `video` command is checked and answered here, then
/// sent to the helper, whose [`VideoSender::adjust`] applies it by the same
/// rules (it calls this). Pure: no GStreamer, so robotd's process does not
/// link it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoSettingsMirror {
    /// What the sender runs at.
    pub video: crate::wire::payloads::VideoParams,
    /// An encoder runs (false: a native H.264 camera is passed through).
    pub reencodes: bool,
}

impl VideoSettingsMirror {
    /// Apply a `video` command; the settings now in force.
    pub fn apply(
        &mut self,
        change: crate::wire::payloads::VideoChange,
    ) -> Result<crate::wire::payloads::VideoParams, VideoError> {
        use crate::wire::payloads::VideoChange;
        match change {
            VideoChange::Bitrate(kbps) => {
                validate_kbps(kbps)?;
                self.video.kbps = kbps;
            }
            VideoChange::Format { width, height, fps } => {
                validate_format(width, height, fps)?;
                if !self.reencodes {
                    return Err(VideoError::Unsupported(PASSTHROUGH_FIXED));
                }
                self.video = crate::wire::payloads::VideoParams { width, height, fps, ..self.video };
            }
        }
        Ok(self.video)
    }
}

/// Check a video bitrate in kbit/s.
pub(crate) fn validate_kbps(kbps: u32) -> Result<(), VideoError> {
    if !(32..=50_000).contains(&kbps) {
        return Err(VideoError::InvalidParams(format!("kbps {kbps} must be within 32..=50000")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
