//! The sending pipeline: camera -> H.264 -> RTP -> SRTP -> UDP.
//!
//! ```text
//! v4l2src | videotestsrc | appsrc (the simulated camera, [`super::simcam`])
//!   [-> capsfilter (camera mode) -> jpegdec]                   (MJPEG camera)
//!   -> videoconvert -> videoscale -> videorate -> capsfilter   (I420, size, fps)
//!   -> queue (leaky: a slow encoder drops frames, never adds delay)
//!   -> v4l2h264enc | x264enc | openh264enc
//!   -> h264parse (SPS/PPS before every IDR)
//!   -> rtph264pay (pt 96, the accepted SSRC)
//!   -> srtpenc (AES_CM_128_HMAC_SHA1_80) -> udpsink
//!
//! native H.264 camera: v4l2src -> capsfilter -> h264parse -> rtph264pay -> ...
//! ```

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;
use tokio::sync::watch;

use super::camera::{self, CaptureKind, CaptureMode};
use super::encoder::{self, Encoder, EncoderPreference};
use super::simcam::{self, SimScene};
use super::supervise::Supervised;
use super::{SrtpKey, VideoError, VideoSettingsMirror, build, element, link_chain};
use crate::wire::payloads::{VideoChange, VideoParams};

/// Where the picture comes from.
#[derive(Debug, Clone)]
pub enum VideoSource {
    /// `videotestsrc` (configured as `video.device = "test"`).
    Test,
    /// A V4L2 camera, e.g. `/dev/video0`.
    Device(PathBuf),
    /// The simulated robot's view of its world (`video.device = "sim"`),
    /// which the daemon keeps posed.
    Sim(Arc<SimScene>),
}

impl PartialEq for VideoSource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (VideoSource::Test, VideoSource::Test) => true,
            (VideoSource::Device(a), VideoSource::Device(b)) => a == b,
            (VideoSource::Sim(a), VideoSource::Sim(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl VideoSource {
    /// `"test"` is the test pattern; anything else is a device path. (`"sim"`
    /// needs the simulated world: the daemon makes [`VideoSource::Sim`].)
    pub fn from_config(device: &str) -> Self {
        if device == "test" { VideoSource::Test } else { VideoSource::Device(device.into()) }
    }
}

/// What a [`VideoSender`] needs to start: the destination from the invite and
/// the parameters the robot puts in its accept.
#[derive(Debug, Clone)]
pub struct SenderParams {
    /// The caller's media host (`media.host`).
    pub host: IpAddr,
    /// The caller's media port (`media.port`).
    pub port: u16,
    /// The SSRC named in the accept.
    pub ssrc: u32,
    /// SRTP master key || salt for video.
    pub srtp_key: SrtpKey,
    /// Output size (even width and height), frame rate and target bitrate.
    pub video: VideoParams,
    /// Encoder choice (`video.encoder`).
    pub encoder: EncoderPreference,
    /// Camera or test pattern (`video.device`).
    pub source: VideoSource,
}

/// The parameters in force, for the accept message and the `video` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoSettings {
    /// Size, frame rate and bitrate (the target; a native H.264 camera may
    /// not honour it).
    pub video: VideoParams,
    /// The encoder in use, or `None` when a native H.264 camera is passed through.
    pub encoder: Option<Encoder>,
}

/// A running video sender. Stop it with [`VideoSender::stop`]; dropping it stops
/// it too, ignoring errors.
pub struct VideoSender {
    run: Supervised,
    /// Output caps filter (absent for H.264 pass-through).
    out_caps: Option<gst::Element>,
    encoder_element: Option<gst::Element>,
    #[cfg(test)]
    udpsink: gst::Element,
    settings: Mutex<VideoSettings>,
    /// Stops the simulated camera's render thread (source `Sim`).
    sim_stop: Option<Arc<AtomicBool>>,
}

impl Drop for VideoSender {
    fn drop(&mut self) {
        if let Some(stop) = &self.sim_stop {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

impl VideoSender {
    /// Build and start the pipeline. Fails if an element is missing, the camera
    /// cannot be opened, or the parameters are out of range.
    ///
    /// Blocking (camera probing, plugin loading, state change): from async code
    /// call it inside `tokio::task::spawn_blocking`, like [`VideoSender::stop`].
    pub fn start(params: SenderParams) -> Result<Self, VideoError> {
        let v = params.video;
        super::validate_format(v.width, v.height, v.fps)?;
        super::validate_kbps(v.kbps)?;
        super::ensure_init()?;
        let capture = match &params.source {
            VideoSource::Test | VideoSource::Sim(_) => None,
            VideoSource::Device(path) => {
                let info =
                    camera::probe_camera(path)?.ok_or_else(|| VideoError::NoCaptureFormat { path: path.clone() })?;
                let mode = camera::choose_capture(&info.formats, v.width, v.height, v.fps)
                    .ok_or_else(|| VideoError::NoCaptureFormat { path: path.clone() })?;
                tracing::info!(device = %path.display(), fourcc = %mode.fourcc, width = mode.width,
                    height = mode.height, rate = %mode.rate, "camera capture mode");
                Some((path.clone(), mode))
            }
        };
        let passthrough = matches!(&capture, Some((_, m)) if m.kind == CaptureKind::H264);
        let encoder = if passthrough { None } else { Some(encoder::available_encoder(params.encoder)?) };

        let p = super::unique_prefix("vs");
        let n = |s: &str| format!("{p}-{s}");
        let pipeline = gst::Pipeline::with_name(&p);
        let mut chain: Vec<gst::Element> = Vec::new();

        // Source (and camera caps / decoding).
        let mut settings = VideoSettings { video: v, encoder };
        let mut sim_src = None;
        match &capture {
            None if matches!(params.source, VideoSource::Sim(_)) => {
                let desc = simcam::appsrc_description(&n("src"), v.width, v.height, v.fps);
                let src = gst::parse::launch(&desc)
                    .map_err(|e| VideoError::Start { pipeline: "video sender", detail: e.to_string() })
                    .and_then(|el| {
                        el.downcast::<gstreamer_app::AppSrc>().map_err(|_| VideoError::Start {
                            pipeline: "video sender",
                            detail: "the simulated camera's source is not an appsrc".into(),
                        })
                    })?;
                chain.push(src.clone().upcast());
                sim_src = Some(src);
            }
            None => {
                chain.push(build(
                    "videotestsrc",
                    element("videotestsrc", &n("src"))?.property("is-live", true).property_from_str("pattern", "smpte"),
                )?);
            }
            Some((path, mode)) => {
                chain.push(build(
                    "v4l2src",
                    element("v4l2src", &n("src"))?.property("device", path.to_string_lossy().into_owned()),
                )?);
                chain.push(build("capsfilter", element("capsfilter", &n("cam"))?.property("caps", camera_caps(mode)))?);
                match mode.kind {
                    CaptureKind::Mjpeg => chain.push(build("jpegdec", element("jpegdec", &n("jpeg"))?)?),
                    CaptureKind::Raw => {}
                    CaptureKind::H264 => {
                        settings.video.width = mode.width;
                        settings.video.height = mode.height;
                        settings.video.fps = mode.rate.fps().round().max(1.0) as u32;
                    }
                }
                if mode.kind != CaptureKind::H264 {
                    // Never claim more frames than the camera delivers.
                    let cam_fps = mode.rate.fps().floor().max(1.0) as u32;
                    settings.video.fps = settings.video.fps.min(cam_fps);
                }
            }
        }

        let mut out_caps = None;
        let mut encoder_element = None;
        if let Some(enc) = encoder {
            chain.push(build("videoconvert", element("videoconvert", &n("conv"))?)?);
            chain.push(build("videoscale", element("videoscale", &n("scale"))?)?);
            chain.push(build("videorate", element("videorate", &n("rate"))?.property("drop-only", true))?);
            let caps_el = build(
                "capsfilter",
                element("capsfilter", &n("out"))?
                    .property("caps", raw_caps(settings.video.width, settings.video.height, settings.video.fps)),
            )?;
            chain.push(caps_el.clone());
            out_caps = Some(caps_el);
            chain.push(build(
                "queue",
                element("queue", &n("q"))?
                    .property_from_str("leaky", "downstream")
                    .property("max-size-buffers", 2u32)
                    .property("max-size-bytes", 0u32)
                    .property("max-size-time", 0u64),
            )?);
            let enc_el = enc.make(&n("enc"), settings.video.kbps, settings.video.fps)?;
            chain.push(enc_el.clone());
            encoder_element = Some(enc_el);
            if enc == Encoder::V4l2 {
                // The Pi's encoder fails to negotiate without an explicit level.
                let caps = gst::Caps::builder("video/x-h264").field("level", "4").build();
                chain.push(build("capsfilter", element("capsfilter", &n("lvl"))?.property("caps", caps))?);
            }
        }
        chain.push(build("h264parse", element("h264parse", &n("parse"))?.property("config-interval", -1i32))?);
        chain.push(build(
            "rtph264pay",
            element("rtph264pay", &n("pay"))?
                .property("pt", u32::from(super::VIDEO_PAYLOAD_TYPE))
                .property("ssrc", params.ssrc)
                .property("config-interval", -1i32),
        )?);
        let srtpenc = make_srtpenc(&n("srtp"), &params.srtp_key)?;
        let udpsink = make_udpsink(&n("udp"), params.host, params.port)?;

        let refs: Vec<&gst::Element> = chain.iter().collect();
        pipeline
            .add_many(refs.iter().copied())
            .and_then(|_| pipeline.add_many([&srtpenc, &udpsink]))
            .map_err(|e| VideoError::Start { pipeline: "video sender", detail: e.to_string() })?;
        link_chain(&refs)?;
        link_srtp(chain.last().expect("chain is never empty"), &srtpenc, &udpsink)?;

        let run = Supervised::start("video sender", format!("{p}-bus"), pipeline)?;
        let sim_stop = match (sim_src, &params.source) {
            (Some(src), VideoSource::Sim(scene)) => {
                let stop = Arc::new(AtomicBool::new(false));
                simcam::spawn(src, scene.clone(), v.width, v.height, v.fps, stop.clone()).map_err(|e| {
                    VideoError::Start { pipeline: "video sender", detail: format!("sim camera thread: {e}") }
                })?;
                Some(stop)
            }
            _ => None,
        };
        tracing::info!(host = %params.host, port = params.port, ssrc = params.ssrc,
            width = settings.video.width, height = settings.video.height, fps = settings.video.fps,
            kbps = settings.video.kbps,
            encoder = %settings.encoder.map_or("passthrough", Encoder::element_name), "video sender started");
        Ok(VideoSender {
            run,
            out_caps,
            encoder_element,
            #[cfg(test)]
            udpsink,
            settings: Mutex::new(settings),
            sim_stop,
        })
    }

    /// The parameters in force.
    pub fn current(&self) -> VideoSettings {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply a `video` command to the running stream and return the settings
    /// now in force. The rules and messages are [`VideoSettingsMirror::apply`]'s
    /// (robotd answers the command with them before the helper gets it), so
    /// the two cannot drift apart:
    /// - a bitrate changes the running encoder without restarting the stream;
    ///   with a native H.264 camera it is only recorded (the camera's own
    ///   encoder is not driven);
    /// - a size or frame rate changes the output caps: the scaler and rate
    ///   converter renegotiate and the encoder restarts with a keyframe
    ///   carrying the new SPS. Not possible with a native H.264 camera.
    pub fn adjust(&self, change: VideoChange) -> Result<VideoSettings, VideoError> {
        let mut s = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let encoder = s.encoder.zip(self.encoder_element.as_ref());
        let mut mirror =
            VideoSettingsMirror { video: s.video, reencodes: encoder.is_some() && self.out_caps.is_some() };
        let now = mirror.apply(change)?;
        match change {
            VideoChange::Bitrate(kbps) => {
                if let Some((enc, el)) = encoder {
                    enc.set_bitrate(el, kbps, now.fps);
                }
            }
            // The mirror has refused a new format unless both exist.
            VideoChange::Format { width, height, fps } => {
                if let (Some((enc, el)), Some(caps_el)) = (encoder, &self.out_caps) {
                    enc.set_keyframe_rate(el, now.kbps, fps);
                    caps_el.set_property("caps", raw_caps(width, height, fps));
                }
            }
        }
        s.video = now;
        tracing::info!(
            width = now.width,
            height = now.height,
            fps = now.fps,
            kbps = now.kbps,
            "video settings changed"
        );
        Ok(*s)
    }

    /// [`VideoSender::adjust`] with a new bitrate.
    pub fn set_bitrate(&self, kbps: u32) -> Result<VideoSettings, VideoError> {
        self.adjust(VideoChange::Bitrate(kbps))
    }

    /// [`VideoSender::adjust`] with a new size and frame rate.
    pub fn set_format(&self, width: u32, height: u32, fps: u32) -> Result<VideoSettings, VideoError> {
        self.adjust(VideoChange::Format { width, height, fps })
    }

    /// A receiver that turns `Some(reason)` when the pipeline fails (error or
    /// end of stream, e.g. the camera was unplugged). The call then ends with
    /// `video_failed`.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.run.failed()
    }

    /// The failure reported so far, if any.
    pub fn failure(&self) -> Option<String> {
        self.run.failure()
    }

    /// Stop the pipeline and free everything (threads, socket), within
    /// [`super::STOP_TIMEOUT`]; on timeout the stuck threads are abandoned and
    /// [`VideoError::StopTimeout`] is returned. Blocking: use `spawn_blocking`.
    pub fn stop(mut self) -> Result<(), VideoError> {
        let r = self.run.shutdown(super::STOP_TIMEOUT);
        tracing::info!("video sender stopped");
        r
    }

    /// Also send to `host:port` (tests: one stream to two receivers).
    #[cfg(test)]
    pub(crate) fn add_destination(&self, host: &str, port: u16) {
        self.udpsink.emit_by_name::<()>("add", &[&host, &i32::from(port)]);
    }

    #[cfg(test)]
    pub(crate) fn pipeline_weak(&self) -> gst::glib::WeakRef<gst::Pipeline> {
        self.run.pipeline().downgrade()
    }

    #[cfg(test)]
    pub(crate) fn name_prefix(&self) -> String {
        self.run.pipeline().name().to_string()
    }
}

/// The caps the encoder is fed: I420 (4:2:0, what every phone decodes), square
/// pixels (videoscale letterboxes rather than stretching), the given size and rate.
fn raw_caps(width: u32, height: u32, fps: u32) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", width as i32)
        .field("height", height as i32)
        .field("framerate", gst::Fraction::new(fps as i32, 1))
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .build()
}

/// The caps asked of the camera for a capture mode.
pub(crate) fn camera_caps(mode: &CaptureMode) -> gst::Caps {
    let media = match mode.kind {
        CaptureKind::H264 => "video/x-h264",
        CaptureKind::Mjpeg => "image/jpeg",
        CaptureKind::Raw => "video/x-raw",
    };
    gst::Caps::builder(media)
        .field("width", mode.width as i32)
        .field("height", mode.height as i32)
        .field("framerate", gst::Fraction::new(mode.rate.num as i32, mode.rate.den.max(1) as i32))
        .build()
}

/// An `srtpenc` for AES_CM_128_HMAC_SHA1_80 (RTP and RTCP) with `key`.
pub(crate) fn make_srtpenc(name: &str, key: &SrtpKey) -> Result<gst::Element, VideoError> {
    build(
        "srtpenc",
        element("srtpenc", name)?
            .property("key", super::srtp_key_buffer(key))
            .property_from_str("rtp-cipher", "aes-128-icm")
            .property_from_str("rtp-auth", "hmac-sha1-80")
            .property_from_str("rtcp-cipher", "aes-128-icm")
            .property_from_str("rtcp-auth", "hmac-sha1-80"),
    )
}

/// A `udpsink` to `host:port` that never waits for the clock or prerolls.
pub(crate) fn make_udpsink(name: &str, host: IpAddr, port: u16) -> Result<gst::Element, VideoError> {
    build(
        "udpsink",
        element("udpsink", name)?
            .property("host", host.to_string())
            .property("port", i32::from(port))
            .property("sync", false)
            .property("async", false),
    )
}

/// Link `payloader -> srtpenc (request pad rtp_sink_0) -> udpsink`.
pub(crate) fn link_srtp(
    payloader: &gst::Element,
    srtpenc: &gst::Element,
    udpsink: &gst::Element,
) -> Result<(), VideoError> {
    let link_err = |from: &gst::Element, to: &gst::Element, detail: String| VideoError::Link {
        from: from.name().to_string(),
        to: to.name().to_string(),
        detail,
    };
    let sink = srtpenc
        .request_pad_simple("rtp_sink_0")
        .ok_or_else(|| link_err(payloader, srtpenc, "srtpenc gave no rtp_sink_0 pad".into()))?;
    let src =
        payloader.static_pad("src").ok_or_else(|| link_err(payloader, srtpenc, "payloader has no src pad".into()))?;
    src.link(&sink).map_err(|e| link_err(payloader, srtpenc, e.to_string()))?;
    let out = srtpenc
        .static_pad("rtp_src_0")
        .ok_or_else(|| link_err(srtpenc, udpsink, "srtpenc has no rtp_src_0 pad".into()))?;
    let udp_in =
        udpsink.static_pad("sink").ok_or_else(|| link_err(srtpenc, udpsink, "udpsink has no sink pad".into()))?;
    out.link(&udp_in).map_err(|e| link_err(srtpenc, udpsink, e.to_string()))?;
    Ok(())
}
