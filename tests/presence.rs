//! Presence, profile, will and reconnects against a real Mosquitto.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_profile_are_retained_after_start() {
    let broker = Broker::start();
    let robot = Robot::start(&broker, "[robot]\n");
    let mut early = Probe::connect(&broker, &[&format!("user/{}/isConnected", robot.id)]).await;
    early.expect_msg(&format!("user/{}/isConnected", robot.id), "true").await;
    // A client that subscribes afterwards gets both as retained messages.
    let mut late =
        Probe::connect(&broker, &[&format!("user/{}/isConnected", robot.id), &format!("user/{}/profile", robot.id)])
            .await;
    let p = late.expect_msg(&format!("user/{}/isConnected", robot.id), "true").await;
    assert!(p.retain, "presence must be retained");
    let prof = late.expect("profile", SOON, |m| m.topic.ends_with("/profile")).await;
    assert!(prof.retain);
    let v: serde_json::Value = serde_json::from_slice(&prof.payload).unwrap();
    assert_eq!(v["nickname"], "Rover");
    assert_eq!(v["kind"], "robot");
    assert_eq!(v["software"], format!("robotd {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_publishes_false_without_the_will() {
    let broker = Broker::start();
    let mut robot = Robot::start(&broker, "");
    let topic = format!("user/{}/isConnected", robot.id);
    let mut probe = Probe::connect(&broker, &[&topic]).await;
    probe.expect_msg(&topic, "true").await;
    // The broker knows robotd by its private MQTT client identifier.
    let client_id = std::fs::read_to_string(robot.state_dir().join("mqtt-client-id")).unwrap().trim().to_owned();
    let status = robot.stop();
    assert!(status.success(), "robotd exit status {status:?}");
    probe.expect_msg(&topic, "false").await;
    // The retained value is now false, and the broker saw a clean disconnect.
    let mut late = Probe::connect(&broker, &[&topic]).await;
    let m = late.expect("retained presence", SOON, |m| m.topic == topic).await;
    assert_eq!(m.text(), "false");
    assert!(robot.log().contains("disconnected from broker"), "{}", robot.log());
    assert!(
        common::wait_until(SOON, || broker.log().contains(&format!("Client {client_id} disconnected"))),
        "mosquitto did not log a clean disconnect:\n{}",
        broker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_the_will_false() {
    let broker = Broker::start();
    let mut robot = Robot::start(&broker, "[mqtt]\n");
    let topic = format!("user/{}/isConnected", robot.id);
    let mut probe = Probe::connect(&broker, &[&topic]).await;
    probe.expect_msg(&topic, "true").await;
    robot.kill();
    // keep_alive_s = 5 in the test config: the broker fires the will after 7.5 s.
    let m = probe.expect("the will", Duration::from_secs(30), |m| m.topic == topic && m.text() == "false").await;
    let _ = m;
    let mut late = Probe::connect(&broker, &[&topic]).await;
    let m = late.expect("retained will", SOON, |m| m.topic == topic).await;
    assert_eq!(m.text(), "false");
    assert!(m.retain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_broker_restart_and_reannounces() {
    let mut broker = Broker::start();
    let robot = Robot::start(&broker, "");
    let topic = format!("user/{}/isConnected", robot.id);
    {
        let mut probe = Probe::connect(&broker, &[&topic]).await;
        probe.expect_msg(&topic, "true").await;
    }
    for round in 0..3 {
        broker.restart();
        // persistence is off: the restarted broker has no retained messages,
        // so `true` can only come from the robot re-announcing itself.
        let mut probe = Probe::connect(&broker, &[&topic]).await;
        probe
            .expect(&format!("presence after restart {round}"), SOON, |m| m.topic == topic && m.text() == "true")
            .await;
        let mut late = Probe::connect(&broker, &[&topic]).await;
        let m = late.expect("retained presence", SOON, |m| m.topic == topic).await;
        assert!(m.retain && m.text() == "true", "{m:?}");
        assert_subscribed(&broker, &robot).await;
    }
}

/// Prove the robot's subscriptions work: a pairing request while no window is
/// open is answered `window_closed` on the response topic.
async fn assert_subscribed(broker: &Broker, robot: &Robot) {
    let phone = "36940d0ece18aebf69d0ef6825534e24";
    let resp = format!("pair/{}/{phone}/response", robot.id);
    let mut probe = Probe::connect(broker, &[&resp]).await;
    probe.publish(&format!("pair/{}/{phone}", robot.id), br#"{"nickname":"x","nonce":"00"}"#, false, None).await;
    let m = probe.expect("pairing rejection", SOON, |m| m.topic == resp).await;
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["status"], "rejected", "{v}");
}
