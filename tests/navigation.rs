//! "Go to the bedroom": goto over the real broker on the simulated robot.
//! A small, fast map keeps each scenario to a few seconds.

mod auth_support;
mod common;

use std::time::Duration;

use auth_support::*;
use common::*;
use robotd::phone::{ActiveCall, InviteOutcome, Phone};
use serde_json::{Value, json};

/// home -> hall: 0.6 m, then face the kitchen; hall -> kitchen: 0.4 m;
/// hall -> bedroom: turn right, 0.6 m, through a door that is shut in
/// `SHUT_DOOR`. Quadrature encoders for odometry; an IR obstacle sensor.
const MAP: &str = r#"
[hardware]
max_speed_mps = 1.0
[hardware.encoders]
left_pin = 5
right_pin = 6
left_b_pin = 7
right_b_pin = 8
ticks_per_metre = 2000.0
[hardware.obstacle]
pin = 4
[nav]
places = ["hall", "kitchen", "bedroom"]
obstacle_clear_s = 2
cruise_speed = 0.6
turn_speed = 0.5
accel_mps2 = 1.0
[[nav.edges]]
from = "home"
to = "hall"
steps = [{ drive_m = 0.6 }, { turn_deg = 90 }]
[[nav.edges]]
from = "hall"
to = "kitchen"
steps = [{ drive_m = 0.4 }]
[[nav.edges]]
from = "hall"
to = "bedroom"
steps = [{ turn_deg = -90 }, { drive_m = 0.6 }]
"#;

/// A door across the hall -> bedroom corridor, 0.3 m past the hall.
const SHUT_DOOR: &str = r#"
[[hardware.sim.obstacles]]
kind = "box"
min = [0.9, -0.5]
max = [0.95, 0.5]
"#;

struct Scene {
    _broker: Broker,
    robot: Robot,
    phone: Phone,
    call: ActiveCall,
    _sink: std::net::UdpSocket,
}

async fn scene(extra: &str) -> Scene {
    let broker = Broker::start();
    let robot = start_robot(&broker, &merge_toml(MAP, extra)).await;
    let (mut phone, paired) = paired_phone(&broker, &robot, "Alice").await;
    let (sink, port) = media_sink();
    let call = match phone.invite(&paired, &offer(port), SOON).await.unwrap() {
        InviteOutcome::Accepted(c) => c,
        InviteOutcome::Refused(v) => panic!("refused: {v}"),
    };
    Scene { _broker: broker, robot, phone, call, _sink: sink }
}

impl Scene {
    /// Send `goto`; collect its statuses (all with `re` = its seq) until a
    /// final one, pinging meanwhile so the call stays up.
    async fn goto(&mut self, place: &str) -> Vec<Value> {
        let re = self.phone.send(&mut self.call, "goto", &json!({ "destination": place })).await;
        self.collect_goto(re).await
    }

    async fn collect_goto(&mut self, re: u64) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let got = self
                .phone
                .response(&self.call, left.min(Duration::from_secs(2)), |c, v| c == "goto" && v["re"] == re)
                .await;
            match got {
                Some((_, v)) => {
                    let done = !matches!(v["status"].as_str(), Some("accepted" | "moving"));
                    out.push(v);
                    if done {
                        return out;
                    }
                }
                None if left.is_zero() => panic!("goto did not finish: {out:#?}"),
                None => {
                    self.phone.send(&mut self.call, "ping", &json!({})).await;
                }
            }
        }
    }

    fn sim(&self) -> Value {
        status(&self.robot)["sim"].clone()
    }
}

fn statuses(v: &[Value]) -> Vec<&str> {
    v.iter().map(|s| s["status"].as_str().unwrap()).collect()
}

/// Progress never decreases and is 1 only on the last `moving`; a `moving`
/// arrives at least every second (checked loosely on the message count).
fn check_progress(v: &[Value]) {
    let p: Vec<f64> = v.iter().filter(|s| s["status"] == "moving").map(|s| s["progress"].as_f64().unwrap()).collect();
    assert!(!p.is_empty(), "no moving status: {v:#?}");
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "progress went backwards: {p:?}");
    assert!(p[..p.len() - 1].iter().all(|x| *x < 1.0), "progress reached 1 before the end: {p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goto_kitchen_arrives_via_the_hall() {
    let mut s = scene("").await;
    let d = s.phone.request(&mut s.call, "destinations", json!({}), SOON).await.unwrap();
    assert_eq!(d["destinations"], json!(["home", "hall", "kitchen", "bedroom"]));
    assert_eq!(d["at"], "home");
    let v = s.goto("kitchen").await;
    assert_eq!(statuses(&v).first(), Some(&"accepted"));
    assert_eq!(statuses(&v).last(), Some(&"arrived"), "{v:#?}");
    assert_eq!(v[0]["route"], json!(["home", "hall", "kitchen"]));
    assert!(v.iter().all(|m| m["destination"] == "kitchen"));
    check_progress(&v);
    let p = v.iter().rev().find(|m| m["status"] == "moving").unwrap();
    assert_eq!(p["progress"], 1.0);
    // The kitchen is at (0.6, 0.4) facing +y in the simulator's world.
    let sim = s.sim();
    let (x, y, h) = (sim["x"].as_f64().unwrap(), sim["y"].as_f64().unwrap(), sim["heading"].as_f64().unwrap());
    assert!((x - 0.6).abs() < 0.05 && (y - 0.4).abs() < 0.05, "pose {sim}");
    assert!((h - std::f64::consts::FRAC_PI_2).abs() < 0.09, "heading {sim}");
    let ping = s.phone.request(&mut s.call, "ping", json!({}), SOON).await.unwrap();
    assert_eq!(ping["at"], "kitchen");
    assert_eq!(ping["motion"], "idle");
    // Back home over the derived reverse edges.
    let v = s.goto("home").await;
    assert_eq!(statuses(&v).last(), Some(&"arrived"), "{v:#?}");
    let sim = s.sim();
    assert!(sim["x"].as_f64().unwrap().abs() < 0.05 && sim["y"].as_f64().unwrap().abs() < 0.05, "pose {sim}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shut_door_gives_blocked_and_the_robot_stays_stopped() {
    let mut s = scene(SHUT_DOOR).await;
    let v = s.goto("bedroom").await;
    let last = v.last().unwrap();
    assert_eq!(last["status"], "blocked", "{v:#?}");
    assert_eq!(last["destination"], "bedroom");
    let detail = last["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("something between ") && detail.ends_with(" m before bedroom"), "{last}");
    let before = s.sim();
    assert!(before["x"].as_f64().unwrap() < 0.9, "went through the door: {before}");
    assert_eq!(status(&s.robot)["motion"], "idle");
    // Stopped means stopped: the pose does not change afterwards.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = s.sim();
    assert!((after["x"].as_f64().unwrap() - before["x"].as_f64().unwrap()).abs() < 0.005, "{before} -> {after}");
    let ping = s.phone.request(&mut s.call, "ping", json!({}), SOON).await.unwrap();
    assert_eq!(ping["at"], "unknown", "an interrupted move leaves the place unknown");
    // Until someone puts it back on a known place, goto is refused.
    let r = s.goto("home").await;
    assert_eq!(r[0]["status"], "rejected", "{r:#?}");
    admin_ok(&s.robot, &["at", "hall"]);
    let d = s.phone.request(&mut s.call, "destinations", json!({}), SOON).await.unwrap();
    assert_eq!(d["at"], "hall");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_goto_cancels_it_and_stops_the_robot() {
    let mut s = scene("").await;
    let re = s.phone.send(&mut s.call, "goto", &json!({ "destination": "kitchen" })).await;
    // Wait until it is really moving.
    let moving = s.phone.response(&s.call, SOON, |c, v| c == "goto" && v["re"] == re && v["status"] == "moving").await;
    assert!(moving.is_some());
    let stopped = s.phone.request(&mut s.call, "stop", json!({}), SOON).await.unwrap();
    assert_eq!(stopped["status"], "stopped");
    let v = s.collect_goto(re).await;
    assert_eq!(v.last().unwrap()["status"], "cancelled", "{v:#?}");
    assert!(wait_until(SOON, || status(&s.robot)["motion"] == "idle"));
    let a = s.sim();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = s.sim();
    assert!((a["x"].as_f64().unwrap() - b["x"].as_f64().unwrap()).abs() < 0.005, "still moving: {a} -> {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_mid_route_stops_the_robot() {
    let mut s = scene("").await;
    let re = s.phone.send(&mut s.call, "goto", &json!({ "destination": "kitchen" })).await;
    assert!(
        s.phone.response(&s.call, SOON, |c, v| c == "goto" && v["re"] == re && v["status"] == "moving").await.is_some()
    );
    let ended = s.phone.request(&mut s.call, "hangup", json!({}), SOON).await.unwrap();
    assert_eq!(ended["status"], "ended");
    assert!(wait_until(SOON, || status(&s.robot)["motion"] == "idle"), "{}", status(&s.robot));
    let a = s.sim();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = s.sim();
    assert!((a["x"].as_f64().unwrap() - b["x"].as_f64().unwrap()).abs() < 0.005, "still moving: {a} -> {b}");
    assert_eq!(status(&s.robot)["at"], "unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_place_is_rejected_and_nothing_moves() {
    let mut s = scene("").await;
    let v = s.goto("attic").await;
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["status"], "rejected");
    assert_eq!(v[0]["destination"], "attic");
    assert_eq!(s.sim()["x"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goto_without_a_map_is_rejected_no_map() {
    let broker = Broker::start();
    let robot = start_robot(&broker, "").await;
    let (mut phone, paired) = paired_phone(&broker, &robot, "Alice").await;
    let (_sink, port) = media_sink();
    let InviteOutcome::Accepted(mut call) = phone.invite(&paired, &offer(port), SOON).await.unwrap() else {
        panic!("refused")
    };
    let v = phone.request(&mut call, "goto", json!({"destination":"kitchen"}), SOON).await.unwrap();
    assert_eq!(v["status"], "rejected");
    assert_eq!(v["reason"], "no_map");
}
