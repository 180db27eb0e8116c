//! Helpers for the pairing and authentication tests (tests/pairing.rs,
//! tests/auth.rs): starting a robot that is ready to listen, the admin
//! commands as a person runs them, and phones built on `robotd::phone`.
#![allow(dead_code)]

use robotd::phone::{Offer, OnRejected, PairedRobot, Phone, PhoneError};
use robotd::wire::identity::ClientId;
use robotd::wire::pairing::PairingUri;
use robotd::wire::{props, topics};

use crate::common::*;

/// A test-pattern camera at a small size: an accepted call starts a real
/// GStreamer pipeline, so keep it cheap.
pub const VIDEO: &str = "[video]\ndevice = \"test\"\nwidth = 320\nheight = 240\nfps = 10\nkbps = 200\n";

/// No window at start: every window in these tests is opened by `robotd pair`,
/// so the test knows its secret.
pub const NO_AUTO_WINDOW: &str = "[pairing]\nopen_when_unowned = false\n";

/// Start robotd and wait until it is subscribed (it announces presence only
/// after subscribing) and its admin socket answers.
pub async fn start_robot(broker: &Broker, extra: &str) -> Robot {
    let robot = Robot::start(broker, &merge_toml(&merge_toml(NO_AUTO_WINDOW, VIDEO), extra));
    let topic = format!("user/{}/isConnected", robot.id);
    let mut p = Probe::connect(broker, &[&topic]).await;
    p.expect_msg(&topic, "true").await;
    assert!(wait_until(SOON, || robot.admin(&["status"]).status.success()), "admin socket never answered");
    robot
}

/// `robotd <args>`; panics with its stderr unless it succeeds; returns stdout.
pub fn admin_ok(robot: &Robot, args: &[&str]) -> String {
    let out = robot.admin(args);
    assert!(out.status.success(), "robotd {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `robotd pair`: opens a window; returns the URI it printed.
pub fn open_window(robot: &Robot) -> PairingUri {
    let out = admin_ok(robot, &["pair"]);
    let start = out.find("robotd://pair?").unwrap_or_else(|| panic!("no pairing URI in:\n{out}"));
    let uri = out[start..].split(['\'', ' ', '\n']).next().unwrap();
    let uri = PairingUri::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
    assert_eq!(uri.robot.as_str(), robot.id);
    uri
}

/// `robotd status` as JSON.
pub fn status(robot: &Robot) -> serde_json::Value {
    serde_json::from_str(&admin_ok(robot, &["status"])).expect("status is JSON")
}

/// How many messages were dropped for `reason` (`dropped.auth` in status).
pub fn drops(robot: &Robot, reason: &str) -> u64 {
    let s = status(robot);
    s["dropped"]["auth"].get(reason).map_or(0, |v| v.as_u64().expect("a count"))
}

/// All `dropped.auth` counts.
pub fn all_drops(robot: &Robot) -> serde_json::Value {
    status(robot)["dropped"]["auth"].clone()
}

/// The pairing line of `robotd status`.
pub fn pairing_state(robot: &Robot) -> String {
    status(robot)["pairing"].as_str().expect("pairing is a string").to_owned()
}

/// A phone with a fresh random ID.
pub async fn phone(broker: &Broker) -> Phone {
    Phone::connect(&broker.url(), ClientId::random()).await.expect("phone connects")
}

/// The same URI with another secret (a phone that misread the QR code).
pub fn with_secret(uri: &PairingUri, secret: [u8; 16]) -> PairingUri {
    PairingUri { secret, ..uri.clone() }
}

/// One pairing attempt; `Ok(paired)` or the rejection reason. Panics on a
/// timeout: every request in these tests must get an answer.
pub async fn try_pair(phone: &mut Phone, uri: &PairingUri, nickname: &str) -> Result<PairedRobot, String> {
    // The robot's own reasons, at once (a phone app keeps waiting instead).
    match phone.pair_with(uri, nickname, SOON, OnRejected::Return).await {
        Ok(p) => Ok(p),
        Err(PhoneError::Rejected(r)) => Err(r),
        Err(e) => panic!("pairing attempt got no usable answer: {e}"),
    }
}

/// Open a window and pair a new phone; returns the phone and its entry.
pub async fn paired_phone(broker: &Broker, robot: &Robot, nickname: &str) -> (Phone, PairedRobot) {
    let uri = open_window(robot);
    let mut p = phone(broker).await;
    let paired = try_pair(&mut p, &uri, nickname).await.expect("pairing with the right secret");
    (p, paired)
}

/// A free UDP port on 127.0.0.1, kept bound by the returned socket so the
/// robot's media has somewhere harmless to go.
pub fn media_sink() -> (std::net::UdpSocket, u16) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

/// An offer for 127.0.0.1:`port` at the test video size.
pub fn offer(port: u16) -> Offer {
    Offer {
        max_width: 320,
        max_height: 240,
        max_fps: 10,
        max_kbps: 300,
        ..Offer::new(std::net::Ipv4Addr::LOCALHOST.into(), port)
    }
}

/// An invite as published: topic, payload and user properties.
pub struct RawInvite {
    pub session: ClientId,
    pub topic: String,
    pub payload: Vec<u8>,
    pub props: rumqttc::v5::mqttbytes::v5::PublishProperties,
}

impl RawInvite {
    /// The topic its answer would come on.
    pub fn response_topic(&self, robot: &ClientId) -> String {
        topics::invite_response(robot, &self.session)
    }
}

/// An invite to `robot` from `from`, MACed under `key` over `mac_from` (the
/// `from` the MAC claims), with the given `seq` and `ts`. Honest invites have
/// `from == mac_from` and the owner's key.
#[allow(clippy::too_many_arguments)]
pub fn raw_invite(
    robot: &ClientId,
    from: &str,
    mac_from: &str,
    key: &[u8],
    seq: u64,
    ts_ms: u64,
    port: u16,
) -> RawInvite {
    let session = ClientId::random();
    let topic = topics::invite(robot, &session);
    let payload = offer(port).payload();
    let mut p = props::signed(key, &topic, mac_from, seq, ts_ms, &payload, None);
    p.message_expiry_interval = Some(30);
    for (k, v) in p.user_properties.iter_mut() {
        if k == "from" {
            *v = from.to_owned();
        }
    }
    RawInvite { session, topic, payload, props: p }
}

/// An honest invite from `phone` with its next `seq` and the current time.
pub fn honest_invite(phone: &mut Phone, paired: &PairedRobot, port: u16) -> RawInvite {
    let seq = phone.next_seq();
    let id = phone.id.to_string();
    raw_invite(&paired.robot, &id, &id, &paired.key, seq, props::now_ms(), port)
}

pub async fn publish(phone: &Phone, inv: &RawInvite) {
    phone.publish_raw(inv.topic.clone(), inv.payload.clone(), false, Some(inv.props.clone())).await;
}
