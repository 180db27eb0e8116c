//! Media of the call in progress, in the media helper process
//! (`robotd-media`, [`super::helper`]): a version 2 call's webrtcbin peer or
//! a version 1 call's SRTP senders. robotd's own process runs no GStreamer
//! (and does not link it). What the helper says comes back as events tagged
//! with the session, so a late event from an earlier call can never touch
//! the current one.

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::helper::{Helper, Spare};
use crate::config::{AudioConfig, VideoConfig};
use crate::hal::sim::{Pose, Sim};
use crate::robot::admin::{MediaStatus, VideoSendStatus};
use crate::robot::{Answer, MediaReport, MediaRequest, VideoAdjustError, WebRtcRequest};
use crate::video;
use crate::webrtc::SIM_DEVICE;
use crate::webrtc::ipc::{FromHelper, HexSecret, ToHelper, V1Audio};

/// How often the simulated robot's pose goes to a `sim` camera's helper.
pub const POSE_PERIOD: std::time::Duration = std::time::Duration::from_millis(50);
use crate::webrtc::{AudioSpec, IceConfig, SpeakerLevel, VideoSpec};
use crate::wire::identity::ClientId;
use crate::wire::payloads::{VideoChange, VideoParams};
use crate::wire::replies::EndReason;
use crate::wire::webrtc::Candidate;

/// What the media side reports to the main loop.
#[derive(Debug)]
pub enum MediaEvent {
    /// The media helper of `session` could not start, died or hung.
    Failed { session: ClientId, detail: String },
    /// What the media helper of `session` said.
    Helper { session: ClientId, msg: FromHelper },
}

/// The version 1 call whose senders run in the helper, as robotd knows them.
struct V1Call {
    session: ClientId,
    /// The settings in force, from the helper's `V1Sending` and the `video`
    /// commands since; `None` until the senders run.
    video: Option<video::VideoSettingsMirror>,
}

/// Owns the media of at most one call.
pub struct Media {
    video_cfg: VideoConfig,
    audio_cfg: AudioConfig,
    events: mpsc::UnboundedSender<MediaEvent>,
    /// The call whose media was last started and not stopped since.
    current: Option<ClientId>,
    /// The current version 1 call (its senders run in `helper`).
    v1: Option<V1Call>,
    /// The media helper of the current call.
    helper: Option<Helper>,
    /// The helper started ahead of the next call (`[video] prestart_helper`).
    spare: Option<Spare>,
    /// What its speaker path measured last.
    speaker: Option<SpeakerLevel>,
    /// Its latest video statistics, and when they came.
    video_stats: Option<(VideoSendStatus, std::time::Instant, u64)>,
    /// The simulated world, which video device `sim` shows.
    sim: Option<Sim>,
    /// The pose last sent to the helper (sent again only when it changed).
    sent_pose: Option<(Pose, &'static str)>,
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
            v1: None,
            helper: None,
            spare: None,
            speaker: None,
            video_stats: None,
            sim: None,
            sent_pose: None,
            webrtc_video: None,
        }
    }

    /// With `[video] prestart_helper`, start a spare media helper if there is
    /// neither a call's helper nor a spare. Called at start-up and when a
    /// call's media stop; from the main loop's thread (see [`Helper::spawn`]).
    pub fn prepare_spare(&mut self) {
        if !self.video_cfg.prestart_helper || self.spare.is_some() || self.helper.is_some() {
            return;
        }
        match Spare::spawn() {
            Ok(s) => self.spare = Some(s),
            // The next call starts its own, and says why if it cannot.
            Err(e) => warn!(error = %e, "no spare media helper"),
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
        self.sim.is_some() && self.helper.is_some() && self.video_cfg.device == SIM_DEVICE
    }

    /// Called every [`POSE_PERIOD`]: a call with video device `sim` gets
    /// the robot's pose when it changed (at most one small message per
    /// period to the helper, so its queue stays short).
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
        if let Some(h) = &self.helper {
            h.send(ToHelper::Pose { x: p.x, y: p.y, heading: p.heading, state: state.into() });
        }
    }

    /// Start a version 2 call's media helper with the phone's offer; its
    /// answer, candidates and end arrive as [`MediaEvent::Helper`].
    pub fn start_webrtc(&mut self, req: WebRtcRequest, ice: IceConfig) {
        self.stop_current();
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
        let start = ToHelper::Start { offer_sdp: req.offer_sdp, video, audio, ice, sim_world };
        match Helper::spawn_or_take(self.spare.take(), req.session.clone(), start, self.events.clone()) {
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

    /// Start a version 1 call's senders in a media helper; its `V1Sending`
    /// (the call's `Started`) or its end (`Failed`) follows.
    pub fn start(&mut self, req: MediaRequest) {
        self.stop_current();
        self.current = Some(req.session.clone());
        self.v1 = Some(V1Call { session: req.session.clone(), video: None });
        let audio = match (req.audio, &self.audio_cfg.device) {
            (Some((port, ssrc, key)), Some(dev)) => {
                Some(V1Audio { port, ssrc, key: HexSecret(hex::encode(key.0)), device: dev.clone() })
            }
            _ => None,
        };
        let sim_world = self.sim.as_ref().filter(|_| self.video_cfg.device == SIM_DEVICE).map(Sim::obstacles);
        let start = ToHelper::StartV1 {
            host: req.host,
            video_port: req.video_port,
            video_ssrc: req.video_ssrc,
            video_key: HexSecret(hex::encode(req.video_key.0)),
            video: req.video,
            device: self.video_cfg.device.clone(),
            encoder: self.video_cfg.encoder.clone(),
            audio,
            sim_world,
        };
        match Helper::spawn_or_take(self.spare.take(), req.session.clone(), start, self.events.clone()) {
            Ok(h) => self.helper = Some(h),
            Err(detail) => {
                let _ = self.events.send(MediaEvent::Failed { session: req.session, detail });
            }
        }
    }

    /// What a media event means to the core: a version 1 helper's
    /// `V1Sending` is the call's `Started`, its end a failure; a version 2
    /// helper's messages are the call's answer, candidates and end.
    pub fn on_event(&mut self, ev: MediaEvent) -> Option<MediaReport> {
        match ev {
            MediaEvent::Failed { session, detail } => Some(MediaReport::Failed { session, detail }),
            MediaEvent::Helper { session, msg: FromHelper::V1Sending { video, encoder, audio } } => {
                let call = self.v1.as_mut().filter(|c| c.session == session)?;
                info!(session = %session, ?video, encoder = encoder.as_deref().unwrap_or("passthrough"), audio,
                    "video streaming");
                call.video = Some(video::VideoSettingsMirror { video, reencodes: encoder.is_some() });
                Some(MediaReport::Started { session })
            }
            MediaEvent::Helper { session, msg: FromHelper::Ended { reason, detail } }
                if reason != "stopped" && self.v1.as_ref().is_some_and(|c| c.session == session) =>
            {
                Some(MediaReport::Failed { session, detail })
            }
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

    /// Change the running video of `session` (bitrate at once; a new size or
    /// rate renegotiates the caps) and report what is now in force.
    pub fn adjust(&mut self, session: ClientId, change: VideoChange, answer: Answer) -> MediaReport {
        let v1 = self.v1.as_mut().filter(|c| c.session == session);
        if v1.is_none() && self.helper.as_ref().is_some_and(|h| h.session == session) {
            let result = self.adjust_webrtc(change);
            return MediaReport::VideoAdjusted { session, result, answer };
        }
        let result = match (v1.and_then(|c| c.video.as_mut()), self.helper.as_ref()) {
            (Some(mirror), Some(h)) => {
                mirror.apply(change).map_err(|e| VideoAdjustError::Invalid(e.to_string())).inspect(|_| {
                    h.send(match change {
                        VideoChange::Bitrate(kbps) => ToHelper::SetBitrate { kbps },
                        VideoChange::Format { width, height, fps } => ToHelper::SetFormat { width, height, fps },
                    })
                })
            }
            _ => Err(VideoAdjustError::Unavailable),
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

    /// Stop whatever runs (the helper stops its pipeline and exits;
    /// returns at once).
    pub fn stop(&mut self) {
        self.stop_current();
        self.prepare_spare();
    }

    /// [`Media::stop`] without starting a spare.
    fn stop_current(&mut self) {
        self.current = None;
        // The next call's helper knows no pose yet: it gets the current one
        // at the next tick, moved or not.
        self.sent_pose = None;
        self.v1 = None;
        self.webrtc_video = None;
        self.speaker = None;
        self.video_stats = None;
        if let Some(h) = self.helper.take() {
            h.stop();
        }
    }

    /// Stop whatever runs (shutdown).
    pub async fn stop_and_wait(&mut self) {
        self.stop_current();
        self.spare = None;
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
        FromHelper::State { .. }
        | FromHelper::Heartbeat
        | FromHelper::Stats { .. }
        | FromHelper::Speaker { .. }
        | FromHelper::V1Sending { .. } => {
            return None;
        }
    })
}
