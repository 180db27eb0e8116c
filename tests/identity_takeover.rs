//! The MQTT client identifier (protocol 2.1, version 1.1): robotd connects
//! under a private random identifier, not its public robot ID, so an
//! outsider who connects with the robot ID takes nothing over; and when the
//! broker does drop robotd for a session takeover (a second robotd on a copy
//! of its state directory), robotd says so once, stays away instead of
//! fighting, and shows it in `robotd status`.

#[path = "common/calls.rs"]
mod calls_kit;
mod common;

use std::time::{Duration, Instant};

use calls_kit::*;
use common::*;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// Connect under `client_id` once and wait for the CONNACK (`true`), then
/// close the connection without a DISCONNECT. Bounded by 5 s.
async fn connect_once(port: u16, client_id: &str) -> bool {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5)).set_clean_start(true);
    let (_client, mut el) = AsyncClient::new(o, 8);
    let acked = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    });
    acked.await.unwrap_or(false)
}

/// Connect under `client_id` every `every` for `total`; returns how many
/// connections the broker accepted.
async fn keep_connecting(port: u16, client_id: String, every: Duration, total: Duration) -> usize {
    let end = Instant::now() + total;
    let mut accepted = 0;
    for _ in 0..1000 {
        if Instant::now() >= end {
            break;
        }
        if connect_once(port, &client_id).await {
            accepted += 1;
        }
        tokio::time::sleep(every).await;
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_connecting_with_the_robot_id_changes_nothing_for_the_owner() {
    let Owned { broker, robot, mut phone, paired } = robot_with_owner("").await;
    let topic = format!("user/{}/isConnected", robot.id);
    let mut presence = Probe::connect(&broker, &[&topic]).await;
    presence.expect_msg(&topic, "true").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    ping(&mut phone, &mut c).await;

    // The outsider knows the robot ID (it is in every topic) and connects
    // with it as its MQTT client identifier every 50 ms for about 3 s.
    let attack =
        tokio::spawn(keep_connecting(broker.port, robot.id.clone(), Duration::from_millis(50), Duration::from_secs(3)));
    let start = sim_pose(&status(&robot));
    let (mut pings, mut drives) = (0, 0);
    while !attack.is_finished() {
        // Each request is sent once; one that the robot misses because the
        // broker dropped it is never answered, and `ping`/`drive` panic.
        ping(&mut phone, &mut c).await;
        drive(&mut phone, &mut c, 0.3, 300).await;
        pings += 1;
        drives += 1;
    }
    let accepted = attack.await.unwrap();
    // Positive control: the broker did take the outsider's connections.
    assert!(accepted >= 10, "only {accepted} outsider connections were accepted");
    assert!(pings >= 1 && drives >= 1);
    let now = wait_until_still(&robot, Duration::ZERO).await;
    let moved = ((now.x - start.x).powi(2) + (now.y - start.y).powi(2)).sqrt();
    assert!(moved > 0.01, "the drives did not move the robot: {start:?} then {now:?}");
    ping(&mut phone, &mut c).await;

    // The robot never dropped off: its presence stayed `true`.
    let seen = presence.collect_for(Duration::from_millis(500)).await;
    let falses: Vec<_> = presence.seen.iter().filter(|m| m.topic == topic && m.text() == "false").collect();
    assert!(falses.is_empty(), "the robot's presence went false during the attack: {seen:?}");
    let s = status(&robot);
    assert_eq!(s["broker"]["connected"], true, "{s}");
    assert_eq!(s["broker"]["connects"], 1, "the robot was dropped and reconnected: {s}");
    assert_eq!(s["broker"]["taken_over"], 0, "{s}");
}

/// A second robotd started from a copy of the first one's state directory
/// (a cloned SD card) has the same private MQTT client identifier: the
/// broker (Mosquitto 2.0: a bare EOF, no DISCONNECT 0x8E) drops whichever
/// connected earlier each time the other connects. One of them (the one
/// started earlier) must notice the twin from its instance marker, say so
/// once, and give way for 30 s; the other keeps serving the owner; neither
/// fights every 100 ms. With the twin gone, the first comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_on_a_copy_of_the_state_directory_makes_one_robotd_give_way_instead_of_fighting() {
    let Owned { broker, robot: first, mut phone, paired } = robot_with_owner("").await;
    let file = first.state_dir().join("mqtt-client-id");
    let client_id = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_ne!(client_id.trim(), first.id, "the MQTT client identifier must not be the public robot ID");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o600, "{} mode {mode:o}", file.display());
    assert_eq!(status(&first)["broker"]["connects"], 1);

    // The clone: same state files (identity, owners), its own directory.
    let mut twin = Robot::configure(&broker, TEST_VIDEO);
    let twin_state = twin.state_dir();
    std::fs::remove_dir_all(&twin_state).unwrap();
    std::fs::create_dir(&twin_state).unwrap();
    for entry in std::fs::read_dir(first.state_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        if path.is_file() && name != "lock" {
            std::fs::copy(&path, twin_state.join(&name)).unwrap();
        }
    }
    twin.id = first.id.clone();
    twin.spawn();

    // The first robotd gives way: one error, counted in its status.
    let gave_way = blocking(|| {
        wait_until(Duration::from_secs(30), || status_sync(&first)["broker"]["taken_over"].as_u64() >= Some(1))
    });
    let log = first.log();
    assert!(gave_way, "the first robotd never noticed its twin: {}\n{log}", status(&first));
    assert!(status(&first)["broker"]["last_takeover_ms"].as_u64().is_some());
    let errors = log.matches("another client connected with robotd's MQTT client identifier").count();
    assert_eq!(errors, 1, "{errors} takeover errors in the first robotd's log:\n{log}");
    assert!(log.contains("ERROR"), "the takeover is not logged as an error:\n{log}");

    // Not fighting: over the next 5 s neither reconnects (one that took the
    // identifier back at once would reconnect every 100-200 ms), and the twin
    // serves the owner: the call is the twin's.
    let (first_connects, twin_connects) = (connects(&status(&first)), connects(&status(&twin)));
    assert!(first_connects <= 6 && twin_connects <= 6, "{first_connects} and {twin_connects} connects");
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    ping(&mut phone, &mut c).await;
    assert!(!status(&twin)["call"].is_null(), "the owner's call did not reach the twin: {}", status(&twin));
    assert!(status(&first)["call"].is_null(), "{}", status(&first));
    tokio::time::sleep(Duration::from_secs(5)).await;
    ping(&mut phone, &mut c).await;
    assert_eq!(connects(&status(&first)), first_connects, "the first robotd reconnected: {}", status(&first));
    assert_eq!(connects(&status(&twin)), twin_connects, "the twin reconnected: {}", status(&twin));
    assert_eq!(status(&twin)["broker"]["taken_over"], 0, "{}", status(&twin));
    let seq = phone.send(&mut c, "hangup", &serde_json::json!({})).await;
    assert_eq!(ended(&mut phone, &c, SOON).await["re"], seq);

    // With the twin gone, the first robotd comes back after its 30 s.
    twin.stop();
    let back = blocking(|| wait_until(Duration::from_secs(90), || status_sync(&first)["broker"]["connected"] == true));
    assert!(back, "the first robotd did not come back: {}", status(&first));
    let mut c = call(&mut phone, &paired, sink.port).await;
    ping(&mut phone, &mut c).await;
    assert!(!status(&first)["call"].is_null(), "{}", status(&first));
}
