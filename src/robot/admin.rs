//! Admin requests (`robotd pair`, `owners`, `at`, `estop clear`, `status`) and their typed
//! answers. The admin socket ([`crate::daemon::control`]) carries them as
//! one JSON line each way: `{"ok":true,"data":{...}}` or
//! `{"ok":false,"error":"..."}`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::pairing::PAIRING_PNG;
use super::{Core, DropReason, Effect, Now};
use crate::hal::ObstacleSensor;
use crate::motion::MotionError;
use crate::wire::identity::ClientId;
use crate::wire::pairing;
use crate::wire::payloads::VideoParams;
use crate::wire::replies::EndReason;

/// An admin request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Open a new pairing window (voids any previous secret). With
    /// `replace`, that owner may pair again and get a new key (a lost
    /// phone); without it, a pairing never replaces an owner's key.
    Pair {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replace: Option<String>,
    },
    /// Close the pairing window.
    PairClose,
    /// List owners.
    Owners,
    /// Remove an owner (takes effect at once, ending its call if any).
    OwnersRemove { id: String },
    /// Daemon status.
    Status,
    /// Tell the navigator where the robot is (e.g. after carrying it to its dock).
    SetAt { place: String },
    /// Re-arm the motors after the e-stop fired (refused while the switch is pressed).
    EstopClear,
}

/// `pair`: the new window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairShown {
    pub uri: String,
    /// The QR code for a terminal.
    pub qr: String,
    /// Where the QR code PNG is.
    pub png: PathBuf,
    pub expires_at_ms: u64,
}

/// One owner, without its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerInfo {
    pub id: ClientId,
    pub nickname: String,
    pub paired_at_ms: u64,
}

/// `owners`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerList {
    pub owners: Vec<OwnerInfo>,
}

/// `owners remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: ClientId,
}

/// `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtPlace {
    pub at: String,
}

/// `estop clear`: done; whether the latch was set before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EstopCleared {
    pub was_latched: bool,
}

/// `status`: the e-stop, when `[hardware.estop]` configures one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EstopStatus {
    pub configured: bool,
    /// The e-stop fired and the motors refuse to run until `robotd estop clear`.
    pub latched: bool,
}

/// What the shell knows of the MQTT link, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    pub url: String,
    pub connected: bool,
    pub connects: u64,
    /// Dropped in the link: topic outside the protocol, oversized, backlog.
    pub dropped_topic: u64,
    pub dropped_size: u64,
    pub dropped_backlog: u64,
    /// Times the broker dropped robotd because another client connected with
    /// its MQTT client identifier (session taken over), and when last (unix ms).
    pub taken_over: u64,
    pub last_takeover_ms: Option<u64>,
}

/// `status`: the call in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallStatus {
    pub session: ClientId,
    pub caller: ClientId,
    pub video: VideoParams,
}

/// `status`: the ultrasonic sensor's reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UltrasonicStatus {
    Distance { distance_m: Option<f64> },
    Error { error: String },
}

/// `status`: the simulated robot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimStatus {
    pub x: f64,
    pub y: f64,
    pub heading: f64,
    pub wheel_speed_mps: [f64; 2],
    pub obstacle: bool,
    pub ultrasonic_m: Option<f64>,
}

/// `status`: the broker connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerStatus {
    pub url: String,
    pub connected: bool,
    pub connects: u64,
    /// Session takeovers: another client connected with robotd's MQTT client
    /// identifier (a second robotd on a copy of the state directory).
    pub taken_over: u64,
    pub last_takeover_ms: Option<u64>,
}

/// `status`: dropped messages, in the link and by the core's reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedStatus {
    pub topic: u64,
    pub size: u64,
    pub backlog: u64,
    pub auth: std::collections::BTreeMap<DropReason, u64>,
}

/// `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub robot: ClientId,
    pub nickname: String,
    pub software: String,
    pub uptime_s: u64,
    pub broker: BrokerStatus,
    pub pairing: String,
    pub owners: usize,
    pub call: Option<CallStatus>,
    pub motion: String,
    /// `null` without an e-stop.
    pub estop: Option<EstopStatus>,
    pub at: String,
    pub ultrasonic: Option<UltrasonicStatus>,
    pub sim: Option<SimStatus>,
    pub dropped: DroppedStatus,
    /// Filled in by the shell (the media helper's measurements).
    #[serde(default)]
    pub media: MediaStatus,
}

/// `status`: the video a version 2 call sends, as the media helper reports it
/// (every 250 ms).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VideoSendStatus {
    /// Frames encoded since the phone's certificate was checked.
    pub frames_sent: u64,
    /// Encoded video over the last report interval, kbit/s.
    pub sent_kbps: u32,
    /// The bandwidth estimate (transport-cc), kbit/s; 0 without one.
    pub estimate_kbps: u32,
    /// The encoder's bitrate setting, kbit/s.
    pub encoder_kbps: u32,
    /// The frame size sent (it steps down on a narrow link).
    pub width: u32,
    pub height: u32,
}

/// `status`: the media of a version 2 call, as the media helper measures it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaStatus {
    /// What the call's video sends; `null` outside version 2 calls.
    #[serde(default)]
    pub video: Option<VideoSendStatus>,
    /// `[audio] speaker` (`"test"` or an ALSA device), `null` without one.
    pub speaker: Option<String>,
    /// The phone's audio reaches the speaker (decoded within the last second).
    pub speaker_receiving: bool,
    /// Its latest RMS level, dBFS (-120 for digital silence); `null` before
    /// any audio of the current call arrived, and outside calls.
    pub speaker_level_db: Option<f64>,
    /// Its latest peak level, dBFS.
    pub speaker_peak_db: Option<f64>,
}

/// A successful admin answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AdminReply {
    Pair(PairShown),
    /// `pair --close`: `{}`.
    Closed {},
    Owners(OwnerList),
    Removed(Removed),
    At(AtPlace),
    EstopCleared(EstopCleared),
    Status(Box<Status>),
}

impl Core {
    /// Answer an admin request; `link` is what the shell knows of the broker.
    pub fn on_admin(&mut self, req: Request, link: &LinkInfo, now: Now) -> (Result<AdminReply, String>, Vec<Effect>) {
        self.now = now;
        let r = self.admin(req, link);
        (r, self.take_effects())
    }

    fn admin(&mut self, req: Request, link: &LinkInfo) -> Result<AdminReply, String> {
        match req {
            Request::Pair { replace } => {
                let replace = match replace {
                    None => None,
                    Some(id) => {
                        let id = id.parse::<ClientId>().map_err(|_| format!("{id:?} is not a client ID"))?;
                        if self.owners.get(&id).is_none() {
                            return Err(format!("{id} is not an owner; pair it without --replace"));
                        }
                        Some(id)
                    }
                };
                let p = self.open_pairing(replace);
                let uri = p.uri.to_string();
                let expires_at_ms = p.expires_at_ms;
                let qr = pairing::render_terminal(&uri).unwrap_or_default();
                Ok(AdminReply::Pair(PairShown { uri, qr, png: self.store.path(PAIRING_PNG), expires_at_ms }))
            }
            Request::PairClose => {
                self.pairing.close();
                self.finish_pairing();
                Ok(AdminReply::Closed {})
            }
            Request::Owners => Ok(AdminReply::Owners(OwnerList {
                owners: (self.owners.list().iter())
                    .map(|o| OwnerInfo { id: o.id.clone(), nickname: o.nickname.clone(), paired_at_ms: o.paired_at_ms })
                    .collect(),
            })),
            Request::SetAt { place } => {
                let nav = self.body.nav.as_mut().ok_or("no [nav] map is configured")?;
                nav.set_at(&place).map_err(|e| e.to_string())?;
                info!(%place, "position set by admin");
                Ok(AdminReply::At(AtPlace { at: place }))
            }
            Request::OwnersRemove { id } => {
                let id = id
                    .parse::<ClientId>()
                    .map_err(|_| format!("{id:?} is not a client ID (32 lowercase hex characters)"))?;
                if !self.owners.remove(&id).map_err(|e| e.to_string())? {
                    return Err(format!("{id} is not an owner"));
                }
                info!(owner = %id, "owner removed");
                if self.call.as_ref().is_some_and(|c| c.caller == id) {
                    self.end_call(EndReason::Revoked);
                }
                Ok(AdminReply::Removed(Removed { removed: id }))
            }
            Request::EstopClear => self.clear_estop().map(AdminReply::EstopCleared),
            Request::Status => Ok(AdminReply::Status(Box::new(self.status(link)))),
        }
    }

    /// `robotd estop clear`: the motors may run again once the switch is released.
    fn clear_estop(&mut self) -> Result<EstopCleared, String> {
        if self.body.hw.config().estop.is_none() {
            return Err("no e-stop is configured ([hardware.estop]): there is nothing to clear".into());
        }
        let was_latched = self.body.motors.estop_latched();
        match self.body.motors.clear_estop() {
            Ok(()) => {
                if was_latched {
                    info!("e-stop cleared by admin: the motors may run again");
                }
                Ok(EstopCleared { was_latched })
            }
            Err(MotionError::EstopStillActive) => {
                Err("the e-stop switch is still pressed: release it, then run `robotd estop clear` again".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The state as `robotd status` shows it.
    pub fn status(&self, link: &LinkInfo) -> Status {
        Status {
            robot: self.robot.clone(),
            nickname: self.cfg.robot.nickname.clone(),
            software: crate::wire::SOFTWARE.into(),
            uptime_s: self.now.mono.saturating_duration_since(self.started).as_secs(),
            broker: BrokerStatus {
                url: link.url.clone(),
                connected: link.connected,
                connects: link.connects,
                taken_over: link.taken_over,
                last_takeover_ms: link.last_takeover_ms,
            },
            pairing: self.pairing.status(self.now.wall_ms).to_string(),
            owners: self.owners.list().len(),
            call: self.call.as_ref().map(|c| CallStatus {
                session: c.session.clone(),
                caller: c.caller.clone(),
                video: c.video,
            }),
            motion: self.motion().into(),
            estop: self
                .body
                .hw
                .config()
                .estop
                .as_ref()
                .map(|_| EstopStatus { configured: true, latched: self.body.motors.estop_latched() }),
            at: self.at().into(),
            ultrasonic: self.body.obstacle.as_ref().and_then(ObstacleSensor::distance_m).map(|r| match r {
                Ok(distance_m) => UltrasonicStatus::Distance { distance_m },
                Err(e) => UltrasonicStatus::Error { error: e.to_string() },
            }),
            sim: self.body.hw.sim().map(|s| {
                let snap = s.snapshot();
                SimStatus {
                    x: snap.pose.x,
                    y: snap.pose.y,
                    heading: snap.pose.heading,
                    wheel_speed_mps: snap.wheel_speed_mps,
                    obstacle: snap.obstacle_detected,
                    ultrasonic_m: snap.ultrasonic_m,
                }
            }),
            dropped: DroppedStatus {
                topic: link.dropped_topic,
                size: link.dropped_size,
                backlog: link.dropped_backlog,
                auth: self.drops.counts().clone(),
            },
            media: MediaStatus::default(),
        }
    }
}
