//! The robot's peer: answers the phone's offer and sends H.264.
//!
//! ```text
//! videotestsrc|v4l2src|appsrc (device `sim`: [`SimScene`] rendered by
//!   [`simview`]) → videoconvert → (call's size; videorate to its rate, not for `sim`)
//!   → videoscale → capsfilter size
//!   → v4l2h264enc | x264enc (zerolatency) | openh264enc (`video.encoder`,
//!     [`Encoder::launch_description`]) → constrained baseline
//!   → h264parse → rtph264pay (offer's PT, + transport-cc) → capssetter 42e01f
//!   → valve (closed until the phone's DTLS certificate matches its offer) → webrtcbin
//!     (+ rtpgccbwe as its aux sender when transport-cc is negotiated)
//! ```
//!
//! With an audio m-line in the offer (protocol.md 7.8), the robot sends its
//! microphone when it has one and the phone receives, and plays (or, with
//! speaker `test`, only measures) the phone's audio when it has a speaker and
//! the phone sends:
//!
//! ```text
//! audiotestsrc|alsasrc → audioconvert → audioresample → opusenc → rtpopuspay
//!   (the offer's Opus PT) → valve (the same gate) → webrtcbin
//! webrtcbin pad-added (audio) → valve → rtpopusdepay → opusdec → audioconvert
//!   → level (100 ms, read as [`SpeakerLevel`]) → alsasink|fakesink
//! ```
//!
//! Anything else the phone sends ends in a `fakesink`, so no audio m-line,
//! in any direction, can fail the pipeline.
//!
//! The `size` capsfilter and the encoder's bitrate follow the bandwidth
//! estimate ([`super::congestion`]).

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtp as gst_rtp;
use gstreamer_rtp::prelude::*;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;

use super::congestion::{self, Readings};
use super::{AudioSpec, IceConfig, PeerEvent, SpeakerLevel, TWCC_URI, VideoSpec, WebrtcError, sdp};
use crate::video::VideoError;
use crate::video::camera::{self, CaptureKind, CaptureMode};
use crate::video::encoder::{self, Encoder, EncoderPreference};
use crate::video::simcam::{self, SimScene};

/// How long a negotiation step may take before the call fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The SSRC of the video stream (one stream per process and call).
const SSRC: u32 = 0x5EED_0001;
/// The SSRC of the robot's audio stream.
const AUDIO_SSRC: u32 = 0x5EED_0002;
/// Opus bitrate of the robot's microphone, bit/s.
const AUDIO_BITRATE: u32 = 32_000;
/// `level`'s interval, ns.
const LEVEL_INTERVAL_NS: u64 = 100_000_000;
/// No level message for this long: the phone's audio is not being received.
const RECEIVING_WINDOW: Duration = Duration::from_secs(1);

/// What the robot does with the offer's audio m-line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioPlan {
    /// Send the microphone (it is configured, the phone receives, Opus is offered).
    pub send: bool,
    /// Receive into the speaker (it is configured, the phone sends, Opus is offered).
    pub receive: bool,
}

impl AudioPlan {
    /// The plan for `line` (the offer's audio m-line) and the robot's devices.
    pub fn new(line: &sdp::AudioLine, audio: &AudioSpec) -> AudioPlan {
        let opus = line.opus_pt.is_some();
        AudioPlan {
            send: opus && line.phone_receives && audio.mic.is_some(),
            receive: opus && line.phone_sends && audio.speaker.is_some(),
        }
    }

    /// The answer's direction for the m-line.
    pub fn direction(self) -> gst_webrtc::WebRTCRTPTransceiverDirection {
        use gst_webrtc::WebRTCRTPTransceiverDirection as D;
        match (self.send, self.receive) {
            (true, true) => D::Sendrecv,
            (true, false) => D::Sendonly,
            (false, true) => D::Recvonly,
            (false, false) => D::Inactive,
        }
    }
}

/// The speaker path's latest measurement.
#[derive(Default)]
struct Level {
    at: Option<Instant>,
    rms_db: Option<f64>,
    peak_db: Option<f64>,
}

/// A running answerer; dropping it without [`RobotPeer::stop`] leaks the pipeline
/// until the process exits (the helper process exits right after).
pub struct RobotPeer {
    pipeline: gst::Pipeline,
    webrtc: gst::Element,
    stop: Arc<AtomicBool>,
    frames_sent: Arc<AtomicU64>,
    /// Measured levels, when the phone's audio goes to a speaker.
    level: Option<Arc<Mutex<Level>>>,
    /// The bandwidth estimate and encoder settings (transport-cc calls).
    readings: Option<Arc<Readings>>,
    /// The H.264 encoder in use (`video.encoder`).
    encoder: Encoder,
    /// What device `sim` renders.
    scene: Option<Arc<SimScene>>,
}

#[derive(Default)]
struct Gate {
    /// Valves that open with the certificate check (the audio paths).
    valves: Vec<gst::Element>,
    /// The peer's certificate matched.
    verified: bool,
    /// Connection state reached `connected`.
    connected: bool,
    /// `Connected` already reported.
    reported: bool,
}

impl RobotPeer {
    /// Check the offer, build the pipeline, answer. Returns the peer and the
    /// answer SDP; candidates follow as [`PeerEvent::LocalCandidate`].
    pub fn answer(
        offer_sdp: &str,
        video: &VideoSpec,
        audio: &AudioSpec,
        ice: &IceConfig,
        events: Sender<PeerEvent>,
    ) -> Result<(RobotPeer, String), WebrtcError> {
        Self::answer_with_scene(offer_sdp, video, audio, ice, events, None)
    }

    /// [`RobotPeer::answer`], with the simulated world that video device
    /// `sim` renders (`None`: an empty world, floor and ceiling only).
    pub fn answer_with_scene(
        offer_sdp: &str,
        video: &VideoSpec,
        audio: &AudioSpec,
        ice: &IceConfig,
        events: Sender<PeerEvent>,
        scene: Option<Arc<SimScene>>,
    ) -> Result<(RobotPeer, String), WebrtcError> {
        let mut steps = super::Steps::new();
        super::init()?;
        let info = sdp::check_offer(offer_sdp)?;
        check_video(video)?;
        let pattern = test_pattern(&video.device);
        let sim = (video.device == SIM_DEVICE).then(|| scene.unwrap_or_else(|| SimScene::new(Vec::new())));
        let pref: EncoderPreference =
            video.encoder.parse().map_err(|e: VideoError| WebrtcError::Video(e.to_string()))?;
        let encoder = encoder::choose_encoder(pref, |name| gst::ElementFactory::find(name).is_some())
            .map_err(|e| WebrtcError::Video(e.to_string()))?;
        let source = match (&sim, pattern) {
            (Some(_), _) => "appsrc",
            (None, Some(_)) => "videotestsrc",
            (None, None) => "v4l2src",
        };
        super::require_elements(&[
            source,
            "videoconvert",
            encoder.element_name(),
            "h264parse",
            "rtph264pay",
            "capssetter",
            "valve",
            "webrtcbin",
            "nicesrc",
            "dtlssrtpdec",
        ])?;
        // A camera: the mode to capture in (probed, as for version 1).
        let capture = match (&sim, pattern) {
            (None, None) => Some(camera_mode(video)?),
            _ => None,
        };
        if capture.as_ref().is_some_and(|m| m.kind == CaptureKind::Mjpeg) {
            super::require_elements(&["jpegdec"])?;
        }
        if capture.as_ref().is_some_and(|m| m.kind == CaptureKind::H264) {
            super::require_elements(&["avdec_h264"])?;
        }
        // The device path is set as a property below, never spliced into the description.
        let src = match (&sim, pattern, &capture) {
            // Frames pushed by `simcam::spawn` at the call's size and rate.
            (Some(_), _, _) => simcam::appsrc_description("src", video.width, video.height, video.fps),
            (None, Some(_), _) => "videotestsrc name=src is-live=true".into(),
            (None, None, Some(mode)) => camera_description(mode.kind),
            (None, None, None) => "v4l2src name=src".into(),
        };
        // videorate holds each frame until the next one arrives (to decide
        // whether to duplicate it): a frame period of delay (benches/browser.rs,
        // docs/benchmarks.md). The simulated camera pushes at the call's
        // rate already, so it goes without.
        let rate = if sim.is_some() { "" } else { "! videorate " };
        let desc = format!(
            "{src} ! videoconvert ! videoscale {rate}\
             ! capsfilter name=rate caps=video/x-raw,format=I420,width={w},height={h},framerate={fps}/1 \
             ! videoscale ! capsfilter name=size caps=video/x-raw,width={w},height={h},pixel-aspect-ratio=1/1 \
             ! {enc} ! video/x-h264,profile=constrained-baseline ! h264parse config-interval=-1 \
             ! rtph264pay name=pay pt={pt} ssrc={SSRC} config-interval=-1 aggregate-mode=zero-latency mtu=1200 \
             ! capssetter caps=\"application/x-rtp,profile-level-id=(string)42e01f\" \
             ! valve name=gate drop=true drop-mode=forward-sticky-events ! webrtcbin name=webrtc latency=150",
            w = video.width,
            h = video.height,
            fps = video.fps,
            enc = encoder.launch_description("enc", video.kbps, video.fps),
            pt = info.payload_type,
        );
        steps.mark("check");
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| WebrtcError::Pipeline(e.to_string()))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| WebrtcError::Pipeline("not a pipeline".into()))?;
        steps.mark("parse");
        let get =
            |name: &str| pipeline.by_name(name).ok_or_else(|| WebrtcError::Pipeline(format!("element {name} missing")));
        match (&sim, pattern) {
            (Some(_), _) => {}
            (None, Some(p)) => get("src")?.set_property_from_str("pattern", p),
            (None, None) => get("src")?.set_property("device", &video.device),
        }
        if let Some(mode) = &capture {
            get("cam")?.set_property("caps", crate::video::sender::camera_caps(mode));
            tracing::info!(device = %video.device, fourcc = %mode.fourcc, width = mode.width, height = mode.height,
                rate = %mode.rate, "camera capture mode");
        }
        let webrtc = get("webrtc")?;
        let valve = get("gate")?;
        let pay = get("pay")?;
        super::configure_ice(&webrtc, ice)?;
        // Audio is optional to the call: a device that does not open is left out.
        let audio = &AudioSpec {
            mic: audio.mic.clone().filter(|d| alsa_device_opens("alsasrc", "microphone", d)),
            speaker: audio.speaker.clone().filter(|d| alsa_device_opens("alsasink", "speaker", d)),
        };
        let plan = info.audio.as_ref().map(|line| (line.clone(), AudioPlan::new(line, audio)));
        let audio_valve = match &plan {
            Some((line, p)) if p.send => Some(add_microphone(&pipeline, &webrtc, audio, line)?),
            _ => None,
        };
        if let Some((_, p)) = &plan {
            if p.receive {
                super::require_elements(&["rtpopusdepay", "opusdec", "audioconvert", "level"])?;
                if audio.speaker.as_deref() != Some("test") {
                    super::require_elements(&["audioresample", "alsasink"])?;
                }
            }
        }

        let mut prefs = format!(
            "application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,payload={},\
             packetization-mode=(string)1,profile-level-id=(string)42e01f,ssrc=(uint){SSRC}",
            info.payload_type
        );
        if let Some(id) = info.twcc_id {
            let ext = gst_rtp::RTPHeaderExtension::create_from_uri(TWCC_URI)
                .ok_or_else(|| WebrtcError::Pipeline("rtphdrexttwcc missing (gstreamer1.0-plugins-good)".into()))?;
            ext.set_id(u32::from(id));
            pay.emit_by_name::<()>("add-extension", &[&ext]);
            prefs.push_str(&format!(",extmap-{id}=(string){TWCC_URI},rtcp-fb-transport-cc=(boolean)true"));
        }

        // Trap (b): the transceiver of the sink pad parse_launch requested,
        // made sendonly and pinned to the offer's format before negotiation.
        steps.mark("build");
        pipeline.set_state(gst::State::Ready).map_err(|e| WebrtcError::Pipeline(format!("to READY: {e}")))?;
        steps.mark("ready");
        let tr: gst_webrtc::WebRTCRTPTransceiver = webrtc
            .emit_by_name::<Option<gst_webrtc::WebRTCRTPTransceiver>>("get-transceiver", &[&0i32])
            .ok_or_else(|| WebrtcError::Pipeline("webrtcbin has no transceiver for the video pad".into()))?;
        tr.set_direction(gst_webrtc::WebRTCRTPTransceiverDirection::Sendonly);
        tr.set_property("do-nack", true);
        let caps = gst::Caps::from_str(&prefs).map_err(|e| WebrtcError::Pipeline(format!("codec preferences: {e}")))?;
        tr.set_codec_preferences(Some(&caps));
        if let Some((line, p)) = &plan {
            configure_audio_transceiver(&webrtc, line, *p)?;
        }

        super::connect_common(&webrtc, &events);
        drop_unreceived_rtp(&webrtc);
        let gate = Arc::new(Mutex::new(Gate::default()));
        if let Some(v) = audio_valve {
            gate.lock().unwrap_or_else(|p| p.into_inner()).valves.push(v);
        }
        let level = plan.as_ref().filter(|(_, p)| p.receive).map(|_| Arc::new(Mutex::new(Level::default())));
        {
            // Every pad webrtcbin adds is linked: the phone's audio to the
            // speaker when the plan receives it, anything else to a fakesink
            // (an unlinked pad would fail the pipeline).
            let (pipeline_weak, gate, tx) = (pipeline.downgrade(), gate.clone(), events.clone());
            let speaker = level.as_ref().and(audio.speaker.clone());
            webrtc.connect_pad_added(move |_, pad| {
                if pad.direction() != gst::PadDirection::Src {
                    return;
                }
                let Some(pipeline) = pipeline_weak.upgrade() else { return };
                if let Err(e) = link_incoming(&pipeline, pad, speaker.as_deref(), &gate) {
                    let _ = tx.send(PeerEvent::Failed(format!("receive path: {e}")));
                }
            });
        }
        let frames_sent = Arc::new(AtomicU64::new(0));
        {
            // Frames out of the encoder while the valve is open.
            let (gate, frames_sent) = (gate.clone(), frames_sent.clone());
            if let Some(pad) = get("enc")?.static_pad("src") {
                pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                    if gate.lock().map(|g| g.verified).unwrap_or(false) {
                        frames_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    gst::PadProbeReturn::Ok
                });
            }
        }
        {
            // Trap (a): open the valve only for the certificate the offer names.
            let (gate, valve, tx) = (gate.clone(), valve.clone(), events.clone());
            let want = info.fingerprint.clone();
            let pay = pay.clone();
            super::watch_peer_certificate(&webrtc, move |got| {
                let mut g = gate.lock().unwrap_or_else(|p| p.into_inner());
                if got.as_ref() == Some(&want) {
                    if !g.verified {
                        g.verified = true;
                        valve.set_property("drop", false);
                        for v in &g.valves {
                            v.set_property("drop", false);
                        }
                        force_keyframe(&pay);
                        tracing::info!(fingerprint = %want, "phone's DTLS certificate matches its offer; video on");
                    }
                    report_connected(&mut g, &tx);
                } else {
                    g.verified = false;
                    valve.set_property("drop", true);
                    for v in &g.valves {
                        v.set_property("drop", true);
                    }
                    let got = got.map(|f| f.to_string()).unwrap_or_else(|| "(no certificate)".into());
                    tracing::warn!(want = %want, got = %got, "phone's DTLS certificate does not match its offer");
                    let _ = tx.send(PeerEvent::FingerprintMismatch { want: want.to_string(), got });
                }
            });
        }
        {
            let (gate, tx) = (gate.clone(), events.clone());
            super::on_connection_state(&webrtc, &events, move || {
                let mut g = gate.lock().unwrap_or_else(|p| p.into_inner());
                g.connected = true;
                report_connected(&mut g, &tx);
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        // Congestion control needs the phone's transport-cc feedback.
        let readings = match info.twcc_id {
            Some(_) => Some(congestion::install(&webrtc, (&get("enc")?, encoder), &get("size")?, video, stop.clone())?),
            None => {
                tracing::warn!(kbps = video.kbps, "the offer has no transport-cc: fixed bitrate, no adaptation");
                None
            }
        };
        let on_element = {
            let level = level.clone();
            move |s: &gst::StructureRef| {
                let Some(level) = level.as_ref().filter(|_| s.name() == "level") else { return };
                let mut l = level.lock().unwrap_or_else(|p| p.into_inner());
                l.at = Some(Instant::now());
                l.rms_db = super::level_db(s, "rms");
                l.peak_db = super::level_db(s, "peak");
            }
        };
        super::spawn_bus_watch(&pipeline, events, stop.clone(), "robot", on_element)
            .map_err(|e| WebrtcError::Pipeline(format!("bus thread: {e}")))?;
        if let Some(scene) = &sim {
            let appsrc = get("src")?
                .downcast::<gst_app::AppSrc>()
                .map_err(|_| WebrtcError::Pipeline("element src is not an appsrc".into()))?;
            simcam::spawn(appsrc, scene.clone(), video.width, video.height, video.fps, stop.clone())
                .map_err(|e| WebrtcError::Pipeline(format!("sim camera thread: {e}")))?;
        }
        tracing::info!(encoder = encoder.element_name(), "video encoder");
        let peer = RobotPeer { pipeline, webrtc, stop, frames_sent, level, readings, encoder, scene: sim };
        let answer = peer.negotiate(offer_sdp, &mut steps).inspect_err(|_| peer.shutdown())?;
        tracing::info!(%steps, "answer ready");
        Ok((peer, answer))
    }

    fn negotiate(&self, offer_sdp: &str, steps: &mut super::Steps) -> Result<String, WebrtcError> {
        self.pipeline.set_state(gst::State::Playing).map_err(|e| WebrtcError::Pipeline(format!("to PLAYING: {e}")))?;
        steps.mark("playing");
        let msg = gst_sdp::SDPMessage::parse_buffer(offer_sdp.as_bytes()).map_err(|_| sdp::SdpError::Parse)?;
        let offer = gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Offer, msg);
        super::promise_call(&self.webrtc, "set-remote-description", &offer.to_value(), STEP_TIMEOUT)?;
        steps.mark("remote");
        let reply =
            super::promise_call(&self.webrtc, "create-answer", &None::<gst::Structure>.to_value(), STEP_TIMEOUT)?;
        let answer = super::reply_description(reply, "answer")?;
        steps.mark("create_answer");
        super::promise_call(&self.webrtc, "set-local-description", &answer.to_value(), STEP_TIMEOUT)?;
        steps.mark("local");
        let text = answer.sdp().as_text().map_err(|e| WebrtcError::Negotiation(format!("answer as text: {e}")))?;
        let video = text.split("m=").find(|m| m.starts_with("video"));
        if video.is_none_or(|v| v.starts_with("video 0 ") || v.contains("a=inactive")) {
            tracing::warn!("webrtcbin's answer has no active video");
        }
        Ok(text)
    }

    /// Encoded frames sent on since the phone's certificate was verified.
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent.load(Ordering::Relaxed)
    }

    /// What the speaker path measures; `None` when the robot does not take
    /// the phone's audio (no speaker, no audio m-line, the phone does not send).
    pub fn speaker_level(&self) -> Option<SpeakerLevel> {
        let l = self.level.as_ref()?.lock().unwrap_or_else(|p| p.into_inner());
        Some(SpeakerLevel {
            receiving: l.at.is_some_and(|t| t.elapsed() < RECEIVING_WINDOW),
            rms_db: l.rms_db,
            peak_db: l.peak_db,
        })
    }

    /// The owner's `video` command: frame rate now, size and maximum
    /// bitrate through the bandwidth adaptation (directly without it).
    pub fn set_video(&self, limits: congestion::Limits) {
        let fps = limits.fps.max(1);
        let with_rate = |el: &gst::Element| {
            let caps: gst::Caps = el.property("caps");
            let mut caps = caps.copy();
            if let Some(s) = caps.make_mut().structure_mut(0) {
                s.set("framerate", gst::Fraction::new(fps as i32, 1));
            }
            el.set_property("caps", caps);
        };
        // The simulated camera (no videorate): it renders at the new rate.
        if let Some(scene) = &self.scene {
            if let Some(src) = self.pipeline.by_name("src") {
                with_rate(&src);
            }
            scene.set_fps(fps);
        }
        if let Some(rate) = self.pipeline.by_name("rate") {
            with_rate(&rate);
        }
        if let Some(enc) = self.pipeline.by_name("enc") {
            self.encoder.set_keyframe_rate(&enc, limits.kbps, fps);
            if self.readings.is_none() {
                self.encoder.set_bitrate(&enc, limits.kbps, fps);
            }
        }
        match &self.readings {
            Some(r) => *r.limits.lock().unwrap_or_else(|p| p.into_inner()) = Some(limits),
            None => {
                if let Some(size) = self.pipeline.by_name("size") {
                    size.set_property("caps", congestion::size_caps(limits.width, limits.height));
                }
            }
        }
        tracing::info!(width = limits.width, height = limits.height, fps, kbps = limits.kbps, "video command applied");
    }

    /// The bandwidth estimate and what the encoder does with it; `None`
    /// without transport-cc (fixed bitrate).
    pub fn readings(&self) -> Option<&Readings> {
        self.readings.as_deref()
    }

    /// A candidate of the phone's; `candidate` is the `candidate:…` text.
    pub fn add_remote_candidate(&self, mline: u32, candidate: &str) {
        self.webrtc.emit_by_name::<()>("add-ice-candidate", &[&mline, &candidate]);
    }

    /// The phone has no more candidates.
    pub fn end_of_candidates(&self) {
        self.webrtc.emit_by_name::<()>("add-ice-candidate", &[&0u32, &""]);
    }

    /// Stop the pipeline (bounded: a stuck element is abandoned after 3 s).
    pub fn stop(self) {
        self.shutdown();
    }

    fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if !super::shutdown_pipeline(self.pipeline.clone(), Duration::from_secs(3)) {
            tracing::warn!("media pipeline did not stop within 3 s; abandoned");
        }
    }
}

fn report_connected(g: &mut Gate, tx: &Sender<PeerEvent>) {
    if g.verified && g.connected && !g.reported {
        g.reported = true;
        let _ = tx.send(PeerEvent::Connected);
    }
}

/// Ask the encoder for an IDR with SPS/PPS (the frames held at the valve
/// included the first one).
fn force_keyframe(pay: &gst::Element) {
    let s = gst::Structure::builder("GstForceKeyUnit")
        .field("running-time", u64::MAX)
        .field("all-headers", true)
        .field("count", 0u32)
        .build();
    if let Some(pad) = pay.static_pad("src") {
        pad.send_event(gst::event::CustomUpstream::new(s));
    }
}

/// Whether an ALSA device opens (`test` always does): tried before the
/// answer, so a missing or busy sound card makes the robot decline that
/// direction of audio instead of failing the call.
fn alsa_device_opens(factory: &str, what: &str, device: &str) -> bool {
    if device == "test" {
        return true;
    }
    let el = match gst::ElementFactory::make(factory).property("device", device).build() {
        Ok(el) => el,
        Err(e) => {
            tracing::warn!(%device, error = %e, "no {factory} (gstreamer1.0-alsa): the {what} is left out of this call");
            return false;
        }
    };
    let ok = el.set_state(gst::State::Ready).is_ok();
    let _ = el.set_state(gst::State::Null);
    if !ok {
        tracing::warn!(%device, "the {what} (ALSA) does not open: left out of this call");
    }
    ok
}

/// The microphone's branch, linked to a new webrtcbin sink pad (transceiver
/// 1); returns its valve (closed until the certificate check passes).
fn add_microphone(
    pipeline: &gst::Pipeline,
    webrtc: &gst::Element,
    audio: &AudioSpec,
    line: &sdp::AudioLine,
) -> Result<gst::Element, WebrtcError> {
    let mic = audio.mic.as_deref().unwrap_or("test");
    let source = if mic == "test" { "audiotestsrc" } else { "alsasrc" };
    super::require_elements(&[source, "audioconvert", "audioresample", "opusenc", "rtpopuspay"])?;
    let pt = line.opus_pt.unwrap_or(111);
    // The device is set as a property below, never spliced into the description.
    let src = if mic == "test" {
        "audiotestsrc name=asrc is-live=true wave=sine freq=440 volume=0.1"
    } else {
        "alsasrc name=asrc"
    };
    let desc = format!(
        "{src} ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=1          ! opusenc bitrate={AUDIO_BITRATE} ! rtpopuspay pt={pt} ssrc={AUDIO_SSRC}          ! valve name=agate drop=true drop-mode=forward-sticky-events"
    );
    let bin = gst::parse::bin_from_description(&desc, true).map_err(|e| WebrtcError::Pipeline(e.to_string()))?;
    if mic != "test" {
        if let Some(src) = bin.by_name("asrc") {
            src.set_property("device", mic);
        }
    }
    let valve = bin.by_name("agate").ok_or_else(|| WebrtcError::Pipeline("audio valve missing".into()))?;
    pipeline.add(&bin).map_err(|e| WebrtcError::Pipeline(e.to_string()))?;
    let sink = webrtc
        .request_pad_simple("sink_%u")
        .ok_or_else(|| WebrtcError::Pipeline("webrtcbin gave no sink pad for audio".into()))?;
    let src = bin.static_pad("src").ok_or_else(|| WebrtcError::Pipeline("audio bin has no src pad".into()))?;
    src.link(&sink).map_err(|e| WebrtcError::Pipeline(format!("audio to webrtcbin: {e:?}")))?;
    Ok(valve)
}

/// The audio m-line's transceiver: the microphone's (transceiver 1) or a new
/// one, with the plan's direction and pinned to the offer's Opus format.
/// Without Opus in the offer there is nothing to pin: the m-line is answered
/// inactive.
fn configure_audio_transceiver(
    webrtc: &gst::Element,
    line: &sdp::AudioLine,
    plan: AudioPlan,
) -> Result<(), WebrtcError> {
    let Some(pt) = line.opus_pt else {
        // Preferences that match any audio format: webrtcbin takes this
        // transceiver for the m-line (it would otherwise make its own,
        // recvonly) and answers inactive.
        let caps = gst::Caps::from_str("application/x-rtp,media=audio")
            .map_err(|e| WebrtcError::Pipeline(format!("audio preferences: {e}")))?;
        let _ = webrtc.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
            "add-transceiver",
            &[&gst_webrtc::WebRTCRTPTransceiverDirection::Inactive, &caps],
        );
        tracing::info!(mline = line.mline, "audio m-line without Opus: inactive");
        return Ok(());
    };
    let mut prefs = format!("application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload={pt}");
    if plan.send {
        prefs.push_str(&format!(",ssrc=(uint){AUDIO_SSRC}"));
    }
    let caps = gst::Caps::from_str(&prefs).map_err(|e| WebrtcError::Pipeline(format!("audio preferences: {e}")))?;
    let tr = if plan.send {
        webrtc
            .emit_by_name::<Option<gst_webrtc::WebRTCRTPTransceiver>>("get-transceiver", &[&1i32])
            .ok_or_else(|| WebrtcError::Pipeline("webrtcbin has no transceiver for the audio pad".into()))?
    } else {
        webrtc.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>("add-transceiver", &[&plan.direction(), &caps])
    };
    tr.set_direction(plan.direction());
    tr.set_codec_preferences(Some(&caps));
    tracing::info!(mline = line.mline, direction = ?plan.direction(), "audio m-line");
    Ok(())
}

/// RTP that the phone sends while the answer receives nothing (video
/// `sendonly`, audio `sendonly` or `inactive`: a GStreamer phone sends on
/// regardless) reaches the transport's `rtp_src` pad, which webrtcbin 1.22
/// links to its rtpbin only when some transceiver receives; the `not-linked`
/// would stop the whole receive path (DTLS and RTCP included) with "Internal
/// data stream error". Such buffers are dropped instead.
fn drop_unreceived_rtp(webrtc: &gst::Element) {
    webrtc.connect("deep-element-added", false, |a| {
        let Ok(el) = a[2].get::<gst::Element>() else { return None };
        if !el.name().starts_with("transportreceivebin") {
            return None;
        }
        if let Some(pad) = el.static_pad("rtp_src") {
            pad.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST, |pad, _| {
                if pad.is_linked() { gst::PadProbeReturn::Ok } else { gst::PadProbeReturn::Drop }
            });
        }
        None
    });
}

/// Link a pad webrtcbin added: the phone's audio into the speaker path when
/// `speaker` is set, everything else into a fakesink.
fn link_incoming(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    speaker: Option<&str>,
    gate: &Arc<Mutex<Gate>>,
) -> Result<(), String> {
    let caps = pad.current_caps().or_else(|| Some(pad.query_caps(None)));
    let s = caps.as_ref().and_then(|c| c.structure(0).map(|s| s.to_owned()));
    let is_opus = s.as_ref().is_some_and(|s| {
        s.get::<&str>("media").ok() == Some("audio")
            && s.get::<&str>("encoding-name").is_ok_and(|e| e.eq_ignore_ascii_case("OPUS"))
    });
    let desc = match speaker.filter(|_| is_opus) {
        Some(device) => {
            let sink = if device == "test" {
                "fakesink sync=false async=false"
            } else {
                "audioresample ! alsasink name=spk sync=false async=false"
            };
            format!(
                "valve name=sgate drop=true ! rtpopusdepay ! opusdec plc=true ! audioconvert                  ! level interval={LEVEL_INTERVAL_NS} post-messages=true ! {sink}"
            )
        }
        None => "fakesink sync=false async=false".to_owned(),
    };
    let bin = gst::parse::bin_from_description(&desc, true).map_err(|e| e.to_string())?;
    if let (Some(device), Some(spk)) = (speaker, bin.by_name("spk")) {
        spk.set_property("device", device);
    }
    pipeline.add(&bin).map_err(|e| e.to_string())?;
    if let Some(valve) = bin.by_name("sgate") {
        let mut g = gate.lock().unwrap_or_else(|p| p.into_inner());
        valve.set_property("drop", !g.verified);
        g.valves.push(valve);
        tracing::info!("phone's audio goes to the speaker");
    }
    bin.sync_state_with_parent().map_err(|e| e.to_string())?;
    let sink = bin.static_pad("sink").ok_or("bin has no sink pad")?;
    pad.link(&sink).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// The `videotestsrc` pattern of a test device: `test` (a moving ball) or
/// `test:snow` (noise: a scene that fills any bitrate, for rate tests).
/// `video.device` for the simulated robot's camera view.
pub const SIM_DEVICE: &str = "sim";

/// How to capture from the camera `video.device` for this call: its modes
/// as for version 1 ([`camera::choose_capture`]), but a camera's own H.264
/// only when it has nothing else: the helper always re-encodes, so the
/// bandwidth adaptation and the phone's keyframe requests always reach an
/// encoder it drives.
fn camera_mode(video: &VideoSpec) -> Result<CaptureMode, WebrtcError> {
    let path = std::path::Path::new(&video.device);
    let info = camera::probe_camera(path)
        .map_err(|e| WebrtcError::Video(e.to_string()))?
        .ok_or_else(|| WebrtcError::Video(format!("{} is not a video capture device", video.device)))?;
    let decodable: Vec<_> =
        info.formats.iter().filter(|f| f.capture_kind().is_some_and(|k| k != CaptureKind::H264)).cloned().collect();
    camera::choose_capture(&decodable, video.width, video.height, video.fps)
        .or_else(|| camera::choose_capture(&info.formats, video.width, video.height, video.fps))
        .ok_or_else(|| {
            WebrtcError::Video(format!("{} offers no format robotd can capture (raw, MJPEG or H.264)", video.device))
        })
}

/// The camera's source element and what turns its frames into raw video:
/// `cam` is the capsfilter holding the chosen mode.
fn camera_description(kind: CaptureKind) -> String {
    let decode = match kind {
        CaptureKind::Raw => "",
        CaptureKind::Mjpeg => " ! jpegdec",
        CaptureKind::H264 => " ! h264parse ! avdec_h264",
    };
    format!("v4l2src name=src ! capsfilter name=cam{decode}")
}

fn test_pattern(device: &str) -> Option<&'static str> {
    match device {
        "test" | "test:ball" => Some("ball"),
        "test:snow" => Some("snow"),
        _ => None,
    }
}

fn check_video(v: &VideoSpec) -> Result<(), WebrtcError> {
    // Level 3.1 (the 42e01f the SDP promises): at most 1280x720@30.
    if !(16..=1280).contains(&v.width) || !(16..=720).contains(&v.height) {
        return Err(WebrtcError::Video(format!("{}x{} is outside 16x16..1280x720", v.width, v.height)));
    }
    if !(1..=30).contains(&v.fps) {
        return Err(WebrtcError::Video(format!("{} fps is outside 1..30", v.fps)));
    }
    if !(50..=20_000).contains(&v.kbps) {
        return Err(WebrtcError::Video(format!("{} kbit/s is outside 50..20000", v.kbps)));
    }
    if v.device.is_empty() {
        return Err(WebrtcError::Video("empty device (use `test` or a /dev/video path)".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_camera_is_captured_in_a_mode_it_has_and_decoded_to_raw() {
        assert_eq!(camera_description(CaptureKind::Raw), "v4l2src name=src ! capsfilter name=cam");
        assert_eq!(camera_description(CaptureKind::Mjpeg), "v4l2src name=src ! capsfilter name=cam ! jpegdec");
        assert_eq!(
            camera_description(CaptureKind::H264),
            "v4l2src name=src ! capsfilter name=cam ! h264parse ! avdec_h264"
        );
        let video = VideoSpec {
            device: "/dev/video-robotd-missing".into(),
            width: 640,
            height: 480,
            fps: 30,
            kbps: 1000,
            encoder: "auto".into(),
        };
        let e = camera_mode(&video).unwrap_err().to_string();
        assert!(e.contains("/dev/video-robotd-missing"), "{e}");
    }
    use gst_webrtc::WebRTCRTPTransceiverDirection as D;

    fn line(phone_sends: bool, phone_receives: bool, opus: bool) -> sdp::AudioLine {
        sdp::AudioLine { mline: 0, opus_pt: opus.then_some(111), phone_sends, phone_receives }
    }

    fn spec(mic: bool, speaker: bool) -> AudioSpec {
        AudioSpec { mic: mic.then(|| "test".into()), speaker: speaker.then(|| "test".into()) }
    }

    /// protocol.md 7.8: the answer's audio direction for each offer and robot.
    #[test]
    fn the_audio_answer_follows_what_the_robot_has_and_the_phone_offers() {
        let dir = |l: sdp::AudioLine, a: AudioSpec| AudioPlan::new(&l, &a).direction();
        assert_eq!(dir(line(true, true, true), spec(true, true)), D::Sendrecv);
        assert_eq!(dir(line(true, true, true), spec(true, false)), D::Sendonly);
        assert_eq!(dir(line(true, true, true), spec(false, true)), D::Recvonly);
        assert_eq!(dir(line(true, true, true), spec(false, false)), D::Inactive);
        // The phone only receives: the speaker has nothing to take.
        assert_eq!(dir(line(false, true, true), spec(true, true)), D::Sendonly);
        assert_eq!(dir(line(false, true, true), spec(false, true)), D::Inactive);
        // The phone only sends: the microphone has nobody to hear it.
        assert_eq!(dir(line(true, false, true), spec(true, true)), D::Recvonly);
        assert_eq!(dir(line(true, false, true), spec(true, false)), D::Inactive);
        // No Opus: nothing either way.
        assert_eq!(dir(line(true, true, false), spec(true, true)), D::Inactive);
    }
}
