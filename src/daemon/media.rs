//! Media of the call in progress: starts and stops the GStreamer senders
//! off the main loop (pipeline start and stop block), and reports back
//! through events tagged with the session, so a late event from an earlier
//! call can never touch the current one.

use std::net::IpAddr;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{AudioConfig, VideoConfig};
use crate::video::{self, AudioParams, AudioSender, AudioSource, SenderParams, VideoSender, VideoSource};
use crate::wire::identity::ClientId;
use crate::wire::keys::SrtpKey;
use crate::wire::payloads::VideoParams;

/// What the media side reports to the main loop.
pub enum MediaEvent {
    /// The senders of `session` are running.
    Started { session: ClientId, video: VideoSender, audio: Option<AudioSender> },
    /// The media of `session` failed (start error, camera unplugged, EOS).
    Failed { session: ClientId, detail: String },
}

impl std::fmt::Debug for MediaEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaEvent::Started { session, .. } => write!(f, "Started({session})"),
            MediaEvent::Failed { session, detail } => write!(f, "Failed({session}: {detail})"),
        }
    }
}

/// Where and how to send a call's media. `Debug` leaves the keys out.
#[derive(Clone)]
pub struct MediaRequest {
    pub session: ClientId,
    pub host: IpAddr,
    pub video_port: u16,
    pub video_ssrc: u32,
    pub video_key: SrtpKey,
    pub video: VideoParams,
    /// Audio port, SSRC and key, when audio was negotiated.
    pub audio: Option<(u16, u32, SrtpKey)>,
}

impl std::fmt::Debug for MediaRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaRequest")
            .field("session", &self.session)
            .field("host", &self.host)
            .field("video_port", &self.video_port)
            .field("video_ssrc", &self.video_ssrc)
            .field("video", &self.video)
            .field("audio", &self.audio.as_ref().map(|(port, ssrc, _)| (port, ssrc)))
            .finish_non_exhaustive()
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
    running: Option<Running>,
}

impl Media {
    pub fn new(video_cfg: VideoConfig, audio_cfg: AudioConfig, events: mpsc::UnboundedSender<MediaEvent>) -> Self {
        Media { video_cfg, audio_cfg, events, running: None }
    }

    /// Whether a microphone is configured.
    pub fn has_audio(&self) -> bool {
        self.audio_cfg.device.is_some()
    }

    /// Start the senders in the background; a `Started` or `Failed` event follows.
    pub fn start(&mut self, req: MediaRequest) {
        let video_cfg = self.video_cfg.clone();
        let audio_dev = self.audio_cfg.device.clone();
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let session = req.session.clone();
            let source = match resolve_source(&video_cfg.device) {
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

    /// A `Started` event arrived: keep the senders if `current` is still
    /// their call, else stop them. Watches them for failure.
    pub fn on_started(
        &mut self,
        current: Option<&ClientId>,
        session: ClientId,
        video: VideoSender,
        audio: Option<AudioSender>,
    ) {
        if current != Some(&session) {
            stop_in_background(video, audio);
            return;
        }
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

    /// The running video sender of `session`, if any.
    pub fn video(&self, session: &ClientId) -> Option<&VideoSender> {
        self.running.as_ref().filter(|r| &r.session == session).map(|r| &r.video)
    }

    /// Stop whatever runs (in the background; returns at once).
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            stop_in_background(r.video, r.audio);
        }
    }

    /// Stop whatever runs and wait for it (shutdown).
    pub async fn stop_and_wait(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = tokio::task::spawn_blocking(move || stop_all(r.video, r.audio)).await;
        }
    }
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
