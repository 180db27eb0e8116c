//! Pairing against a real broker and the real daemon, as a phone does it
//! (`robotd::phone`, the code `robotctl` runs), with windows opened by
//! `robotd pair` and checked through `robotd owners` / `robotd status`.

mod auth_support;
mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use auth_support::*;
use common::*;
use data_encoding::{BASE32_NOPAD, BASE64};
use robotd::phone::{InviteOutcome, Keys, Phone};
use robotd::wire::identity::ClientId;
use robotd::wire::props::AuthFields;
use serde_json::{Value, json};

/// The key owners.json holds for `phone` (hex), if it is an owner.
fn stored_key(robot: &Robot, phone: &str) -> Option<String> {
    let text = std::fs::read_to_string(robot.state_dir().join("owners.json")).ok()?;
    let v: Value = serde_json::from_str(&text).unwrap();
    v["owners"].as_array()?.iter().find(|o| o["id"] == phone).map(|o| o["key"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_pairs_then_is_recognised() {
    let broker = Broker::start();
    let robot = start_robot(&broker, "").await;
    assert!(admin_ok(&robot, &["owners"]).contains("no owners"));
    let uri = open_window(&robot);
    assert!(pairing_state(&robot).starts_with("open until"), "{}", pairing_state(&robot));
    let png = robot.state_dir().join("pairing-qr.png");
    assert!(png.exists(), "no QR PNG while the window is open");

    let mut alice = phone(&broker).await;
    let paired = try_pair(&mut alice, &uri, "Alice").await.expect("pairs with the right secret");
    assert_eq!(paired.robot, uri.robot);
    assert_eq!(paired.nickname, "Rover");
    // The robot stored the very key the phone derived (the phone only
    // accepted `paired` after its MAC verified under that key).
    assert_eq!(stored_key(&robot, alice.id.as_str()), Some(hex::encode(paired.key)));
    let owners = admin_ok(&robot, &["owners"]);
    assert!(owners.contains(alice.id.as_str()) && owners.contains("Alice"), "{owners}");
    assert!(!owners.contains(&hex::encode(paired.key)), "`robotd owners` must not show keys: {owners}");
    assert_eq!(pairing_state(&robot), format!("closed (paired {})", alice.id));
    assert!(wait_until(SOON, || !png.exists()), "the QR PNG outlived its window");

    // Recognised: the invite gets a MACed answer (accepted), and the call works.
    let (_sink, port) = media_sink();
    let mut call = match alice.invite(&paired, &offer(port), SOON).await.unwrap() {
        InviteOutcome::Accepted(c) => c,
        InviteOutcome::Refused(v) => panic!("owner's invite refused: {v}"),
    };
    let pong = alice.request(&mut call, "ping", json!({}), SOON).await.unwrap();
    assert_eq!(pong["status"], "ok", "{pong}");
    let bye = alice.request(&mut call, "hangup", json!({}), SOON).await.unwrap();
    assert_eq!(bye["status"], "ended", "{bye}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_rejected_bad_mac() {
    let broker = Broker::start();
    let robot = start_robot(&broker, "").await;
    let mut probe = Probe::connect(&broker, &[&format!("pair/{}/+/response", robot.id)]).await;
    let uri = open_window(&robot);
    let mut p = phone(&broker).await;
    let wrong = with_secret(&uri, rand::random());
    assert_eq!(try_pair(&mut p, &wrong, "Mallory").await.unwrap_err(), "bad_mac");

    // The rejection comes from the robot, without a MAC (no shared key).
    let m = probe.expect("the rejection", SOON, |m| m.topic.ends_with(&format!("{}/response", p.id))).await;
    let f = AuthFields::from_properties(m.props.as_ref());
    assert_eq!(f.from.as_deref(), Some(robot.id.as_str()));
    assert!(f.mac.is_none(), "a rejection carries no mac: {f:?}");
    assert_eq!(serde_json::from_slice::<Value>(&m.payload).unwrap(), json!({"status":"rejected","reason":"bad_mac"}));

    assert_eq!(drops(&robot, "bad_mac"), 1);
    assert!(admin_ok(&robot, &["owners"]).contains("no owners"));
    assert!(pairing_state(&robot).ends_with("1/20 failed attempts"), "{}", pairing_state(&robot));
    // One failure does not close the window: the right secret still pairs.
    try_pair(&mut p, &uri, "Alice").await.expect("the right secret after one mistake");
    assert!(admin_ok(&robot, &["owners"]).contains(p.id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_failures_close_the_window() {
    let broker = Broker::start();
    let robot = start_robot(&broker, "").await;
    let uri = open_window(&robot);
    let mut p = phone(&broker).await;
    let wrong = with_secret(&uri, rand::random());
    for i in 1..=20 {
        let reason = try_pair(&mut p, &wrong, "Mallory").await.unwrap_err();
        let want = if i < 20 { "bad_mac" } else { "too_many_attempts" };
        assert_eq!(reason, want, "attempt {i}");
    }
    assert_eq!(pairing_state(&robot), "closed (too many failed attempts)");
    assert_eq!(drops(&robot, "bad_mac"), 19);

    // Even the right secret fails now, from any phone.
    let mut alice = phone(&broker).await;
    assert_eq!(try_pair(&mut alice, &uri, "Alice").await.unwrap_err(), "too_many_attempts");
    assert!(admin_ok(&robot, &["owners"]).contains("no owners"));

    // Until a new window: its secret pairs.
    let uri2 = open_window(&robot);
    try_pair(&mut alice, &uri2, "Alice").await.expect("pairs in the new window");
    let owners = admin_ok(&robot, &["owners"]);
    assert!(owners.contains(alice.id.as_str()) && !owners.contains(p.id.as_str()), "{owners}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_expires() {
    let broker = Broker::start();
    let robot = start_robot(&broker, "[pairing]\nwindow_s = 2\n").await;
    let uri = open_window(&robot);
    let png = robot.state_dir().join("pairing-qr.png");
    assert!(pairing_state(&robot).starts_with("open until"), "{}", pairing_state(&robot));
    assert!(
        wait_until(SOON, || pairing_state(&robot) == "closed (expired)"),
        "window still {:?} long after its 2 s",
        pairing_state(&robot)
    );
    let mut alice = phone(&broker).await;
    assert_eq!(try_pair(&mut alice, &uri, "Alice").await.unwrap_err(), "window_closed");
    assert!(admin_ok(&robot, &["owners"]).contains("no owners"));
    assert_eq!(drops(&robot, "window_closed"), 1);
    // The housekeeping tick noticed the end too: the QR image is gone.
    assert!(wait_until(SOON, || !png.exists()), "the QR PNG outlived its window");
    assert!(robot.log().contains("pairing window closed"), "{}", robot.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_secret_cannot_pair_twice() {
    let broker = Broker::start();
    let robot = start_robot(&broker, "").await;
    let uri = open_window(&robot);
    let mut alice = phone(&broker).await;
    let paired = try_pair(&mut alice, &uri, "Alice").await.expect("first pairing");
    let mut bob = phone(&broker).await;
    assert_eq!(try_pair(&mut bob, &uri, "Bob").await.unwrap_err(), "window_closed");
    // Nor can the phone that used it pair again (and replace its key).
    assert_eq!(try_pair(&mut alice, &uri, "Alice 2").await.unwrap_err(), "window_closed");
    let owners = admin_ok(&robot, &["owners"]);
    assert!(owners.contains(alice.id.as_str()) && !owners.contains(bob.id.as_str()), "{owners}");
    assert!(!owners.contains("Alice 2"), "{owners}");
    assert_eq!(stored_key(&robot, alice.id.as_str()), Some(hex::encode(paired.key)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_window_voids_old_secret() {
    let broker = Broker::start();
    let robot = start_robot(&broker, "").await;
    let old = open_window(&robot);
    let new = open_window(&robot);
    assert_ne!(old.secret, new.secret, "each window has its own secret");
    let mut alice = phone(&broker).await;
    assert_eq!(try_pair(&mut alice, &old, "Alice").await.unwrap_err(), "bad_mac");
    assert!(admin_ok(&robot, &["owners"]).contains("no owners"));
    try_pair(&mut alice, &new, "Alice").await.expect("the new secret pairs");
    assert!(admin_ok(&robot, &["owners"]).contains(alice.id.as_str()));
}

/// The encodings a secret could leak in: hex (both cases), base32 (both
/// cases), base64, and the raw bytes.
fn spellings(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![bytes.to_vec()];
    for s in [hex::encode(bytes), BASE32_NOPAD.encode(bytes), BASE64.encode(bytes)] {
        out.push(s.to_lowercase().into_bytes());
        out.push(s.to_uppercase().into_bytes());
        // base64 is case-sensitive: also as written.
        out.push(s.into_bytes());
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The first secret (by name) found anywhere in `m`: topic, payload, user
/// properties, correlation data, response topic, content type.
fn leak(m: &Seen, secrets: &[(&str, Vec<Vec<u8>>)]) -> Option<String> {
    let mut hay: Vec<Vec<u8>> = vec![m.topic.clone().into_bytes(), m.payload.to_vec()];
    if let Some(p) = &m.props {
        for (k, v) in &p.user_properties {
            hay.push(k.clone().into_bytes());
            hay.push(v.clone().into_bytes());
        }
        hay.extend(p.correlation_data.iter().map(|c| c.to_vec()));
        hay.extend(p.response_topic.iter().map(|t| t.clone().into_bytes()));
        hay.extend(p.content_type.iter().map(|t| t.clone().into_bytes()));
    }
    secrets
        .iter()
        .find(|(_, sp)| sp.iter().any(|n| hay.iter().any(|h| contains(h, n))))
        .map(|(name, _)| format!("{name} in {} {:?}", m.topic, m.props.as_ref().map(|p| &p.user_properties)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_secret_on_the_wire() {
    let broker = Broker::start();
    let robot = start_robot(&broker, "").await;
    let mut wire = Probe::connect(&broker, &["#"]).await;
    let uri = open_window(&robot);
    let mut alice = phone(&broker).await;
    // A failed attempt too, so a rejection is on the wire as well.
    assert_eq!(try_pair(&mut alice, &with_secret(&uri, rand::random()), "Alice").await.unwrap_err(), "bad_mac");
    let paired = try_pair(&mut alice, &uri, "Alice").await.expect("pairs");
    let (_sink, port) = media_sink();
    let mut call = match alice.invite(&paired, &offer(port), SOON).await.unwrap() {
        InviteOutcome::Accepted(c) => c,
        InviteOutcome::Refused(v) => panic!("invite refused: {v}"),
    };
    assert_eq!(alice.request(&mut call, "ping", json!({}), SOON).await.unwrap()["status"], "ok");
    assert_eq!(
        alice.request(&mut call, "drive", json!({"linear":0.1,"angular":0.0,"ms":100}), SOON).await.unwrap()["status"],
        "ok"
    );
    assert_eq!(alice.request(&mut call, "hangup", json!({}), SOON).await.unwrap()["status"], "ended");
    let hangup = format!("session/{}/hangup/response", call.session);
    wire.expect("the hangup answer", SOON, |m| m.topic == hangup).await;

    // Positive control: the probe really saw the whole exchange.
    let (r, p, s) = (&robot.id, alice.id.as_str(), call.session.as_str());
    for topic in [
        format!("pair/{r}/{p}"),
        format!("pair/{r}/{p}/response"),
        format!("invite/{r}/{s}/response"),
        format!("session/{s}/ping/request"),
        format!("session/{s}/ping/response"),
        format!("session/{s}/drive/request"),
        format!("session/{s}/drive/response"),
        format!("session/{s}/hangup/request"),
    ] {
        assert!(wire.seen.iter().any(|m| m.topic == topic), "the probe did not see {topic}");
    }
    assert!(wire.seen.iter().any(|m| m.topic.starts_with(&format!("invite/{r}/")) && !m.topic.ends_with("/response")));
    assert!(wire.seen.iter().any(|m| m.text().contains("\"paired\"")));
    assert!(wire.seen.iter().any(|m| m.text().contains("\"accepted\"")));

    let secrets = [
        ("pairing secret S", spellings(&uri.secret)),
        ("owner key K", spellings(&paired.key)),
        ("session key Ks", spellings(&call.session_key)),
        ("SRTP video key", spellings(&call.srtp_video.0)),
        ("SRTP audio key", spellings(&call.srtp_audio.0)),
    ];
    // The scanner itself can fail: a message carrying K in a property, or S
    // in base32 in a payload, is caught.
    let mut planted = wire.seen[0].clone();
    planted.props = Some(robotd::wire::props::unsigned(&hex::encode(paired.key), 1, 1));
    assert!(leak(&planted, &secrets).is_some());
    let mut planted = wire.seen[0].clone();
    planted.props = None;
    planted.payload = BASE32_NOPAD.encode(&uri.secret).to_lowercase().into_bytes().into();
    assert!(leak(&planted, &secrets).is_some());

    for m in &wire.seen {
        assert!(leak(m, &secrets).is_none(), "{}", leak(m, &secrets).unwrap());
    }
    // Nor are keys written to the robot's log (the pairing URI is, by design).
    let log = robot.log();
    for (name, sp) in &secrets[1..] {
        assert!(!sp.iter().skip(1).any(|n| contains(log.as_bytes(), n)), "{name} in the robot's log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_owners_file_is_a_clear_error() {
    let broker = Broker::start();
    let robot = Robot::configure(&broker, NO_AUTO_WINDOW);
    let file = robot.state_dir().join("owners.json");
    for bad in [&b"{\"version\":1,\"owners\":["[..], b"{\"version\":2,\"owners\":[]}", b"\x00\x01garbage"] {
        std::fs::write(&file, bad).unwrap();
        let mut child = Command::new(robotd_bin())
            .arg("-c")
            .arg(&robot.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let exited = wait_until(SOON, || child.try_wait().unwrap().is_some());
        if !exited {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(exited, "robotd kept running with a corrupt owners file: {err}");
        assert!(!out.status.success(), "{:?}", out.status);
        assert!(err.contains(&file.display().to_string()), "the error must name the file: {err}");
        // Never reset or rewritten.
        assert_eq!(std::fs::read(&file).unwrap(), bad, "the corrupt file was changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robotctl_pairs_and_writes_a_private_keys_file() {
    let broker = Broker::start();
    let robot = start_robot(&broker, "").await;
    let uri = open_window(&robot).to_string();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("phone/keys.json");
    let out = Command::new(robotctl_bin())
        .arg("--keys")
        .arg(&keys)
        .args(["pair", &uri, "--phone", "+48555555555"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "robotctl pair failed: {stdout}{stderr}");
    assert!(stdout.contains("paired with Rover"), "{stdout}");
    let mode = std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "keys file mode {mode:o}");
    let k = Keys::load(&keys).unwrap();
    let phone_id = "36940d0ece18aebf69d0ef6825534e24"; // md5("+48555555555")
    assert_eq!(k.phone.as_ref().map(ClientId::as_str), Some(phone_id));
    // The MQTT client identifier is private, not the public phone ID (protocol 2.1).
    assert_ne!(k.mqtt_client_id.as_str(), phone_id);
    assert!(std::fs::read_to_string(&keys).unwrap().contains(k.mqtt_client_id.as_str()));
    let entry = k.robot(Some(&robot.id)).unwrap();
    assert_eq!(entry.broker, broker.url());
    assert_eq!(stored_key(&robot, phone_id), Some(hex::encode(entry.key)), "keys file and robot disagree on K");
    let owners = admin_ok(&robot, &["owners"]);
    assert!(owners.contains(phone_id) && owners.contains("robotctl"), "{owners}");

    // The stored key works: an invite with it is answered.
    let mut p = Phone::connect(&broker.url(), phone_id.parse().unwrap()).await.unwrap();
    let (_sink, port) = media_sink();
    match p.invite(entry, &offer(port), SOON).await.unwrap() {
        InviteOutcome::Accepted(_) => {}
        InviteOutcome::Refused(v) => panic!("refused: {v}"),
    }
}

/// The robot's `rejected` carries no MAC (it shares no key with the phone
/// yet), so anyone on the broker can send one. A forged rejection, here
/// retained so it reaches the phone before the robot can answer, must not
/// end the phone's wait: the verified `paired` that follows is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_rejection_does_not_stop_the_phone_from_pairing() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let broker = Broker::start();
    let robot = start_robot(&broker, "").await;
    let uri = open_window(&robot);
    let mut alice = phone(&broker).await;
    let forger = Probe::connect(&broker, &[]).await;
    let topic = format!("pair/{}/{}/response", robot.id, alice.id);
    let forged = PublishProperties { user_properties: vec![("from".into(), robot.id.clone())], ..Default::default() };
    forger.publish(&topic, br#"{"status":"rejected","reason":"window_closed"}"#, true, Some(forged)).await;
    // The broker holds it: a subscriber gets it at once.
    let mut check = Probe::connect(&broker, &[&topic]).await;
    check.expect("the forged rejection", SOON, |m| m.topic == topic && m.retain).await;

    let paired = alice.pair(&uri, "Alice", SOON).await.expect("the forged rejection ended the wait");
    assert_eq!(paired.robot, uri.robot);
    assert_eq!(stored_key(&robot, alice.id.as_str()), Some(hex::encode(paired.key)));

    // With only a rejection (a wrong secret: the robot's own, just as
    // unauthenticated), the wait ends at the timeout and says what it saw.
    let uri = open_window(&robot);
    let mut bob = phone(&broker).await;
    let e = bob.pair(&with_secret(&uri, rand::random()), "Bob", std::time::Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(&e, robotd::phone::PhoneError::RejectedUnverified { reason, .. } if reason == "bad_mac"), "{e}");
}
