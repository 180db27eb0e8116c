//! The robot's brain: all protocol state, driven by link events, admin
//! requests and a housekeeping tick. No task lives here; [`crate::daemon`]
//! feeds events in and this module answers through the link handle.
//!
//! Every inbound message passes the same gate before a handler sees it:
//! topic grammar and size (in the link), then sender, MAC and freshness here.
//! Anything that fails is counted and logged at a rate-limited warning level
//! and never reaches the motors or the camera.

pub mod call;
pub mod owners;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::daemon::control::{Request, Response};
use crate::daemon::link::{Inbound, LinkEvent, LinkHandle, SessionGate};
use crate::daemon::media::{Media, MediaEvent, MediaRequest};
use crate::hal::sim::SimRunner;
use crate::hal::{BinarySensor, Debounced, Encoder, EncoderCounter, Hardware, Input, ObstacleSensor, Sensor};
use crate::motion::{DriveCommand, MotorController, StopReason};
use crate::nav::{CancelledBy, MotorCmd, Navigator, Sensors};
use crate::robot::call::{Call, EndReason, MAX_LATENESS_MS, Negotiated};
use crate::robot::owners::{Owner, OwnerStore};
use crate::wire::freshness::{SeqCheck, SeqTracker, ts_is_fresh};
use crate::wire::identity::ClientId;
use crate::wire::keys::Key32;
use crate::wire::pairing::{self, PairOutcome, PairRequest, PairingUri, PairingWindows, Reject};
use crate::wire::payloads::{self, Command, CommandError, Invite, VideoChange};
use crate::wire::props::{self, AuthFields, now_ms};
use crate::wire::topics::{self, Topic};

/// File name of the pairing QR code PNG in the state directory.
pub const PAIRING_PNG: &str = "pairing-qr.png";

/// Counts dropped messages by reason and logs at most one warning per
/// reason every 10 s (with how many were dropped since), so a flood of junk
/// cannot flood the journal or slow the loop with I/O.
#[derive(Debug, Default)]
pub struct DropLog {
    counts: BTreeMap<&'static str, u64>,
    /// Per reason: when it was last logged and how many were dropped since.
    last: BTreeMap<&'static str, (Instant, u64)>,
}

impl DropLog {
    const EVERY: Duration = Duration::from_secs(10);

    /// Count a drop and maybe log it.
    pub fn drop(&mut self, reason: &'static str, topic: &str) {
        *self.counts.entry(reason).or_default() += 1;
        let now = Instant::now();
        match self.last.get_mut(reason) {
            Some((t, since)) if now.duration_since(*t) < Self::EVERY => *since += 1,
            Some((t, since)) => {
                warn!(reason, topic, dropped_since_last = *since + 1, "dropped message");
                *t = now;
                *since = 0;
            }
            None => {
                warn!(reason, topic, "dropped message");
                self.last.insert(reason, (now, 0));
            }
        }
    }

    /// Counts by reason, for `robotd status` and tests.
    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }
}

/// A token bucket bounding how many unauthenticated answers (pairing
/// rejections) the robot sends, so it cannot be used to amplify a flood.
#[derive(Debug)]
struct Budget {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    last: Instant,
}

impl Budget {
    fn new(per_sec: f64, burst: f64) -> Self {
        Budget { tokens: burst, per_sec, burst, last: Instant::now() }
    }
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The current pairing window's public face.
struct OpenPairing {
    uri: PairingUri,
    expires_at_ms: u64,
}

/// All protocol state of the robot.
pub struct Service {
    cfg: Config,
    robot: ClientId,
    link: LinkHandle,
    owners: OwnerStore,
    pairing: PairingWindows,
    open_pairing: Option<OpenPairing>,
    invite_seqs: SeqTracker,
    /// The robot's own `seq` outside calls: starts at the start time in ms.
    next_seq: u64,
    drops: DropLog,
    reject_budget: Budget,
    started: Instant,
    hw: Hardware,
    motors: MotorController,
    /// Keeps the simulated world stepping in real time (sim backend only).
    _sim: Option<SimRunner>,
    media: Media,
    call: Option<Call>,
    /// The optional pairing button and its debouncer.
    button: Option<(Sensor<Input>, Debounced)>,
    /// Navigation, when `[nav]` configures a map.
    nav: Option<Navigator>,
    encoders: Option<(EncoderCounter, EncoderCounter)>,
    obstacle: Option<ObstacleSensor>,
    /// `re` and correlation data of the goto in progress (its statuses carry them).
    goto_re: Option<(u64, Option<Bytes>)>,
    next_nav_tick: Option<Instant>,
}

/// How often the pairing button is polled.
const BUTTON_POLL: Duration = Duration::from_millis(50);

/// How often the e-stop input is polled when one is configured.
const ESTOP_POLL: Duration = Duration::from_millis(20);

impl Service {
    /// Load the owners and set up; opens a pairing window when the robot has
    /// no owner and the config allows it.
    pub fn new(
        cfg: Config,
        robot: ClientId,
        link: LinkHandle,
        hw: Hardware,
        motors: MotorController,
        media: Media,
    ) -> anyhow::Result<Service> {
        let owners = OwnerStore::load(&cfg.robot.state_dir)?;
        let mut hw = hw;
        let button = match &cfg.pairing.button {
            Some(b) => Some((hw.input(b)?, Debounced::default())),
            None => None,
        };
        let nav = match &cfg.nav {
            Some(n) => Some(Navigator::new(n, &cfg.hardware, &cfg.robot.state_dir)?),
            None => None,
        };
        let encoders = hw.encoders()?;
        let obstacle = hw.obstacle_sensor()?;
        if let Some(n) = &nav {
            info!(places = n.destinations().len(), at = n.at_or_unknown(), "map loaded");
        }
        let sim = hw.sim().map(|s| s.run_realtime());
        let pairing = PairingWindows::new(Duration::from_secs(cfg.pairing.window_s), pairing::DEFAULT_MAX_FAILURES);
        let mut s = Service {
            cfg,
            robot,
            link,
            owners,
            pairing,
            open_pairing: None,
            invite_seqs: SeqTracker::default(),
            next_seq: now_ms(),
            drops: DropLog::default(),
            reject_budget: Budget::new(10.0, 20.0),
            started: Instant::now(),
            hw,
            motors,
            _sim: sim,
            media,
            call: None,
            button,
            nav,
            encoders,
            obstacle,
            goto_re: None,
            next_nav_tick: None,
        };
        info!(owners = s.owners.list().len(), "owners loaded");
        if s.owners.is_empty() && s.cfg.pairing.open_when_unowned {
            info!("no owner yet: opening a pairing window");
            if let Err(e) = s.open_pairing() {
                error!(error = %e, "cannot open the pairing window");
            }
        }
        Ok(s)
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// React to the link.
    pub fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Connected => info!("online"),
            LinkEvent::Disconnected => {
                // Nobody can renew or stop a drive, or watch a goto, while we are offline.
                if let Some(nav) = self.nav.as_mut() {
                    let statuses = nav.fail(Instant::now(), "link_lost", "the robot lost its broker connection");
                    self.publish_goto(statuses, None);
                }
                self.stop_motors("broker connection lost");
                warn!("offline; reconnecting");
            }
            LinkEvent::Message(m) => self.on_message(&m),
        }
    }

    fn on_message(&mut self, m: &Inbound) {
        match &m.topic {
            Topic::PairRequest { robot, phone } if *robot == self.robot => self.on_pair(phone, m),
            Topic::Invite { robot, session } if *robot == self.robot => self.on_invite(session, m),
            Topic::SessionRequest { session, command } => self.on_session_request(session, command, m),
            Topic::IsConnected { user } => self.on_presence(user, &m.payload),
            _ => self.drops.drop("unexpected_topic", &m.topic_str),
        }
    }

    fn on_pair(&mut self, phone: &ClientId, m: &Inbound) {
        let f = AuthFields::from_properties(m.props.as_ref());
        let req = PairRequest {
            robot_id: &self.robot,
            phone_id: phone,
            message: props::SignedMessage::new(&m.topic_str, &m.payload, &f),
        };
        let now = now_ms();
        match self.pairing.handle(now, &req) {
            PairOutcome::Paired { phone_id, nickname, key } => {
                let owner = Owner { id: phone_id.clone(), nickname, key, paired_at_ms: now };
                if let Err(e) = self.owners.add(owner) {
                    // Not stored: do not tell the phone it is paired.
                    error!(error = %e, phone = %phone_id, "pairing succeeded but the owner could not be stored");
                    self.finish_pairing();
                    let topic = topics::pair_response(&self.robot, &phone_id);
                    let seq = self.seq();
                    let mut p = props::unsigned(self.robot.as_str(), seq, now_ms());
                    p.correlation_data = f.correlation;
                    let payload = serde_json::to_vec(&json!({"status":"rejected","reason":"internal_error"})).unwrap();
                    self.link.publish(topic, payload, false, Some(p));
                    return;
                }
                info!(phone = %phone_id, "paired a new owner");
                self.finish_pairing();
                let topic = topics::pair_response(&self.robot, &phone_id);
                let payload = pairing::paired_reply(&self.robot, &self.cfg.robot.nickname);
                let seq = self.seq();
                let p = props::signed(&key, &topic, self.robot.as_str(), seq, now_ms(), &payload, f.correlation);
                self.link.publish(topic, payload, false, Some(p));
            }
            PairOutcome::Rejected(reason) => {
                self.drops.drop(reason.as_str(), &m.topic_str);
                if reason != Reject::WindowClosed && !self.pairing.is_open(now) {
                    self.finish_pairing();
                }
                if self.reject_budget.take() {
                    let topic = topics::pair_response(&self.robot, phone);
                    let seq = self.seq();
                    let mut p = props::unsigned(self.robot.as_str(), seq, now_ms());
                    p.correlation_data = f.correlation;
                    self.link.publish(topic, pairing::rejected_reply(reason), false, Some(p));
                }
            }
        }
    }

    /// Authenticate an invite: sender must be an owner, MAC under its key,
    /// fresh `ts`, increasing `seq`. Non-owners are dropped with no answer.
    fn on_invite(&mut self, session: &ClientId, m: &Inbound) {
        let f = AuthFields::from_properties(m.props.as_ref());
        let Some(owner) =
            f.from.as_deref().and_then(|s| s.parse::<ClientId>().ok()).and_then(|id| self.owners.get(&id))
        else {
            return self.drops.drop("not_owner", &m.topic_str);
        };
        // A bad MAC proves nothing about the sender: no answer.
        let Some((_, seq, ts)) = props::verify(&owner.key, &m.topic_str, &m.payload, &f) else {
            return self.drops.drop("bad_mac", &m.topic_str);
        };
        let owner_id = owner.id.clone();
        let key = owner.key;
        let reply = |this: &mut Service, payload: Value| {
            let topic = topics::invite_response(&this.robot, session);
            let payload = serde_json::to_vec(&payload).expect("json");
            let seq = this.seq();
            let p = props::signed(&key, &topic, this.robot.as_str(), seq, now_ms(), &payload, f.correlation.clone());
            this.link.publish(topic, payload, false, Some(p));
        };
        // From here the sender is a known owner: failures get a `rejected`
        // answer (bounded by the same budget as pairing rejections).
        let stale = if !ts_is_fresh(ts, now_ms()) {
            true
        } else {
            match self.invite_seqs.classify_and_record(&owner_id, seq) {
                SeqCheck::New => false,
                // QoS 1 redelivery of an invite already answered.
                SeqCheck::Duplicate => return self.drops.drop("duplicate", &m.topic_str),
                SeqCheck::Old => true,
            }
        };
        if stale {
            self.drops.drop("stale", &m.topic_str);
            if self.reject_budget.take() {
                reply(self, json!({"status":"rejected","reason":"stale"}));
            }
            return;
        }
        if self.call.is_some() {
            info!(session = %session, caller = %owner_id, "busy: already in a call");
            return reply(self, json!({"status":"busy"}));
        }
        let invite = match Invite::parse(&m.payload) {
            Ok(i) => i,
            Err(e) => {
                warn!(session = %session, error = ?e, "invite rejected");
                let mut body = json!({"status":"rejected","reason":e.reason()});
                if let payloads::InviteError::Invalid(detail) = &e {
                    body["detail"] = json!(detail);
                }
                return reply(self, body);
            }
        };
        self.accept_call(session.clone(), owner_id, &key, (invite, ts), reply);
    }

    fn accept_call(
        &mut self,
        session: ClientId,
        caller: ClientId,
        key: &Key32,
        (invite, invite_ts_ms): (Invite, u64),
        reply: impl FnOnce(&mut Service, Value),
    ) {
        let v = &self.cfg.video;
        let video = invite.negotiate(v.preferred);
        let nonce: [u8; 16] = rand::random();
        let video_ssrc = nonzero_ssrc();
        let audio_ssrc = (invite.wants_audio() && self.media.has_audio()).then(nonzero_ssrc);
        let agreed = Negotiated { invite, video, video_ssrc, audio_ssrc };
        let call =
            Call::new(session.clone(), caller.clone(), key, nonce, agreed, Instant::now(), (invite_ts_ms, now_ms()));
        let media = MediaRequest {
            session: session.clone(),
            host: call.invite.media.host,
            video_port: call.invite.media.port,
            video_ssrc,
            video_key: call.srtp_video.clone(),
            video,
            audio: audio_ssrc.map(|s| (call.invite.media.audio_port.expect("wants_audio"), s, call.srtp_audio.clone())),
        };
        self.link.set_session_gate(Some(SessionGate {
            session: session.clone(),
            caller: caller.clone(),
            key: call.session_key,
        }));
        self.link.subscribe(topics::session_request_filter(&session));
        self.link.subscribe(topics::is_connected(&caller));
        self.call = Some(call);
        info!(session = %session, caller = %caller, ?video, "call accepted");
        reply(self, payloads::accepted(&nonce, video_ssrc, video, audio_ssrc));
        self.media.start(media);
    }

    /// A request in the call: sender, MAC under `Ks` and the replay window
    /// first; only then is the payload parsed.
    fn on_session_request(&mut self, session: &ClientId, command: &str, m: &Inbound) {
        let Some(call) = self.call.as_mut().filter(|c| &c.session == session) else {
            return self.drops.drop("no_such_call", &m.topic_str);
        };
        let f = AuthFields::from_properties(m.props.as_ref());
        if f.from.as_deref() != Some(call.caller.as_str()) {
            return self.drops.drop("not_caller", &m.topic_str);
        }
        let Some((_, seq, ts)) = props::verify(&call.session_key, &m.topic_str, &m.payload, &f) else {
            return self.drops.drop("bad_mac", &m.topic_str);
        };
        match call.accept_request(seq, Instant::now()) {
            Ok(()) => {}
            // QoS 1 redelivery: already handled, drop silently.
            Err(crate::wire::freshness::ReplayError::Duplicate) => return,
            Err(crate::wire::freshness::ReplayError::TooOld) => {
                self.drops.drop("stale", &m.topic_str);
                if self.reject_budget.take() {
                    let body = json!({"status":"rejected","reason":"stale"});
                    self.respond(command, body, seq, f.correlation.clone());
                }
                return;
            }
        }
        // A motion request that waited somewhere must not move the robot
        // now (5.5); anything else late is harmless and handled as usual.
        let lateness = call.lateness_ms(ts, now_ms());
        if matches!(command, "drive" | "goto") && lateness > MAX_LATENESS_MS {
            self.drops.drop("late", &m.topic_str);
            let detail = format!(
                "arrived {lateness} ms later than this call's fastest message; motion requests more than {MAX_LATENESS_MS} ms late are refused"
            );
            let mut body = json!({"status":"rejected","reason":"stale","detail":detail});
            // goto statuses lead with their destination (section 8).
            if let Ok(Command::Goto { destination }) = payloads::parse_command(command, &m.payload) {
                body = json!({"destination":destination,"status":"rejected","reason":"stale","detail":body["detail"]});
            }
            return self.respond(command, body, seq, f.correlation.clone());
        }
        let correlation = f.correlation.clone();
        let session = session.clone();
        let answer = match payloads::parse_command(command, &m.payload) {
            Err(e) => e.response(),
            Ok(Command::Hangup) => return self.end_call_answering(EndReason::Hangup, Some((seq, correlation))),
            Ok(Command::Goto { destination }) => return self.start_goto(&destination, seq, correlation),
            Ok(cmd) => match self.run_command(&session, cmd) {
                Some(v) => v,
                None => return,
            },
        };
        self.respond(command, answer, seq, correlation);
    }

    /// Publish a response in the current call, MACed with `Ks`.
    fn respond(&mut self, command: &str, mut payload: Value, re: u64, correlation: Option<Bytes>) {
        let Some(call) = self.call.as_mut() else { return };
        payload["re"] = json!(re);
        let topic = topics::session_response(&call.session, command);
        let bytes = serde_json::to_vec(&payload).expect("json");
        let seq = call.next_seq();
        let p = props::signed(&call.session_key, &topic, self.robot.as_str(), seq, now_ms(), &bytes, correlation);
        self.link.publish(topic, bytes, false, Some(p));
    }

    fn run_command(&mut self, session: &ClientId, cmd: Command) -> Option<Value> {
        Some(match cmd {
            Command::Drive { linear, angular, ms } => {
                // A drive takes the motors over from a goto; any motion loses the place.
                let now = Instant::now();
                let moving = linear != 0.0 || angular != 0.0;
                let statuses = match self.nav.as_mut() {
                    Some(n) if moving => n.manual_drive(now),
                    Some(n) => n.cancel(now, CancelledBy::Drive),
                    None => Vec::new(),
                };
                self.publish_goto(statuses, None);
                match self.motors.drive(DriveCommand { linear, angular, ms }, now) {
                    Ok(()) => json!({"status":"ok"}),
                    Err(crate::motion::MotionError::EstopLatched) => {
                        json!({"status":"rejected","reason":"estop","detail":"the e-stop is latched; release and clear it"})
                    }
                    Err(e) => CommandError::Invalid(e.to_string()).response(),
                }
            }
            Command::Stop => {
                let statuses =
                    self.nav.as_mut().map(|n| n.cancel(Instant::now(), CancelledBy::Stop)).unwrap_or_default();
                self.stop_motors("stop request");
                self.publish_goto(statuses, None);
                json!({"status":"stopped"})
            }
            Command::Ping => json!({"status":"ok","motion":self.motion(),"at":self.at()}),
            Command::Hangup => return None,
            Command::Video(change) => {
                // Never more than the phone said it can receive (its invite's max_*).
                if let Some(offer) = self.call.as_ref().map(|c| &c.invite.video) {
                    let over = match change {
                        VideoChange::Bitrate(k) if k > offer.max_kbps => {
                            Some(format!("kbps {k} is above the invite's max_kbps {}", offer.max_kbps))
                        }
                        VideoChange::Format { width, height, fps }
                            if width > offer.max_width || height > offer.max_height || fps > offer.max_fps =>
                        {
                            Some(format!(
                                "{width}x{height}@{fps} is above the invite's {}x{}@{}",
                                offer.max_width, offer.max_height, offer.max_fps
                            ))
                        }
                        _ => None,
                    };
                    if let Some(detail) = over {
                        return Some(CommandError::Invalid(detail).response());
                    }
                }
                let Some(sender) = self.media.video(session) else {
                    return Some(
                        json!({"status":"rejected","reason":"video_unavailable","detail":"video is not running yet"}),
                    );
                };
                let r = match change {
                    VideoChange::Bitrate(k) => sender.set_bitrate(k),
                    VideoChange::Format { width, height, fps } => sender.set_format(width, height, fps),
                };
                match r {
                    Ok(s) => {
                        let video = s.video;
                        if let Some(c) = self.call.as_mut() {
                            c.video = video;
                        }
                        json!({"status":"ok","video":video})
                    }
                    Err(e) => CommandError::Invalid(e.to_string()).response(),
                }
            }
            Command::Goto { .. } => unreachable!("handled in on_session_request"),
            Command::Destinations => {
                let places = self.nav.as_ref().map(|n| n.destinations().to_vec()).unwrap_or_default();
                json!({"status":"ok","destinations":places,"at":self.at()})
            }
        })
    }

    fn motion(&self) -> &'static str {
        if self.nav.as_ref().is_some_and(Navigator::is_navigating) {
            "navigating"
        } else {
            self.motors.state().as_str()
        }
    }

    /// Where the robot is: a place name, or "unknown" (no map, or lost after
    /// an interrupted move until an admin sets it with `robotd at PLACE`).
    fn at(&self) -> &str {
        self.nav.as_ref().map_or("unknown", Navigator::at_or_unknown)
    }

    /// `goto`: statuses go out on `goto/response` with the request's `re`.
    fn start_goto(&mut self, destination: &str, re: u64, correlation: Option<Bytes>) {
        let Some(nav) = self.nav.as_mut() else {
            let body = json!({"destination":destination,"status":"rejected","reason":"no_map","detail":"no [nav] map is configured on this robot"});
            return self.respond("goto", body, re, correlation);
        };
        let now = Instant::now();
        match nav.goto(destination, now) {
            Ok(statuses) => {
                // A replaced goto's `cancelled` carries its own `re`.
                let old = self.goto_re.take();
                let (old_st, new_st): (Vec<_>, Vec<_>) = statuses.into_iter().partition(|s| s.is_final());
                self.publish_goto(old_st, old);
                self.goto_re = Some((re, correlation));
                self.publish_goto(new_st, None);
                self.next_nav_tick = Some(now);
            }
            Err(rejected) => self.respond("goto", rejected.to_json(), re, correlation),
        }
    }

    /// Publish goto statuses with the `re` of their goto (`re` given, or the
    /// one in progress); a final status ends that goto's stream.
    fn publish_goto(&mut self, statuses: Vec<crate::nav::Status>, re: Option<(u64, Option<Bytes>)>) {
        for st in statuses {
            let target = re.clone().or_else(|| self.goto_re.clone());
            if let Some((seq, corr)) = target {
                self.respond("goto", st.to_json(), seq, corr);
            }
            if st.is_final() && re.is_none() {
                self.goto_re = None;
            }
        }
    }

    /// One navigation step: read sensors, apply the motor command, publish.
    fn nav_tick(&mut self, now: Instant) {
        let Some(nav) = self.nav.as_mut() else { return };
        if !nav.is_navigating() {
            self.next_nav_tick = None;
            return;
        }
        let sensors = Sensors {
            encoders: self.encoders.as_ref().map(|(l, r)| [l.count(), r.count()]),
            obstacle: self.obstacle.as_mut().is_some_and(|o| o.is_active().unwrap_or(true)),
        };
        let tick = nav.tick(now, &sensors);
        let mut statuses = tick.statuses;
        match tick.motor {
            Some(MotorCmd::Drive { linear, angular }) => {
                if let Err(e) = self.motors.drive(DriveCommand { linear, angular, ms: crate::nav::DRIVE_MS }, now) {
                    statuses.extend(nav.fail(now, "estop", &e.to_string()));
                    self.stop_motors("navigation refused by the motors");
                }
            }
            Some(MotorCmd::Stop) => self.stop_motors("navigation"),
            None => {}
        }
        self.publish_goto(statuses, None);
        self.next_nav_tick = self.nav.as_ref().filter(|n| n.is_navigating()).map(|_| now + crate::nav::TICK);
    }

    /// Cancel a goto in progress (call end, link loss, shutdown).
    fn cancel_goto(&mut self, by: CancelledBy) {
        if let Some(nav) = self.nav.as_mut() {
            let statuses = nav.cancel(Instant::now(), by);
            self.stop_motors("goto cancelled");
            self.publish_goto(statuses, None);
        }
        self.next_nav_tick = None;
    }

    /// The caller's presence: `false` ends its call.
    fn on_presence(&mut self, user: &ClientId, payload: &[u8]) {
        if self.call.as_ref().is_some_and(|c| &c.caller == user) && payload == b"false" {
            self.end_call(EndReason::CallerOffline);
        }
    }

    /// End the call: motors, video, subscriptions, then the `ended` response.
    pub fn end_call(&mut self, reason: EndReason) {
        self.end_call_answering(reason, None);
    }

    /// End the call; `answering` is the (seq, correlation) of the `hangup`
    /// request being answered, if the phone asked.
    fn end_call_answering(&mut self, reason: EndReason, answering: Option<(u64, Option<Bytes>)>) {
        if self.call.is_none() {
            return;
        }
        let by = if reason == EndReason::Shutdown { CancelledBy::Shutdown } else { CancelledBy::Hangup };
        self.cancel_goto(by);
        self.stop_motors("call ended");
        self.media.stop();
        let call = self.call.as_ref().expect("checked");
        self.link.set_session_gate(None);
        self.link.unsubscribe(&topics::session_request_filter(&call.session));
        self.link.unsubscribe(&topics::is_connected(&call.caller));
        info!(session = %call.session, reason = reason.as_str(), "call ended");
        let topic = topics::session_response(&call.session, "hangup");
        let mut body = json!({"status":"ended","reason":reason.as_str()});
        let (re, correlation) = answering.map_or((None, None), |(s, c)| (Some(s), c));
        if let Some(re) = re {
            body["re"] = json!(re);
        }
        let payload = serde_json::to_vec(&body).expect("json");
        let call = self.call.as_mut().expect("checked");
        let seq = call.next_seq();
        let p = props::signed(&call.session_key, &topic, self.robot.as_str(), seq, now_ms(), &payload, correlation);
        self.link.publish(topic, payload, false, Some(p));
        self.call = None;
    }

    /// Media reports.
    pub fn on_media(&mut self, ev: MediaEvent) {
        match ev {
            MediaEvent::Started { session, video, audio } => {
                let current = self.call.as_ref().map(|c| c.session.clone());
                self.media.on_started(current.as_ref(), session, video, audio);
            }
            MediaEvent::Failed { session, detail } => {
                if self.call.as_ref().is_some_and(|c| c.session == session) {
                    error!(session = %session, %detail, "video failed");
                    self.end_call(EndReason::VideoFailed);
                }
            }
        }
    }

    fn stop_motors(&mut self, why: &str) {
        if let Err(e) = self.motors.stop() {
            error!(error = %e, why, "cannot stop the motors");
        }
    }

    /// The next instant [`Service::on_timer`] must run: deadman, call idle
    /// timeout, e-stop polling.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let mut t = self.motors.deadline();
        let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        if let Some(c) = &self.call {
            min(c.deadline(Duration::from_secs(self.cfg.call.timeout_s)));
        }
        if self.hw.config().estop.is_some() {
            min(Instant::now() + ESTOP_POLL);
        }
        if self.button.is_some() {
            min(Instant::now() + BUTTON_POLL);
        }
        if let Some(t) = self.next_nav_tick {
            min(t);
        }
        t
    }

    /// Run what is due at `now`.
    pub fn on_timer(&mut self, now: Instant) {
        if self.next_nav_tick.is_some_and(|t| now >= t) {
            self.nav_tick(now);
        }
        match self.motors.poll(now) {
            Ok(Some(StopReason::Deadman)) => info!("deadman: drive expired, motors stopped"),
            Ok(Some(StopReason::Estop)) => warn!("e-stop pressed: motors stopped and latched"),
            Ok(None) => {}
            Err(e) => error!(error = %e, "motor poll failed"),
        }
        let timeout = Duration::from_secs(self.cfg.call.timeout_s);
        if self.call.as_ref().is_some_and(|c| c.timed_out(now, timeout)) {
            self.end_call(EndReason::Timeout);
        }
        let pressed = match self.button.as_mut() {
            Some((sensor, debounce)) => match sensor.is_active() {
                Ok(active) => debounce.update(active, now),
                Err(e) => {
                    warn!(error = ?e, "cannot read the pairing button");
                    false
                }
            },
            None => false,
        };
        if pressed {
            info!("pairing button pressed");
            if let Err(e) = self.open_pairing() {
                error!(error = %e, "cannot open the pairing window");
            }
        }
    }

    /// Open a new pairing window: fresh secret, URI and QR (logged, and
    /// written as a PNG in the state directory).
    pub fn open_pairing(&mut self) -> anyhow::Result<&PairingUri> {
        let secret: [u8; 16] = rand::random();
        let expires_at_ms = self.pairing.open(now_ms(), secret);
        let uri = PairingUri { robot: self.robot.clone(), secret, broker: self.cfg.mqtt.url.clone() };
        let text = uri.to_string();
        let png = self.cfg.robot.state_dir.join(PAIRING_PNG);
        if let Err(e) = pairing::write_png(&text, &png) {
            warn!(error = %e, "cannot write the pairing QR PNG");
        }
        let qr = pairing::render_plain(&text).unwrap_or_default();
        info!(uri = %text, png = %png.display(), window_s = self.cfg.pairing.window_s, "pairing window open; scan the QR code or enter the URI in the app\n{qr}");
        self.open_pairing = Some(OpenPairing { uri, expires_at_ms });
        Ok(&self.open_pairing.as_ref().expect("just set").uri)
    }

    /// Forget the shown secret and remove the QR file once a window is over.
    fn finish_pairing(&mut self) {
        if self.open_pairing.take().is_some() {
            let _ = std::fs::remove_file(self.cfg.robot.state_dir.join(PAIRING_PNG));
            info!(status = %self.pairing.status(now_ms()), "pairing window closed");
        }
    }

    /// Once a second: expire what has expired.
    pub fn tick(&mut self) {
        if self.open_pairing.is_some() && !self.pairing.is_open(now_ms()) {
            self.finish_pairing();
        }
    }

    /// Answer an admin request.
    pub fn on_admin(&mut self, req: Request) -> Response {
        match req {
            Request::Pair => match self.open_pairing() {
                Ok(uri) => {
                    let text = uri.to_string();
                    Response::ok(json!({
                        "uri": text,
                        "qr": pairing::render_terminal(&text).unwrap_or_default(),
                        "png": self.cfg.robot.state_dir.join(PAIRING_PNG),
                        "expires_at_ms": self.open_pairing.as_ref().map(|p| p.expires_at_ms),
                    }))
                }
                Err(e) => Response::err(e.to_string()),
            },
            Request::PairClose => {
                self.pairing.close();
                self.finish_pairing();
                Response::ok(json!({}))
            }
            Request::Owners => Response::ok(json!({ "owners": self.owners_json() })),
            Request::SetAt { place } => match self.nav.as_mut() {
                None => Response::err("no [nav] map is configured"),
                Some(n) => match n.set_at(&place) {
                    Ok(()) => {
                        info!(%place, "position set by admin");
                        Response::ok(json!({ "at": place }))
                    }
                    Err(e) => Response::err(e.to_string()),
                },
            },
            Request::OwnersRemove { id } => {
                let Ok(id) = id.parse::<ClientId>() else {
                    return Response::err(format!("{id:?} is not a client ID (32 lowercase hex characters)"));
                };
                match self.owners.remove(&id) {
                    Ok(true) => {
                        info!(owner = %id, "owner removed");
                        if self.call.as_ref().is_some_and(|c| c.caller == id) {
                            self.end_call(EndReason::Revoked);
                        }
                        Response::ok(json!({ "removed": id }))
                    }
                    Ok(false) => Response::err(format!("{id} is not an owner")),
                    Err(e) => Response::err(e.to_string()),
                }
            }
            Request::Status => {
                let st = self.link.stats();
                use std::sync::atomic::Ordering::Relaxed;
                Response::ok(json!({
                    "robot": self.robot,
                    "nickname": self.cfg.robot.nickname,
                    "software": crate::wire::SOFTWARE,
                    "uptime_s": self.started.elapsed().as_secs(),
                    "broker": { "url": self.cfg.mqtt.url, "connected": self.link.is_connected(),
                                "connects": st.connects.load(Relaxed) },
                    "pairing": self.pairing.status(now_ms()).to_string(),
                    "owners": self.owners.list().len(),
                    "call": self.call.as_ref().map(|c| json!({"session": c.session, "caller": c.caller, "video": c.video})),
                    "motion": self.motion(),
                    "at": self.at(),
                    "ultrasonic": self.obstacle.as_ref().and_then(ObstacleSensor::distance_m).map(|r| match r {
                        Ok(d) => json!({"distance_m": d}),
                        Err(e) => json!({"error": e.to_string()}),
                    }),
                    "sim": self.hw.sim().map(|s| {
                        let snap = s.snapshot();
                        json!({"x": snap.pose.x, "y": snap.pose.y, "heading": snap.pose.heading,
                               "wheel_speed_mps": snap.wheel_speed_mps, "obstacle": snap.obstacle_detected,
                               "ultrasonic_m": snap.ultrasonic_m})
                    }),
                    "dropped": {
                        "topic": st.dropped_topic.load(Relaxed),
                        "size": st.dropped_size.load(Relaxed),
                        "backlog": st.dropped_backlog.load(Relaxed),
                        "auth": self.drops.counts(),
                    },
                }))
            }
        }
    }

    fn owners_json(&self) -> serde_json::Value {
        self.owners
            .list()
            .iter()
            .map(|o| json!({ "id": o.id, "nickname": o.nickname, "paired_at_ms": o.paired_at_ms }))
            .collect()
    }

    /// Ordered shutdown, first part: motors, then the call (whose `ended`
    /// goes out while the link is still up), then video.
    pub async fn shutdown(&mut self) {
        self.cancel_goto(CancelledBy::Shutdown);
        self.stop_motors("shutdown");
        self.end_call(EndReason::Shutdown);
        self.media.stop_and_wait().await;
        self.finish_pairing();
    }
}

/// A random SSRC; 0 is avoided because some receivers treat it as unset.
fn nonzero_ssrc() -> u32 {
    loop {
        let s: u32 = rand::random();
        if s != 0 {
            return s;
        }
    }
}
