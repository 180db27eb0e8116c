//! WebRTC media peers on GStreamer's `webrtcbin` (issue 13), and the
//! sandboxed media helper process (`robotd-media`) that runs the robot's.
//!
//! The design, and the five traps of webrtcbin 1.22 this code works around,
//! are in docs/design/webrtc-research.md (§0 and §2):
//! - (a) webrtcbin does not check the peer's DTLS certificate against the
//!   SDP's `a=fingerprint`: both peers hold media behind a `valve` until the
//!   certificate seen in `dtlssrtpdec`'s `notify::peer-pem` matches;
//! - (b) the robot answers through a pre-created sendonly transceiver pinned
//!   to the offer's H.264 payload type;
//! - (c) a `capssetter` rewrites `profile-level-id` to 42e01f after the payloader;
//! - (d) the phone lists the transport-cc extmap in its codec preferences;
//! - (e) libnice's UPnP is turned off;
//! - (f) when no transceiver receives, webrtcbin leaves the transport's
//!   `rtp_src` unlinked and RTP the phone sends anyway fails the receive
//!   path: the robot drops it there ([`robot`]).
//!
//! - [`sdp`]: fingerprints and the offer check (which H.264 format to send);
//! - [`robot`]: [`RobotPeer`], the sending answerer;
//! - [`congestion`]: the bandwidth estimator (`rtpgccbwe`) driving its encoder;
//! - [`phone`]: [`PhonePeer`], the receiving offerer (robotctl, tests);
//! - [`ipc`]: the framing and messages between robotd and its helper;
//! - [`helper`]: the helper process itself.
//!
//! No STUN or TURN server is ever configured unless the caller names one.

pub mod congestion;
pub mod helper;
pub mod ipc;
pub mod phone;
pub mod robot;
pub mod sdp;

use std::sync::OnceLock;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use serde::{Deserialize, Serialize};

pub use crate::video::simcam::SimScene;
pub use phone::PhonePeer;
pub use robot::{RobotPeer, SIM_DEVICE};
pub use sdp::{AudioLine, Fingerprint, OfferInfo, SdpError};

/// The transport-wide congestion control RTP header extension.
pub const TWCC_URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// What a peer reports, from GStreamer's threads, on the channel it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// A local ICE candidate to send to the other peer (`candidate:…` line
    /// without `a=`).
    LocalCandidate { mline: u32, candidate: String },
    /// Local candidate gathering is complete.
    EndOfCandidates,
    /// The ICE connection state changed (webrtcbin's nick: `checking`,
    /// `connected`, `completed`, `failed`, `disconnected`, `closed`).
    IceState(String),
    /// The peer connection is connected and the peer's certificate matched
    /// its fingerprint: media flows.
    Connected,
    /// The peer's DTLS certificate is not the one its SDP names; media stays
    /// blocked. Fingerprints as `AB:CD:…`.
    FingerprintMismatch { want: String, got: String },
    /// The pipeline failed (element error, connection failed).
    Failed(String),
}

/// ICE servers and policy. No server is ever added by default. `Debug`
/// shows the TURN servers' hosts, never their credentials.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceConfig {
    /// `stun://host:port`.
    #[serde(default)]
    pub stun: Option<String>,
    /// Full `turn://user:pass@host:port?transport=udp` URLs (user and
    /// password percent-encoded). Secrets: never logged.
    #[serde(default)]
    pub turn: Vec<String>,
    /// Use only relay candidates (`ice-transport-policy=relay`).
    #[serde(default)]
    pub relay_only: bool,
}

impl std::fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `turn://user:pass@host:port?…`: only what follows the `@`.
        let hosts: Vec<&str> = self.turn.iter().map(|u| u.rsplit_once('@').map_or("(no host)", |(_, h)| h)).collect();
        f.debug_struct("IceConfig")
            .field("stun", &self.stun)
            .field("turn", &hosts)
            .field("relay_only", &self.relay_only)
            .finish()
    }
}

/// What the robot sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoSpec {
    /// `test` for a `videotestsrc`, else a V4L2 device path (`/dev/video0`).
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Encoder bitrate, kbit/s.
    pub kbps: u32,
    /// `video.encoder`: `auto` (v4l2h264enc, else x264enc, else
    /// openh264enc) or one of those names; absent (an older robotd): auto.
    #[serde(default = "auto")]
    pub encoder: String,
}

fn auto() -> String {
    "auto".into()
}

/// The robot's audio devices for one call (`[audio]` in the configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioSpec {
    /// The microphone: an ALSA capture device, or `test` for a tone. `None`:
    /// the robot sends no audio.
    #[serde(default)]
    pub mic: Option<String>,
    /// The speaker: an ALSA playback device, or `test`, which plays nothing
    /// and only measures the level. `None`: the robot declines the phone's audio.
    #[serde(default)]
    pub speaker: Option<String>,
}

/// What the robot's speaker path measures (GStreamer's `level` after `opusdec`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpeakerLevel {
    /// Audio from the phone was decoded within the last second.
    pub receiving: bool,
    /// RMS level of the latest 100 ms, dBFS, at least [`SILENCE_DB`]; `None`
    /// before any audio arrived.
    pub rms_db: Option<f64>,
    /// Peak level of the latest 100 ms, dBFS, at least [`SILENCE_DB`].
    pub peak_db: Option<f64>,
}

/// The floor of measured levels: digital silence (`-inf` dB) reads as this.
pub const SILENCE_DB: f64 = -120.0;

/// Why a peer could not be made or driven.
#[derive(Debug, thiserror::Error)]
pub enum WebrtcError {
    #[error("GStreamer could not be initialised: {0}")]
    Init(String),
    #[error(transparent)]
    Sdp(#[from] SdpError),
    #[error("GStreamer element `{element}` is missing: install the Debian package {package} (scripts/setup.sh)")]
    MissingElement { element: String, package: &'static str },
    #[error("building the WebRTC pipeline failed: {0}")]
    Pipeline(String),
    #[error("WebRTC negotiation failed: {0}")]
    Negotiation(String),
    #[error("invalid video settings: {0}")]
    Video(String),
    #[error(
        "the ICE server URL #{index} was refused by webrtcbin (expected turn://user:pass@host:port?transport=udp|tcp)"
    )]
    TurnUrl { index: usize },
}

/// Initialise GStreamer once, and register gst-plugins-rs's RTP plugin
/// (`rtpgccbwe`, linked in: Debian 12 does not ship it); later calls are free.
pub fn init() -> Result<(), WebrtcError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        gst::init().map_err(|e| e.to_string())?;
        gstrsrtp::plugin_register_static().map_err(|e| format!("registering gst-plugin-rtp (rtpgccbwe): {e}"))
    })
    .clone()
    .map_err(WebrtcError::Init)
}

/// What a spare helper does while it waits for its call: load the plugins
/// a call's pipeline is made of (otherwise `parse::launch` and
/// `set-remote-description` load them), and make this process's DTLS
/// certificate: GStreamer 1.22's `dtlsdec` generates it (an RSA-2048 key,
/// 0.1-0.4 s here, more on a Pi) when the first one is made. Elements this
/// machine lacks are skipped: the call's own checks name their packages.
pub fn warm_up() {
    let t = std::time::Instant::now();
    const ELEMENTS: &[&str] = &[
        "dtlsdec",
        "webrtcbin",
        "rtpbin",
        "nicesrc",
        "nicesink",
        "dtlssrtpenc",
        "srtpenc",
        "srtpdec",
        "rtph264pay",
        "h264parse",
        "x264enc",
        "v4l2h264enc",
        "videoconvert",
        "videoscale",
        "videorate",
        "capsfilter",
        "capssetter",
        "valve",
        "appsrc",
        "v4l2src",
        "rtpgccbwe",
        "rtprtxsend",
    ];
    let made = ELEMENTS.iter().filter(|name| gst::ElementFactory::make(name).build().is_ok()).count();
    tracing::info!(
        made,
        of = ELEMENTS.len(),
        ms = t.elapsed().as_millis() as u64,
        "spare media helper warmed up (plugins loaded, DTLS certificate made)"
    );
}

/// The time each named step of a set-up took, for one log line
/// (`answer ready`: where the helper's time to answer goes, issue 17).
pub(crate) struct Steps {
    start: std::time::Instant,
    last: std::time::Instant,
    marks: Vec<(&'static str, std::time::Duration)>,
}

impl Steps {
    pub(crate) fn new() -> Steps {
        let now = std::time::Instant::now();
        Steps { start: now, last: now, marks: Vec::new() }
    }

    /// The step `name` ended now.
    pub(crate) fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.marks.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Steps {
    /// `check 0.4, build 31.2, ready 5.0 (ms), total 36.6`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, d) in &self.marks {
            write!(f, "{name} {:.1}, ", d.as_secs_f64() * 1e3)?;
        }
        write!(f, "total {:.1} ms", (self.last - self.start).as_secs_f64() * 1e3)
    }
}

/// Check that every element exists, naming the package of the first missing one.
fn require_elements(names: &[&str]) -> Result<(), WebrtcError> {
    for name in names {
        if gst::ElementFactory::find(name).is_none() {
            let package = match *name {
                "webrtcbin" | "dtlssrtpdec" => "gstreamer1.0-plugins-bad",
                "nicesrc" | "nicesink" => "gstreamer1.0-nice",
                "capssetter" | "level" | "rtpopuspay" | "rtpopusdepay" => "gstreamer1.0-plugins-good",
                "alsasink" => "gstreamer1.0-alsa",
                other => crate::video::package_for(other),
            };
            return Err(WebrtcError::MissingElement { element: (*name).into(), package });
        }
    }
    Ok(())
}

/// Apply the ICE configuration and the libnice settings both peers share.
fn configure_ice(webrtc: &gst::Element, ice: &IceConfig) -> Result<(), WebrtcError> {
    webrtc.set_property_from_str("bundle-policy", "max-bundle");
    if let Some(stun) = &ice.stun {
        webrtc.set_property("stun-server", stun);
    }
    for (index, url) in ice.turn.iter().enumerate() {
        let ok: bool = webrtc.emit_by_name("add-turn-server", &[url]);
        if !ok {
            return Err(WebrtcError::TurnUrl { index });
        }
    }
    if ice.relay_only {
        webrtc.set_property("ice-transport-policy", gstreamer_webrtc::WebRTCICETransportPolicy::Relay);
    }
    let ice_obj: Option<glib::Object> = webrtc.property("ice-agent");
    let ice_obj = ice_obj.ok_or_else(|| WebrtcError::Pipeline("webrtcbin has no ICE agent".into()))?;
    // No passive TCP host candidates (a listen() on every interface); TURN
    // over TCP still works.
    if ice_obj.find_property("ice-tcp").is_some() {
        ice_obj.set_property("ice-tcp", false);
    }
    let agent: Option<glib::Object> =
        if ice_obj.find_property("agent").is_some() { ice_obj.property("agent") } else { None };
    let agent = agent.ok_or_else(|| WebrtcError::Pipeline("webrtcbin's ICE agent is not libnice".into()))?;
    // Trap (e): libnice maps ports on the home router (UPnP) by default.
    agent.set_property("upnp", false);
    // STUN requests as keepalives: a dead path is noticed (after 50 s).
    agent.set_property("keepalive-conncheck", true);
    Ok(())
}

/// Call `connected` when the peer connection is up; report a failed one.
fn on_connection_state(
    webrtc: &gst::Element,
    events: &std::sync::mpsc::Sender<PeerEvent>,
    connected: impl Fn() + Send + Sync + 'static,
) {
    let tx = events.clone();
    webrtc.connect_notify(Some("connection-state"), move |w, _| {
        let s: gstreamer_webrtc::WebRTCPeerConnectionState = w.property("connection-state");
        match s {
            gstreamer_webrtc::WebRTCPeerConnectionState::Connected => connected(),
            gstreamer_webrtc::WebRTCPeerConnectionState::Failed => {
                let _ = tx.send(PeerEvent::Failed("peer connection failed".into()));
            }
            _ => {}
        }
    });
}

/// Connect the state notifications and candidates of `webrtc` to `events`.
fn connect_common(webrtc: &gst::Element, events: &std::sync::mpsc::Sender<PeerEvent>) {
    let tx = events.clone();
    webrtc.connect("on-ice-candidate", false, move |a| {
        if let (Ok(mline), Ok(candidate)) = (a[1].get::<u32>(), a[2].get::<String>()) {
            let _ = tx.send(PeerEvent::LocalCandidate { mline, candidate });
        }
        None
    });
    let tx = events.clone();
    webrtc.connect_notify(Some("ice-gathering-state"), move |w, _| {
        let s: gstreamer_webrtc::WebRTCICEGatheringState = w.property("ice-gathering-state");
        if s == gstreamer_webrtc::WebRTCICEGatheringState::Complete {
            let _ = tx.send(PeerEvent::EndOfCandidates);
        }
    });
    let tx = events.clone();
    webrtc.connect_notify(Some("ice-connection-state"), move |w, _| {
        let s: gstreamer_webrtc::WebRTCICEConnectionState = w.property("ice-connection-state");
        let _ = tx.send(PeerEvent::IceState(ice_state_name(s).into()));
    });
}

fn ice_state_name(s: gstreamer_webrtc::WebRTCICEConnectionState) -> &'static str {
    use gstreamer_webrtc::WebRTCICEConnectionState as S;
    match s {
        S::New => "new",
        S::Checking => "checking",
        S::Connected => "connected",
        S::Completed => "completed",
        S::Failed => "failed",
        S::Disconnected => "disconnected",
        S::Closed => "closed",
        _ => "unknown",
    }
}

/// Emit a webrtcbin action that takes a promise, and wait for its reply.
/// Never call this from a webrtcbin signal handler (it would deadlock).
fn promise_call(
    webrtc: &gst::Element,
    signal: &str,
    arg: &glib::Value,
    timeout: std::time::Duration,
) -> Result<Option<gst::Structure>, WebrtcError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let promise = gst::Promise::with_change_func(move |reply| {
        let r = match reply {
            Ok(Some(s)) => Ok(Some(s.to_owned())),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("{e:?}")),
        };
        let _ = tx.send(r);
    });
    webrtc.emit_by_name::<()>(signal, &[arg, &promise]);
    match rx.recv_timeout(timeout) {
        Ok(Ok(s)) => {
            if let Some(err) = s.as_ref().and_then(|s| s.get::<glib::Error>("error").ok()) {
                return Err(WebrtcError::Negotiation(format!("{signal}: {err}")));
            }
            Ok(s)
        }
        Ok(Err(e)) => Err(WebrtcError::Negotiation(format!("{signal}: promise {e}"))),
        Err(_) => {
            promise.interrupt();
            Err(WebrtcError::Negotiation(format!("{signal}: no reply within {timeout:?}")))
        }
    }
}

/// The `session-description` from a create-offer/create-answer reply.
fn reply_description(
    reply: Option<gst::Structure>,
    field: &str,
) -> Result<gstreamer_webrtc::WebRTCSessionDescription, WebrtcError> {
    reply
        .and_then(|s| s.get::<gstreamer_webrtc::WebRTCSessionDescription>(field).ok())
        .ok_or_else(|| WebrtcError::Negotiation(format!("webrtcbin gave no {field}")))
}

/// Watch for the DTLS peer certificate inside `webrtc` (trap a): `on_pem` is
/// called with the SHA-256 fingerprint of every certificate the peer shows
/// (possibly more than once), inside the DTLS verify callback, before any
/// SRTP key exists.
fn watch_peer_certificate(webrtc: &gst::Element, on_pem: impl Fn(Option<Fingerprint>) + Send + Sync + 'static) {
    let on_pem = std::sync::Arc::new(on_pem);
    on_element_added(webrtc, "dtlssrtpdec", move |el| {
        let on_pem = on_pem.clone();
        el.connect_notify(Some("peer-pem"), move |el, _| {
            let pem: Option<String> = el.property("peer-pem");
            on_pem(pem.as_deref().and_then(sdp::pem_fingerprint));
        });
    });
}

/// Call `f` with every element of `factory` that webrtcbin adds inside
/// itself (its rtpbin's sessions, the transports' DTLS and RTX elements),
/// as it is added: the way to configure what webrtcbin 1.22 does not expose.
fn on_element_added(webrtc: &gst::Element, factory: &'static str, f: impl Fn(&gst::Element) + Send + Sync + 'static) {
    webrtc.connect("deep-element-added", false, move |a| {
        let el = a[2].get::<gst::Element>().ok()?;
        if el.factory().is_some_and(|fa| fa.name() == factory) {
            f(&el);
        }
        None
    });
}

/// A thread that watches `pipeline`'s bus until `stop` is set, reporting
/// errors as [`PeerEvent::Failed`] and handing element messages (`level`'s)
/// to `on_element`.
fn spawn_bus_watch(
    pipeline: &gst::Pipeline,
    events: std::sync::mpsc::Sender<PeerEvent>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    who: &'static str,
    on_element: impl Fn(&gst::StructureRef) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let Some(bus) = pipeline.bus() else { return Err(std::io::Error::other("the pipeline has no bus")) };
    std::thread::Builder::new().name(format!("{who}-bus")).spawn(move || {
        use std::sync::atomic::Ordering;
        while !stop.load(Ordering::Relaxed) {
            let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(200)) else { continue };
            match msg.view() {
                gst::MessageView::Error(e) => {
                    let src = msg.src().map(|s| s.path_string().to_string()).unwrap_or_default();
                    tracing::warn!(peer = who, element = %src, error = %e.error(), "media pipeline error");
                    let _ = events.send(PeerEvent::Failed(format!("{src}: {}", e.error())));
                }
                gst::MessageView::Element(e) => {
                    if let Some(s) = e.structure() {
                        on_element(s);
                    }
                }
                _ => {}
            }
        }
    })
}

/// The loudest channel of a `level` message's `field` (`rms` or `peak`),
/// dBFS, floored at [`SILENCE_DB`].
fn level_db(s: &gst::StructureRef, field: &str) -> Option<f64> {
    let values = s.get::<glib::ValueArray>(field).ok()?;
    let loudest = values.iter().filter_map(|v| v.get::<f64>().ok()).fold(f64::NEG_INFINITY, f64::max);
    Some(if loudest.is_nan() { SILENCE_DB } else { loudest.max(SILENCE_DB) })
}

/// Stop a pipeline: NULL state on a thread, abandoned after `timeout` (a
/// stuck element must not hold the caller).
fn shutdown_pipeline(pipeline: gst::Pipeline, timeout: std::time::Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("media-stop".into()).spawn(move || {
        let _ = pipeline.set_state(gst::State::Null);
        let _ = tx.send(());
    });
    spawned.is_ok() && rx.recv_timeout(timeout).is_ok()
}
