//! The phone side of the protocol: what `robotctl` (and the tests) use to
//! pair with a robot, call it and drive it, exactly as a phone app would.
//!
//! Keys live in a small JSON file (mode 0600, written durably), by default
//! `$XDG_CONFIG_HOME/robotctl/keys.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::broker::{BrokerAuth, BrokerAuthError, SettingNames};
use crate::config::parse_broker_url;
use crate::state::{self, StateFileError};
use crate::wire::identity::{ClientId, MqttClientId};
use crate::wire::keys::Key32;
use crate::wire::pairing::{self, PairResponse, PairingUri};
use crate::wire::props::{self, AuthFields, SignedMessage, Signer, now_ms};
use crate::wire::topics;

/// Errors of the phone side, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum PhoneError {
    /// The broker URL cannot be used.
    #[error("broker {url}: {detail}")]
    Broker { url: String, detail: String },
    /// A TLS or credential setting cannot be used (the message names it).
    #[error(transparent)]
    Auth(#[from] BrokerAuthError),
    /// The broker did not accept the connection in time.
    #[error("cannot connect to the broker at {url}: {detail}; is it running and reachable?")]
    Connect { url: String, detail: String },
    /// No answer in time.
    #[error(
        "no answer from robot {robot} within {secs} s; is it online (robotd status) and is the pairing window open?"
    )]
    Timeout { robot: String, secs: u64 },
    /// The robot refused.
    #[error("robot refused: {0}")]
    Rejected(String),
    /// No verified answer came in time, only an unauthenticated `rejected`:
    /// the robot sends those (it shares no key with the phone yet), but so
    /// can anyone on the broker, so it did not end the wait.
    #[error(
        "no verified answer from robot {robot} within {secs} s; the only answer was an unauthenticated \
         `rejected` ({reason}): a wrong or old pairing code, a closed window or too many attempts, or someone \
         else on the broker; open a new window (robotd pair) and try again"
    )]
    RejectedUnverified { robot: String, secs: u64, reason: String },
    /// An answer failed its checks.
    #[error(transparent)]
    Pairing(#[from] pairing::PairingError),
    /// The keys file.
    #[error(transparent)]
    State(#[from] StateFileError),
    /// No stored key for that robot.
    #[error("no key for robot {0}; pair first with `robotctl pair 'robotd://pair?...' --phone +...`")]
    NotPaired(String),
}

/// A robot this phone has paired with.
#[derive(Clone, Serialize, Deserialize)]
pub struct PairedRobot {
    pub robot: ClientId,
    pub nickname: String,
    pub broker: String,
    #[serde(with = "crate::wire::keys::hex_key")]
    pub key: Key32,
}

impl std::fmt::Debug for PairedRobot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairedRobot").field("robot", &self.robot).field("nickname", &self.nickname).finish()
    }
}

/// The phone's keys file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keys {
    /// The phone's own ID (md5 of its E.164 number).
    pub phone: Option<ClientId>,
    /// The phone's private MQTT client identifier (protocol 2.1, version
    /// 1.1): random, never the public phone ID, so that nobody who knows the
    /// phone ID can make the broker drop the phone. A keys file from before
    /// it existed gets a fresh one when loaded, kept at the next save.
    #[serde(default = "MqttClientId::random")]
    pub mqtt_client_id: MqttClientId,
    pub robots: Vec<PairedRobot>,
}

impl Default for Keys {
    fn default() -> Self {
        Keys { phone: None, mqtt_client_id: MqttClientId::random(), robots: Vec::new() }
    }
}

impl Keys {
    /// Default location: `$XDG_CONFIG_HOME/robotctl/keys.json` or `~/.config/robotctl/keys.json`.
    pub fn default_path() -> PathBuf {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("robotctl").join("keys.json")
    }

    /// Load (missing file = empty); a corrupt file is an error naming it.
    pub fn load(path: &Path) -> Result<Keys, StateFileError> {
        match state::read_optional(path)? {
            None => Ok(Keys::default()),
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| StateFileError::Corrupt { path: path.to_path_buf(), detail: e.to_string() }),
        }
    }

    /// Save durably with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), StateFileError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|cause| StateFileError::Write { path: path.to_path_buf(), cause })?;
        }
        let text = serde_json::to_vec_pretty(self).expect("keys serialise");
        state::write_durable(path, &text, 0o600)
    }

    /// The stored entry for `robot`, or the only one when `robot` is None.
    pub fn robot(&self, robot: Option<&str>) -> Result<&PairedRobot, PhoneError> {
        match robot {
            Some(r) => {
                self.robots.iter().find(|p| p.robot.as_str() == r).ok_or_else(|| PhoneError::NotPaired(r.into()))
            }
            None if self.robots.len() == 1 => Ok(&self.robots[0]),
            None => Err(PhoneError::NotPaired("(none or several paired: pass --robot ID)".into())),
        }
    }

    /// Add or replace a robot.
    pub fn upsert(&mut self, r: PairedRobot) {
        self.robots.retain(|p| p.robot != r.robot);
        self.robots.push(r);
    }
}

/// A message the phone received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub props: Option<PublishProperties>,
}

impl Received {
    /// The payload as JSON (Null if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
    /// Authentication fields.
    pub fn auth(&self) -> AuthFields {
        AuthFields::from_properties(self.props.as_ref())
    }
}

/// An MQTT 5 connection acting as one phone.
pub struct Phone {
    pub id: ClientId,
    pub broker: String,
    /// The private MQTT client identifier this connection uses.
    client_id: MqttClientId,
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Received>,
    acks: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
    last_seq: u64,
    /// Messages received while waiting for something else, oldest first; a
    /// later wait sees them before anything new.
    backlog: std::collections::VecDeque<Received>,
}

/// Most messages kept in the backlog; older ones are dropped first.
const BACKLOG: usize = 4096;

/// `robotctl`'s names for the broker settings (its flags; the broker URL
/// comes from the pairing URI).
pub const ROBOTCTL_FLAGS: SettingNames = SettingNames {
    url: "the broker URL",
    ca_file: "--ca-file",
    client_cert: "--client-cert",
    client_key: "--client-key",
    username: "--username",
    password_file: "--password-file",
};

/// What [`Phone::pair_with`] does with the robot's `rejected` answer, which
/// carries no MAC (the robot shares no key with the phone yet), so anyone on
/// the broker can forge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRejected {
    /// Keep waiting for a verified `paired` until the timeout; a rejection
    /// seen meanwhile is only reported if nothing better comes
    /// ([`PhoneError::RejectedUnverified`]). What a phone should do.
    KeepWaiting,
    /// Return the first rejection at once ([`PhoneError::Rejected`]), for
    /// tests that look at the robot's reasons.
    Return,
}

impl Phone {
    /// Connect as `id` to a plain, anonymous broker, with the phone's own
    /// presence (`true` now, will `false`), under a fresh private MQTT
    /// client identifier.
    pub async fn connect(broker: &str, id: ClientId) -> Result<Phone, PhoneError> {
        Self::connect_with(broker, id, &MqttClientId::random(), &BrokerAuth::default(), &ROBOTCTL_FLAGS).await
    }

    /// [`connect`](Self::connect) under the MQTT client identifier
    /// `client_id` (the keys file's [`Keys::mqtt_client_id`]; never derived
    /// from `id`, protocol 2.1), with TLS (`mqtts://` and `auth.ca_file`)
    /// and credentials, as robotd's `[mqtt]` does; errors name the setting
    /// by `names`.
    pub async fn connect_with(
        broker: &str,
        id: ClientId,
        client_id: &MqttClientId,
        auth: &BrokerAuth,
        names: &SettingNames,
    ) -> Result<Phone, PhoneError> {
        let addr = parse_broker_url(broker).map_err(|detail| PhoneError::Broker { url: broker.into(), detail })?;
        let mut o = MqttOptions::new(client_id.as_str(), addr.host, addr.port);
        auth.apply(&mut o, addr.transport, names)?;
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_start(true)
            .set_max_packet_size(Some(1 << 20))
            .set_last_will(LastWill::new(topics::is_connected(&id), "false", QoS::AtLeastOnce, true, None));
        // No Nagle, as on the robot (crate::daemon::link::mqtt_options): commands are small and latency-bound.
        let mut net = o.network_options();
        net.set_tcp_nodelay(true);
        o.set_network_options(net);
        let (client, mut el) = AsyncClient::new(o, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (conn_tx, mut conn_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = conn_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Publish { topic, payload, properties, .. } = p;
                        let topic = String::from_utf8_lossy(&topic).into_owned();
                        let _ = tx.send(Received { topic, payload, props: properties });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        if tokio::time::timeout(Duration::from_secs(10), conn_rx.recv()).await.is_err() {
            task.abort();
            return Err(PhoneError::Connect { url: broker.into(), detail: "no CONNACK within 10 s".into() });
        }
        let phone = Phone {
            id,
            broker: broker.into(),
            client_id: client_id.clone(),
            client,
            rx,
            acks,
            task,
            last_seq: 0,
            backlog: Default::default(),
        };
        phone.publish_raw(topics::is_connected(&phone.id), b"true".to_vec(), true, None).await;
        Ok(phone)
    }

    /// The private MQTT client identifier of this connection (to keep in
    /// the keys file).
    pub fn client_id(&self) -> &MqttClientId {
        &self.client_id
    }

    /// Subscribe QoS 1 and wait for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) -> Result<(), PhoneError> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| PhoneError::Connect { url: self.broker.clone(), detail: e.to_string() })?;
        tokio::time::timeout(Duration::from_secs(10), self.acks.recv())
            .await
            .map_err(|_| PhoneError::Connect { url: self.broker.clone(), detail: "no SUBACK".into() })?;
        Ok(())
    }

    /// A fresh `seq` for `pair/` and `invite/`: unix ms, strictly increasing.
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq = (self.last_seq + 1).max(now_ms());
        self.last_seq
    }

    /// Publish QoS 1, not retained.
    pub async fn publish_raw(&self, topic: String, payload: Vec<u8>, retain: bool, props: Option<PublishProperties>) {
        let r = match props {
            Some(p) => self.client.publish_with_properties(topic, QoS::AtLeastOnce, retain, payload, p).await,
            None => self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await,
        };
        let _ = r;
    }

    /// The signer of this phone's messages under `key` (`from` = this phone).
    pub fn signer<'k>(&'k self, key: &'k [u8]) -> Signer<'k> {
        Signer::new(key, self.id.as_str())
    }

    /// Publish an authenticated message: from = this phone, MAC under `key`.
    pub async fn publish_signed(&self, key: &[u8], topic: String, payload: Vec<u8>, seq: u64, ts_ms: u64) {
        let m = self.signer(key).message(topic, payload, seq, ts_ms, None);
        self.publish_raw(m.topic, m.payload, false, Some(m.props)).await;
    }

    /// Wait for a message matching `pred`. Others are kept (bounded) for
    /// later waits, so a status that arrives while waiting for a response
    /// to another request is not lost.
    pub async fn recv_until(&mut self, timeout: Duration, pred: impl Fn(&Received) -> bool) -> Option<Received> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let end = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(end, self.rx.recv()).await {
                Ok(Some(m)) if pred(&m) => return Some(m),
                Ok(Some(m)) => {
                    if self.backlog.len() >= BACKLOG {
                        self.backlog.pop_front();
                    }
                    self.backlog.push_back(m);
                }
                _ => return None,
            }
        }
    }

    /// Pair with the robot named in `uri`; returns the entry to store on
    /// success. Waits for a verified `paired` until `timeout`, whatever
    /// unauthenticated rejections arrive meanwhile ([`OnRejected::KeepWaiting`]).
    pub async fn pair(
        &mut self,
        uri: &PairingUri,
        nickname: &str,
        timeout: Duration,
    ) -> Result<PairedRobot, PhoneError> {
        self.pair_with(uri, nickname, timeout, OnRejected::KeepWaiting).await
    }

    /// [`pair`](Self::pair), choosing what an unauthenticated `rejected` does.
    pub async fn pair_with(
        &mut self,
        uri: &PairingUri,
        nickname: &str,
        timeout: Duration,
        on_rejected: OnRejected,
    ) -> Result<PairedRobot, PhoneError> {
        let resp_topic = topics::pair_response(&uri.robot, &self.id);
        self.subscribe(&resp_topic).await?;
        let nonce: [u8; 16] = rand::random();
        let seq = self.next_seq();
        let request = pairing::build_pair_request(uri, &self.id, nickname, nonce, seq, seq)?;
        self.publish_raw(request.topic, request.payload, false, Some(request.props)).await;
        let key = pairing::derive_owner_key(uri, &self.id, &nonce);
        let end = tokio::time::Instant::now() + timeout;
        let mut rejected = None;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let Some(m) = self.recv_until(left, |m| m.topic == resp_topic).await else { break };
            let f = m.auth();
            match pairing::check_pair_response(uri, &self.id, &key, &SignedMessage::new(&m.topic, &m.payload, &f)) {
                Ok(PairResponse::Paired { robot_nickname }) => {
                    return Ok(PairedRobot {
                        robot: uri.robot.clone(),
                        nickname: robot_nickname,
                        broker: uri.broker.clone(),
                        key,
                    });
                }
                Ok(PairResponse::Rejected { reason }) if on_rejected == OnRejected::Return => {
                    return Err(PhoneError::Rejected(reason));
                }
                // Unauthenticated: remember it, but a real `paired` may still come.
                Ok(PairResponse::Rejected { reason }) => {
                    tracing::info!(robot = %uri.robot, %reason, "unauthenticated `rejected`; still waiting for a verified answer");
                    rejected = Some(reason);
                }
                Err(_) => continue,
            }
        }
        let (robot, secs) = (uri.robot.to_string(), timeout.as_secs());
        match rejected {
            Some(reason) => Err(PhoneError::RejectedUnverified { robot, secs, reason }),
            None => Err(PhoneError::Timeout { robot, secs }),
        }
    }

    /// Graceful stop: presence `false`, then DISCONNECT.
    pub async fn close(self) {
        self.publish_raw(topics::is_connected(&self.id), b"false".to_vec(), true, None).await;
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.task.abort();
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a phone offers in its invite.
#[derive(Debug, Clone)]
pub struct Offer {
    pub host: std::net::IpAddr,
    pub video_port: u16,
    pub audio_port: Option<u16>,
    pub max_width: u32,
    pub max_height: u32,
    pub max_fps: u32,
    pub max_kbps: u32,
}

impl Offer {
    /// 720p30 at 2.5 Mbit/s to `host:video_port`, no audio.
    pub fn new(host: std::net::IpAddr, video_port: u16) -> Self {
        Offer { host, video_port, audio_port: None, max_width: 1280, max_height: 720, max_fps: 30, max_kbps: 2500 }
    }

    /// The invite payload.
    pub fn payload(&self) -> Vec<u8> {
        let mut media = serde_json::json!({"host": self.host.to_string(), "port": self.video_port});
        if let Some(a) = self.audio_port {
            media["audio_port"] = a.into();
        }
        let mut v = serde_json::json!({
            "media": media,
            "video": {"codecs": ["H264"], "max_width": self.max_width, "max_height": self.max_height,
                      "max_fps": self.max_fps, "max_kbps": self.max_kbps},
        });
        if self.audio_port.is_some() {
            v["audio"] = serde_json::json!({"codecs": ["OPUS"]});
        }
        serde_json::to_vec(&v).expect("json")
    }
}

/// A call the phone placed and the robot accepted.
#[derive(Debug)]
pub struct ActiveCall {
    pub robot: ClientId,
    pub session: ClientId,
    /// The accept message.
    pub accept: serde_json::Value,
    pub session_key: Key32,
    pub srtp_video: crate::wire::keys::SrtpKey,
    pub srtp_audio: crate::wire::keys::SrtpKey,
    pub video_ssrc: u32,
    next_seq: u64,
    /// The robot's latest freshness token (docs/protocol.md 5.7) and when it
    /// arrived; every response carries one, `drive` and `goto` echo it.
    token: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

/// A phone refreshes its token (with a `ping`) before a `drive` or `goto`
/// when the one it has is older than this on its own clock, so that the
/// robot, which refuses tokens older than 1.5 s, does not refuse it.
pub const TOKEN_REFRESH_AFTER: Duration = Duration::from_millis(1000);

impl ActiveCall {
    /// Keep the token of a verified response, if it has one.
    fn keep_token(&self, response: &serde_json::Value) {
        if let Some(t) = response["token"].as_str() {
            *self.token.lock().expect("token lock") = Some((t.to_owned(), std::time::Instant::now()));
        }
    }

    /// The latest token the robot sent, however old (for tests that build
    /// requests by hand).
    pub fn latest_token(&self) -> Option<String> {
        self.token.lock().expect("token lock").as_ref().map(|(t, _)| t.clone())
    }

    /// The latest token, if it is young enough to send.
    fn fresh_token(&self) -> Option<String> {
        let t = self.token.lock().expect("token lock");
        t.as_ref().filter(|(_, at)| at.elapsed() < TOKEN_REFRESH_AFTER).map(|(t, _)| t.clone())
    }

    /// The phone's next `seq` in this call (starts at 1).
    pub fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }
}

/// The outcome of an invite.
#[derive(Debug)]
pub enum InviteOutcome {
    Accepted(ActiveCall),
    /// `busy` or `rejected`: the verified answer.
    Refused(serde_json::Value),
}

impl Phone {
    /// Invite `robot` to a call. Subscribes to the answer and the session's
    /// responses first, so nothing the robot says is missed.
    pub async fn invite(
        &mut self,
        robot: &PairedRobot,
        offer: &Offer,
        timeout: Duration,
    ) -> Result<InviteOutcome, PhoneError> {
        self.invite_with(robot, offer.payload(), timeout).await
    }

    /// Invite with this payload (version 1 or 2, docs/protocol.md 7.1 and 7.8).
    pub async fn invite_with(
        &mut self,
        robot: &PairedRobot,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<InviteOutcome, PhoneError> {
        let session = ClientId::random();
        let resp_topic = topics::invite_response(&robot.robot, &session);
        self.subscribe(&resp_topic).await?;
        self.subscribe(&topics::session_response_filter(&session)).await?;
        let topic = topics::invite(&robot.robot, &session);
        let seq = self.next_seq();
        let mut m = self.signer(&robot.key).message(topic, payload, seq, seq, None);
        m.props.message_expiry_interval = Some(30);
        self.publish_raw(m.topic, m.payload, false, Some(m.props)).await;
        let key = robot.key;
        let robot_id = robot.robot.clone();
        let m = self
            .recv_until(timeout, |m| {
                m.topic == resp_topic
                    && m.auth().from.as_deref() == Some(robot_id.as_str())
                    && props::verify(&key, &m.topic, &m.payload, &m.auth()).is_some()
            })
            .await
            .ok_or_else(|| PhoneError::Timeout { robot: robot.robot.to_string(), secs: timeout.as_secs() })?;
        let v = m.json();
        if v["status"] != "accepted" {
            return Ok(InviteOutcome::Refused(v));
        }
        let mut nonce = [0u8; 16];
        hex::decode_to_slice(v["nonce"].as_str().unwrap_or(""), &mut nonce)
            .map_err(|_| PhoneError::Rejected("accept without a valid nonce".into()))?;
        let sid = session.to_bytes();
        let token = v["token"].as_str().map(|t| (t.to_owned(), std::time::Instant::now()));
        Ok(InviteOutcome::Accepted(ActiveCall {
            robot: robot.robot.clone(),
            session,
            session_key: crate::wire::keys::session_key(&key, &sid, &nonce),
            srtp_video: crate::wire::keys::srtp_video_key(&key, &sid, &nonce),
            srtp_audio: crate::wire::keys::srtp_audio_key(&key, &sid, &nonce),
            video_ssrc: v["video"]["ssrc"].as_u64().unwrap_or(0) as u32,
            accept: v,
            next_seq: 1,
            token: std::sync::Mutex::new(token),
        }))
    }

    /// Send a request in a call; returns its `seq`. A `drive` or `goto`
    /// echoes the robot's latest token, refreshed first with a `ping` when
    /// it is older than [`TOKEN_REFRESH_AFTER`].
    pub async fn send(&mut self, call: &mut ActiveCall, command: &str, payload: &serde_json::Value) -> u64 {
        let mut payload = payload.clone();
        if matches!(command, "drive" | "goto") && payload.get("token").is_none() {
            self.refresh_token(call).await;
            let token = call.fresh_token().or_else(|| call.latest_token());
            if let (Some(obj), Some(t)) = (payload.as_object_mut(), token) {
                obj.insert("token".into(), t.into());
            }
        }
        let payload = &payload;
        let seq = call.next_seq();
        let topic = topics::session_request(&call.session, command);
        self.publish_signed(&call.session_key, topic, serde_json::to_vec(payload).expect("json"), seq, now_ms()).await;
        seq
    }

    /// Make sure the call's token is younger than [`TOKEN_REFRESH_AFTER`]:
    /// if not, a `ping` fetches a fresh one (its answer carries it).
    pub async fn refresh_token(&mut self, call: &mut ActiveCall) {
        if call.fresh_token().is_none() {
            let ping = Box::pin(self.request(call, "ping", serde_json::json!({}), Duration::from_secs(2)));
            let _ = ping.await;
        }
    }

    /// Wait for an authenticated response in the call matching `pred`.
    pub async fn response(
        &mut self,
        call: &ActiveCall,
        timeout: Duration,
        pred: impl Fn(&str, &serde_json::Value) -> bool,
    ) -> Option<(String, serde_json::Value)> {
        let prefix = format!("session/{}/", call.session);
        let key = call.session_key;
        let robot = call.robot.clone();
        let m = self
            .recv_until(timeout, |m| {
                let Some(cmd) = m.topic.strip_prefix(&prefix).and_then(|r| r.strip_suffix("/response")) else {
                    return false;
                };
                m.auth().from.as_deref() == Some(robot.as_str())
                    && props::verify(&key, &m.topic, &m.payload, &m.auth()).is_some()
                    && pred(cmd, &m.json())
            })
            .await?;
        let cmd = m.topic.strip_prefix(&prefix)?.strip_suffix("/response")?.to_owned();
        let v = m.json();
        call.keep_token(&v);
        Some((cmd, v))
    }

    /// Send a request and wait for its response (`re` = its seq).
    pub async fn request(
        &mut self,
        call: &mut ActiveCall,
        command: &str,
        payload: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, PhoneError> {
        let seq = self.send(call, command, &payload).await;
        let cmd = command.to_owned();
        self.response(call, timeout, |c, v| c == cmd && v["re"] == seq)
            .await
            .map(|(_, v)| v)
            .ok_or_else(|| PhoneError::Timeout { robot: call.robot.to_string(), secs: timeout.as_secs() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keys file from before protocol 1.1 (no `mqtt_client_id`) still
    /// loads, gets a private identifier, and keeps it once saved.
    #[test]
    fn an_old_keys_file_loads_and_keeps_a_new_private_client_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let phone = "36940d0ece18aebf69d0ef6825534e24";
        std::fs::write(&path, format!(r#"{{"phone":"{phone}","robots":[]}}"#)).unwrap();
        let k = Keys::load(&path).unwrap();
        assert_ne!(k.mqtt_client_id.as_str(), phone);
        assert!(crate::wire::identity::is_client_id(k.mqtt_client_id.as_str()));
        k.save(&path).unwrap();
        assert_eq!(Keys::load(&path).unwrap().mqtt_client_id, k.mqtt_client_id);
        assert_ne!(Keys::default().mqtt_client_id, Keys::default().mqtt_client_id);
    }
}
