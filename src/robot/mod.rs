//! The robot's brain as a pure core: everything the robot decides, and no I/O.
//!
//! Inputs are link events ([`LinkEvent`]: messages, connection changes),
//! admin requests ([`admin::Request`]), media reports ([`MediaReport`]) and
//! timer ticks, each with the time ([`Now`]: monotonic and wall clock) passed
//! in; randomness comes from the RNG given to [`Core::new`]. Outputs are
//! [`Effect`]s (publish an already signed message, subscribe, unsubscribe,
//! start, stop or adjust the media) that the shell ([`crate::daemon`])
//! carries out in order. Motors and sensors stay behind the hardware traits
//! ([`Body`]) and state files behind [`StateStore`], both called directly:
//! the robot must know that a motor stopped, or that a new owner is on disk,
//! before it says so.
//!
//! Nothing here starts a task, opens a socket or file, or reads a clock; a
//! test (`core_has_no_io`) scans this folder's source to keep it so.
//!
//! One file per flow: [`pairing`](self) (pairing windows and requests),
//! `invite` (invites, accepting and ending calls), `session` (commands in a
//! call), `goto` (navigation), `admin` (admin requests and status), `timers`
//! (wake-ups: deadman, call timeout, buttons, nav ticks) and `drops` (drop
//! accounting and the answer budget). [`call`] is the call's own state.
//!
//! Every inbound message passes the same gate before a handler sees it:
//! topic grammar and size (in the link), then sender, MAC and freshness here.
//! Anything that fails is counted and logged at a rate-limited warning level
//! and never reaches the motors or the camera.

pub mod admin;
pub mod call;
mod drops;
mod effects;
mod goto;
mod invite;
mod pairing;
mod session;
mod timers;
mod webrtc;

#[cfg(test)]
mod tests;

use std::time::Instant;

use bytes::Bytes;
use rand::RngCore;
use tracing::{error, info, warn};

pub use drops::{DropLog, DropReason};
pub use effects::{
    Answer, Effect, Inbound, LinkEvent, MediaReport, MediaRequest, Now, SessionGate, VideoAdjustError, WebRtcRequest,
};
pub use webrtc::{ANSWER_TIMEOUT, CONNECT_TIMEOUT};

use crate::config::Config;
use crate::hal::{Debounced, EncoderCounter, Hardware, Input, ObstacleSensor, Sensor};
use crate::motion::MotorController;
use crate::nav::{NavError, Navigator};
use crate::state::owners::OwnerStore;
use crate::state::{StateFileError, StateStore};
use crate::wire::freshness::SeqTracker;
use crate::wire::identity::ClientId;
use crate::wire::keys::Key32;
use crate::wire::pairing::{self as wire_pairing, PairingWindows};
use crate::wire::props;
use crate::wire::replies::{Body as ReplyBody, Response};
use crate::wire::topics::{self, Topic};

use call::Call;
use drops::Budget;
use pairing::OpenPairing;

/// The robot's body as the core sees it: motors, sensors, the map, and the
/// hardware they came from (the simulator's pose for `status`).
pub struct Body {
    pub hw: Hardware,
    pub motors: MotorController,
    /// The optional pairing button and its debouncer.
    pub button: Option<(Sensor<Input>, Debounced)>,
    pub encoders: Option<(EncoderCounter, EncoderCounter)>,
    pub obstacle: Option<ObstacleSensor>,
    /// Navigation, when `[nav]` configures a map.
    pub nav: Option<Navigator>,
}

/// Why the core cannot start.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A pin, sensor or the simulator could not be opened.
    #[error(transparent)]
    Hal(#[from] crate::hal::HalError),
    /// A state file (owners) cannot be read.
    #[error(transparent)]
    State(#[from] StateFileError),
    /// The navigation map or place file is wrong.
    #[error(transparent)]
    Nav(#[from] NavError),
}

impl Body {
    /// Open the inputs the configuration names and the map, on hardware
    /// whose motors are already stopped.
    pub fn open(
        cfg: &Config,
        mut hw: Hardware,
        motors: MotorController,
        store: Box<dyn StateStore>,
    ) -> Result<Body, CoreError> {
        let button = match &cfg.pairing.button {
            Some(b) => Some((hw.input(b)?, Debounced::default())),
            None => None,
        };
        let nav = match &cfg.nav {
            Some(n) => Some(Navigator::with_store(n, &cfg.hardware, store)?),
            None => None,
        };
        let encoders = hw.encoders()?;
        let obstacle = hw.obstacle_sensor()?;
        Ok(Body { hw, motors, button, encoders, obstacle, nav })
    }
}

/// All protocol state of the robot.
pub struct Core {
    cfg: Config,
    robot: ClientId,
    rng: Box<dyn RngCore + Send>,
    /// The time of the input being handled.
    now: Now,
    started: Instant,
    owners: OwnerStore,
    /// Where the pairing QR PNG goes.
    store: Box<dyn StateStore>,
    pairing: PairingWindows,
    open_pairing: Option<OpenPairing>,
    invite_seqs: SeqTracker,
    /// The robot's own `seq` outside calls: starts at the start time in ms.
    next_seq: u64,
    drops: DropLog,
    reject_budget: Budget,
    /// Accepted calls (`call.max_setups_per_10s`).
    call_setups: Budget,
    body: Body,
    call: Option<Call>,
    /// Whether the current call's senders run (a `video` change needs them).
    media_running: bool,
    /// `re` and correlation data of the goto in progress (its statuses carry them).
    goto_re: Option<(u64, Option<Bytes>)>,
    next_nav_tick: Option<Instant>,
    /// When [`Core::on_timer`] last read the e-stop and the pairing button:
    /// their polls are due from here, not from the latest input, so a stream
    /// of messages cannot push them back for ever.
    polled_at: Instant,
    out: Vec<Effect>,
}

impl Core {
    /// Set up with the owners in `store`; opens a pairing window when the
    /// robot has no owner and the config allows it (its effects are the
    /// first ones [`Core::take_effects`] returns).
    pub fn new(
        cfg: Config,
        robot: ClientId,
        body: Body,
        store: Box<dyn StateStore>,
        rng: Box<dyn RngCore + Send>,
        now: Now,
    ) -> Result<Core, CoreError> {
        let owners = OwnerStore::open(store.boxed_clone())?;
        let invite_seqs = crate::state::replay::load(&*store)?;
        if let Some(n) = &body.nav {
            info!(places = n.destinations().len(), at = n.at_or_unknown(), "map loaded");
        }
        let pairing = PairingWindows::new(
            std::time::Duration::from_secs(cfg.pairing.window_s),
            wire_pairing::DEFAULT_MAX_FAILURES,
        );
        let setups = f64::from(cfg.call.max_setups_per_10s);
        let mut core = Core {
            cfg,
            robot,
            rng,
            now,
            started: now.mono,
            owners,
            store,
            pairing,
            open_pairing: None,
            invite_seqs,
            next_seq: now.wall_ms,
            drops: DropLog::default(),
            reject_budget: Budget::new(10.0, 20.0, now.mono),
            call_setups: Budget::new(setups / 10.0, setups, now.mono),
            body,
            call: None,
            media_running: false,
            goto_re: None,
            next_nav_tick: None,
            polled_at: now.mono,
            out: Vec::new(),
        };
        info!(owners = core.owners.list().len(), "owners loaded");
        if core.owners.is_empty() && core.cfg.pairing.open_when_unowned {
            info!("no owner yet: opening a pairing window");
            core.open_pairing(None);
        }
        Ok(core)
    }

    /// The effects produced so far, in order; the shell carries them out.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// React to the link.
    pub fn on_link(&mut self, ev: LinkEvent, now: Now) -> Vec<Effect> {
        self.now = now;
        match ev {
            LinkEvent::Connected => info!("online"),
            LinkEvent::Disconnected => {
                // Nobody can renew or stop a drive, or watch a goto, while we are offline.
                self.fail_goto("link_lost", "the robot lost its broker connection");
                self.stop_motors("broker connection lost");
                warn!("offline; reconnecting");
            }
            LinkEvent::Message(m) => self.on_message(&m),
        }
        self.take_effects()
    }

    fn on_message(&mut self, m: &Inbound) {
        match &m.topic {
            Topic::PairRequest { robot, phone } if *robot == self.robot => self.on_pair(phone, m),
            Topic::Invite { robot, session } if *robot == self.robot => self.on_invite(session, m),
            Topic::SessionRequest { session, command } => self.on_session_request(session, command, m),
            Topic::IsConnected { user } => self.on_presence(user, &m.payload),
            _ => self.drop_msg(DropReason::UnexpectedTopic, &m.topic_str),
        }
    }

    /// Count and maybe log a dropped message.
    fn drop_msg(&mut self, reason: DropReason, topic: &str) {
        self.drops.drop(reason, topic, self.now.mono);
    }

    /// The robot's next `seq` outside calls.
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// The one signer of the robot: MAC `body` under `key` as a message
    /// from the robot with `seq`, and queue it for publishing.
    fn publish_signed(&mut self, key: &Key32, topic: String, payload: Vec<u8>, seq: u64, correlation: Option<Bytes>) {
        let props =
            props::Signer::new(key, self.robot.as_str()).sign(&topic, seq, self.now.wall_ms, &payload, correlation);
        self.out.push(Effect::Publish { topic, payload, props });
    }

    /// Queue an unauthenticated message (pairing rejections: no key is shared yet).
    fn publish_unsigned(&mut self, topic: String, payload: Vec<u8>, correlation: Option<Bytes>) {
        let seq = self.seq();
        let mut props = props::unsigned(self.robot.as_str(), seq, self.now.wall_ms);
        props.correlation_data = correlation;
        self.out.push(Effect::Publish { topic, payload, props });
    }

    /// Publish a response in the current call, MACed with `Ks`.
    fn respond(&mut self, command: &str, body: impl Into<ReplyBody>, re: Option<u64>, correlation: Option<Bytes>) {
        let Some(call) = self.call.as_mut() else { return };
        let topic = topics::session_response(&call.session, command);
        let body = body.into();
        // Every answer in a call carries a fresh token, but `ended`: the call is over.
        let ended = matches!(body, ReplyBody::Reply(crate::wire::replies::Reply::Ended { .. }));
        let token = (!ended).then(|| call.token(self.now.mono));
        let payload = Response { body, token, re }.to_bytes();
        let (key, seq) = (call.session_key, call.next_seq());
        self.publish_signed(&key, topic, payload, seq, correlation);
    }

    fn stop_motors(&mut self, why: &str) {
        if let Err(e) = self.body.motors.stop() {
            error!(error = %e, why, "cannot stop the motors");
        }
    }

    /// Ordered shutdown, first part: motors, then the call (whose `ended`
    /// goes out while the link is still up), then media and the pairing QR.
    pub fn shutdown(&mut self, now: Now) -> Vec<Effect> {
        self.now = now;
        self.cancel_goto(crate::nav::CancelledBy::Shutdown);
        self.stop_motors("shutdown");
        self.end_call(crate::wire::replies::EndReason::Shutdown);
        self.finish_pairing();
        self.take_effects()
    }

    /// The body (motors, sensors, simulator), for the shell and tests.
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// Drop counters by reason.
    pub fn drops(&self) -> &DropLog {
        &self.drops
    }
}
