//! Motion over MQTT on the simulated robot (docs/protocol.md section 8 and
//! the safety rules): drive moves it, `stop`, the deadman, the call's end and
//! the loss of the broker stop it, and a replayed drive is ignored.
//!
//! Stops are told apart from the deadman by the robot's log: a drive that is
//! stopped early never reaches its deadline, so no "deadman" line appears.
//! `deadman_stops_without_renewal` is the positive control for that line.

#[path = "common/calls.rs"]
mod calls_kit;
mod common;

use std::time::{Duration, Instant};

use calls_kit::*;
use common::*;
use robotd::wire::props::{self, now_ms};
use robotd::wire::topics;
use serde_json::json;

/// Sleep until 1.5 s after `drove_at` (past a 1000 ms drive's deadline).
async fn past_deadline(drove_at: Instant) {
    tokio::time::sleep((drove_at + Duration::from_millis(1500)).saturating_duration_since(Instant::now())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drive_moves_the_sim_robot_then_stop_stops_it() {
    let Owned { broker: _broker, robot, mut phone, paired } = robot_with_owner("").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    let st = status(&robot);
    assert_eq!(st["motion"], "idle", "{st}");
    let p0 = sim_pose(&st);
    assert!(p0.wheels.iter().all(|w| w.abs() < 1e-9), "wheels turn before any drive: {p0:?}");

    // Drive straight ahead (heading 0 is +x), renewing before each deadline.
    let start = Instant::now();
    let mut drove_at;
    let mut p;
    loop {
        drive(&mut phone, &mut c, 0.5, 1000).await;
        drove_at = Instant::now();
        p = sim_pose(&status(&robot));
        if p.x > p0.x + 0.2 || start.elapsed() > SOON {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(p.x > p0.x + 0.2, "the robot did not move forward: {p0:?} -> {p:?}");
    assert!((p.y - p0.y).abs() < 0.02 && (p.heading - p0.heading).abs() < 0.02, "not straight: {p:?}");
    assert!(p.wheels.iter().all(|w| *w > 0.05), "wheels not driving forward: {p:?}");
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "driving");

    let deadman_before = deadman_count(&robot);
    let seq = phone.send(&mut c, "stop", &json!({})).await;
    let (_, v) = phone.response(&c, SOON, |k, v| k == "stop" && v["re"] == seq).await.expect("stop answered");
    assert_eq!(untokened(v), json!({"status":"stopped","re":seq}));
    assert_eq!(status(&robot)["motion"], "idle");
    let still = wait_until_still(&robot, Duration::from_millis(500)).await;
    assert!(still.x > p.x - 1e-6, "it went backwards: {p:?} -> {still:?}");
    past_deadline(drove_at).await;
    assert_eq!(deadman_count(&robot), deadman_before, "`stop` left the drive to the deadman");
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadman_stops_without_renewal() {
    let Owned { broker: _broker, robot, mut phone, paired } = robot_with_owner("").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    let p0 = sim_pose(&status(&robot));
    let deadman_before = deadman_count(&robot);

    // One drive of 300 ms, and a ping right behind it.
    let sent = Instant::now();
    let d = phone.send(&mut c, "drive", &json!({"linear": 0.5, "angular": 0.0, "ms": 300})).await;
    let p = phone.send(&mut c, "ping", &json!({})).await;
    let (_, v) = phone.response(&c, SOON, |k, v| k == "drive" && v["re"] == d).await.expect("drive answered");
    assert_eq!(v["status"], "ok", "{v}");
    let (_, v) = phone.response(&c, SOON, |k, v| k == "ping" && v["re"] == p).await.expect("ping answered");
    assert_eq!(v["motion"], "driving", "{v}");

    // No renewal, no stop: it goes idle by itself, not before its 300 ms.
    let idle_after = loop {
        let v = ping(&mut phone, &mut c).await;
        if v["motion"] == "idle" {
            break sent.elapsed();
        }
        assert!(sent.elapsed() < SOON, "still driving {:?} after a 300 ms drive", sent.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(idle_after >= Duration::from_millis(300), "stopped after only {idle_after:?}");
    assert!(idle_after < Duration::from_millis(2000), "the deadman took {idle_after:?} for a 300 ms drive");
    assert!(
        blocking(|| wait_until(SOON, || deadman_count(&robot) == deadman_before + 1)),
        "no deadman expiry logged:\n{}",
        robot.log()
    );
    let still = wait_until_still(&robot, Duration::from_millis(1000)).await;
    assert!(still.x > p0.x + 0.01, "the 300 ms drive did not move the robot: {p0:?} -> {still:?}");
    assert_eq!(status(&robot)["motion"], "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_stops_motors() {
    let Owned { broker: _broker, robot, mut phone, paired } = robot_with_owner("").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    let deadman_before = deadman_count(&robot);
    drive(&mut phone, &mut c, 0.5, 1000).await;
    let drove_at = Instant::now();
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "driving");

    let seq = phone.send(&mut c, "hangup", &json!({})).await;
    assert_eq!(ended(&mut phone, &c, SOON).await, json!({"status":"ended","reason":"hangup","re":seq}));
    let st = status(&robot);
    assert_eq!(st["motion"], "idle", "{st}");
    assert!(st["call"].is_null(), "{st}");
    wait_until_still(&robot, Duration::from_millis(300)).await;
    past_deadline(drove_at).await;
    assert_eq!(deadman_count(&robot), deadman_before, "hangup left the drive to the deadman");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_loss_stops_motors() {
    let Owned { mut broker, robot, mut phone, paired } = robot_with_owner("").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    let deadman_before = deadman_count(&robot);
    drive(&mut phone, &mut c, 0.5, 1000).await;
    let drove_at = Instant::now();
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "driving");

    broker.stop();
    // The admin socket does not need the broker.
    let mut st = status(&robot);
    assert!(
        blocking(|| wait_until(SOON, || {
            st = status_sync(&robot);
            st["broker"]["connected"] == false
        })),
        "the robot did not notice the broker going away: {st}"
    );
    assert_eq!(st["motion"], "idle", "{st}");
    wait_until_still(&robot, Duration::from_millis(300)).await;
    past_deadline(drove_at).await;
    assert_eq!(deadman_count(&robot), deadman_before, "losing the broker left the drive to the deadman");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_drive_is_ignored() {
    let Owned { broker: _broker, robot, mut phone, paired } = robot_with_owner("").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;

    // One signed drive, published twice with the same seq (as a replay or a
    // QoS 1 redelivery would).
    let seq = c.next_seq();
    let topic = topics::session_request(&c.session, "drive");
    let payload = serde_json::to_vec(&json!({"linear":0.3,"angular":0.0,"ms":200,"token":c.latest_token()})).unwrap();
    let p = props::signed(&c.session_key, &topic, phone.id.as_str(), seq, now_ms(), &payload, None);
    phone.publish_raw(topic.clone(), payload.clone(), false, Some(p.clone())).await;
    let (_, v) = phone.response(&c, SOON, |k, v| k == "drive" && v["re"] == seq).await.expect("first drive answered");
    assert_eq!(v["status"], "ok", "{v}");
    let idle = blocking(|| wait_until(SOON, || status_sync(&robot)["motion"] == "idle"));
    assert!(idle, "the 200 ms drive did not end");
    let deadman_before = deadman_count(&robot);
    phone.publish_raw(topic, payload, false, Some(p)).await;

    // Positive control: a request with a new seq, sent after the replay, is answered.
    let ctl = phone.send(&mut c, "ping", &json!({})).await;
    let (cmd, v) = phone
        .response(&c, SOON, |k, v| v["re"] == seq || (k == "ping" && v["re"] == ctl))
        .await
        .expect("the request after the replay is answered");
    assert_eq!(cmd, "ping", "the replayed drive was answered: {v}");
    assert_eq!(v["motion"], "idle", "the replayed drive moved the motors: {v}");
    let late = phone.response(&c, Duration::from_secs(1), |_, v| v["re"] == seq).await;
    assert!(late.is_none(), "the replayed drive was answered late: {late:?}");
    assert_eq!(deadman_count(&robot), deadman_before, "the replayed drive started the motors again");
    // The same drive with a fresh seq is accepted: it is the seq that is refused.
    let fresh = c.next_seq();
    let topic = topics::session_request(&c.session, "drive");
    let payload = serde_json::to_vec(&json!({"linear":0.3,"angular":0.0,"ms":200,"token":c.latest_token()})).unwrap();
    phone.publish_signed(&c.session_key, topic, payload, fresh, now_ms()).await;
    let (_, v) = phone.response(&c, SOON, |k, v| k == "drive" && v["re"] == fresh).await.expect("fresh drive answered");
    assert_eq!(v["status"], "ok", "{v}");
}

/// The sim's e-stop cannot be pressed from outside the process: pressing,
/// the refusal and clearing a latch are covered by the core's unit tests
/// (`robot::tests::estop`). This checks the admin path end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robotd_estop_clear_and_status_show_the_latch() {
    let broker = Broker::start();
    let robot = Robot::start(&broker, "[hardware.estop]\npin = 25\nactive = \"low\"\npull = \"up\"\n");
    wait_online(&broker, &robot).await;
    assert_eq!(status(&robot)["estop"], json!({"configured": true, "latched": false}));
    let out = blocking(|| robot.admin(&["estop", "clear"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not latched"), "{out:?}");

    // Without an e-stop: null, and clearing says why not.
    let plain = Robot::start(&broker, "");
    wait_online(&broker, &plain).await;
    assert_eq!(status(&plain)["estop"], serde_json::Value::Null);
    let out = blocking(|| plain.admin(&["estop", "clear"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("[hardware.estop]"), "{out:?}");
}
