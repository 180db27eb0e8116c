//! The two WebRTC peers of tests/webrtc.rs and benches/webrtc.rs, each in
//! its own process inside a network namespace of the small internet
//! (tests/common/netns.rs): the robot's media helper (`robotd-media`, the
//! real binary) and a phone peer ([`robotd::webrtc::PhonePeer`]). The test
//! (or bench) process only relays the signalling: the offer, the answer and
//! the trickled candidates ([`Call`]).
//!
//! The phone's process is the including binary re-executed with
//! `ROBOTD_TEST_WEBRTC_PHONE=1` (and, for a libtest harness, `--exact
//! phone_process`): it calls [`phone_process_if_asked`] first, which then
//! runs a phone peer driven over its stdin (a Unix socket) with the same
//! framing as the helper ([`robotd::webrtc::ipc`]) and never returns.
//! GStreamer makes one DTLS certificate per process, so the two peers must
//! not share one. Needs `mod netns` (tests/common/netns.rs) beside it.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use robotd::hal::config::Obstacle;
use robotd::webrtc::ipc::{self, FromHelper, ToHelper};
use robotd::webrtc::phone::PhoneOptions;
use robotd::webrtc::{AudioSpec, IceConfig, PeerEvent, PhonePeer, SpeakerLevel, VideoSpec};
use serde::{Deserialize, Serialize};

use crate::netns;

/// In the phone's process (see the module doc): run the phone peer and end
/// the process; elsewhere return at once.
pub fn phone_process_if_asked() {
    if std::env::var_os(PHONE_ENV).is_none() {
        return;
    }
    let code = match run_phone() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("phone process: {e}");
            1
        }
    };
    // SAFETY: ends the process at once (no harness output, no teardown of
    // GStreamer threads).
    unsafe { libc::_exit(code) }
}

pub const PHONE_ENV: &str = "ROBOTD_TEST_WEBRTC_PHONE";
pub const PHONE_ICE_ENV: &str = "ROBOTD_TEST_WEBRTC_PHONE_ICE";
pub const PHONE_NACK_ENV: &str = "ROBOTD_TEST_WEBRTC_PHONE_NACK";
/// `1`: the phone offers audio sendrecv with a tone.
pub const PHONE_AUDIO_ENV: &str = "ROBOTD_TEST_WEBRTC_PHONE_AUDIO";

/// Generous: ICE + DTLS + the first keyframe on a busy 2-core machine.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// test → phone process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ToPhone {
    Answer {
        sdp: String,
    },
    RemoteCandidate {
        mline: u32,
        candidate: String,
    },
    EndOfCandidates,
    /// Mute or unmute the phone's tone.
    Mute {
        muted: bool,
    },
}

/// phone process → test.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum FromPhone {
    Offer {
        sdp: String,
    },
    LocalCandidate {
        mline: u32,
        candidate: String,
    },
    EndOfCandidates,
    /// Frames (and the robot's Opus buffers) decoded so far (every 250 ms).
    Frames {
        n: u64,
        #[serde(default)]
        audio: u64,
        /// The last frame's coloured fraction (`simview::wall_fraction`).
        #[serde(default)]
        walls: f64,
        /// The gaps between decoded frames since the last report, µs.
        #[serde(default)]
        gaps_us: Vec<u32>,
    },
    Mismatch {
        want: String,
        got: String,
    },
    Other {
        what: String,
    },
}

pub fn run_phone() -> Result<(), String> {
    let ice: IceConfig = match std::env::var(PHONE_ICE_ENV) {
        Ok(j) => serde_json::from_str(&j).map_err(|e| e.to_string())?,
        Err(_) => IceConfig::default(),
    };
    let mut input = File::from(std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| e.to_string())?);
    let out = Arc::new(Mutex::new(input.try_clone().map_err(|e| e.to_string())?));
    let send = move |out: &Arc<Mutex<File>>, m: &FromPhone| {
        let _ = ipc::write_frame(&mut *out.lock().unwrap(), m);
    };
    let (tx, rx) = mpsc::channel();
    let nack = std::env::var(PHONE_NACK_ENV).map_or(true, |v| v != "0");
    let audio = std::env::var(PHONE_AUDIO_ENV).is_ok_and(|v| v == "1");
    let (peer, offer) = PhonePeer::offer_with(&ice, PhoneOptions { nack, audio }, tx).map_err(|e| e.to_string())?;
    peer.record_frame_gaps();
    let peer = Arc::new(peer);
    send(&out, &FromPhone::Offer { sdp: offer });
    {
        let out = out.clone();
        std::thread::spawn(move || {
            for ev in rx {
                let m = match ev {
                    PeerEvent::LocalCandidate { mline, candidate } => FromPhone::LocalCandidate { mline, candidate },
                    PeerEvent::EndOfCandidates => FromPhone::EndOfCandidates,
                    PeerEvent::FingerprintMismatch { want, got } => FromPhone::Mismatch { want, got },
                    other => FromPhone::Other { what: format!("{other:?}") },
                };
                send(&out, &m);
            }
        });
    }
    {
        let (out, peer) = (out.clone(), peer.clone());
        std::thread::spawn(move || {
            loop {
                send(
                    &out,
                    &FromPhone::Frames {
                        n: peer.frames_decoded(),
                        audio: peer.audio_buffers_decoded(),
                        walls: peer.wall_fraction(),
                        gaps_us: peer.take_frame_gaps().iter().map(|g| g.as_micros() as u32).collect(),
                    },
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        });
    }
    while let Some(m) = ipc::read_frame::<_, ToPhone>(&mut input).map_err(|e| e.to_string())? {
        match m {
            ToPhone::Answer { sdp } => peer.set_answer(&sdp).map_err(|e| e.to_string())?,
            ToPhone::RemoteCandidate { mline, candidate } => peer.add_remote_candidate(mline, &candidate),
            ToPhone::EndOfCandidates => peer.end_of_candidates(),
            ToPhone::Mute { muted } => peer.set_mic_muted(muted),
        }
    }
    Ok(())
}

/// A robot `Stats` with the bandwidth fields, and the phone's decoded
/// frames when it came.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub at: Instant,
    pub frames: u64,
    pub bytes: u64,
    pub estimate_kbps: u32,
    pub encoder_kbps: u32,
    pub width: u32,
    pub height: u32,
}

impl Call {
    /// The latest `Stats`.
    pub fn last_rates(&self) -> Option<Rates> {
        self.rates.last().copied()
    }

    /// Encoded kbit/s and frames decoded over the last `span` of `Stats`.
    pub fn recent(&self, span: Duration) -> Option<(u32, u64)> {
        let last = self.rates.last()?;
        let first = self.rates.iter().find(|r| last.at.duration_since(r.at) <= span)?;
        let secs = last.at.duration_since(first.at).as_secs_f64();
        if secs < span.as_secs_f64() * 0.8 {
            return None;
        }
        Some((((last.bytes - first.bytes) as f64 * 8.0 / secs / 1000.0) as u32, last.frames - first.frames))
    }
}

/// What the relay hears.
#[derive(Debug)]
pub enum Heard {
    Robot(FromHelper),
    RobotGone(String),
    Phone(FromPhone),
    PhoneGone(String),
}

/// A child process with the other end of a socket pair as its stdin.
pub struct Proc {
    pub child: Child,
    pub sock: UnixStream,
    pub log: std::path::PathBuf,
}

impl Proc {
    pub fn spawn<T: serde::de::DeserializeOwned + Send + 'static>(
        mut cmd: Command,
        log: std::path::PathBuf,
        tx: Sender<Heard>,
        wrap: fn(T) -> Heard,
        gone: fn(String) -> Heard,
    ) -> Proc {
        let (mine, theirs) = UnixStream::pair().unwrap();
        let out = File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let mut reader = mine.try_clone().unwrap();
        std::thread::spawn(move || {
            loop {
                match ipc::read_frame::<_, T>(&mut reader) {
                    Ok(Some(m)) => {
                        if tx.send(wrap(m)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(gone("end of stream".into()));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(gone(e.to_string()));
                        return;
                    }
                }
            }
        });
        Proc { child, sock: mine, log }
    }

    pub fn send<T: Serialize>(&mut self, m: &T) {
        // A peer that died is seen by its reader; writes to it may fail.
        let _ = ipc::write_frame(&mut self.sock, m);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn robot_helper(ns: &netns::Ns, dir: &std::path::Path, tx: Sender<Heard>) -> Proc {
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_robotd-media"));
    // ROBOTD_HELPER_LOG: the helper's RUST_LOG (benches/webrtc.rs traces with
    // `robotd::webrtc::congestion=debug`).
    let filter = std::env::var("ROBOTD_HELPER_LOG").unwrap_or_else(|_| "info".into());
    cmd.env("RUST_LOG", filter);
    Proc::spawn::<FromHelper>(cmd, dir.join("robot-helper.log"), tx, Heard::Robot, Heard::RobotGone)
}

pub fn spawn_phone(
    ns: &netns::Ns,
    dir: &std::path::Path,
    ice: &IceConfig,
    opts: PhoneOptions,
    tx: Sender<Heard>,
) -> Proc {
    let mut cmd = ns.command(std::env::current_exe().unwrap());
    cmd.args(["--exact", "phone_process", "--nocapture", "--test-threads=1"])
        .env(PHONE_ENV, "1")
        .env(PHONE_NACK_ENV, if opts.nack { "1" } else { "0" })
        .env(PHONE_AUDIO_ENV, if opts.audio { "1" } else { "0" })
        .env(PHONE_ICE_ENV, serde_json::to_string(ice).unwrap());
    Proc::spawn::<FromPhone>(cmd, dir.join("phone.log"), tx, Heard::Phone, Heard::PhoneGone)
}

pub fn small_video() -> VideoSpec {
    VideoSpec { device: "test".into(), width: 320, height: 240, fps: 15, kbps: 300, encoder: "auto".into() }
}

/// Change every `a=fingerprint:sha-256` of an SDP (its first byte).
pub fn tamper_fingerprint(sdp: &str) -> String {
    let mut out = String::new();
    for line in sdp.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("a=fingerprint:sha-256 ") {
            let first = if rest.starts_with("00") { "11" } else { "00" };
            out.push_str("a=fingerprint:sha-256 ");
            out.push_str(first);
            out.push_str(&rest[2..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Which SDP the test alters on its way (as an attacker on the media path
/// would need to, to present its own certificate).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tamper {
    Nothing,
    /// The offer's fingerprint, before the robot sees it.
    Offer,
    /// The answer's fingerprint, before the phone sees it.
    Answer,
}

/// How a call differs from the usual one.
pub struct Opts {
    /// The phone asks for retransmissions.
    pub phone_nack: bool,
    /// The phone offers audio (a tone) sendrecv.
    pub phone_audio: bool,
    /// The robot's microphone and speaker.
    pub audio: AudioSpec,
    /// What the robot sends.
    pub video: VideoSpec,
    /// The simulated world (video device `sim`).
    pub sim_world: Option<Vec<Obstacle>>,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            phone_nack: true,
            phone_audio: false,
            audio: AudioSpec::default(),
            video: small_video(),
            sim_world: None,
        }
    }
}

/// One call: the phone offers, the robot's helper answers, the test relays.
pub struct Call {
    pub robot: Proc,
    pub phone: Proc,
    pub rx: Receiver<Heard>,
    pub frames: u64,
    /// The phone's last frame's coloured fraction.
    pub walls: f64,
    /// The robot's latest `Stats`.
    pub frames_sent: u64,
    /// The robot's latest `Speaker`.
    pub speaker: Option<SpeakerLevel>,
    /// The robot's Opus buffers the phone decoded.
    pub audio_received: u64,
    /// Every `Stats` with its bandwidth fields, as heard.
    pub rates: Vec<Rates>,
    /// The gaps between the phone's decoded frames, each with the time its
    /// report came (every 250 ms).
    pub gaps: Vec<(Instant, Duration)>,
    pub robot_heard: Vec<FromHelper>,
    pub robot_gone: Option<String>,
    pub phone_heard: Vec<String>,
    /// Every candidate relayed, `robot: …` or `phone: …`.
    pub candidates: Vec<String>,
    pub answer: Option<String>,
    pub tamper: Tamper,
}

impl Call {
    pub fn start(
        net: &netns::Internet,
        robot_ns: &netns::Ns,
        phone_ns: &netns::Ns,
        robot_ice: IceConfig,
        phone_ice: IceConfig,
        tamper: Tamper,
    ) -> Call {
        Call::start_with(net, robot_ns, phone_ns, robot_ice, phone_ice, tamper, Opts::default())
    }

    /// A LAN call where the phone offers audio (a tone) and the robot has `audio`.
    pub fn start_audio(net: &netns::Internet, audio: AudioSpec) -> Call {
        let default = IceConfig::default();
        let opts = Opts { phone_audio: true, audio, ..Opts::default() };
        Call::start_with(net, &net.robot, &net.lan_phone, default.clone(), default, Tamper::Nothing, opts)
    }

    pub fn start_with(
        net: &netns::Internet,
        robot_ns: &netns::Ns,
        phone_ns: &netns::Ns,
        robot_ice: IceConfig,
        phone_ice: IceConfig,
        tamper: Tamper,
        opts: Opts,
    ) -> Call {
        let Opts { phone_nack, phone_audio, audio, video, sim_world } = opts;
        let phone = PhoneOptions { nack: phone_nack, audio: phone_audio };
        let (tx, rx) = mpsc::channel();
        let phone = spawn_phone(phone_ns, net.dir(), &phone_ice, phone, tx.clone());
        let offer = match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(Heard::Phone(FromPhone::Offer { sdp })) => sdp,
            Ok(Heard::PhoneGone(why)) => panic!("phone process ended before its offer ({why}):\n{}", phone.log()),
            Ok(other) => panic!("unexpected before the offer: {other:?}"),
            Err(_) => panic!("no offer from the phone process:\n{}", phone.log()),
        };
        assert!(offer.contains("a=recvonly") && offer.contains("H264/90000"), "phone offer:\n{offer}");
        assert!(offer.contains(robotd::webrtc::TWCC_URI), "the phone offers transport-cc (trap d):\n{offer}");
        let offer = if tamper == Tamper::Offer { tamper_fingerprint(&offer) } else { offer };
        let mut robot = robot_helper(robot_ns, net.dir(), tx);
        robot.send(&ToHelper::Start { offer_sdp: offer, video, audio, ice: robot_ice, sim_world });
        Call {
            robot,
            phone,
            rx,
            frames: 0,
            walls: 0.0,
            frames_sent: 0,
            speaker: None,
            audio_received: 0,
            rates: Vec::new(),
            gaps: Vec::new(),
            robot_heard: Vec::new(),
            robot_gone: None,
            phone_heard: Vec::new(),
            candidates: Vec::new(),
            answer: None,
            tamper,
        }
    }

    /// Relay until `done` or `timeout`; whether `done` became true.
    pub fn pump(&mut self, timeout: Duration, mut done: impl FnMut(&Call) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let heard = match self.rx.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(h) => h,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return done(self),
            };
            match heard {
                Heard::Robot(m) => {
                    match &m {
                        FromHelper::Answer { sdp } => {
                            self.answer = Some(sdp.clone());
                            let sdp = if self.tamper == Tamper::Answer { tamper_fingerprint(sdp) } else { sdp.clone() };
                            self.phone.send(&ToPhone::Answer { sdp });
                        }
                        FromHelper::LocalCandidate { mline, candidate } => {
                            self.candidates.push(format!("robot: {candidate}"));
                            self.phone.send(&ToPhone::RemoteCandidate { mline: *mline, candidate: candidate.clone() })
                        }
                        FromHelper::EndOfCandidates => self.phone.send(&ToPhone::EndOfCandidates),
                        FromHelper::Stats {
                            frames_sent,
                            bytes_encoded,
                            estimate_kbps,
                            encoder_kbps,
                            width,
                            height,
                        } => {
                            self.frames_sent = *frames_sent;
                            self.rates.push(Rates {
                                at: Instant::now(),
                                frames: self.frames,
                                bytes: *bytes_encoded,
                                estimate_kbps: *estimate_kbps,
                                encoder_kbps: *encoder_kbps,
                                width: *width,
                                height: *height,
                            });
                        }
                        FromHelper::Speaker { level } => self.speaker = Some(*level),
                        _ => {}
                    }
                    if !matches!(
                        m,
                        FromHelper::Heartbeat
                            | FromHelper::LocalCandidate { .. }
                            | FromHelper::Stats { .. }
                            | FromHelper::Speaker { .. }
                    ) {
                        self.robot_heard.push(m);
                    }
                }
                Heard::RobotGone(why) => self.robot_gone = Some(why),
                Heard::Phone(m) => match m {
                    FromPhone::LocalCandidate { mline, candidate } => {
                        self.candidates.push(format!("phone: {candidate}"));
                        self.robot.send(&ToHelper::RemoteCandidate { mline, candidate })
                    }
                    FromPhone::EndOfCandidates => self.robot.send(&ToHelper::EndOfCandidates),
                    FromPhone::Frames { n, audio, walls, gaps_us } => {
                        let now = Instant::now();
                        self.gaps.extend(gaps_us.into_iter().map(|us| (now, Duration::from_micros(u64::from(us)))));
                        self.frames = n;
                        self.walls = walls;
                        self.audio_received = audio;
                    }
                    other => self.phone_heard.push(format!("{other:?}")),
                },
                Heard::PhoneGone(why) => self.phone_heard.push(format!("phone process gone: {why}")),
            }
        }
    }

    pub fn robot_ended(&self) -> Option<(&str, &str)> {
        self.robot_heard.iter().find_map(|m| match m {
            FromHelper::Ended { reason, detail } => Some((reason.as_str(), detail.as_str())),
            _ => None,
        })
    }

    pub fn report(&self) -> String {
        format!(
            "frames {}; speaker {:?}; robot's audio buffers decoded {}; robot said {:?} (gone: {:?}); phone said {:?}\n--- candidates\n{}\n--- answer\n{}\n--- robot helper log\n{}\n--- phone log\n{}",
            self.frames,
            self.speaker,
            self.audio_received,
            self.robot_heard,
            self.robot_gone,
            self.phone_heard,
            self.candidates.join("\n"),
            self.answer.as_deref().unwrap_or("(none)"),
            self.robot.log(),
            self.phone.log()
        )
    }
}

/// Start coturn; the robot relays only through it (long-term credentials),
/// the phone uses it for STUN: the ICE set-up of a robot at home and a phone
/// behind the carrier NAT.
pub fn relayed(net: &mut netns::Internet) -> (IceConfig, IceConfig) {
    net.start_turn(&netns::TurnAuth::long_term("robot", "s3cret"));
    let server = netns::SERVER;
    let robot_ice = IceConfig {
        stun: None,
        turn: vec![format!("turn://robot:s3cret@{server}:{}?transport=udp", netns::TURN_PORT)],
        relay_only: true,
    };
    let phone_ice = IceConfig { stun: Some(format!("stun://{server}:{}", netns::TURN_PORT)), ..IceConfig::default() };
    (robot_ice, phone_ice)
}

pub fn wait_for(rx: &Receiver<Heard>, timeout: Duration, mut f: impl FnMut(&Heard) -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(h) if f(&h) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}
