//! The robot's peer: answers the phone's offer and sends H.264.
//!
//! ```text
//! videotestsrc|v4l2src → videoconvert → (call's size) → videoscale → capsfilter size
//!   → x264enc (zerolatency) → constrained baseline
//!   → h264parse → rtph264pay (offer's PT, + transport-cc) → capssetter 42e01f
//!   → valve (closed until the phone's DTLS certificate matches its offer) → webrtcbin
//!     (+ rtpgccbwe as its aux sender when transport-cc is negotiated)
//! ```
//!
//! The `size` capsfilter and x264enc's `bitrate` follow the bandwidth
//! estimate ([`super::congestion`]).

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_rtp as gst_rtp;
use gstreamer_rtp::prelude::*;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;

use super::congestion::{self, Readings};
use super::{IceConfig, PeerEvent, TWCC_URI, VideoSpec, WebrtcError, sdp};

/// How long a negotiation step may take before the call fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The SSRC of the video stream (one stream per process and call).
const SSRC: u32 = 0x5EED_0001;

/// A running answerer; dropping it without [`RobotPeer::stop`] leaks the pipeline
/// until the process exits (the helper process exits right after).
pub struct RobotPeer {
    pipeline: gst::Pipeline,
    webrtc: gst::Element,
    stop: Arc<AtomicBool>,
    frames_sent: Arc<AtomicU64>,
    /// The bandwidth estimate and encoder settings (transport-cc calls).
    readings: Option<Arc<Readings>>,
}

#[derive(Default)]
struct Gate {
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
        ice: &IceConfig,
        events: Sender<PeerEvent>,
    ) -> Result<(RobotPeer, String), WebrtcError> {
        super::init()?;
        let info = sdp::check_offer(offer_sdp)?;
        check_video(video)?;
        let pattern = test_pattern(&video.device);
        let source = if pattern.is_some() { "videotestsrc" } else { "v4l2src" };
        super::require_elements(&[
            source,
            "videoconvert",
            "x264enc",
            "h264parse",
            "rtph264pay",
            "capssetter",
            "valve",
            "webrtcbin",
            "nicesrc",
            "dtlssrtpdec",
        ])?;
        // The device path is set as a property below, never spliced into the description.
        let src = if pattern.is_some() { "videotestsrc name=src is-live=true" } else { "v4l2src name=src" };
        let desc = format!(
            "{src} ! videoconvert ! videoscale ! videorate ! video/x-raw,format=I420,width={w},height={h},framerate={fps}/1 \
             ! videoscale ! capsfilter name=size caps=video/x-raw,width={w},height={h},pixel-aspect-ratio=1/1 \
             ! x264enc name=enc tune=zerolatency speed-preset=ultrafast b-adapt=false key-int-max={kint} bitrate={kbps} \
             ! video/x-h264,profile=constrained-baseline ! h264parse config-interval=-1 \
             ! rtph264pay name=pay pt={pt} ssrc={SSRC} config-interval=-1 aggregate-mode=zero-latency mtu=1200 \
             ! capssetter caps=\"application/x-rtp,profile-level-id=(string)42e01f\" \
             ! valve name=gate drop=true drop-mode=forward-sticky-events ! webrtcbin name=webrtc latency=150",
            w = video.width,
            h = video.height,
            fps = video.fps,
            kint = video.fps.saturating_mul(2).max(1),
            kbps = video.kbps,
            pt = info.payload_type,
        );
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| WebrtcError::Pipeline(e.to_string()))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| WebrtcError::Pipeline("not a pipeline".into()))?;
        let get =
            |name: &str| pipeline.by_name(name).ok_or_else(|| WebrtcError::Pipeline(format!("element {name} missing")));
        match pattern {
            Some(p) => get("src")?.set_property_from_str("pattern", p),
            None => get("src")?.set_property("device", &video.device),
        }
        let webrtc = get("webrtc")?;
        let valve = get("gate")?;
        let pay = get("pay")?;
        super::configure_ice(&webrtc, ice)?;

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
        pipeline.set_state(gst::State::Ready).map_err(|e| WebrtcError::Pipeline(format!("to READY: {e}")))?;
        let tr: gst_webrtc::WebRTCRTPTransceiver = webrtc
            .emit_by_name::<Option<gst_webrtc::WebRTCRTPTransceiver>>("get-transceiver", &[&0i32])
            .ok_or_else(|| WebrtcError::Pipeline("webrtcbin has no transceiver for the video pad".into()))?;
        tr.set_direction(gst_webrtc::WebRTCRTPTransceiverDirection::Sendonly);
        tr.set_property("do-nack", true);
        let caps = gst::Caps::from_str(&prefs).map_err(|e| WebrtcError::Pipeline(format!("codec preferences: {e}")))?;
        tr.set_codec_preferences(Some(&caps));

        super::connect_common(&webrtc, &events);
        let gate = Arc::new(Mutex::new(Gate::default()));
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
                        force_keyframe(&pay);
                        tracing::info!(fingerprint = %want, "phone's DTLS certificate matches its offer; video on");
                    }
                    report_connected(&mut g, &tx);
                } else {
                    g.verified = false;
                    valve.set_property("drop", true);
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
            Some(_) => Some(congestion::install(&webrtc, &get("enc")?, &get("size")?, video, stop.clone())?),
            None => {
                tracing::warn!(kbps = video.kbps, "the offer has no transport-cc: fixed bitrate, no adaptation");
                None
            }
        };
        super::spawn_bus_watch(&pipeline, events, stop.clone(), "robot")
            .map_err(|e| WebrtcError::Pipeline(format!("bus thread: {e}")))?;
        let peer = RobotPeer { pipeline, webrtc, stop, frames_sent, readings };
        let answer = peer.negotiate(offer_sdp).inspect_err(|_| peer.shutdown())?;
        Ok((peer, answer))
    }

    fn negotiate(&self, offer_sdp: &str) -> Result<String, WebrtcError> {
        self.pipeline.set_state(gst::State::Playing).map_err(|e| WebrtcError::Pipeline(format!("to PLAYING: {e}")))?;
        let msg = gst_sdp::SDPMessage::parse_buffer(offer_sdp.as_bytes()).map_err(|_| sdp::SdpError::Parse)?;
        let offer = gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Offer, msg);
        super::promise_call(&self.webrtc, "set-remote-description", &offer.to_value(), STEP_TIMEOUT)?;
        let reply =
            super::promise_call(&self.webrtc, "create-answer", &None::<gst::Structure>.to_value(), STEP_TIMEOUT)?;
        let answer = super::reply_description(reply, "answer")?;
        super::promise_call(&self.webrtc, "set-local-description", &answer.to_value(), STEP_TIMEOUT)?;
        let text = answer.sdp().as_text().map_err(|e| WebrtcError::Negotiation(format!("answer as text: {e}")))?;
        if !text.lines().any(|l| l.starts_with("m=video") && !l.starts_with("m=video 0 "))
            || text.contains("a=inactive")
        {
            tracing::warn!("webrtcbin's answer has no active video");
        }
        Ok(text)
    }

    /// Encoded frames sent on since the phone's certificate was verified.
    pub fn frames_sent(&self) -> u64 {
        self.frames_sent.load(Ordering::Relaxed)
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

/// The `videotestsrc` pattern of a test device: `test` (a moving ball) or
/// `test:snow` (noise: a scene that fills any bitrate, for rate tests).
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
