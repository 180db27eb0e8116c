//! The H.264 encoder: which one, how it is set up, how its bitrate changes.

use std::fmt;
use std::str::FromStr;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::VideoError;

/// x264enc's rate-control buffer, ms (its default is 600). Any second of
/// its output then holds at most 1.12 s of the bitrate, where 600 ms let a
/// keyframe's second reach 1.2-1.3x (measured against a 600 kbit/s policer:
/// docs/benchmarks.md, "Adaptation: a knee under the cap"); a frame waits
/// less for its bits, too. webrtcsink (gst-plugins-rs) uses the same.
pub const X264_VBV_MS: u32 = 120;

/// An H.264 encoder robotd knows how to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoder {
    /// `v4l2h264enc`: the hardware encoder of a Raspberry Pi 4 (and earlier).
    V4l2,
    /// `x264enc`: software, tuned for zero latency; fine up to 720p on a Pi 4/5.
    X264,
    /// `openh264enc`: software fallback.
    OpenH264,
}

/// Which encoder to use: automatic (the first installed of
/// [`Encoder::AUTO_ORDER`]) or forced by configuration (`video.encoder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderPreference {
    /// The first installed of `v4l2h264enc`, `x264enc`, `openh264enc`.
    #[default]
    Auto,
    /// Exactly this encoder; starting fails if it is missing.
    Force(Encoder),
}

impl Encoder {
    /// Automatic choice order: hardware first, then the software encoders.
    pub const AUTO_ORDER: [Encoder; 3] = [Encoder::V4l2, Encoder::X264, Encoder::OpenH264];

    /// The GStreamer element name.
    pub fn element_name(self) -> &'static str {
        match self {
            Encoder::V4l2 => "v4l2h264enc",
            Encoder::X264 => "x264enc",
            Encoder::OpenH264 => "openh264enc",
        }
    }

    /// Build the encoder element for `kbps` and a keyframe every 2 s at `fps`.
    pub(crate) fn make(self, name: &str, kbps: u32, fps: u32) -> Result<gst::Element, VideoError> {
        let factory = self.element_name();
        let b = super::element(factory, name)?;
        let b = match self {
            Encoder::V4l2 => b.property("extra-controls", v4l2_controls(kbps, fps)),
            Encoder::X264 => b
                .property_from_str("tune", "zerolatency")
                .property_from_str("speed-preset", "ultrafast")
                .property("key-int-max", keyframe_interval(fps))
                .property("vbv-buf-capacity", X264_VBV_MS)
                .property("bitrate", kbps),
            Encoder::OpenH264 => b
                .property_from_str("rate-control", "bitrate")
                .property_from_str("usage-type", "camera")
                .property_from_str("complexity", "low")
                .property("gop-size", keyframe_interval(fps))
                .property("bitrate", kbps.saturating_mul(1000)),
        };
        super::build(factory, b)
    }

    /// The encoder as a `gst-launch` description element named `name`, set
    /// up as [`Encoder::make`] does (x264enc also without B-frame
    /// adaptation), for the media helper's pipeline. `v4l2h264enc` is
    /// followed by the explicit level the Pi's encoder needs to negotiate.
    pub fn launch_description(self, name: &str, kbps: u32, fps: u32) -> String {
        let k = keyframe_interval(fps);
        match self {
            Encoder::V4l2 => format!(
                "v4l2h264enc name={name} extra-controls=\"controls,video_bitrate=(int){},h264_i_frame_period=(int){k},\
                 repeat_sequence_header=(int)1\" ! video/x-h264,level=(string)4",
                kbps.saturating_mul(1000).min(i32::MAX as u32)
            ),
            Encoder::X264 => format!(
                "x264enc name={name} tune=zerolatency speed-preset=ultrafast b-adapt=false key-int-max={k} \
                 vbv-buf-capacity={X264_VBV_MS} bitrate={kbps}"
            ),
            Encoder::OpenH264 => format!(
                "openh264enc name={name} rate-control=bitrate usage-type=camera complexity=low gop-size={k} bitrate={}",
                kbps.saturating_mul(1000)
            ),
        }
    }

    /// Change the bitrate of a running encoder; all three take it while playing.
    pub fn set_bitrate(self, enc: &gst::Element, kbps: u32, fps: u32) {
        match self {
            Encoder::V4l2 => enc.set_property("extra-controls", v4l2_controls(kbps, fps)),
            Encoder::X264 => enc.set_property("bitrate", kbps),
            Encoder::OpenH264 => enc.set_property("bitrate", kbps.saturating_mul(1000)),
        }
    }

    /// Set the keyframe interval for a new frame rate (takes effect when the
    /// encoder is reconfigured by the following caps change).
    pub fn set_keyframe_rate(self, enc: &gst::Element, kbps: u32, fps: u32) {
        match self {
            Encoder::V4l2 => enc.set_property("extra-controls", v4l2_controls(kbps, fps)),
            Encoder::X264 => enc.set_property("key-int-max", keyframe_interval(fps)),
            Encoder::OpenH264 => enc.set_property("gop-size", keyframe_interval(fps)),
        }
    }
}

impl fmt::Display for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.element_name())
    }
}

impl FromStr for EncoderPreference {
    type Err = VideoError;

    /// `auto`, or an element name: `v4l2h264enc`, `x264enc`, `openh264enc`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" | "" => Ok(EncoderPreference::Auto),
            "v4l2h264enc" | "v4l2" => Ok(EncoderPreference::Force(Encoder::V4l2)),
            "x264enc" | "x264" => Ok(EncoderPreference::Force(Encoder::X264)),
            "openh264enc" | "openh264" => Ok(EncoderPreference::Force(Encoder::OpenH264)),
            other => Err(VideoError::InvalidParams(format!(
                "video.encoder {other:?} is unknown; use auto, v4l2h264enc, x264enc or openh264enc"
            ))),
        }
    }
}

/// A keyframe at least every 2 s, as the protocol requires.
pub(crate) fn keyframe_interval(fps: u32) -> u32 {
    fps.max(1) * 2
}

/// The V4L2 controls for the hardware encoder: bitrate in bit/s, IDR period and
/// SPS/PPS repeated with every IDR.
fn v4l2_controls(kbps: u32, fps: u32) -> gst::Structure {
    gst::Structure::builder("controls")
        .field("video_bitrate", i32::try_from(kbps.saturating_mul(1000)).unwrap_or(i32::MAX))
        .field("h264_i_frame_period", i32::try_from(keyframe_interval(fps)).unwrap_or(60))
        .field("repeat_sequence_header", 1i32)
        .build()
}

/// Pick the encoder for `pref`, given which elements are installed.
///
/// Pure, so the choice is testable without GStreamer: `installed` answers whether
/// an element factory exists.
pub fn choose_encoder(pref: EncoderPreference, installed: impl Fn(&str) -> bool) -> Result<Encoder, VideoError> {
    match pref {
        EncoderPreference::Force(enc) => {
            if installed(enc.element_name()) {
                Ok(enc)
            } else {
                Err(VideoError::MissingElement {
                    element: enc.element_name(),
                    package: super::package_for(enc.element_name()),
                })
            }
        }
        EncoderPreference::Auto => {
            Encoder::AUTO_ORDER.into_iter().find(|e| installed(e.element_name())).ok_or(VideoError::NoEncoder)
        }
    }
}

/// Pick the encoder for `pref` from what this machine has installed.
pub fn available_encoder(pref: EncoderPreference) -> Result<Encoder, VideoError> {
    super::ensure_init()?;
    choose_encoder(pref, super::has_element)
}
