//! The robot's brain: all protocol state, driven by link events, admin
//! requests and a housekeeping tick. No task lives here; [`crate::app`]
//! feeds events in and this module answers through the link handle.
//!
//! Every inbound message passes the same gate before a handler sees it:
//! topic grammar and size (in the link), then sender, MAC and freshness here.
//! Anything that fails is counted and logged at a rate-limited warning level
//! and never reaches the motors or the camera.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{error, info, warn};

use crate::auth::freshness::{SeqTracker, ts_is_fresh};
use crate::auth::owners::{Owner, OwnerStore};
use crate::config::Config;
use crate::control::{Request, Response};
use crate::identity::ClientId;
use crate::link::{Inbound, LinkEvent, LinkHandle};
use crate::pairing::{self, PairOutcome, PairRequest, PairingUri, PairingWindows, Reject};
use crate::protocol::props::{self, AuthFields, now_ms};
use crate::protocol::topics::{self, Topic};

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
}

impl Service {
    /// Load the owners and set up; opens a pairing window when the robot has
    /// no owner and the config allows it.
    pub fn new(cfg: Config, robot: ClientId, link: LinkHandle) -> anyhow::Result<Service> {
        let owners = OwnerStore::load(&cfg.robot.state_dir)?;
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
            LinkEvent::Disconnected => warn!("offline; reconnecting"),
            LinkEvent::Message(m) => self.on_message(&m),
        }
    }

    fn on_message(&mut self, m: &Inbound) {
        match &m.topic {
            Topic::PairRequest { robot, phone } if *robot == self.robot => self.on_pair(phone, m),
            Topic::Invite { robot, session } if *robot == self.robot => self.on_invite(session, m),
            _ => self.drops.drop("unexpected_topic", &m.topic_str),
        }
    }

    fn on_pair(&mut self, phone: &ClientId, m: &Inbound) {
        let f = AuthFields::from_properties(m.props.as_ref());
        let req = PairRequest {
            robot_id: &self.robot,
            topic: &m.topic_str,
            phone_id: phone,
            from: f.from.as_deref(),
            seq: f.seq,
            ts_ms: f.ts_ms,
            mac: f.mac.as_deref(),
            payload: &m.payload,
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
        let Some((_, seq, ts)) = props::verify(&owner.key, &m.topic_str, &m.payload, &f) else {
            return self.drops.drop("bad_mac", &m.topic_str);
        };
        if !ts_is_fresh(ts, now_ms()) {
            return self.drops.drop("stale", &m.topic_str);
        }
        let owner_id = owner.id.clone();
        if !self.invite_seqs.check_and_record(&owner_id, seq) {
            return self.drops.drop("replayed", &m.topic_str);
        }
        let key = owner.key;
        // Calls are not implemented yet: answer honestly so the phone does not wait.
        let topic = topics::invite_response(&self.robot, session);
        let payload = serde_json::to_vec(&json!({"status":"rejected","reason":"calls_unavailable"})).unwrap();
        let seq = self.seq();
        let p = props::signed(&key, &topic, self.robot.as_str(), seq, now_ms(), &payload, f.correlation);
        self.link.publish(topic, payload, false, Some(p));
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
            Request::OwnersRemove { id } => {
                let Ok(id) = id.parse::<ClientId>() else {
                    return Response::err(format!("{id:?} is not a client ID (32 lowercase hex characters)"));
                };
                match self.owners.remove(&id) {
                    Ok(true) => {
                        info!(owner = %id, "owner removed");
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
                    "software": crate::protocol::SOFTWARE,
                    "uptime_s": self.started.elapsed().as_secs(),
                    "broker": { "url": self.cfg.mqtt.url, "connected": self.link.is_connected(),
                                "connects": st.connects.load(Relaxed) },
                    "pairing": self.pairing.status(now_ms()).to_string(),
                    "owners": self.owners.list().len(),
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

    /// Shutdown: nothing to persist yet beyond what is written eagerly.
    pub fn shutdown(&mut self) {
        self.finish_pairing();
    }
}
