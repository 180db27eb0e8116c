//! Media of the call in progress: starts and stops the GStreamer senders
//! off the main loop (pipeline start and stop block), and reports back
//! through events tagged with the session, so a late event from an earlier
//! call can never touch the current one.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::helper::Helper;
use crate::config::{AudioConfig, VideoConfig};
use crate::hal::sim::{Pose, Sim};
use crate::robot::admin::{MediaStatus, VideoSendStatus};
use crate::robot::{Answer, MediaReport, MediaRequest, VideoAdjustError, WebRtcRequest};
use crate::video::simcam::SimScene;
use crate::video::simview::ViewPose;
use crate::video::{self, AudioParams, AudioSender, AudioSource, SenderParams, VideoSender, VideoSource};
use crate::webrtc::SIM_DEVICE;
use crate::webrtc::ipc::{FromHelper, ToHelper};

/// How often the simulated robot's pose goes to a `sim` camera's helper.
pub const POSE_PERIOD: std::time::Duration = std::time::Duration::from_millis(50);
use crate::webrtc::{AudioSpec, IceConfig, SpeakerLevel, VideoSpec};
use crate::wire::identity::ClientId;
use crate::wire::payloads::{VideoChange, VideoParams};
use crate::wire::replies::EndReason;
use crate::wire::webrtc::Candidate;

/// What the media side reports to the main loop.
pub enum MediaEvent {
    /// The senders of `session` are running.
    Started { session: ClientId, video: VideoSender, audio: Option<AudioSender> },
    /// The media of `session` failed (start error, camera unplugged, EOS;
    /// for version 2, the helper died or hung).
    Failed { session: ClientId, detail: String },
    /// What the media helper of a version 2 call said.
    Helper { session: ClientId, msg: FromHelper },
}

impl std::fmt::Debug for MediaEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaEvent::Started { session, .. } => write!(f, "Started({session})"),
            MediaEvent::Failed { session, detail } => write!(f, "Failed({session}: {detail})"),
            MediaEvent::Helper { session, msg } => write!(f, "Helper({session}: {msg:?})"),
        }
    }
}

/// The running senders of the current call.
struct Running {
    session: ClientId,
    video: VideoSender,
    audio: Option<AudioSender>,
}

/// Owns the media of at most one call.
pub struct Media {
    video_cfg: VideoConfig,
    audio_cfg: AudioConfig,
    events: mpsc::UnboundedSender<MediaEvent>,
    /// The call whose media was last started and not stopped since.
    current: Option<ClientId>,
    running: Option<Running>,
    /// The media helper of the current version 2 call.
    helper: Option<Helper>,
    /// What its speaker path measured last.
    speaker: Option<SpeakerLevel>,
    /// Its latest video statistics, and when they came.
    video_stats: Option<(VideoSendStatus, std::time::Instant, u64)>,
    /// The simulated world, which video device `sim` shows.
    sim: Option<Sim>,
    /// The pose last sent to the helper (sent again only when it changed).
    sent_pose: Option<(Pose, &'static str)>,
    /// What a version 1 call's simulated camera shows (posed in place).
    scene: Option<Arc<SimScene>>,
    /// The version 2 call's video as accepted, and as the `video` command
    /// set it last.
    webrtc_video: Option<(VideoParams, VideoParams)>,
}

impl Media {
    pub fn new(video_cfg: VideoConfig, audio_cfg: AudioConfig, events: mpsc::UnboundedSender<MediaEvent>) -> Self {
        Media {
            video_cfg,
            audio_cfg,
            events,
            current: None,
            running: None,
            helper: None,
            speaker: None,
            video_stats: None,
            sim: None,
            sent_pose: None,
            scene: None,
            webrtc_video: None,
        }
    }

    /// The simulated robot's world, for video device `sim` (sim backend only).
    pub fn with_sim(mut self, sim: Option<Sim>) -> Self {
        self.sim = sim;
        self
    }

    /// Whether [`Media::send_pose`] has anyone to send to now: the main loop
    /// runs its [`POSE_PERIOD`] timer only then, so an idle robot does not
    /// wake 20 times a second for nothing.
    pub fn wants_pose(&self) -> bool {
        self.sim.is_some() && (self.helper.is_some() || self.scene.is_some()) && self.video_cfg.device == SIM_DEVICE
    }

    /// Called every [`POSE_PERIOD`]: a call with video device `sim` gets
    /// the robot's pose when it changed (version 2: at most one small
    /// message per period to the helper, so its queue stays short; version 1:
    /// the sender's scene in place).
    ///
    /// `goto_blocked`: the last goto ended blocked and the robot has not
    /// moved since (the overlay says `blocked`).
    pub fn send_pose(&mut self, goto_blocked: bool) {
        let Some(sim) = &self.sim else { return };
        if !self.wants_pose() {
            return;
        }
        let snap = sim.snapshot();
        let state = if snap.blocked || goto_blocked {
            "blocked"
        } else if snap.wheel_speed_mps.iter().any(|v| v.abs() > 1e-3) {
            "driving"
        } else {
            "idle"
        };
        if self.sent_pose == Some((snap.pose, state)) {
            return;
        }
        self.sent_pose = Some((snap.pose, state));
        let p = snap.pose;
        if let Some(scene) = &self.scene {
            scene.set_pose(ViewPose { x: p.x, y: p.y, heading: p.heading, state: state.into() });
        }
        if let Some(h) = &self.helper {
            h.send(ToHelper::Pose { x: p.x, y: p.y, heading: p.heading, state: state.into() });
        }
    }

    /// Start a version 2 call's media helper with the phone's offer; its
    /// answer, candidates and end arrive as [`MediaEvent::Helper`].
    pub fn start_webrtc(&mut self, req: WebRtcRequest, ice: IceConfig) {
        self.stop();
        self.current = Some(req.session.clone());
        let v = req.video;
        self.webrtc_video = Some((v, v));
        let video = VideoSpec {
            device: self.video_cfg.device.clone(),
            width: v.width,
            height: v.height,
            fps: v.fps,
            kbps: v.kbps,
            encoder: self.video_cfg.encoder.clone(),
        };
        let audio = AudioSpec { mic: self.audio_cfg.device.clone(), speaker: self.audio_cfg.speaker.clone() };
        let sim_world = self.sim.as_ref().filter(|_| self.video_cfg.device == SIM_DEVICE).map(Sim::obstacles);
        self.sent_pose = None;
        match Helper::spawn(req.session.clone(), req.offer_sdp, video, audio, ice, sim_world, self.events.clone()) {
            Ok(h) => self.helper = Some(h),
            Err(detail) => {
                let _ = self.events.send(MediaEvent::Failed { session: req.session, detail });
            }
        }
    }

    /// The phone's candidates, for the helper of `session`.
    pub fn remote_candidates(&mut self, session: &ClientId, candidates: Vec<Candidate>, end: bool) {
        let Some(h) = self.helper.as_ref().filter(|h| &h.session == session) else { return };
        for c in candidates {
            h.send(ToHelper::RemoteCandidate { mline: c.mline, candidate: c.candidate });
        }
        if end {
            h.send(ToHelper::EndOfCandidates);
        }
    }

    /// Start the senders in the background; a `Started` or `Failed` event follows.
    pub fn start(&mut self, req: MediaRequest) {
        self.current = Some(req.session.clone());
        self.sent_pose = None;
        self.scene =
            self.sim.as_ref().filter(|_| self.video_cfg.device == SIM_DEVICE).map(|s| SimScene::new(s.obstacles()));
        let scene = self.scene.clone();
        let video_cfg = self.video_cfg.clone();
        let audio_dev = self.audio_cfg.device.clone();
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let session = req.session.clone();
            let source = match scene.map_or_else(|| resolve_source(&video_cfg.device), |s| Ok(VideoSource::Sim(s))) {
                Ok(s) => s,
                Err(detail) => {
                    let _ = events.send(MediaEvent::Failed { session, detail });
                    return;
                }
            };
            let params = SenderParams {
                host: req.host,
                port: req.video_port,
                ssrc: req.video_ssrc,
                srtp_key: req.video_key,
                video: req.video,
                encoder: video_cfg.encoder_preference(),
                source,
            };
            let video = match VideoSender::start(params) {
                Ok(v) => v,
                Err(e) => {
                    let _ = events.send(MediaEvent::Failed { session, detail: e.to_string() });
                    return;
                }
            };
            let audio = match (req.audio, audio_dev) {
                (Some((port, ssrc, key)), Some(dev)) => {
                    let p = AudioParams {
                        host: req.host,
                        port,
                        ssrc,
                        srtp_key: key,
                        bitrate: 32_000,
                        source: AudioSource::from_config(&dev),
                    };
                    match AudioSender::start(p) {
                        Ok(a) => Some(a),
                        Err(e) => {
                            // Audio is optional: the call goes on without it.
                            warn!(error = %e, "audio could not start; the call continues without it");
                            None
                        }
                    }
                }
                _ => None,
            };
            let _ = events.send(MediaEvent::Started { session, video, audio });
        });
    }

    /// What a media event means to the core: a `Started` keeps the senders
    /// if their call is still the current one (else they are stopped and the
    /// core hears nothing), and watches them for failure.
    pub fn on_event(&mut self, ev: MediaEvent) -> Option<MediaReport> {
        match ev {
            MediaEvent::Started { session, video, audio } => {
                if self.current.as_ref() != Some(&session) {
                    stop_in_background(video, audio);
                    return None;
                }
                self.keep(session.clone(), video, audio);
                Some(MediaReport::Started { session })
            }
            MediaEvent::Failed { session, detail } => Some(MediaReport::Failed { session, detail }),
            MediaEvent::Helper { session, msg: FromHelper::Speaker { level } } => {
                if self.current.as_ref() == Some(&session) {
                    self.speaker = Some(level);
                }
                None
            }
            MediaEvent::Helper {
                session,
                msg: FromHelper::Stats { frames_sent, bytes_encoded, estimate_kbps, encoder_kbps, width, height },
            } => {
                if self.current.as_ref() == Some(&session) {
                    let now = std::time::Instant::now();
                    let sent_kbps = match self.video_stats {
                        Some((_, at, bytes)) if now > at && bytes_encoded >= bytes => {
                            let kbits = (bytes_encoded - bytes) as f64 * 8.0 / 1000.0;
                            (kbits / now.duration_since(at).as_secs_f64()).round() as u32
                        }
                        _ => 0,
                    };
                    let st = VideoSendStatus { frames_sent, sent_kbps, estimate_kbps, encoder_kbps, width, height };
                    self.video_stats = Some((st, now, bytes_encoded));
                }
                None
            }
            MediaEvent::Helper { session, msg } => helper_report(session, msg),
        }
    }

    fn keep(&mut self, session: ClientId, video: VideoSender, audio: Option<AudioSender>) {
        let mut failed = video.failed();
        let events = self.events.clone();
        let s = session.clone();
        tokio::spawn(async move {
            loop {
                if let Some(detail) = failed.borrow_and_update().clone() {
                    let _ = events.send(MediaEvent::Failed { session: s, detail });
                    return;
                }
                if failed.changed().await.is_err() {
                    return;
                }
            }
        });
        info!(session = %session, settings = ?video.current(), "video streaming");
        self.running = Some(Running { session, video, audio });
    }

    /// Change the running video of `session` (bitrate at once; a new size or
    /// rate renegotiates the caps) and report what is now in force.
    pub fn adjust(&mut self, session: ClientId, change: VideoChange, answer: Answer) -> MediaReport {
        if self.helper.as_ref().is_some_and(|h| h.session == session) {
            let result = self.adjust_webrtc(change);
            return MediaReport::VideoAdjusted { session, result, answer };
        }
        let result = match self.running.as_ref().filter(|r| r.session == session) {
            None => Err(VideoAdjustError::Unavailable),
            Some(r) => match change {
                VideoChange::Bitrate(k) => r.video.set_bitrate(k),
                VideoChange::Format { width, height, fps } => r.video.set_format(width, height, fps),
            }
            .map(|s| s.video)
            .map_err(|e| VideoAdjustError::Invalid(e.to_string())),
        };
        MediaReport::VideoAdjusted { session, result, answer }
    }

    /// `video` in a version 2 call: limits at most the call's accepted
    /// values, which the helper's bandwidth adaptation works below.
    fn adjust_webrtc(&mut self, change: VideoChange) -> Result<VideoParams, VideoAdjustError> {
        let (Some((accepted, now)), Some(h)) = (self.webrtc_video.as_mut(), self.helper.as_ref()) else {
            return Err(VideoAdjustError::Unavailable);
        };
        let want = match change {
            VideoChange::Bitrate(kbps) => VideoParams { kbps, ..*now },
            VideoChange::Format { width, height, fps } => VideoParams { width, height, fps, ..*now },
        };
        let a = *accepted;
        if want.width > a.width || want.height > a.height || want.fps > a.fps || want.kbps > a.kbps {
            return Err(VideoAdjustError::Invalid(format!(
                "{}x{}@{} {} kbps is above the call's {}x{}@{} {} kbps: in a version 2 call `video` \
                 lowers the picture or the bitrate (or restores them), and the bandwidth adaptation works below it",
                want.width, want.height, want.fps, want.kbps, a.width, a.height, a.fps, a.kbps
            )));
        }
        *now = want;
        h.send(ToHelper::Video { width: want.width, height: want.height, fps: want.fps, kbps: want.kbps });
        Ok(want)
    }

    /// The media side of `robotd status` (video sent, speaker).
    pub fn status(&self) -> MediaStatus {
        let level = self.speaker.filter(|_| self.helper.is_some());
        MediaStatus {
            video: self.video_stats.as_ref().filter(|_| self.helper.is_some()).map(|(v, ..)| v.clone()),
            speaker: self.audio_cfg.speaker.clone(),
            speaker_receiving: level.is_some_and(|l| l.receiving),
            speaker_level_db: level.and_then(|l| l.rms_db),
            speaker_peak_db: level.and_then(|l| l.peak_db),
        }
    }

    /// Stop whatever runs (in the background; returns at once).
    pub fn stop(&mut self) {
        self.current = None;
        self.scene = None;
        self.webrtc_video = None;
        self.speaker = None;
        self.video_stats = None;
        if let Some(h) = self.helper.take() {
            h.stop();
        }
        if let Some(r) = self.running.take() {
            stop_in_background(r.video, r.audio);
        }
    }

    /// Stop whatever runs and wait for it (shutdown).
    pub async fn stop_and_wait(&mut self) {
        self.current = None;
        self.scene = None;
        self.webrtc_video = None;
        self.speaker = None;
        self.video_stats = None;
        if let Some(h) = self.helper.take() {
            h.stop();
        }
        if let Some(r) = self.running.take() {
            let _ = tokio::task::spawn_blocking(move || stop_all(r.video, r.audio)).await;
        }
    }
}

/// What a helper message means to the core (heartbeats and ICE states are
/// the supervisor's business).
fn helper_report(session: ClientId, msg: FromHelper) -> Option<MediaReport> {
    Some(match msg {
        FromHelper::Answer { sdp } => MediaReport::Answer { session, sdp },
        FromHelper::LocalCandidate { mline, candidate } => {
            MediaReport::LocalCandidates { session, candidates: vec![Candidate { mline, candidate }], end: false }
        }
        FromHelper::EndOfCandidates => MediaReport::LocalCandidates { session, candidates: vec![], end: true },
        FromHelper::Connected => MediaReport::Started { session },
        FromHelper::Ended { reason, .. } if reason == "stopped" => return None,
        FromHelper::Ended { reason, detail } => {
            let reason = match reason.as_str() {
                "fingerprint_mismatch" => EndReason::FingerprintMismatch,
                "ice_failed" => EndReason::IceFailed,
                "video_failed" => EndReason::VideoFailed,
                _ => EndReason::MediaFailed,
            };
            MediaReport::Ended { session, reason, detail }
        }
        FromHelper::State { .. } | FromHelper::Heartbeat | FromHelper::Stats { .. } | FromHelper::Speaker { .. } => {
            return None;
        }
    })
}

fn stop_all(video: VideoSender, audio: Option<AudioSender>) {
    if let Err(e) = video.stop() {
        warn!(error = %e, "video sender did not stop cleanly");
    }
    if let Some(a) = audio {
        if let Err(e) = a.stop() {
            warn!(error = %e, "audio sender did not stop cleanly");
        }
    }
}

fn stop_in_background(video: VideoSender, audio: Option<AudioSender>) {
    tokio::task::spawn_blocking(move || stop_all(video, audio));
}

/// `video.device` to a source: `test`, a path, or `auto` (first camera with
/// a usable capture format).
fn resolve_source(device: &str) -> Result<VideoSource, String> {
    if device != "auto" {
        return Ok(VideoSource::from_config(device));
    }
    video::camera::list_cameras()
        .into_iter()
        .find(|c| !c.formats.is_empty())
        .map(|c| VideoSource::Device(c.path))
        .ok_or_else(|| {
            "no camera found (video.device = \"auto\"); connect one, check `robotd cameras`, or set video.device = \"test\" for a test pattern".into()
        })
}
