//! The phone's peer (robotctl, tests): offers a recvonly H.264 video
//! transceiver, decodes what the robot sends and counts the frames.
//!
//! ```text
//! webrtcbin (recvonly H264 pm1 42e01f + transport-cc, do-nack)
//!   pad-added → valve (closed until the robot's certificate matches its answer)
//!   → rtph264depay → h264parse → avdec_h264|openh264dec → fakesink (counts frames)
//! ```

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;

use super::{Fingerprint, IceConfig, PeerEvent, TWCC_URI, WebrtcError, sdp};

const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The payload type and transport-cc ID the phone offers.
const OFFER_PT: u32 = 102;
const OFFER_TWCC_ID: u32 = 3;
/// The receive jitterbuffer's latency, ms: room for a NACK and its
/// retransmission. Measured in tests/webrtc.rs (5 % loss both ways, through a
/// TURN relay, busy 2-core machine): 150 ms kept 89 % of the frames, 250 ms
/// 95 %, 300 ms 93-94 %, 400 ms 98-99 % (without NACK: 69-86 %). Browsers
/// size their own jitterbuffers; this is robotctl's.
pub const RECEIVE_LATENCY_MS: u32 = 400;

#[derive(Default)]
struct Gate {
    /// What the answer names (known once `set_answer` ran).
    want: Option<Fingerprint>,
    /// What the robot showed in DTLS.
    got: Option<Option<Fingerprint>>,
    verified: bool,
    mismatch_reported: bool,
    connected: bool,
    reported: bool,
    /// The receive valves made so far (one per video pad).
    valves: Vec<gst::Element>,
}

/// A running offerer.
pub struct PhonePeer {
    pipeline: gst::Pipeline,
    webrtc: gst::Element,
    gate: Arc<Mutex<Gate>>,
    frames: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    events: Sender<PeerEvent>,
}

impl PhonePeer {
    /// Build the pipeline and make the offer; candidates follow as
    /// [`PeerEvent::LocalCandidate`].
    pub fn offer(ice: &IceConfig, events: Sender<PeerEvent>) -> Result<(PhonePeer, String), WebrtcError> {
        Self::offer_with_nack(ice, true, events)
    }

    /// [`PhonePeer::offer`], with NACK (retransmission requests) on or off
    /// (off only to measure what NACK is worth).
    pub fn offer_with_nack(
        ice: &IceConfig,
        nack: bool,
        events: Sender<PeerEvent>,
    ) -> Result<(PhonePeer, String), WebrtcError> {
        super::init()?;
        super::require_elements(&["webrtcbin", "nicesrc", "dtlssrtpdec", "valve", "rtph264depay", "h264parse"])?;
        let decoder = ["avdec_h264", "openh264dec"]
            .into_iter()
            .find(|d| gst::ElementFactory::find(d).is_some())
            .ok_or(WebrtcError::MissingElement { element: "avdec_h264".into(), package: "gstreamer1.0-libav" })?;
        let pipeline = gst::Pipeline::with_name("phone");
        let webrtc = gst::ElementFactory::make("webrtcbin")
            .name("webrtc")
            .property("latency", RECEIVE_LATENCY_MS)
            .build()
            .map_err(|e| WebrtcError::Pipeline(e.to_string()))?;
        pipeline.add(&webrtc).map_err(|e| WebrtcError::Pipeline(e.to_string()))?;
        super::configure_ice(&webrtc, ice)?;
        let gate = Arc::new(Mutex::new(Gate::default()));
        let frames = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));

        {
            let (pipeline_weak, gate, frames) = (pipeline.downgrade(), gate.clone(), frames.clone());
            let tx = events.clone();
            webrtc.connect_pad_added(move |_, pad| {
                if pad.direction() != gst::PadDirection::Src {
                    return;
                }
                let Some(pipeline) = pipeline_weak.upgrade() else { return };
                if let Err(e) = link_receiver(&pipeline, pad, decoder, &gate, &frames) {
                    let _ = tx.send(PeerEvent::Failed(format!("receive path: {e}")));
                }
            });
        }
        super::connect_common(&webrtc, &events);
        {
            let (gate, tx) = (gate.clone(), events.clone());
            super::watch_peer_certificate(&webrtc, move |got| {
                let mut g = gate.lock().unwrap_or_else(|p| p.into_inner());
                g.got = Some(got);
                evaluate(&mut g, &tx);
            });
        }
        {
            let (gate, tx) = (gate.clone(), events.clone());
            super::on_connection_state(&webrtc, &events, move || {
                let mut g = gate.lock().unwrap_or_else(|p| p.into_inner());
                g.connected = true;
                evaluate(&mut g, &tx);
            });
        }
        super::spawn_bus_watch(&pipeline, events.clone(), stop.clone(), "phone")
            .map_err(|e| WebrtcError::Pipeline(format!("bus thread: {e}")))?;
        pipeline.set_state(gst::State::Playing).map_err(|e| WebrtcError::Pipeline(format!("to PLAYING: {e}")))?;
        let peer = PhonePeer { pipeline, webrtc, gate, frames, stop, events };
        let offer = peer.make_offer(nack).inspect_err(|_| peer.shutdown())?;
        Ok((peer, offer))
    }

    fn make_offer(&self, nack: bool) -> Result<String, WebrtcError> {
        // Trap (d): the transport-cc extmap must be in the preferences for
        // webrtcbin (and browsers) to offer it; `a=rtcp-fb:* transport-cc`
        // says the phone sends the feedback the robot's estimator needs.
        let caps = gst::Caps::from_str(&format!(
            "application/x-rtp,media=video,encoding-name=H264,payload={OFFER_PT},clock-rate=90000,\
             packetization-mode=(string)1,profile-level-id=(string)42e01f,extmap-{OFFER_TWCC_ID}=(string){TWCC_URI},\
             rtcp-fb-transport-cc=(boolean)true"
        ))
        .map_err(|e| WebrtcError::Pipeline(format!("codec preferences: {e}")))?;
        let tr = self.webrtc.emit_by_name::<gst_webrtc::WebRTCRTPTransceiver>(
            "add-transceiver",
            &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &caps],
        );
        tr.set_property("do-nack", nack);
        let reply =
            super::promise_call(&self.webrtc, "create-offer", &None::<gst::Structure>.to_value(), STEP_TIMEOUT)?;
        let offer = super::reply_description(reply, "offer")?;
        super::promise_call(&self.webrtc, "set-local-description", &offer.to_value(), STEP_TIMEOUT)?;
        offer.sdp().as_text().map_err(|e| WebrtcError::Negotiation(format!("offer as text: {e}")))
    }

    /// The robot's answer. Its `a=fingerprint` is the certificate the robot
    /// must show in DTLS before any frame is decoded.
    pub fn set_answer(&self, answer_sdp: &str) -> Result<(), WebrtcError> {
        let want = sdp::offer_fingerprint(answer_sdp)?;
        {
            let mut g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
            g.want = Some(want);
            evaluate(&mut g, &self.events);
        }
        let msg = gst_sdp::SDPMessage::parse_buffer(answer_sdp.as_bytes()).map_err(|_| sdp::SdpError::Parse)?;
        let answer = gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Answer, msg);
        super::promise_call(&self.webrtc, "set-remote-description", &answer.to_value(), STEP_TIMEOUT)?;
        Ok(())
    }

    /// A candidate of the robot's (`candidate:…`).
    pub fn add_remote_candidate(&self, mline: u32, candidate: &str) {
        self.webrtc.emit_by_name::<()>("add-ice-candidate", &[&mline, &candidate]);
    }

    /// The robot has no more candidates.
    pub fn end_of_candidates(&self) {
        self.webrtc.emit_by_name::<()>("add-ice-candidate", &[&0u32, &""]);
    }

    /// Frames decoded since the robot's certificate was verified.
    pub fn frames_decoded(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Stop the pipeline (bounded: a stuck element is abandoned after 3 s).
    pub fn stop(self) {
        self.shutdown();
    }

    fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = super::shutdown_pipeline(self.pipeline.clone(), Duration::from_secs(3));
    }
}

/// Decide the gate once both the wanted and the shown fingerprint are known.
fn evaluate(g: &mut Gate, tx: &Sender<PeerEvent>) {
    if let (Some(want), Some(got)) = (&g.want, &g.got) {
        if got.as_ref() == Some(want) {
            if !g.verified {
                g.verified = true;
                for v in &g.valves {
                    v.set_property("drop", false);
                }
            }
        } else {
            g.verified = false;
            for v in &g.valves {
                v.set_property("drop", true);
            }
            if !g.mismatch_reported {
                g.mismatch_reported = true;
                let got = got.as_ref().map(|f| f.to_string()).unwrap_or_else(|| "(no certificate)".into());
                let _ = tx.send(PeerEvent::FingerprintMismatch { want: want.to_string(), got });
            }
        }
    }
    if g.verified && g.connected && !g.reported {
        g.reported = true;
        let _ = tx.send(PeerEvent::Connected);
    }
}

fn link_receiver(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    decoder: &str,
    gate: &Arc<Mutex<Gate>>,
    frames: &Arc<AtomicU64>,
) -> Result<(), String> {
    let caps = pad.current_caps().or_else(|| Some(pad.query_caps(None)));
    let is_video = caps
        .as_ref()
        .and_then(|c| c.structure(0))
        .and_then(|s| s.get::<&str>("media").ok())
        .is_none_or(|m| m == "video");
    let desc = if is_video {
        format!(
            "valve name=gate drop=true ! rtph264depay request-keyframe=true wait-for-keyframe=true ! h264parse \
             ! {decoder} ! fakesink name=frames signal-handoffs=true sync=false async=false"
        )
    } else {
        "fakesink sync=false async=false".to_owned()
    };
    let bin = gst::parse::bin_from_description(&desc, true).map_err(|e| e.to_string())?;
    pipeline.add(&bin).map_err(|e| e.to_string())?;
    if is_video {
        let valve = bin.by_name("gate").ok_or("valve missing")?;
        let sink = bin.by_name("frames").ok_or("fakesink missing")?;
        let (gate2, frames) = (gate.clone(), frames.clone());
        sink.connect("handoff", false, move |_| {
            if gate2.lock().map(|g| g.verified).unwrap_or(false) {
                frames.fetch_add(1, Ordering::Relaxed);
            }
            None
        });
        let mut g = gate.lock().unwrap_or_else(|p| p.into_inner());
        valve.set_property("drop", !g.verified);
        g.valves.push(valve);
    }
    bin.sync_state_with_parent().map_err(|e| e.to_string())?;
    let sink = bin.static_pad("sink").ok_or("bin has no sink pad")?;
    pad.link(&sink).map_err(|e| format!("{e:?}"))?;
    Ok(())
}
