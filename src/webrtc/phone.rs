//! The phone's peer (robotctl, tests): offers a recvonly H.264 video
//! transceiver, decodes what the robot sends and counts the frames; with
//! [`PhoneOptions::audio`], also a sendrecv Opus transceiver that sends a
//! tone (the "microphone", mutable) and counts the robot's audio.
//!
//! ```text
//! webrtcbin (recvonly H264 pm1 42e01f + transport-cc, do-nack)
//!   pad-added → valve (closed until the robot's certificate matches its answer)
//!   → rtph264depay → h264parse → avdec_h264|openh264dec → fakesink (counts frames;
//!     a [`Keep::snapshot`] is the first verified frame as PNG)
//!   [h264parse → tee → queue → matroskamux → filesink: [`Keep::record`]]
//! audiotestsrc (440 Hz; volume 0 when muted) → opusenc → rtpopuspay pt 111 → webrtcbin
//!   pad-added (audio) → valve → rtpopusdepay → opusdec → fakesink (counts buffers)
//! ```

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::video::simview;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;

use super::{Fingerprint, IceConfig, PeerEvent, TWCC_URI, WebrtcError, sdp};

const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The payload type and transport-cc ID the phone offers.
const OFFER_PT: u32 = 102;
const OFFER_TWCC_ID: u32 = 3;
/// The Opus payload type the phone offers (Chromium's).
const OFFER_OPUS_PT: u32 = 111;
/// The session bandwidth (bit/s) the phone's rtpsession plans its RTCP
/// with. A receiver that sends nothing estimates 64 kbit/s, which gives RTCP
/// 2.4 kbit/s and, under RFC 4585's early-feedback rules, one early packet
/// every ~0.25 s: retransmission requests past the first then wait for the
/// next packet and miss their deadline.
const SESSION_BANDWIDTH_BPS: f64 = 2_000_000.0;
/// The tone's volume while unmuted (about -9 dBFS RMS).
const TONE_VOLUME: f64 = 0.5;

/// What the phone offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhoneOptions {
    /// Ask for retransmissions (NACK); off only to measure what it is worth.
    pub nack: bool,
    /// Offer audio sendrecv (m-line 0, before the video): send a tone, count
    /// what the robot sends.
    pub audio: bool,
}

impl Default for PhoneOptions {
    fn default() -> Self {
        PhoneOptions { nack: true, audio: false }
    }
}

/// What the phone keeps of the robot's video (robotctl's `--record` and
/// `--snapshot`), only once the robot's certificate is verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keep {
    /// Record the H.264 as received (no re-encoding) to this Matroska file,
    /// finished (end of stream through the muxer) when the peer stops.
    pub record: Option<PathBuf>,
    /// Save the first decoded frame to this PNG file.
    pub snapshot: Option<PathBuf>,
}

/// Where the kept files stand, shared with the streaming threads.
#[derive(Default)]
struct Kept {
    keep: Keep,
    state: Mutex<KeptState>,
    cond: Condvar,
}

#[derive(Default)]
struct KeptState {
    /// The recording branch's queue (to end it), once the video pad came.
    record_queue: Option<gst::Element>,
    /// End of stream reached the recording's file.
    record_done: bool,
    /// The snapshot's outcome, once a frame was saved (or failed to be).
    snapshot: Option<Result<(), String>>,
}

impl Kept {
    fn lock(&self) -> std::sync::MutexGuard<'_, KeptState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Save `buffer` (caps from `pad`) as the snapshot unless one was saved.
    fn snapshot(&self, args: &[gst::glib::Value]) {
        let Some(path) = &self.keep.snapshot else { return };
        if self.lock().snapshot.is_some() {
            return;
        }
        let r = save_png(path, args);
        self.lock().snapshot = Some(r);
        self.cond.notify_all();
    }

    /// End the recording and wait (at most `timeout`) for the muxer to
    /// finish the file; `true` when it did, or when nothing was recorded.
    fn finish_recording(&self, timeout: Duration) -> bool {
        let Some(queue) = self.lock().record_queue.clone() else { return true };
        let Some(pad) = queue.static_pad("sink") else { return false };
        if !pad.send_event(gst::event::Eos::new()) {
            return false;
        }
        let st = self.lock();
        let (st, _) = self.cond.wait_timeout_while(st, timeout, |s| !s.record_done).unwrap_or_else(|p| p.into_inner());
        st.record_done
    }
}

/// A decoded frame (a fakesink `handoff`'s buffer and pad) as PNG, through
/// GStreamer's own converter and `pngenc`.
fn save_png(path: &std::path::Path, args: &[gst::glib::Value]) -> Result<(), String> {
    let buffer = args.get(1).and_then(|v| v.get::<gst::Buffer>().ok()).ok_or("no buffer")?;
    let pad = args.get(2).and_then(|v| v.get::<gst::Pad>().ok()).ok_or("no pad")?;
    let caps = pad.current_caps().ok_or("no caps")?;
    let sample = gst::Sample::builder().buffer(&buffer).caps(&caps).build();
    let png = gstreamer_video::convert_sample(
        &sample,
        &gst::Caps::builder("image/png").build(),
        gst::ClockTime::from_seconds(5),
    )
    .map_err(|e| format!("to PNG: {e}"))?;
    let out = png.buffer().ok_or("PNG without a buffer")?;
    let map = out.map_readable().map_err(|e| e.to_string())?;
    std::fs::write(path, map.as_slice()).map_err(|e| format!("{}: {e}", path.display()))
}
/// The receive jitterbuffer's latency, ms: room for a NACK and its
/// retransmission. Measured in tests/webrtc.rs (5 % loss both ways, through a
/// TURN relay, busy 2-core machine): 150 ms kept 89 % of the frames, 250 ms
/// 95 %, 300 ms 93-94 %, 400 ms 98-99 % (without NACK: 69-86 %). Browsers
/// size their own jitterbuffers; this is robotctl's.
pub const RECEIVE_LATENCY_MS: u32 = 400;

/// The gaps between decoded video frames, once asked for
/// ([`PhonePeer::record_frame_gaps`]); at most [`MAX_GAPS`] kept between two
/// [`PhonePeer::take_frame_gaps`].
#[derive(Default)]
struct FrameGaps {
    on: bool,
    last: Option<Instant>,
    gaps: Vec<Duration>,
}

const MAX_GAPS: usize = 100_000;

impl FrameGaps {
    fn frame(&mut self) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        if let Some(last) = self.last.replace(now) {
            if self.gaps.len() < MAX_GAPS {
                self.gaps.push(now - last);
            }
        }
    }
}

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

/// What the phone has received of the robot's video since the call
/// started ([`PhonePeer::receive_stats`]): webrtcbin's `get-stats` for the
/// video stream (rtpsource's counters) and its jitter buffer's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReceiveStats {
    pub frames_decoded: u64,
    /// RTP payload bytes and packets of the video stream (retransmissions
    /// not included).
    pub bytes_received: u64,
    pub packets_received: u64,
    /// Packets the network lost (gaps in the sequence numbers)...
    pub packets_lost: u64,
    /// ...of which a retransmission repaired this many in time...
    pub packets_repaired: u64,
    /// ...and this many were given up on at the jitter buffer's deadline.
    pub packets_unrecovered: u64,
    /// Retransmission requests (RTCP NACK) and keyframe requests (PLI, FIR) sent.
    pub nacks_sent: u64,
    pub keyframe_requests: u64,
    /// The round trip of a retransmission (request to repaired packet), the
    /// jitter buffer's average; `None` until one was repaired (a receiver
    /// has no other round trip: the robot sends it no report blocks).
    pub rtt: Option<Duration>,
    /// Interarrival jitter (RFC 3550).
    pub jitter: Duration,
}

impl ReceiveStats {
    /// One line of `robotctl call --webrtc --stats` for what changed since
    /// `before`, `elapsed` ago: `stats: 1534 kbit/s, 29.8 fps, loss 4.8 %
    /// (12 repaired, 1 unrecovered), rtt 23 ms, jitter 2 ms, 3 NACK, 1
    /// keyframe requests` (rates and loss over the interval; `rtt -` when
    /// none was measured).
    pub fn line(&self, before: &ReceiveStats, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let d = |now: u64, then: u64| now.saturating_sub(then);
        let kbps = d(self.bytes_received, before.bytes_received) as f64 * 8.0 / secs / 1000.0;
        let fps = d(self.frames_decoded, before.frames_decoded) as f64 / secs;
        let lost = d(self.packets_lost, before.packets_lost);
        let got = d(self.packets_received, before.packets_received);
        let loss = if lost + got == 0 { 0.0 } else { lost as f64 * 100.0 / (lost + got) as f64 };
        let rtt = self.rtt.map_or("-".to_owned(), |r| format!("{} ms", r.as_millis()));
        format!(
            "stats: {kbps:.0} kbit/s, {fps:.1} fps, loss {loss:.1} % ({} repaired, {} unrecovered), rtt {rtt}, \
             jitter {} ms, {} NACK, {} keyframe requests",
            d(self.packets_repaired, before.packets_repaired),
            d(self.packets_unrecovered, before.packets_unrecovered),
            self.jitter.as_millis(),
            d(self.nacks_sent, before.nacks_sent),
            d(self.keyframe_requests, before.keyframe_requests),
        )
    }
}

/// How long [`PhonePeer::receive_stats`] waits for webrtcbin's answer.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// A running offerer.
pub struct PhonePeer {
    pipeline: gst::Pipeline,
    webrtc: gst::Element,
    gate: Arc<Mutex<Gate>>,
    frames: Arc<AtomicU64>,
    audio_buffers: Arc<AtomicU64>,
    /// The last decoded frame's [`simview::wall_fraction`] (f64 bits).
    walls: Arc<AtomicU64>,
    gaps: Arc<Mutex<FrameGaps>>,
    /// The tone's source, when the phone offers audio.
    mic: Option<gst::Element>,
    stop: Arc<AtomicBool>,
    events: Sender<PeerEvent>,
    kept: Arc<Kept>,
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
        Self::offer_with(ice, PhoneOptions { nack, ..PhoneOptions::default() }, events)
    }

    /// [`PhonePeer::offer`] with [`PhoneOptions`].
    pub fn offer_with(
        ice: &IceConfig,
        opts: PhoneOptions,
        events: Sender<PeerEvent>,
    ) -> Result<(PhonePeer, String), WebrtcError> {
        Self::offer_keeping(ice, opts, Keep::default(), events)
    }

    /// [`PhonePeer::offer_with`], recording and/or saving a frame ([`Keep`]).
    pub fn offer_keeping(
        ice: &IceConfig,
        opts: PhoneOptions,
        keep: Keep,
        events: Sender<PeerEvent>,
    ) -> Result<(PhonePeer, String), WebrtcError> {
        super::init()?;
        if keep.record.is_some() {
            super::require_elements(&["tee", "queue", "matroskamux", "filesink"])?;
        }
        if keep.snapshot.is_some() {
            super::require_elements(&["videoconvert", "pngenc"])?;
        }
        let kept = Arc::new(Kept { keep, ..Kept::default() });
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
        plan_rtcp_for(&webrtc, SESSION_BANDWIDTH_BPS);
        let gate = Arc::new(Mutex::new(Gate::default()));
        let frames = Arc::new(AtomicU64::new(0));
        let audio_buffers = Arc::new(AtomicU64::new(0));
        let walls = Arc::new(AtomicU64::new(0));
        let gaps = Arc::new(Mutex::new(FrameGaps::default()));
        let stop = Arc::new(AtomicBool::new(false));
        // The microphone first: its pad makes transceiver 0 (m-line 0, as in Chromium's offers).
        let mic = if opts.audio { Some(add_tone(&pipeline, &webrtc)?) } else { None };

        {
            let (pipeline_weak, gate, frames) = (pipeline.downgrade(), gate.clone(), frames.clone());
            let (audio_buffers, walls, kept, gaps) = (audio_buffers.clone(), walls.clone(), kept.clone(), gaps.clone());
            let tx = events.clone();
            webrtc.connect_pad_added(move |_, pad| {
                if pad.direction() != gst::PadDirection::Src {
                    return;
                }
                let Some(pipeline) = pipeline_weak.upgrade() else { return };
                let counters = Counters {
                    frames: &frames,
                    audio_buffers: &audio_buffers,
                    walls: &walls,
                    kept: &kept,
                    gaps: &gaps,
                };
                if let Err(e) = link_receiver(&pipeline, pad, decoder, &gate, counters) {
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
        super::spawn_bus_watch(&pipeline, events.clone(), stop.clone(), "phone", |_| {})
            .map_err(|e| WebrtcError::Pipeline(format!("bus thread: {e}")))?;
        pipeline.set_state(gst::State::Playing).map_err(|e| WebrtcError::Pipeline(format!("to PLAYING: {e}")))?;
        let peer = PhonePeer { pipeline, webrtc, gate, frames, audio_buffers, walls, gaps, mic, stop, events, kept };
        let offer = peer.make_offer(opts.nack).inspect_err(|_| peer.shutdown())?;
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
        if self.mic.is_some() {
            let caps = gst::Caps::from_str(&format!(
                "application/x-rtp,media=audio,encoding-name=OPUS,payload={OFFER_OPUS_PT},clock-rate=48000,\
                 encoding-params=(string)2"
            ))
            .map_err(|e| WebrtcError::Pipeline(format!("audio preferences: {e}")))?;
            let audio = self
                .webrtc
                .emit_by_name::<Option<gst_webrtc::WebRTCRTPTransceiver>>("get-transceiver", &[&0i32])
                .ok_or_else(|| WebrtcError::Pipeline("webrtcbin has no transceiver for the tone".into()))?;
            audio.set_direction(gst_webrtc::WebRTCRTPTransceiverDirection::Sendrecv);
            audio.set_codec_preferences(Some(&caps));
        }
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

    /// What has been received of the video so far; `None` before the
    /// video stream exists (or when webrtcbin did not answer within 2 s).
    pub fn receive_stats(&self) -> Option<ReceiveStats> {
        let all =
            super::promise_call(&self.webrtc, "get-stats", &None::<gst::Pad>.to_value(), STATS_TIMEOUT).ok()??;
        // The video stream's rtpsource counters; the retransmission stream
        // (its own SSRC, also "video") carries far fewer packets.
        let source = all
            .iter()
            .filter_map(|(_, v)| v.get::<gst::Structure>().ok())
            .filter(|st| {
                st.get::<gst_webrtc::WebRTCStatsType>("type").ok() == Some(gst_webrtc::WebRTCStatsType::InboundRtp)
                    && st.get::<&str>("kind").ok() == Some("video")
            })
            .filter_map(|st| st.get::<gst::Structure>("gst-rtpsource-stats").ok())
            .max_by_key(|src| src.get::<u64>("packets-received").unwrap_or(0))?;
        let u = |k: &str| source.get::<u64>(k).ok().or_else(|| source.get::<u32>(k).ok().map(u64::from)).unwrap_or(0);
        let clock = source.get::<i32>("clock-rate").ok().filter(|c| *c > 0).unwrap_or(90_000);
        let jitter = Duration::from_secs_f64(u("jitter") as f64 / f64::from(clock));
        let mut st = ReceiveStats {
            frames_decoded: self.frames_decoded(),
            bytes_received: u("octets-received"),
            packets_received: u("packets-received"),
            packets_lost: source.get::<i32>("packets-lost").ok().map_or(0, |l| l.max(0) as u64),
            nacks_sent: u("sent-nack-count"),
            keyframe_requests: u("sent-pli-count") + u("sent-fir-count"),
            jitter,
            ..ReceiveStats::default()
        };
        // The video's jitter buffer: the one that pushed the most.
        let bin = self.webrtc.downcast_ref::<gst::Bin>()?;
        let jb = bin
            .iterate_recurse()
            .into_iter()
            .flatten()
            .filter(|e| e.factory().is_some_and(|f| f.name() == "rtpjitterbuffer"))
            .map(|e| e.property::<gst::Structure>("stats"))
            .max_by_key(|s| s.get::<u64>("num-pushed").unwrap_or(0));
        if let Some(jb) = jb {
            st.packets_repaired = jb.get::<u64>("rtx-success-count").unwrap_or(0);
            st.packets_unrecovered = jb.get::<u64>("num-lost").unwrap_or(0);
            st.rtt = jb.get::<u64>("rtx-rtt").ok().filter(|ns| *ns > 0).map(Duration::from_nanos);
        }
        Some(st)
    }

    /// Frames decoded since the robot's certificate was verified.
    pub fn frames_decoded(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// How much of the last decoded frame is coloured
    /// ([`simview::wall_fraction`]: the walls of video device `sim`).
    pub fn wall_fraction(&self) -> f64 {
        f64::from_bits(self.walls.load(Ordering::Relaxed))
    }

    /// From now on, keep the time between consecutive decoded video frames
    /// (what a viewer sees as a freeze; benches/webrtc.rs).
    pub fn record_frame_gaps(&self) {
        self.gaps.lock().unwrap_or_else(|p| p.into_inner()).on = true;
    }

    /// The gaps between decoded video frames since the last call (empty
    /// unless [`PhonePeer::record_frame_gaps`] was called).
    pub fn take_frame_gaps(&self) -> Vec<Duration> {
        std::mem::take(&mut self.gaps.lock().unwrap_or_else(|p| p.into_inner()).gaps)
    }

    /// Opus buffers of the robot's decoded since its certificate was verified.
    pub fn audio_buffers_decoded(&self) -> u64 {
        self.audio_buffers.load(Ordering::Relaxed)
    }

    /// Mute (silence, still sent) or unmute the tone; no-op without audio.
    pub fn set_mic_muted(&self, muted: bool) {
        if let Some(src) = &self.mic {
            src.set_property("volume", if muted { 0.0 } else { TONE_VOLUME });
        }
    }

    /// Wait (at most `timeout`) for the snapshot: `Ok(true)` saved,
    /// `Ok(false)` not (yet, or none asked for), `Err` it could not be written.
    pub fn wait_snapshot(&self, timeout: Duration) -> Result<bool, String> {
        if self.kept.keep.snapshot.is_none() {
            return Ok(false);
        }
        let st = self.kept.lock();
        let (st, _) =
            self.kept.cond.wait_timeout_while(st, timeout, |s| s.snapshot.is_none()).unwrap_or_else(|p| p.into_inner());
        match st.snapshot.clone() {
            None => Ok(false),
            Some(r) => r.map(|()| true),
        }
    }

    /// Stop the pipeline (bounded: a stuck element is abandoned after 3 s).
    /// A recording is finished first (at most 3 s more), so the file is
    /// complete and seekable.
    pub fn stop(self) {
        if !self.kept.finish_recording(Duration::from_secs(3)) {
            tracing::warn!("the recording may be incomplete: end of stream did not reach the file in time");
        }
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

/// Give the rtpsessions inside `webrtc` a session bandwidth of `bps`, so
/// that RTCP feedback (NACKs, transport-cc) may go out as often as 5 % of it
/// allows ([`SESSION_BANDWIDTH_BPS`]). Regular reports stay at
/// `rtcp-min-interval` (RFC 4585's T_rr_interval, 5 s).
fn plan_rtcp_for(webrtc: &gst::Element, bps: f64) {
    super::on_element_added(webrtc, "rtpsession", move |el| el.set_property("bandwidth", bps));
}

/// The phone's microphone: a tone into a new webrtcbin sink pad; returns the
/// `audiotestsrc` (its volume is the mute).
fn add_tone(pipeline: &gst::Pipeline, webrtc: &gst::Element) -> Result<gst::Element, WebrtcError> {
    super::require_elements(&["audiotestsrc", "audioconvert", "audioresample", "opusenc", "rtpopuspay"])?;
    let desc = format!(
        "audiotestsrc name=tone is-live=true wave=sine freq=440 volume={TONE_VOLUME} ! audioconvert ! audioresample \
         ! audio/x-raw,rate=48000,channels=1 ! opusenc bitrate=32000 ! rtpopuspay pt={OFFER_OPUS_PT}"
    );
    let bin = gst::parse::bin_from_description(&desc, true).map_err(|e| WebrtcError::Pipeline(e.to_string()))?;
    let tone = bin.by_name("tone").ok_or_else(|| WebrtcError::Pipeline("audiotestsrc missing".into()))?;
    pipeline.add(&bin).map_err(|e| WebrtcError::Pipeline(e.to_string()))?;
    let sink = webrtc
        .request_pad_simple("sink_%u")
        .ok_or_else(|| WebrtcError::Pipeline("webrtcbin gave no sink pad for audio".into()))?;
    let src = bin.static_pad("src").ok_or_else(|| WebrtcError::Pipeline("tone bin has no src pad".into()))?;
    src.link(&sink).map_err(|e| WebrtcError::Pipeline(format!("tone to webrtcbin: {e:?}")))?;
    Ok(tone)
}

/// Point the recording branch of `bin` at its file and note when end of
/// stream reaches it.
fn keep_recording(bin: &gst::Bin, kept: &Arc<Kept>) -> Result<(), String> {
    let path = kept.keep.record.as_ref().ok_or("no recording asked for")?;
    let file = bin.by_name("file").ok_or("filesink missing")?;
    file.set_property("location", path.to_string_lossy().into_owned());
    let sink = file.static_pad("sink").ok_or("filesink has no sink pad")?;
    let k = kept.clone();
    sink.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(e)) = &info.data {
            if e.type_() == gst::EventType::Eos {
                k.lock().record_done = true;
                k.cond.notify_all();
            }
        }
        gst::PadProbeReturn::Ok
    });
    let queue = bin.by_name("rq").ok_or("recording queue missing")?;
    kept.lock().record_queue = Some(queue);
    Ok(())
}

/// [`simview::wall_fraction`] of a decoded I420 frame (a fakesink
/// `handoff`'s buffer and pad); `None` for another format.
fn frame_walls(args: &[gst::glib::Value]) -> Option<f64> {
    let buffer = args.get(1)?.get::<gst::Buffer>().ok()?;
    let pad = args.get(2)?.get::<gst::Pad>().ok()?;
    let caps = pad.current_caps()?;
    let s = caps.structure(0)?;
    if s.get::<&str>("format").ok()? != "I420" {
        return None;
    }
    let (w, h) = (s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?);
    let map = buffer.map_readable().ok()?;
    Some(simview::wall_fraction(map.as_slice(), u32::try_from(w).ok()?, u32::try_from(h).ok()?))
}

/// What the receive paths count and keep.
struct Counters<'a> {
    frames: &'a Arc<AtomicU64>,
    audio_buffers: &'a Arc<AtomicU64>,
    walls: &'a Arc<AtomicU64>,
    kept: &'a Arc<Kept>,
    gaps: &'a Arc<Mutex<FrameGaps>>,
}

fn link_receiver(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    decoder: &str,
    gate: &Arc<Mutex<Gate>>,
    c: Counters<'_>,
) -> Result<(), String> {
    let caps = pad.current_caps().or_else(|| Some(pad.query_caps(None)));
    let s = caps.as_ref().and_then(|c| c.structure(0).map(|s| s.to_owned()));
    let media = s.as_ref().and_then(|s| s.get::<&str>("media").ok().map(str::to_owned));
    let is_video = media.as_deref().is_none_or(|m| m == "video");
    let is_opus = media.as_deref() == Some("audio")
        && s.as_ref().is_some_and(|s| s.get::<&str>("encoding-name").is_ok_and(|e| e.eq_ignore_ascii_case("OPUS")));
    let record = c.kept.keep.record.is_some();
    let desc = if is_video && record {
        // The file's location is set as a property below, never spliced in.
        format!(
            "valve name=gate drop=true ! rtph264depay request-keyframe=true wait-for-keyframe=true ! h264parse \
             ! tee name=t ! queue ! {decoder} ! fakesink name=frames signal-handoffs=true sync=false async=false \
             t. ! queue name=rq ! h264parse ! matroskamux ! filesink name=file async=false"
        )
    } else if is_video {
        format!(
            "valve name=gate drop=true ! rtph264depay request-keyframe=true wait-for-keyframe=true ! h264parse \
             ! {decoder} ! fakesink name=frames signal-handoffs=true sync=false async=false"
        )
    } else if is_opus {
        "valve name=gate drop=true ! rtpopusdepay ! opusdec \
         ! fakesink name=frames signal-handoffs=true sync=false async=false"
            .to_owned()
    } else {
        "fakesink sync=false async=false".to_owned()
    };
    let bin = gst::parse::bin_from_description(&desc, true).map_err(|e| e.to_string())?;
    if is_video && record {
        keep_recording(&bin, c.kept)?;
    }
    pipeline.add(&bin).map_err(|e| e.to_string())?;
    if is_video || is_opus {
        let valve = bin.by_name("gate").ok_or("valve missing")?;
        let sink = bin.by_name("frames").ok_or("fakesink missing")?;
        let (gate2, frames) = (gate.clone(), if is_video { c.frames.clone() } else { c.audio_buffers.clone() });
        let (walls, kept, gaps) = (c.walls.clone(), c.kept.clone(), c.gaps.clone());
        sink.connect("handoff", false, move |args| {
            if gate2.lock().map(|g| g.verified).unwrap_or(false) {
                frames.fetch_add(1, Ordering::Relaxed);
                if is_video {
                    gaps.lock().unwrap_or_else(|p| p.into_inner()).frame();
                    if let Some(f) = frame_walls(args) {
                        walls.store(f.to_bits(), Ordering::Relaxed);
                    }
                    kept.snapshot(args);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stats_line_gives_the_interval_s_rates_and_loss() {
        let before = ReceiveStats {
            frames_decoded: 100,
            bytes_received: 1_000_000,
            packets_received: 1000,
            packets_lost: 10,
            packets_repaired: 9,
            packets_unrecovered: 1,
            nacks_sent: 12,
            keyframe_requests: 1,
            rtt: None,
            jitter: Duration::from_millis(1),
        };
        let now = ReceiveStats {
            frames_decoded: 160,
            bytes_received: 1_500_000,
            packets_received: 1380,
            packets_lost: 30,
            packets_repaired: 27,
            packets_unrecovered: 3,
            nacks_sent: 40,
            keyframe_requests: 3,
            rtt: Some(Duration::from_millis(23)),
            jitter: Duration::from_millis(4),
        };
        assert_eq!(
            now.line(&before, Duration::from_secs(2)),
            "stats: 2000 kbit/s, 30.0 fps, loss 5.0 % (18 repaired, 2 unrecovered), rtt 23 ms, jitter 4 ms, \
             28 NACK, 2 keyframe requests"
        );
        // Nothing received (a cut): no division by zero, no RTT yet.
        let idle = ReceiveStats { rtt: None, ..before };
        assert_eq!(
            idle.line(&before, Duration::ZERO),
            "stats: 0 kbit/s, 0.0 fps, loss 0.0 % (0 repaired, 0 unrecovered), rtt -, jitter 1 ms, 0 NACK, \
             0 keyframe requests"
        );
    }
}
