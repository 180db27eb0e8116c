//! The MQTT link: the one task that owns rumqttc's event loop.
//!
//! Keep-alive and reconnects happen only inside `EventLoop::poll()`, so this
//! task never blocks: it parses nothing deeper than the topic, hands messages
//! to the application through a bounded channel (dropping, and counting, when
//! the application is behind rather than stalling the connection), and talks
//! to rumqttc's request channel only with non-blocking `try_*` calls.
//!
//! rumqttc does not re-subscribe after a reconnect, and with a clean start the
//! broker forgets everything, so after every CONNACK this task subscribes to
//! the robot's filters and the topics of a call in progress, then announces
//! presence and the profile again (PROTOCOL: Connection, presence, profile).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PubAck, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions, MqttState};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::broker::{self, BrokerAuth, BrokerAuthError};
use crate::config::Config;
use crate::daemon::time::sleep_until_opt;
use crate::daemon::twin::{Takeover, TwinWatch};
use crate::robot::{Inbound, LinkEvent, SessionGate};
use crate::wire::identity::{ClientId, MqttClientId};
use crate::wire::{self, topics};

/// Failure to set up the link (before any network I/O).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A TLS or credential setting in `[mqtt]` cannot be used (the message
    /// names the key and the file).
    #[error(transparent)]
    Auth(#[from] BrokerAuthError),
}

/// Counters for `robotd status`.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub connects: AtomicU64,
    pub dropped_topic: AtomicU64,
    pub dropped_size: AtomicU64,
    pub dropped_backlog: AtomicU64,
    pub publish_failed: AtomicU64,
    pub connected: AtomicBool,
    /// Times the broker dropped robotd because another client connected
    /// with its MQTT client identifier (DISCONNECT 0x8E, session taken over).
    pub taken_over: AtomicU64,
    /// Unix ms of the last such takeover (0: never).
    pub last_takeover_ms: AtomicU64,
}

/// A cloneable handle used by everything else to publish and (un)subscribe.
#[derive(Clone)]
pub struct LinkHandle {
    client: AsyncClient,
    robot: ClientId,
    /// Subscriptions beyond the robot's own filters (a call's topics); kept
    /// so they can be re-sent after every CONNACK.
    extra: Arc<Mutex<BTreeSet<String>>>,
    stats: Arc<LinkStats>,
    gate: Arc<Mutex<Option<SessionGate>>>,
}

impl LinkHandle {
    /// Publish QoS 1. Never blocks: if rumqttc's request queue is full the
    /// message is dropped and counted (a response to a phone that is not
    /// being read is worth less than a responsive link).
    pub fn publish(&self, topic: String, payload: Vec<u8>, retain: bool, props: Option<PublishProperties>) {
        let r = match props {
            Some(p) => self.client.try_publish_with_properties(topic.clone(), QoS::AtLeastOnce, retain, payload, p),
            None => self.client.try_publish(topic.clone(), QoS::AtLeastOnce, retain, payload),
        };
        if let Err(e) = r {
            self.stats.publish_failed.fetch_add(1, Ordering::Relaxed);
            warn!(%topic, error = %e, "publish dropped");
        }
    }

    /// Subscribe QoS 1 now and after every reconnect.
    pub fn subscribe(&self, filter: String) {
        self.extra.lock().unwrap().insert(filter.clone());
        if let Err(e) = self.client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
            warn!(%filter, error = %e, "subscribe request dropped; it is re-sent on reconnect");
        }
    }

    /// Unsubscribe now and forget the filter for reconnects.
    pub fn unsubscribe(&self, filter: &str) {
        self.extra.lock().unwrap().remove(filter);
        if let Err(e) = self.client.try_unsubscribe(filter.to_owned()) {
            warn!(%filter, error = %e, "unsubscribe request dropped");
        }
    }

    /// Set (at accept) or clear (at call end) the call whose authenticated
    /// requests take the priority queue.
    pub fn set_session_gate(&self, gate: Option<SessionGate>) {
        *self.gate.lock().unwrap() = gate;
    }

    /// The robot's client ID.
    pub fn robot(&self) -> &ClientId {
        &self.robot
    }

    /// Link counters.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Whether the link currently has a CONNACKed connection.
    pub fn is_connected(&self) -> bool {
        self.stats.connected.load(Ordering::Relaxed)
    }
}

/// Everything the link task needs, built from the config.
pub struct Link {
    eventloop: EventLoop,
    broker_url: String,
    handle: LinkHandle,
    profile: Vec<u8>,
    /// Tells a session takeover by a twin from other lost connections.
    twin: TwinWatch,
    marker_topic: String,
}

/// Capacity of rumqttc's request channel. After a CONNACK the link queues
/// the subscriptions and two presence publishes at once, and responses may
/// burst during a goto; large enough that `try_*` calls do not fail in
/// normal operation, small enough to bound memory.
const REQUEST_CAPACITY: usize = 256;

/// Most QoS 1 publishes awaiting a PUBACK. rumqttc sizes its in-flight table
/// by this up front and defaults to 65535 slots (about 14 MB, most of an idle
/// robotd's memory); brokers grant far fewer (the CONNACK's Receive Maximum,
/// 20 on Mosquitto), and the request channel above holds the rest.
const OUTGOING_INFLIGHT: u16 = 64;

/// Build rumqttc options exactly as the protocol asks: MQTT 5, clean start,
/// session expiry 0, the will `false` retained QoS 1, and the robot's
/// private MQTT client identifier (not its public robot ID, protocol 2.1).
pub fn mqtt_options(cfg: &Config, robot: &ClientId, client_id: &MqttClientId) -> Result<MqttOptions, LinkError> {
    let addr = cfg.broker();
    let mut o = MqttOptions::new(client_id.as_str(), addr.host.clone(), addr.port);
    o.set_keep_alive(cfg.keep_alive())
        .set_clean_start(true)
        .set_session_expiry_interval(Some(0))
        .set_max_packet_size(Some(wire::MAX_PACKET))
        .set_request_channel_capacity(REQUEST_CAPACITY)
        .set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT)
        .set_connection_timeout(5)
        .set_last_will(LastWill::new(topics::is_connected(robot), "false", QoS::AtLeastOnce, true, None));
    mqtt_auth(cfg).apply(&mut o, addr.transport, &broker::CONFIG_KEYS)?;
    Ok(o)
}

/// `[mqtt]`'s TLS files and credentials.
fn mqtt_auth(cfg: &Config) -> BrokerAuth {
    let m = &cfg.mqtt;
    BrokerAuth {
        ca_file: m.ca_file.clone(),
        client_cert: m.client_cert.clone(),
        client_key: m.client_key.clone(),
        username: m.username.clone(),
        password_file: m.password_file.clone(),
    }
}

impl Link {
    /// Create the client and its event loop; nothing is sent until [`Link::run`].
    /// `generation` counts robotd starts on this state directory
    /// ([`crate::daemon::twin::next_generation`]).
    pub fn new(
        cfg: &Config,
        robot: ClientId,
        client_id: &MqttClientId,
        generation: u64,
        profile: Vec<u8>,
    ) -> Result<Link, LinkError> {
        let (client, eventloop) = AsyncClient::new(mqtt_options(cfg, &robot, client_id)?, REQUEST_CAPACITY);
        let twin = TwinWatch::new(client_id, generation, rand::random());
        let marker_topic = topics::instance_marker(&robot);
        let handle = LinkHandle {
            client,
            robot,
            extra: Default::default(),
            stats: Default::default(),
            gate: Default::default(),
        };
        Ok(Link { eventloop, handle, profile, broker_url: cfg.mqtt.url.clone(), twin, marker_topic })
    }

    /// A handle for publishing and subscribing.
    pub fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }

    fn on_connack(&self) {
        let h = &self.handle;
        let robot = h.robot.clone();
        let mut filters = vec![topics::invite_filter(&robot), topics::pair_filter(&robot), self.marker_topic.clone()];
        filters.extend(h.extra.lock().unwrap().iter().cloned());
        for f in filters {
            if let Err(e) = h.client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                warn!(filter = %f, error = %e, "subscribe failed");
            }
        }
        h.publish(topics::is_connected(&robot), b"true".to_vec(), true, None);
        h.publish(topics::profile(&robot), self.profile.clone(), true, None);
    }

    /// Route one incoming publish: topic grammar and size are checked here so
    /// junk costs the application nothing.
    fn route(
        &self,
        p: rumqttc::v5::mqttbytes::v5::Publish,
        events: &mpsc::Sender<LinkEvent>,
        priority: &mpsc::Sender<LinkEvent>,
    ) {
        let stats = &self.handle.stats;
        let Ok(topic_str) = std::str::from_utf8(&p.topic).map(str::to_owned) else {
            stats.dropped_topic.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(topic) = topics::parse(&topic_str) else {
            stats.dropped_topic.fetch_add(1, Ordering::Relaxed);
            debug!(topic = %topic_str, "dropped: topic outside the protocol");
            return;
        };
        // A retained request would be delivered again on every reconnect.
        if p.retain && !matches!(topic, topics::Topic::IsConnected { .. }) {
            stats.dropped_topic.fetch_add(1, Ordering::Relaxed);
            debug!(topic = %topic_str, "dropped: retained request");
            return;
        }
        if p.payload.len() > wire::MAX_PAYLOAD {
            stats.dropped_size.fetch_add(1, Ordering::Relaxed);
            debug!(topic = %topic_str, len = p.payload.len(), "dropped: payload over 16 KiB");
            return;
        }
        let genuine = match (&topic, self.handle.gate.lock().unwrap().as_ref()) {
            (topics::Topic::SessionRequest { session, .. }, Some(g)) if *session == g.session => {
                let f = crate::wire::props::AuthFields::from_properties(p.properties.as_ref());
                f.from.as_deref() == Some(g.caller.as_str())
                    && crate::wire::props::verify(&g.key, &topic_str, &p.payload, &f).is_some()
            }
            _ => false,
        };
        let msg = Inbound { topic, topic_str, payload: p.payload, props: p.properties };
        let queue = if genuine { priority } else { events };
        if queue.try_send(LinkEvent::Message(Box::new(msg))).is_err() {
            stats.dropped_backlog.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drop a publish that rumqttc stashed on a packet-id collision (a
    /// PUBACK that came late, e.g. behind a flood). rumqttc 0.25 keeps it
    /// across reconnects (`MqttState::clean()` leaves `collision` set) and
    /// takes no new request until it is resolved; with clean start the
    /// colliding packet is never re-sent, so never acked: the link would send
    /// nothing but pings and time out every two keep-alives, forever
    /// (bytebeamio/rumqtt#1014 and #1056; fixes #1019 and #1058 not merged).
    /// robotd never resumes a session, so the stashed publish is lost with
    /// the connection like the old session's other unacknowledged ones.
    fn forget_collision(&mut self) {
        if let Some(p) = self.eventloop.state.collision.take() {
            warn!(
                pkid = p.pkid,
                topic = %String::from_utf8_lossy(&p.topic),
                "publish lost with the connection (stuck on a packet-id collision)"
            );
        }
    }

    /// After a PUBACK (rumqttc has handled it). One with an error reason
    /// (the broker refused the publish: an ACL, a quota) is logged. It frees
    /// its packet id, but rumqttc 0.25 lets a publish waiting for that id (a
    /// collision) go only on a successful PUBACK: that one would wait for
    /// nothing until the collision times out (two keep-alives, robotd
    /// publishing nothing meanwhile) and the connection is dropped with
    /// everything queued. It is sent again here instead, with a new id.
    fn after_puback(&mut self, ack: &PubAck) {
        if !matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers) {
            self.handle.stats.publish_failed.fetch_add(1, Ordering::Relaxed);
            warn!(pkid = ack.pkid, reason = ?ack.reason, "the broker refused a publish (check its ACL for robotd)");
        }
        if let Some(p) = take_stuck_collision(&mut self.eventloop.state, ack.pkid) {
            debug!(pkid = p.pkid, topic = %String::from_utf8_lossy(&p.topic), "publish waiting on a refused packet id sent again");
            self.handle.publish(
                String::from_utf8_lossy(&p.topic).into_owned(),
                p.payload.to_vec(),
                p.retain,
                p.properties,
            );
        }
    }

    /// Run until `shutdown` turns true: poll, reconnect with capped
    /// exponential backoff (100 ms doubling to 2 s, with jitter, forever),
    /// route messages. After a session takeover (another client with our
    /// MQTT client identifier) log one error and stay away 30 s, doubling
    /// up to 5 min while takeovers keep coming. On shutdown publish presence `false` (retained) and
    /// DISCONNECT with reason 0 so the broker discards the will.
    /// `priority` receives the current call's authenticated requests (see
    /// [`SessionGate`]); `events` everything else.
    pub async fn run(
        mut self,
        events: mpsc::Sender<LinkEvent>,
        priority: mpsc::Sender<LinkEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let backoff = || {
            backon::ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_factor(2.0)
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        let mut was_connected = false;
        // Connect failures are logged at once, then at most every 30 s, so a
        // wrong password or an unreachable broker is visible without flooding.
        let mut last_connect_warn: Option<tokio::time::Instant> = None;
        // Set once shutdown is requested: presence `false` and DISCONNECT are
        // queued, and the loop runs until the DISCONNECT is written.
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        let mut disconnect_sent = false;
        loop {
            // `EventLoop::poll` is not cancel-safe (a request taken from the
            // queue and half written would be lost), so a poll in progress is
            // never dropped for shutdown: the shutdown branch only queues the
            // goodbye and the same poll future is awaited again.
            let polled = {
                let fut = self.eventloop.poll();
                tokio::pin!(fut);
                loop {
                    tokio::select! {
                        biased;
                        _ = crate::daemon::shutdown::stopped(&mut shutdown), if stop_deadline.is_none() => {
                            stop_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3));
                            if !was_connected {
                                return;
                            }
                            let robot = self.handle.robot.clone();
                            self.handle.publish(topics::is_connected(&robot), b"false".to_vec(), true, None);
                            if self.handle.client.try_disconnect().is_err() {
                                return;
                            }
                        }
                        _ = sleep_until_opt(stop_deadline) => {
                            self.handle.stats.connected.store(false, Ordering::Relaxed);
                            if disconnect_sent {
                                info!("disconnected from broker (it did not close the connection)");
                            } else {
                                warn!("broker did not take the DISCONNECT in time");
                            }
                            return;
                        }
                        _ = sleep_until_opt(self.twin.next_deadline().map(tokio::time::Instant::from_std)) => {
                            if let Some(marker) = self.twin.due(Instant::now()) {
                                self.handle.publish(self.marker_topic.clone(), marker, true, None);
                            }
                        }
                        r = &mut fut => break r,
                    }
                }
            };
            let takeover = match &polled {
                Err(e) if stop_deadline.is_none() => self.twin.observe(e, was_connected, Instant::now()),
                _ => None,
            };
            match polled {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) if stop_deadline.is_some() => {
                    // Written, but not yet read by the broker. Closing our socket
                    // now, with its acks unread, would make the kernel send a
                    // RST that discards what the broker has not read yet (the
                    // last responses, `false`, the DISCONNECT itself). The broker
                    // closes the connection once it has read the DISCONNECT:
                    // keep reading until then.
                    disconnect_sent = true;
                    stop_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                Err(_) if stop_deadline.is_some() => {
                    self.handle.stats.connected.store(false, Ordering::Relaxed);
                    if disconnect_sent {
                        info!("disconnected from broker");
                    } else {
                        warn!("connection closed before the DISCONNECT was written");
                    }
                    return;
                }
                Ok(_) if disconnect_sent => {}
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    info!(code = ?ack.code, "connected to broker");
                    delays = backoff();
                    was_connected = true;
                    let marker = self.twin.connected(Instant::now());
                    last_connect_warn = None;
                    self.handle.stats.connected.store(true, Ordering::Relaxed);
                    self.handle.stats.connects.fetch_add(1, Ordering::Relaxed);
                    if stop_deadline.is_some() {
                        // Reconnected while stopping: the queued goodbye goes out next.
                        continue;
                    }
                    self.on_connack();
                    if let Some(marker) = marker {
                        // After the SUBSCRIBE: a twin's retained marker reaches us first.
                        self.handle.publish(self.marker_topic.clone(), marker, true, None);
                    }
                    // Connected/Disconnected must not be lost: they gate the motors.
                    let _ = events.send(LinkEvent::Connected).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == self.marker_topic.as_bytes() => {
                    let twin_before = self.twin.has_evidence();
                    self.twin.on_marker(&p.payload, Instant::now());
                    if self.twin.has_evidence() && !twin_before {
                        warn!(
                            "another robotd with this robot's identity (a copy of its state directory) is using the \
                             broker; this one gives way if the broker drops it"
                        );
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.route(p, &events, &priority),
                Ok(Event::Incoming(Packet::PubAck(ack))) => self.after_puback(&ack),
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    // rumqttc also reports it as the error that ends the
                    // connection (logged there); this is the packet itself.
                    debug!(reason = ?d.reason_code, "broker sent DISCONNECT");
                }
                Ok(_) => {}
                Err(_) if takeover.is_some() => {
                    self.forget_collision();
                    let stats = &self.handle.stats;
                    stats.taken_over.fetch_add(1, Ordering::Relaxed);
                    stats.last_takeover_ms.store(crate::wire::props::now_ms(), Ordering::Relaxed);
                    let delay = self.twin.backoff();
                    let times = stats.taken_over.load(Ordering::Relaxed);
                    let retry_in_s = delay.as_secs();
                    const FIX: &str = "a second robotd with a copy of this state directory (a cloned SD card?) or \
                                       of its mqtt-client-id file; stop the other one, or give it its own state \
                                       directory";
                    if takeover == Some(Takeover::Reported) {
                        tracing::error!(
                            broker = %self.broker_url, times, retry_in_s,
                            "the broker dropped robotd because another client connected with robotd's MQTT client \
                             identifier (DISCONNECT: session taken over): {FIX}"
                        );
                    } else {
                        tracing::error!(
                            broker = %self.broker_url, times, retry_in_s,
                            "the broker dropped robotd because another client connected with robotd's MQTT client \
                             identifier (its instance marker on the broker is newer than this robotd's): {FIX}"
                        );
                    }
                    if was_connected {
                        was_connected = false;
                        stats.connected.store(false, Ordering::Relaxed);
                        let _ = events.send(LinkEvent::Disconnected).await;
                    }
                    delays = backoff();
                    tokio::select! {
                        _ = crate::daemon::shutdown::stopped(&mut shutdown) => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => {
                    self.forget_collision();
                    if was_connected {
                        warn!(error = %e, "connection to broker lost; reconnecting");
                        was_connected = false;
                        self.handle.stats.connected.store(false, Ordering::Relaxed);
                        let _ = events.send(LinkEvent::Disconnected).await;
                    } else if last_connect_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                        warn!(error = %e, broker = %self.broker_url, "cannot connect to the broker; retrying");
                        last_connect_warn = Some(tokio::time::Instant::now());
                    } else {
                        debug!(error = %e, "connect failed");
                    }
                    // Not connected: a shutdown now has nothing to say goodbye on.
                    let delay = delays.next().unwrap_or(Duration::from_secs(2));
                    tokio::select! {
                        _ = crate::daemon::shutdown::stopped(&mut shutdown) => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// The publish that `state` keeps waiting for packet id `pkid` although that
/// id's PUBACK has come (see [`Link::after_puback`]); `None` when there is
/// none (rumqttc released it itself on a successful PUBACK).
fn take_stuck_collision(state: &mut MqttState, pkid: u16) -> Option<Publish> {
    if state.collision.as_ref().is_some_and(|p| p.pkid == pkid) {
        state.collision_ping_count = 0;
        state.collision.take()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::v5::Request;
    use rumqttc::v5::mqttbytes::v5::{Filter, Subscribe};

    use super::*;

    /// rumqttc's own state machine: a window of 2, a publish (id 1), a
    /// subscribe (id 2, no publish slot), a publish that gets id 1 again
    /// and waits for it (a collision).
    fn collided() -> MqttState {
        let mut st = MqttState::new(2, false);
        let publish = |t: &str| Request::Publish(Publish::new(t, QoS::AtLeastOnce, vec![1u8], None));
        st.handle_outgoing_packet(publish("a")).unwrap();
        let sub = Subscribe::new(Filter::new("f", QoS::AtLeastOnce), None);
        st.handle_outgoing_packet(Request::Subscribe(sub)).unwrap();
        st.handle_outgoing_packet(publish("b")).unwrap();
        assert_eq!(st.collision.as_ref().map(|p| (p.pkid, p.topic.as_ref())), Some((1, &b"b"[..])));
        st
    }

    fn ack(pkid: u16, reason: PubAckReason) -> Packet {
        let mut a = PubAck::new(pkid, None);
        a.reason = reason;
        Packet::PubAck(a)
    }

    #[test]
    fn a_refused_puback_releases_the_publish_waiting_for_its_packet_id() {
        let mut st = collided();
        st.handle_incoming_packet(ack(1, PubAckReason::NotAuthorized)).unwrap();
        // rumqttc 0.25 keeps waiting (if it stops, this fix can go).
        assert!(st.collision.is_some(), "rumqttc now releases it itself");
        let p = take_stuck_collision(&mut st, 1).expect("released");
        assert_eq!(&p.topic[..], b"b");
        assert!(st.collision.is_none());
        assert_eq!(st.collision_ping_count, 0);
    }

    #[test]
    fn a_successful_puback_leaves_nothing_to_send_again() {
        let mut st = collided();
        // rumqttc sends the waiting publish itself.
        let out = st.handle_incoming_packet(ack(1, PubAckReason::Success)).unwrap();
        assert!(matches!(out, Some(Packet::Publish(p)) if &p.topic[..] == b"b"));
        assert!(take_stuck_collision(&mut st, 1).is_none());
        // Another id's refusal is not this collision's.
        let mut st = collided();
        st.handle_incoming_packet(ack(2, PubAckReason::NotAuthorized)).ok();
        assert!(take_stuck_collision(&mut st, 2).is_none());
        assert!(st.collision.is_some());
    }
}
