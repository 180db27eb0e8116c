//! Network faults between robotd and a real Mosquitto (docs/reliability.md):
//! a TCP proxy (tests/common/proxy.rs) on the robot's link cuts, resets and
//! black-holes it; the broker itself is restarted. The phone talks to the
//! broker directly, so only the robot's link is faulty.
//!
//! Figures (reconnect and detection times) are printed with `--nocapture`
//! and reported in docs/reliability.md.

#[path = "common/calls.rs"]
mod calls_kit;
mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use calls_kit::*;
use common::*;
use proxy::Proxy;
use robotd::phone::{InviteOutcome, Offer, PairedRobot, Phone};
use serde_json::json;

/// The test camera at a low rate: these tests are about the link.
fn video() -> String {
    merge_toml(TEST_VIDEO, "[video]\nfps = 10\nkbps = 200\n")
}

struct Rig {
    broker: Broker,
    proxy: Proxy,
    robot: Robot,
    phone: Phone,
    paired: PairedRobot,
}

/// A broker, a proxy in front of it for the robot only, the robot (test
/// camera, `extra` TOML; keep_alive_s = 5 from the harness) and a paired phone.
async fn rig(extra: &str) -> Rig {
    let broker = Broker::start();
    let proxy = Proxy::start(broker.port);
    let via_proxy = format!("[mqtt]\nurl = \"{}\"\n", proxy.url());
    let robot = Robot::start(&broker, &merge_toml(&merge_toml(&video(), &via_proxy), extra));
    wait_online(&broker, &robot).await;
    assert!(proxy.accepted() >= 1, "the robot did not connect through the proxy");
    let (phone, paired) = pair_phone(&broker, &robot, "Alice").await;
    Rig { broker, proxy, robot, phone, paired }
}

/// Wait until `robotd status` satisfies `f`; returns the status and how long it took.
fn wait_status(robot: &Robot, timeout: Duration, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> Duration {
    let t = Instant::now();
    let mut st = serde_json::Value::Null;
    let ok = blocking(|| {
        wait_until(timeout, || {
            st = status_sync(robot);
            f(&st)
        })
    });
    assert!(ok, "timed out waiting for {what}: {st}\n{}", robot.log());
    t.elapsed()
}

/// An invite during the call must be answered `busy`: proves the robot's
/// invite subscription and its owner check work on this connection.
async fn assert_busy(phone: &mut Phone, paired: &PairedRobot, port: u16) {
    match phone.invite(paired, &Offer::new(LOCALHOST, port), SOON).await.expect("an answer to the invite") {
        InviteOutcome::Refused(v) => assert_eq!(v["status"], "busy", "{v}"),
        InviteOutcome::Accepted(a) => panic!("a second call was accepted: {:?}", a.accept),
    }
}

/// docs/protocol.md 7.7: "The call does not end when the robot loses its
/// broker connection: the motors stop at once [...] after reconnecting the
/// robot subscribes to the call's topics again". Checked for a cut (FIN) and
/// a reset (RST) of the robot's TCP connection in the middle of a drive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_or_reset_mid_call_stops_motors_and_the_call_resumes() {
    let Rig { broker, proxy, robot, mut phone, paired } = rig("").await;
    let presence = format!("user/{}/isConnected", robot.id);
    let mut probe = Probe::connect(&broker, &[&presence]).await;
    probe.expect_msg(&presence, "true").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;

    for fault in ["cut", "reset"] {
        let before = status(&robot);
        let deadman_before = deadman_count(&robot);
        drive(&mut phone, &mut c, 0.5, 1000).await;
        let drove_at = Instant::now();
        assert_eq!(ping(&mut phone, &mut c).await["motion"], "driving");

        let n = if fault == "cut" { proxy.cut() } else { proxy.reset() };
        assert!(n >= 1, "{fault}: no connection to break");
        // Motors: stopped by the loss of the link, well before the drive's
        // 1000 ms deadman (the deadman count below tells which one it was).
        let stopped = wait_status(&robot, SOON, "motion idle", |st| st["motion"] == "idle");
        wait_until_still(&robot, Duration::from_millis(300)).await;
        tokio::time::sleep((drove_at + Duration::from_millis(1500)).saturating_duration_since(Instant::now())).await;
        assert_eq!(deadman_count(&robot), deadman_before, "{fault}: the drive was left to the deadman");

        // The robot comes back by itself: a new connection, presence `true`
        // re-announced (anything the probe sees now arrived after the fault).
        let back = wait_status(&robot, SOON, "reconnected", |st| {
            st["broker"]["connected"] == true && connects(st) > connects(&before)
        });
        probe
            .expect(&format!("presence true after the {fault}"), SOON, |m| m.topic == presence && m.text() == "true")
            .await;
        eprintln!("{fault}: motors idle after {stopped:?} (status poll), reconnected after {back:?}");

        // The call went on (7.7), and its subscriptions are back: a request
        // in it is answered, an invite gets `busy`.
        let st = status(&robot);
        assert_eq!(st["call"]["session"], c.session.as_str(), "{fault}: {st}");
        assert_eq!(ping(&mut phone, &mut c).await["motion"], "idle", "{fault}");
        assert_busy(&mut phone, &paired, sink.port).await;
        // And it drives again.
        drive(&mut phone, &mut c, 0.3, 300).await;
        assert_eq!(request(&mut phone, &mut c, "stop", json!({})).await["status"], "stopped");
    }
}

/// 20 broker restarts in a row: each time the robot is back (presence `true`
/// seen by a fresh probe on the restarted broker, which keeps no retained
/// messages) and an invite from its owner is accepted. The 3 s target is
/// reported, not asserted; the assertion is a generous 15 s per restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_20_times_robot_back_each_time() {
    // 20 calls in quick succession: above the default call set-up limit.
    let Owned { mut broker, robot, mut phone, paired } =
        robot_with_owner("[video]\nfps = 10\nkbps = 200\n[call]\nmax_setups_per_10s = 100\n").await;
    let presence = format!("user/{}/isConnected", robot.id);
    let sink = UdpSink::bind();
    let mut times = Vec::new();
    for round in 0..20 {
        broker.restart();
        // `restart` returns once the new broker accepts connections.
        let up = Instant::now();
        let mut probe = Probe::connect(&broker, &[&presence]).await;
        probe
            .expect(&format!("presence after restart {round}"), SOON, |m| m.topic == presence && m.text() == "true")
            .await;
        times.push(up.elapsed());
        // The owner calls; the call works and ends cleanly.
        let mut c = call(&mut phone, &paired, sink.port).await;
        assert_eq!(ping(&mut phone, &mut c).await["status"], "ok", "round {round}");
        let seq = phone.send(&mut c, "hangup", &json!({})).await;
        assert_eq!(ended(&mut phone, &c, SOON).await["re"], seq, "round {round}");
    }
    let mut sorted = times.clone();
    sorted.sort();
    let ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
    eprintln!(
        "FIGURE broker restart -> presence true (ms), 20 rounds: {ms:?}; median {} ms, max {} ms, within 3 s: {}/20",
        sorted[10].as_millis(),
        sorted[19].as_millis(),
        times.iter().filter(|t| **t <= Duration::from_secs(3)).count()
    );
    assert!(sorted[19] <= Duration::from_secs(15), "a reconnect took {:?}: {ms:?}", sorted[19]);
    let s = status(&robot);
    assert_eq!(connects(&s), 21, "one connection per broker start");
    // Twenty quick drops, yet no session takeover: each time a reconnect failed first.
    assert_eq!(s["broker"]["taken_over"], 0, "broker restarts were taken for a session takeover: {s}");
}

/// A black-holed link (no FIN, no RST: packets just stop) during a drive:
/// the deadman stops the motors first; the keep-alive then detects the dead
/// link and robotd reconnects once packets flow again. A drive the phone
/// sent into the hole is never executed, and the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_link_deadman_stops_then_keep_alive_detects_and_robot_recovers() {
    // A long call timeout so that the call outlives the outage.
    let Rig { broker, proxy, robot, mut phone, paired } = rig("[call]\ntimeout_s = 60\n").await;
    let presence = format!("user/{}/isConnected", robot.id);
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    let deadman_before = deadman_count(&robot);
    let before = status(&robot);
    drive(&mut phone, &mut c, 0.5, 1000).await;
    let drove_at = Instant::now();
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "driving");

    proxy.black_hole();
    let holed = Instant::now();
    let lost = phone.send(&mut c, "drive", &json!({"linear": 0.5, "angular": 0.0, "ms": 1000})).await;

    // The deadman stops the motors while the robot still believes it is online.
    let idle = wait_status(&robot, SOON, "motion idle", |st| st["motion"] == "idle");
    assert!(
        blocking(|| wait_until(SOON, || deadman_count(&robot) == deadman_before + 1)),
        "the motors did not stop by the deadman:\n{}",
        robot.log()
    );
    let idle_after = drove_at.elapsed();
    assert!(idle_after < Duration::from_secs(4), "the motors ran {idle_after:?} for a 1000 ms drive");
    wait_until_still(&robot, Duration::from_millis(300)).await;

    // keep_alive_s = 5: rumqttc pings every 5 s and gives up at the next
    // ping without an answer, so 5 to 10 s; allow for a busy machine.
    let detected =
        wait_status(&robot, Duration::from_secs(30), "link loss detected", |st| st["broker"]["connected"] == false);
    let detected_after = holed.elapsed();
    assert!(detected_after <= Duration::from_secs(20), "keep-alive took {detected_after:?}");
    assert!(robot.log().contains("connection to broker lost"), "{}", robot.log());
    // Still in the hole: reconnect attempts do not get through.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(status(&robot)["broker"]["connected"], false, "connected through a black hole?");

    let mut probe = Probe::connect(&broker, &[&presence]).await;
    proxy.pass();
    let healed = Instant::now();
    wait_status(&robot, SOON, "reconnected", |st| {
        st["broker"]["connected"] == true && connects(st) > connects(&before)
    });
    probe.expect("presence true after the outage", SOON, |m| m.topic == presence && m.text() == "true").await;
    let back = healed.elapsed();
    eprintln!(
        "FIGURE black hole: motors idle {idle_after:?} after the drive (deadman 1000 ms; status poll {idle:?}), \
         loss detected {detected_after:?} after the hole began ({detected:?} polling), presence true {back:?} after packets flowed again"
    );

    // The call is still there and answers; the drive sent into the hole was not executed.
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "idle");
    let late = phone.response(&c, Duration::from_secs(2), |k, v| k == "drive" && v["re"] == lost).await;
    if let Some((_, v)) = &late {
        assert_eq!(v["status"], "rejected", "the drive sent into the black hole was executed late: {v}");
    }
    assert_eq!(deadman_count(&robot), deadman_before + 1, "the drive sent into the black hole moved the motors");
    assert_eq!(status(&robot)["motion"], "idle");
    assert_busy(&mut phone, &paired, sink.port).await;
}

/// A drive that waited in a short partition (shorter than the keep-alive
/// detection, so the TCP connection survives and delivers it when packets
/// flow again) arrives seconds late. It must not move the robot: robotd
/// refuses motion requests that arrive more than 2 s later than the call's
/// fastest message (docs/protocol.md 5.5) and answers `stale`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drive_delayed_by_a_short_black_hole_is_not_executed_late() {
    let Rig { broker: _broker, proxy, robot, mut phone, paired } = rig("").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    for _ in 0..3 {
        assert_eq!(ping(&mut phone, &mut c).await["motion"], "idle");
    }
    let before = status(&robot);
    let deadman_before = deadman_count(&robot);
    let p0 = sim_pose(&before);

    proxy.black_hole();
    let holed = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = phone.send(&mut c, "drive", &json!({"linear": 0.5, "angular": 0.0, "ms": 1000})).await;
    let goto = phone.send(&mut c, "goto", &json!({"destination": "kitchen"})).await;
    tokio::time::sleep((holed + Duration::from_millis(3500)).saturating_duration_since(Instant::now())).await;
    proxy.pass();

    // The same connection delivered it (no reconnect), 3 s late.
    let (_, v) =
        phone.response(&c, SOON, |k, v| k == "drive" && v["re"] == late).await.expect("the late drive answered");
    assert_eq!(connects(&status(&robot)), connects(&before), "the link was re-established: nothing was late");
    assert_eq!(v["status"], "rejected", "a drive 3 s late was executed: {v}");
    assert_eq!(v["reason"], "stale", "{v}");
    let (_, v) = phone.response(&c, SOON, |k, v| k == "goto" && v["re"] == goto).await.expect("the late goto answered");
    assert_eq!(
        (&v["destination"], &v["status"], &v["reason"]),
        (&json!("kitchen"), &json!("rejected"), &json!("stale")),
        "{v}"
    );
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "idle", "the late drive moved the motors");
    let still = wait_until_still(&robot, Duration::from_millis(500)).await;
    assert!((still.x - p0.x).abs() < 1e-3, "the robot moved: {p0:?} -> {still:?}");
    assert_eq!(deadman_count(&robot), deadman_before);

    // Positive control: a drive sent now is on time and moves the robot.
    drive(&mut phone, &mut c, 0.5, 300).await;
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "driving");
    let moved = wait_until_still(&robot, Duration::from_millis(200)).await;
    assert!(moved.x > p0.x + 0.01, "the on-time drive did not move the robot: {p0:?} -> {moved:?}");
}

/// Delay (not loss) on the link: 300 ms each way is slow but on time, so
/// drives are executed; the lateness rule must not refuse a slow but
/// steady link (the floor includes the constant delay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_delay_on_the_link_is_not_lateness() {
    let Rig { broker: _broker, proxy, robot, mut phone, paired } = rig("").await;
    proxy.delay(Duration::from_millis(300));
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    let t = Instant::now();
    assert_eq!(ping(&mut phone, &mut c).await["status"], "ok");
    let rtt = t.elapsed();
    assert!(rtt >= Duration::from_millis(600), "the proxy did not delay: round trip {rtt:?}");
    for _ in 0..5 {
        drive(&mut phone, &mut c, 0.3, 1000).await;
    }
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "driving");
    assert_eq!(request(&mut phone, &mut c, "stop", json!({})).await["status"], "stopped");
    assert_eq!(status(&robot)["motion"], "idle");
}

/// A broker that holds messages back (issue 15's malicious broker): it
/// holds the invite 8 s, then a drive 9.5 s. Under the old rule (lateness
/// measured from the call's fastest message, the held invite included) the
/// drive moved the robot 9.8 s late; with freshness tokens (protocol 5.7) it
/// is refused, and an on-time drive afterwards moves as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_invite_and_a_drive_held_9_5_s_never_move_the_robot_late() {
    // A long keep-alive, so holding the robot's connection is not a disconnect.
    let Rig { broker: _broker, proxy, robot, mut phone, paired } = rig("[mqtt]\nkeep_alive_s = 60\n").await;
    let sink = UdpSink::bind();
    let before = status(&robot);
    let p0 = sim_pose(&before);

    proxy.black_hole();
    let offer = Offer::new(LOCALHOST, sink.port);
    let (outcome, ()) = tokio::join!(phone.invite(&paired, &offer, Duration::from_secs(40)), async {
        tokio::time::sleep(Duration::from_secs(8)).await;
        proxy.pass();
    });
    let Ok(InviteOutcome::Accepted(mut c)) = outcome else { panic!("the held invite was not accepted: {outcome:?}") };

    proxy.black_hole();
    let held = phone.send(&mut c, "drive", &json!({"linear": 0.5, "angular": 0.0, "ms": 1000})).await;
    tokio::time::sleep(Duration::from_millis(9500)).await;
    proxy.pass();
    let (_, v) =
        phone.response(&c, SOON, |k, v| k == "drive" && v["re"] == held).await.expect("the held drive answered");
    assert_eq!(connects(&status(&robot)), connects(&before), "the link was re-established: nothing was held");
    assert_eq!((v["status"].as_str(), v["reason"].as_str()), (Some("rejected"), Some("stale")), "moved late: {v}");
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "idle", "the held drive moved the motors");
    let still = wait_until_still(&robot, Duration::from_millis(500)).await;
    assert!((still.x - p0.x).abs() < 1e-3, "the robot moved: {p0:?} -> {still:?}");

    // Positive control: on time, it moves.
    drive(&mut phone, &mut c, 0.5, 300).await;
    let moved = wait_until_still(&robot, Duration::from_millis(200)).await;
    assert!(moved.x > p0.x + 0.01, "the on-time drive did not move the robot: {p0:?} -> {moved:?}");
}

/// The robot's wall clock steps (libfaketime, monotonic clock left alone, as
/// an NTP step would be) and the phone's clock is 6 s off: neither locks the
/// owner out, and a drive held 6 s while the robot's clock steps back 6 s is
/// still refused (issue 15: it used to move 6.4 s late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_steps_on_either_side_neither_lock_out_nor_let_a_held_drive_move() {
    const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    assert!(std::path::Path::new(LIBFAKETIME).exists(), "libfaketime (Debian faketime) is missing");
    let broker = Broker::start();
    let proxy = Proxy::start(broker.port);
    let via_proxy = format!("[mqtt]\nurl = \"{}\"\nkeep_alive_s = 60\n", proxy.url());
    let mut robot = Robot::configure(&broker, &merge_toml(&video(), &via_proxy));
    let offset = robot.state_dir().with_file_name("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let offset_env = offset.display().to_string();
    robot.spawn_with_env(&[
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", &offset_env),
        ("FAKETIME_NO_CACHE", "1"),
        ("DONT_FAKE_MONOTONIC", "1"),
    ]);
    wait_online(&broker, &robot).await;
    let (mut phone, paired) = pair_phone(&broker, &robot, "Alice").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;

    for step in ["+6", "-6", "+0"] {
        std::fs::write(&offset, format!("{step}\n")).unwrap();
        // The robot's clock did step: its answers' `ts` says so.
        let seq = phone.send(&mut c, "ping", &json!({})).await;
        let topic = robotd::wire::topics::session_response(&c.session, "ping");
        let m = phone.recv_until(SOON, |m| m.topic == topic && m.json()["re"] == seq).await.expect("ping answered");
        let skew = m.auth().ts_ms.unwrap() as i64 - robotd::wire::props::now_ms() as i64;
        let want: i64 = step.parse::<i64>().unwrap() * 1000;
        assert!((skew - want).abs() < 1500, "robotd's clock is {skew} ms off, not {want}: is libfaketime working?");
        // The robot's clock stepped: a fresh drive still moves.
        drive(&mut phone, &mut c, 0.3, 300).await;
        // The phone's clock 6 s off either way (its `ts`): still moves.
        for off in [-6000i64, 6000] {
            phone.refresh_token(&mut c).await;
            let seq = c.next_seq();
            let topic = robotd::wire::topics::session_request(&c.session, "drive");
            let body = json!({"linear": 0.3, "angular": 0.0, "ms": 300, "token": c.latest_token()});
            let ts = robotd::wire::props::now_ms().saturating_add_signed(off);
            phone.publish_signed(&c.session_key, topic, serde_json::to_vec(&body).unwrap(), seq, ts).await;
            let (_, v) = phone.response(&c, SOON, |k, v| k == "drive" && v["re"] == seq).await.expect("answered");
            assert_eq!(v["status"], "ok", "robot clock {step} s, phone clock {off} ms off: {v}");
        }
    }
    // Held 6 s while the robot's clock steps back 6 s: refused.
    let _ = wait_until_still(&robot, Duration::from_millis(500)).await;
    let p0 = sim_pose(&status(&robot));
    phone.refresh_token(&mut c).await;
    proxy.black_hole();
    let held = phone.send(&mut c, "drive", &json!({"linear": 0.5, "angular": 0.0, "ms": 1000})).await;
    std::fs::write(&offset, "-6\n").unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.pass();
    let (_, v) =
        phone.response(&c, SOON, |k, v| k == "drive" && v["re"] == held).await.expect("the held drive answered");
    assert_eq!(v["reason"], "stale", "a drive held 6 s moved: {v}");
    let still = wait_until_still(&robot, Duration::from_millis(500)).await;
    assert!((still.x - p0.x).abs() < 1e-3, "the robot moved: {p0:?} -> {still:?}");
}
