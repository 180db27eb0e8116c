//! Unit tests of the core: a simulated robot (the GPIO layer is the only
//! mock), owners in memory, a made-up clock and a seeded RNG. No broker, no
//! threads, no sleeping: each test runs in milliseconds.

mod calls;
mod estop;
mod io_scan;
mod pairings;
mod webrtc;

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use serde_json::Value;

use super::admin::{AdminReply, LinkInfo, PairShown, Request};
use super::{Body, Core, Effect, Inbound, LinkEvent, MediaReport, Now};
use crate::config::Config;
use crate::hal::Hardware;
use crate::motion::{MotionState, MotorController};
use crate::state::MemStore;
use crate::wire::identity::ClientId;
use crate::wire::keys::{self, Key32};
use crate::wire::pairing::{self, PairingUri};
use crate::wire::props;
use crate::wire::replies::EndReason;
use crate::wire::topics;

/// The demo flat's configuration, with the state in memory.
fn flat() -> Config {
    Config::from_toml(include_str!("../../../config/flat.toml"), std::path::Path::new("flat.toml")).unwrap()
}

/// A robot on a made-up clock.
pub(super) struct Rig {
    pub core: Core,
    pub store: MemStore,
    pub robot: ClientId,
    t0: Instant,
    wall0: u64,
    elapsed: Duration,
    /// Every effect so far, in order.
    pub effects: Vec<Effect>,
}

/// A paired phone.
pub(super) struct PhoneKey {
    pub id: ClientId,
    pub key: Key32,
    pub seq: u64,
}

/// A call in progress, from the phone's side.
pub(super) struct PhoneCall {
    pub session: ClientId,
    pub ks: Key32,
    pub seq: u64,
    /// The robot's latest freshness token; `drive` and `goto` echo it.
    pub token: Option<String>,
}

impl Rig {
    pub fn new() -> Rig {
        Rig::with(flat())
    }

    pub fn with(cfg: Config) -> Rig {
        let mut hw = Hardware::open(&cfg.hardware).unwrap();
        let motors = MotorController::from_config(&mut hw).unwrap();
        let store = MemStore::default();
        let body = Body::open(&cfg, hw, motors, Box::new(store.clone())).unwrap();
        let robot: ClientId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let t0 = Instant::now();
        let wall0 = 1_764_072_000_000;
        let rng = Box::new(rand::rngs::StdRng::seed_from_u64(7));
        let now = Now { mono: t0, wall_ms: wall0 };
        let mut core = Core::new(cfg, robot.clone(), body, Box::new(store.clone()), rng, now).unwrap();
        let effects = core.take_effects();
        Rig { core, store, robot, t0, wall0, elapsed: Duration::ZERO, effects }
    }

    /// Stop and start the robot on the same state (its clocks go on).
    pub fn restart(&mut self) {
        let cfg = flat();
        let mut hw = Hardware::open(&cfg.hardware).unwrap();
        let motors = MotorController::from_config(&mut hw).unwrap();
        let body = Body::open(&cfg, hw, motors, Box::new(self.store.clone())).unwrap();
        let rng = Box::new(rand::rngs::StdRng::seed_from_u64(8));
        self.core = Core::new(cfg, self.robot.clone(), body, Box::new(self.store.clone()), rng, self.now()).unwrap();
        self.effects.extend(self.core.take_effects());
    }

    pub fn now(&self) -> Now {
        Now { mono: self.t0 + self.elapsed, wall_ms: self.wall0 + self.elapsed.as_millis() as u64 }
    }

    /// Let time pass (both clocks) and run what became due.
    pub fn advance(&mut self, ms: u64) {
        self.elapsed += Duration::from_millis(ms);
        let fx = self.core.on_timer(self.now());
        self.effects.extend(fx);
    }

    /// Deliver a message; returns the effects it caused.
    pub fn deliver(
        &mut self,
        topic: &str,
        payload: &[u8],
        p: Option<rumqttc::v5::mqttbytes::v5::PublishProperties>,
    ) -> Vec<Effect> {
        let m = Inbound {
            topic: topics::parse(topic).expect("a protocol topic"),
            topic_str: topic.to_owned(),
            payload: Bytes::copy_from_slice(payload),
            props: p,
        };
        let fx = self.core.on_link(LinkEvent::Message(Box::new(m)), self.now());
        self.effects.extend(fx.clone());
        fx
    }

    pub fn link(&mut self, ev: LinkEvent) -> Vec<Effect> {
        let fx = self.core.on_link(ev, self.now());
        self.effects.extend(fx.clone());
        fx
    }

    pub fn admin(&mut self, req: Request) -> Result<AdminReply, String> {
        let (r, fx) = self.core.on_admin(req, &LinkInfo::default(), self.now());
        self.effects.extend(fx);
        r
    }

    pub fn media(&mut self, report: MediaReport) -> Vec<Effect> {
        let fx = self.core.on_media(report, self.now());
        self.effects.extend(fx.clone());
        fx
    }

    /// Open a window and pair a phone through it.
    pub fn pair(&mut self, number: &str) -> PhoneKey {
        let AdminReply::Pair(PairShown { uri, .. }) = self.admin(Request::Pair { replace: None }).unwrap() else {
            panic!("pair")
        };
        let uri = PairingUri::parse(&uri).unwrap();
        let id = crate::wire::identity::human_id(number);
        let nonce = [0xa5; 16];
        let ts = self.now().wall_ms;
        let signed = pairing::build_pair_request(&uri, &id, "Alice", nonce, ts, ts).unwrap();
        let fx = self.deliver(&signed.topic, &signed.payload, Some(signed.props));
        let paired = json_of(&fx, &topics::pair_response(&self.robot, &id)).expect("an answer");
        assert_eq!(paired["status"], "paired", "{paired}");
        PhoneKey { key: pairing::derive_owner_key(&uri, &id, &nonce), id, seq: ts }
    }

    /// Invite from `phone`; returns the answer.
    pub fn invite(&mut self, phone: &mut PhoneKey, session: &str, ts_ms: u64) -> Value {
        let topic = topics::invite(&self.robot, &session.parse().unwrap());
        let payload = br#"{"media":{"host":"127.0.0.1","port":5004},"video":{"codecs":["H264"],"max_width":1280,"max_height":720,"max_fps":30,"max_kbps":2500}}"#;
        phone.seq += 1;
        let p = props::signed(&phone.key, &topic, phone.id.as_str(), phone.seq, ts_ms, payload, None);
        let fx = self.deliver(&topic, payload, Some(p));
        json_of(&fx, &format!("{topic}/response")).unwrap_or(Value::Null)
    }

    /// Pair and call; the media is reported running.
    pub fn call(&mut self) -> (PhoneKey, PhoneCall) {
        let mut phone = self.pair("+48555555555");
        let session = "00112233445566778899aabbccddeeff";
        let answer = self.invite(&mut phone, session, self.now().wall_ms);
        assert_eq!(answer["status"], "accepted", "{answer}");
        let nonce: [u8; 16] = hex::decode(answer["nonce"].as_str().unwrap()).unwrap().try_into().unwrap();
        let sid: ClientId = session.parse().unwrap();
        let ks = keys::session_key(&phone.key, &sid.to_bytes(), &nonce);
        self.media(MediaReport::Started { session: sid.clone() });
        let token = answer["token"].as_str().map(str::to_owned);
        assert!(token.is_some(), "the accept carries the first token: {answer}");
        (phone, PhoneCall { session: sid, ks, seq: 0, token })
    }

    /// A request in the call with `ts` = `ts_ms`; returns its response(s).
    pub fn request_at(
        &mut self,
        c: &mut PhoneCall,
        phone: &PhoneKey,
        command: &str,
        payload: &str,
        ts_ms: u64,
    ) -> Vec<Value> {
        c.seq += 1;
        let seq = c.seq;
        self.request_seq(c, phone, command, payload, seq, ts_ms)
    }

    pub fn request(&mut self, c: &mut PhoneCall, phone: &PhoneKey, command: &str, payload: &str) -> Vec<Value> {
        let ts = self.now().wall_ms;
        self.request_at(c, phone, command, payload, ts)
    }

    /// A request with this `seq`; a `drive` or `goto` echoes the latest token
    /// unless its payload names one. Tokens in the answers are kept.
    pub fn request_seq(
        &mut self,
        c: &mut PhoneCall,
        phone: &PhoneKey,
        command: &str,
        payload: &str,
        seq: u64,
        ts_ms: u64,
    ) -> Vec<Value> {
        let mut body: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        if let (true, Some(obj), Some(t)) = (matches!(command, "drive" | "goto"), body.as_object_mut(), &c.token) {
            obj.entry("token").or_insert_with(|| t.clone().into());
        }
        let payload = if body.is_object() { body.to_string() } else { payload.to_owned() };
        let topic = topics::session_request(&c.session, command);
        let p = props::signed(&c.ks, &topic, phone.id.as_str(), seq, ts_ms, payload.as_bytes(), None);
        let fx = self.deliver(&topic, payload.as_bytes(), Some(p));
        let prefix = format!("session/{}/", c.session);
        for e in &fx {
            if let Effect::Publish { topic, payload, .. } = e {
                let v: Value = serde_json::from_slice(payload).unwrap();
                if let (true, Some(t)) = (topic.starts_with(&prefix), v["token"].as_str()) {
                    c.token = Some(t.to_owned());
                }
            }
        }
        jsons_of(&fx, &topics::session_response(&c.session, command))
    }

    /// Step the wall clock (as NTP or a person would); the monotonic one goes on.
    pub fn step_wall(&mut self, ms: i64) {
        self.wall0 = self.wall0.saturating_add_signed(ms);
    }

    pub fn motion(&self) -> MotionState {
        self.core.body().motors.state()
    }

    /// The simulator's motor commands (after `invert`): zero when stopped.
    pub fn motor_command(&self) -> [f64; 2] {
        let sim = self.core.body().hw.sim().unwrap();
        // The simulator reads the pins when it steps.
        sim.step(Duration::from_millis(1));
        sim.snapshot().motor_command
    }

    /// Every `ended` the robot published for this call.
    pub fn ended(&self, c: &PhoneCall) -> Vec<Value> {
        jsons_of(&self.effects, &topics::session_response(&c.session, "hangup"))
    }
}

/// The JSON bodies published on `topic`, in order.
pub(super) fn jsons_of(fx: &[Effect], topic: &str) -> Vec<Value> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Publish { topic: t, payload, .. } if t == topic => Some(serde_json::from_slice(payload).unwrap()),
            _ => None,
        })
        .collect()
}

/// The last JSON body published on `topic`.
pub(super) fn json_of(fx: &[Effect], topic: &str) -> Option<Value> {
    jsons_of(fx, topic).pop()
}

/// Every publish in `fx`.
pub(super) fn publishes(fx: &[Effect]) -> usize {
    fx.iter().filter(|e| matches!(e, Effect::Publish { .. })).count()
}
