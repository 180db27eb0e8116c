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

use crate::auth::keys::Key32;
use crate::config::{Transport, parse_broker_url};
use crate::fsutil::{self, StateFileError};
use crate::identity::ClientId;
use crate::pairing::{self, PairResponse, PairResponseMessage, PairingUri};
use crate::protocol::props::{self, AuthFields, now_ms};
use crate::protocol::topics;

/// Errors of the phone side, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum PhoneError {
    /// The broker URL cannot be used.
    #[error("broker {url}: {detail}")]
    Broker { url: String, detail: String },
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
    #[serde(with = "hex_key")]
    pub key: Key32,
}

impl std::fmt::Debug for PairedRobot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairedRobot").field("robot", &self.robot).field("nickname", &self.nickname).finish()
    }
}

mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    pub fn serialize<S: Serializer>(k: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(k))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut k = [0u8; 32];
        hex::decode_to_slice(&s, &mut k).map_err(|_| D::Error::custom("key must be 64 hex characters"))?;
        Ok(k)
    }
}

/// The phone's keys file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Keys {
    /// The phone's own ID (md5 of its E.164 number).
    pub phone: Option<ClientId>,
    pub robots: Vec<PairedRobot>,
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
        match fsutil::read_optional(path)? {
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
        fsutil::write_durable(path, &text, 0o600)
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
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Received>,
    acks: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
    last_seq: u64,
}

impl Phone {
    /// Connect as `id`, with the phone's own presence (`true` now, will `false`).
    pub async fn connect(broker: &str, id: ClientId) -> Result<Phone, PhoneError> {
        let addr = parse_broker_url(broker).map_err(|detail| PhoneError::Broker { url: broker.into(), detail })?;
        if addr.transport == Transport::Tls {
            return Err(PhoneError::Broker { url: broker.into(), detail: "robotctl speaks plain mqtt:// only".into() });
        }
        // A random suffix: the phone's own app may be connected with its bare ID.
        let client_id = format!("{id}-ctl{:08x}", rand::random::<u32>());
        let mut o = MqttOptions::new(client_id, addr.host, addr.port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_start(true)
            .set_max_packet_size(Some(1 << 20))
            .set_last_will(LastWill::new(topics::is_connected(&id), "false", QoS::AtLeastOnce, true, None));
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
        let phone = Phone { id, broker: broker.into(), client, rx, acks, task, last_seq: 0 };
        phone.publish_raw(topics::is_connected(&phone.id), b"true".to_vec(), true, None).await;
        Ok(phone)
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

    /// Publish an authenticated message: from = this phone, MAC under `key`.
    pub async fn publish_signed(&self, key: &[u8], topic: String, payload: Vec<u8>, seq: u64, ts_ms: u64) {
        let p = props::signed(key, &topic, self.id.as_str(), seq, ts_ms, &payload, None);
        self.publish_raw(topic, payload, false, Some(p)).await;
    }

    /// Wait for a message matching `pred`; others are discarded.
    pub async fn recv_until(&mut self, timeout: Duration, pred: impl Fn(&Received) -> bool) -> Option<Received> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(end, self.rx.recv()).await {
                Ok(Some(m)) if pred(&m) => return Some(m),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Pair with the robot named in `uri`; returns the stored entry on success.
    pub async fn pair(
        &mut self,
        uri: &PairingUri,
        nickname: &str,
        timeout: Duration,
    ) -> Result<PairedRobot, PhoneError> {
        let resp_topic = topics::pair_response(&uri.robot, &self.id);
        self.subscribe(&resp_topic).await?;
        let nonce: [u8; 16] = rand::random();
        let seq = self.next_seq();
        let (topic, payload, mac) = pairing::build_pair_request(uri, &self.id, nickname, nonce, seq, seq)?;
        let p = PublishProperties {
            user_properties: vec![
                ("from".into(), self.id.to_string()),
                ("seq".into(), seq.to_string()),
                ("ts".into(), seq.to_string()),
                ("mac".into(), mac),
            ],
            ..Default::default()
        };
        self.publish_raw(topic, payload, false, Some(p)).await;
        let key = pairing::derive_owner_key(uri, &self.id, &nonce);
        let end = tokio::time::Instant::now() + timeout;
        let mut rejected = None;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let Some(m) = self.recv_until(left, |m| m.topic == resp_topic).await else { break };
            let f = m.auth();
            let msg = PairResponseMessage {
                topic: &m.topic,
                from: f.from.as_deref(),
                seq: f.seq,
                ts_ms: f.ts_ms,
                mac: f.mac.as_deref(),
                payload: &m.payload,
            };
            match pairing::check_pair_response(uri, &self.id, &key, &msg) {
                Ok(PairResponse::Paired { robot_nickname }) => {
                    return Ok(PairedRobot {
                        robot: uri.robot.clone(),
                        nickname: robot_nickname,
                        broker: uri.broker.clone(),
                        key,
                    });
                }
                // Unauthenticated: remember it, but a real `paired` may still come.
                Ok(PairResponse::Rejected { reason }) => {
                    rejected = Some(reason);
                    break;
                }
                Err(_) => continue,
            }
        }
        match rejected {
            Some(r) => Err(PhoneError::Rejected(r)),
            None => Err(PhoneError::Timeout { robot: uri.robot.to_string(), secs: timeout.as_secs() }),
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
