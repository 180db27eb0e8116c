//! Process faults (docs/reliability.md): robotd killed with SIGKILL in the
//! middle of a drive, and a stalled main loop under the systemd watchdog.
//! (SIGKILL during owner-store writes: tests/owners_crash.rs.)

#[path = "common/calls.rs"]
mod calls_kit;
mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use calls_kit::*;
use common::*;
use proxy::Proxy;
use robotd::hal::sim::{PinState, PinStateFile, read_state_file};

/// The systemd unit shipped with robotd.
fn unit() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/robotd.service")).unwrap()
}

/// Direction pins driven high: with the default boards (L298N) a motor
/// turns only when one of its IN pins is high (idle is a brake: both IN low,
/// EN at full duty).
fn driving_pins(st: &PinStateFile) -> Vec<u8> {
    st.pins.iter().filter(|(_, s)| matches!(s, PinState::Output { high: true })).map(|(p, _)| *p).collect()
}

/// Output and PWM pins (the motor side; inputs are sensors) not at their
/// safe level (low, duty 0).
fn unsafe_pins(st: &PinStateFile) -> Vec<u8> {
    st.pins.iter().filter(|(_, s)| !matches!(s, PinState::Input { .. }) && !s.is_safe()).map(|(p, _)| *p).collect()
}

/// SIGKILL during a drive: no code of robotd runs, so the pins stay as they
/// were (PWM keeps running on a real Pi). The broker publishes the will
/// `false`; `robotd safe-stop`, which the unit runs as `ExecStopPost=` after
/// any exit, drives every motor pin to its safe level. The sim backend's
/// state file stands for the pins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_drive_will_false_and_safe_stop_makes_every_motor_pin_safe() {
    assert!(
        unit().contains("\nExecStopPost=/usr/bin/robotd safe-stop\n"),
        "the unit must run safe-stop after any exit"
    );
    let pins_dir = tempfile::tempdir().unwrap();
    let pins = pins_dir.path().join("pins.json");
    let extra = format!("[video]\nfps = 10\nkbps = 200\n[hardware.sim]\nstate_file = \"{}\"\n", pins.display());
    let Owned { broker, mut robot, mut phone, paired } = robot_with_owner(&extra).await;
    let presence = format!("user/{}/isConnected", robot.id);
    let mut probe = Probe::connect(&broker, &[&presence]).await;
    probe.expect_msg(&presence, "true").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    let idle = read_state_file(&pins).expect("the sim mirrors its pins once the motors are set up");
    assert!(driving_pins(&idle).is_empty(), "pins driving before any drive: {idle:?}");

    // Drive (renewed) until the state file shows the motor pins driving.
    let end = Instant::now() + SOON;
    let before = loop {
        drive(&mut phone, &mut c, 0.5, 1000).await;
        let st = read_state_file(&pins).unwrap();
        if !driving_pins(&st).is_empty() {
            break st;
        }
        assert!(Instant::now() < end, "the state file never showed a driving pin: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    blocking(|| robot.kill());
    // Nothing ran after the kill: the pins are as they were.
    let after_kill = read_state_file(&pins).unwrap();
    assert!(!after_kill.safe_stopped);
    assert_eq!(driving_pins(&after_kill), driving_pins(&before), "the pins changed although robotd was killed");

    // The broker noticed: the will (keep_alive_s = 5, so about 7.5 s).
    let t = Instant::now();
    probe.expect("the will `false`", Duration::from_secs(30), |m| m.topic == presence && m.text() == "false").await;
    // The kernel closed the socket (FIN), so the broker knows at once.
    eprintln!("FIGURE will `false` {:?} after SIGKILL", t.elapsed());
    let mut late = Probe::connect(&broker, &[&presence]).await;
    let m = late.expect("retained presence", SOON, |m| m.topic == presence).await;
    assert!(m.retain && m.text() == "false", "{m:?}");

    // ExecStopPost=robotd safe-stop
    let out = blocking(|| robot.admin(&["safe-stop"]));
    assert!(out.status.success(), "safe-stop failed: {}", String::from_utf8_lossy(&out.stderr));
    let safe = read_state_file(&pins).unwrap();
    assert!(safe.safe_stopped, "{safe:?}");
    assert!(unsafe_pins(&safe).is_empty(), "motor pins not safe after safe-stop: {safe:?}");
    assert_eq!(safe.pins.keys().collect::<Vec<_>>(), before.pins.keys().collect::<Vec<_>>(), "{safe:?}");
}

/// Power loss: no FIN ever reaches the broker (the proxy black-holes the
/// link, then robotd is killed). The broker publishes the will once the
/// keep-alive runs out: 1.5 x keep_alive_s = 7.5 s (docs/protocol.md 3.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_the_broker_publishes_the_will_after_the_keep_alive() {
    let broker = Broker::start();
    let proxy = Proxy::start(broker.port);
    let mut robot = Robot::start(&broker, &format!("[mqtt]\nurl = \"{}\"\n", proxy.url()));
    let presence = format!("user/{}/isConnected", robot.id);
    let mut probe = Probe::connect(&broker, &[&presence]).await;
    probe.expect_msg(&presence, "true").await;
    proxy.black_hole();
    blocking(|| robot.kill());
    let t = Instant::now();
    // Not at once: the broker can only notice through the keep-alive, which
    // runs out 1.5 x 5 s after the last packet it received; that packet (a
    // ping, sent every 5 s) may have been up to 5 s before the black hole, so
    // the earliest possible will is 2.5 s after it. Checked with margin...
    let early = probe.collect_for(Duration::from_secs(2)).await;
    assert!(early.iter().all(|m| m.text() != "false"), "the will came before the keep-alive ran out: {early:?}");
    // ...but then.
    probe.expect("the will `false`", Duration::from_secs(30), |m| m.topic == presence && m.text() == "false").await;
    let after = t.elapsed();
    eprintln!("FIGURE power loss (no FIN): will `false` {after:?} after the robot died (keep_alive_s = 5)");
    assert!(after <= Duration::from_secs(15), "the will took {after:?}");
}

/// Datagrams received on a notify socket, with their arrival time.
type Notes = Arc<Mutex<Vec<(Instant, String)>>>;

fn listen(sock: UnixDatagram) -> Notes {
    let notes: Notes = Default::default();
    let n = notes.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(len) = sock.recv(&mut buf) {
            n.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..len]).into_owned()));
        }
    });
    notes
}

fn pings(notes: &Notes, from: Instant, to: Instant) -> usize {
    notes.lock().unwrap().iter().filter(|(t, s)| *t >= from && *t < to && s.contains("WATCHDOG=1")).count()
}

/// The watchdog: robotd sends `WATCHDOG=1` from its main loop (at half of
/// `WATCHDOG_USEC`), so when that loop stalls the pings stop and systemd
/// (`WatchdogSec=` in the unit) kills and restarts it, and `ExecStopPost=`
/// makes the motors safe. The stall comes from a test mode that is off by
/// default (`ROBOTD_TEST_STALL_MAIN_LOOP_AFTER_MS`). The MQTT link runs on
/// another task and stays up: only the watchdog can catch this failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_stop_when_the_main_loop_stalls() {
    assert!(unit().contains("\nWatchdogSec="), "the unit must set WatchdogSec=");
    let broker = Broker::start();
    let mut robot = Robot::configure(&broker, "");
    let sock_path = robot.dir.path().join("notify.sock");
    let notes = listen(UnixDatagram::bind(&sock_path).unwrap());
    let presence = format!("user/{}/isConnected", robot.id);
    let mut probe = Probe::connect(&broker, &[&presence]).await;

    // Pings every 200 ms; the main loop stalls 4 s after start.
    let started = Instant::now();
    robot.spawn_under_watchdog(&sock_path, 400_000, &[("ROBOTD_TEST_STALL_MAIN_LOOP_AFTER_MS", "4000")]);
    probe.expect_msg(&presence, "true").await;
    assert!(
        blocking(|| wait_until(SOON, || notes.lock().unwrap().iter().any(|(_, s)| s.contains("READY=1")))),
        "no READY=1: {:?}",
        notes.lock().unwrap()
    );
    // Healthy: pings arrive.
    let healthy_from = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let healthy = pings(&notes, healthy_from, Instant::now());
    assert!(healthy >= 3, "only {healthy} watchdog pings in 1.5 s at a 200 ms period");

    // Stalled: the log says so, and no ping comes after it (allow 300 ms for
    // one already on its way when the log line was noticed).
    assert!(
        blocking(|| wait_until(SOON, || robot.log().contains("main loop stalled on purpose"))),
        "the test mode did not stall the loop:\n{}",
        robot.log()
    );
    let stalled = Instant::now();
    let stalled_after = stalled - started;
    // Longer than WatchdogSec=10s would allow, scaled: 3 s is 15 periods.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = pings(&notes, stalled + Duration::from_millis(300), Instant::now());
    assert_eq!(after, 0, "watchdog pings went on while the main loop was stalled");
    assert!(unsafe { libc::kill(robot.pid(), 0) } == 0, "robotd died by itself; the point is that it does not");
    // The MQTT side still looks healthy (no will), which is why the watchdog is needed.
    let extra = probe.collect_for(Duration::from_secs(5)).await;
    assert!(extra.iter().all(|m| m.text() != "false"), "the broker saw the robot go: {extra:?}");
    eprintln!(
        "FIGURE watchdog: {healthy} pings in 1.5 s while healthy (period 200 ms); stall at {stalled_after:?}; \
         0 pings in the 3 s after; presence still `true` 8 s after the stall"
    );
}

/// Pin events from `[hardware.sim] pin_events`: (pin, CLOCK_MONOTONIC ns, level).
fn pin_event(sock: &UnixDatagram, timeout: Option<Duration>) -> Option<(u8, u64, f64)> {
    let mut b = [0u8; 64];
    match timeout {
        None => sock.set_nonblocking(true).unwrap(),
        Some(t) => {
            sock.set_nonblocking(false).unwrap();
            sock.set_read_timeout(Some(t)).unwrap();
        }
    }
    match sock.recv(&mut b) {
        Ok(17) => Some((
            b[0],
            u64::from_le_bytes(b[1..9].try_into().unwrap()),
            f64::from_le_bytes(b[9..17].try_into().unwrap()),
        )),
        _ => None,
    }
}

/// The motor-side deadman: the main loop stalls (test mode, at SIGUSR1)
/// while a `drive` with `ms` = 500 is in force, so nothing in it can stop
/// the motors. The motor thread does: the direction pins go low within the
/// drive's time plus a margin, measured on the pins' own timestamps (the
/// sim's `pin_events`, CLOCK_MONOTONIC). Before it, the motors kept driving
/// until the watchdog killed robotd (`WatchdogSec=10s`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_during_a_main_loop_stall_is_stopped_on_time_by_the_motor_side_deadman() {
    const MS: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let ev_path = dir.path().join("pins.sock");
    let ev = UnixDatagram::bind(&ev_path).unwrap();
    let extra = format!("[video]\nfps = 10\nkbps = 200\n[hardware.sim]\npin_events = \"{}\"\n", ev_path.display());
    let broker = Broker::start();
    let mut robot = Robot::configure(&broker, &merge_toml(TEST_VIDEO, &extra));
    robot.spawn_with_env(&[(robotd::daemon::TEST_STALL_ENV, "usr1")]);
    wait_online(&broker, &robot).await;
    let (mut phone, paired) = pair_phone(&broker, &robot, "Alice").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    let hw = robotd::hal::HardwareConfig::default();
    let direction = [hw.left.in1_pin, hw.left.in2_pin, hw.right.in1_pin, hw.right.in2_pin];
    let mut level: std::collections::HashMap<u8, f64> = direction.iter().map(|&p| (p, 0.0)).collect();
    while pin_event(&ev, None).is_some() {}

    // Answered `ok`: executed, and its pin writes were sent before the answer.
    drive(&mut phone, &mut c, 0.5, MS).await;
    let mut t_on = 0;
    while let Some((pin, ns, v)) = pin_event(&ev, None) {
        if let Some(l) = level.get_mut(&pin) {
            *l = v;
            t_on = t_on.max(ns);
        }
    }
    assert!(level.values().any(|&v| v > 0.0), "the drive set no direction pin: {level:?}");

    unsafe { libc::kill(robot.pid(), libc::SIGUSR1) };
    let mut stall_ns: Option<u64> = None;
    assert!(
        blocking(|| wait_until(SOON, || {
            let log = robot.log();
            let line = log.lines().find(|l| l.contains("main loop stalled on purpose"));
            stall_ns = line.and_then(|l| plain(l).split("mono_ns=").nth(1)?.split_whitespace().next()?.parse().ok());
            stall_ns.is_some()
        })),
        "the test mode did not stall the loop:\n{}",
        robot.log()
    );
    let stall_ns = stall_ns.unwrap();
    let deadline = t_on + MS * 1_000_000;
    assert!(
        stall_ns < deadline,
        "the loop stalled {} ms after the drive, past its {MS} ms: the machine is too slow for this test to mean anything",
        (stall_ns - t_on) / 1_000_000
    );

    // Only the motor thread can stop them now.
    let t_off = blocking(|| {
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Some((pin, ns, v)) = pin_event(&ev, Some(Duration::from_millis(100))) {
                if let Some(l) = level.get_mut(&pin) {
                    *l = v;
                    if level.values().all(|&v| v == 0.0) {
                        return Some(ns);
                    }
                }
            }
        }
        None
    });
    let Some(t_off) = t_off else {
        panic!("the motors were still driving 3 s into the stall ({level:?}):\n{}", robot.log());
    };
    let after = Duration::from_nanos(t_off - t_on);
    eprintln!(
        "FIGURE motor-side deadman: drive of {MS} ms, loop stalled {} ms after it; pins off {after:?} after the drive",
        (stall_ns - t_on) / 1_000_000
    );
    assert!(after >= Duration::from_millis(MS - 5), "stopped before the drive's time ({after:?})");
    // The thread steps in 10 ms after the deadline; the rest is margin for a busy machine.
    assert!(after <= Duration::from_millis(MS + 250), "pins off only {after:?} after a {MS} ms drive");
    assert!(robot.log().contains("motor-side deadman"), "{}", robot.log());
    assert!(unsafe { libc::kill(robot.pid(), 0) } == 0, "robotd died; the loop was only stalled");
}
