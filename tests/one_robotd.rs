//! One robotd per robot, and the local admin surface around it
//! (docs/reliability.md, "One robotd per robot"): a second daemon on the same
//! state directory, `robotd id` racing the daemon on a fresh directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// Wait for `child` to exit, up to `timeout`; kill it (and fail) otherwise.
fn wait_exit(mut child: Child, timeout: Duration, what: &str) -> Output {
    if !wait_until(timeout, || child.try_wait().unwrap().is_some()) {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("{what} still running after {timeout:?}; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    child.wait_with_output().unwrap()
}

fn robotd(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(robotd_bin());
    cmd.arg("-c").arg(config).args(args).env("RUST_LOG", "robotd=debug,info").env_remove("NOTIFY_SOCKET");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// The daemon's status through its admin socket, once it answers.
fn status(config: &Path) -> Option<serde_json::Value> {
    let out = robotd(config, &["status"]).output().unwrap();
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn a_second_robotd_on_the_same_state_dir_exits_at_once_naming_the_first_and_leaves_its_socket() {
    let broker = Broker::start();
    let mut first = Robot::start(&broker, "");
    assert!(wait_until(SOON, || status(&first.config).is_some()), "the first robotd never answered:\n{}", first.log());
    let connects = status(&first.config).unwrap()["broker"]["connects"].clone();

    let second = robotd(&first.config, &["run"]).spawn().unwrap();
    let out = wait_exit(second, SOON, "the second robotd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second robotd succeeded: {err}");
    assert!(
        err.contains(&format!("PID {}", first.pid())) && err.contains("only one robotd"),
        "the error must name the running robotd's PID {}: {err}",
        first.pid()
    );

    // The first still has its socket (the second neither replaced nor
    // deleted it) and its broker connection (no fight over the client ID).
    assert!(first.socket().exists(), "the admin socket is gone");
    let st = status(&first.config).expect("the first robotd still answers on its socket");
    assert_eq!(st["robot"], first.id.as_str());
    assert_eq!(st["broker"]["connects"], connects, "the first robotd had to reconnect: {st}");
    assert!(first.stop().success(), "{}", first.log());
}

/// A config on a fresh state directory (no `robotd id` run before) whose
/// broker port has nothing listening: the daemon starts without a broker.
fn fresh_config(dir: &Path) -> PathBuf {
    let config = dir.join("robotd.toml");
    std::fs::write(
        &config,
        format!(
            "[robot]\nstate_dir = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[control]\nsocket = \"{}\"\n",
            dir.join("state").display(),
            free_port(),
            dir.join("control.sock").display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn robotd_id_and_the_daemon_started_together_on_a_fresh_dir_agree_on_one_id() {
    for round in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let config = fresh_config(dir.path());
        let log = dir.path().join("robotd.log");
        let mut daemon = robotd(&config, &["run"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let id = robotd(&config, &["id"]).spawn().unwrap();
        let out = wait_exit(id, SOON, "robotd id");
        assert!(out.status.success(), "round {round}: robotd id: {}", String::from_utf8_lossy(&out.stderr));
        let printed = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let answered = wait_until(SOON, || status(&config).is_some());
        let st = status(&config);
        let _ = daemon.kill();
        let _ = daemon.wait();
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(answered, "round {round}: the daemon never answered:\n{log}");
        let on_disk = std::fs::read_to_string(dir.path().join("state/robot-id")).unwrap().trim().to_owned();
        assert_eq!(printed, on_disk, "round {round}: robotd id printed another ID than the one on disk");
        assert_eq!(st.unwrap()["robot"], on_disk.as_str(), "round {round}: the daemon runs under another ID");
    }
}

/// `robotd safe-stop` while the daemon runs would set the pins under it (and
/// the sim's state file would say `safe_stopped` while the daemon drives):
/// refused, naming the PID, unless `--force`. After the daemon has died, even
/// by SIGKILL (the kernel releases the lock), it works as `ExecStopPost=`.
#[test]
fn safe_stop_is_refused_while_the_daemon_runs_and_works_after_it_died() {
    let broker = Broker::start();
    let pins_dir = tempfile::tempdir().unwrap();
    let pins = pins_dir.path().join("pins.json");
    let mut robot = Robot::start(&broker, &format!("[hardware.sim]\nstate_file = \"{}\"\n", pins.display()));
    assert!(wait_until(SOON, || status(&robot.config).is_some()), "robotd never answered:\n{}", robot.log());
    let before = std::fs::read(&pins).expect("the sim mirrors its pins once the motors are set up");

    let out = robot.admin(&["safe-stop"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "safe-stop succeeded while robotd runs: {err}");
    assert!(err.contains(&format!("PID {}", robot.pid())) && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&pins).unwrap(), before, "a refused safe-stop changed the pin state");

    let out = robot.admin(&["safe-stop", "--force"]);
    assert!(out.status.success(), "safe-stop --force: {}", String::from_utf8_lossy(&out.stderr));
    assert!(robotd::hal::sim::read_state_file(&pins).unwrap().safe_stopped);
    assert!(status(&robot.config).is_some(), "the daemon must survive a forced safe-stop");

    // ExecStopPost= after SIGKILL: no code of robotd ran, the lock is gone.
    std::fs::write(&pins, &before).unwrap();
    robot.kill();
    let out = robot.admin(&["safe-stop"]);
    assert!(out.status.success(), "safe-stop after SIGKILL: {}", String::from_utf8_lossy(&out.stderr));
    assert!(robotd::hal::sim::read_state_file(&pins).unwrap().safe_stopped);
}

/// A state directory left open to others (0755: `robot-id` readable by every
/// local user) is made 0700 by robotd, which logs that it did so.
#[test]
fn a_loose_state_directory_is_made_private_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let broker = Broker::start();
    let mut robot = Robot::configure(&broker, "");
    let state = robot.state_dir();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    robot.spawn();
    assert!(wait_until(SOON, || status(&robot.config).is_some()), "robotd never answered:\n{}", robot.log());
    assert_eq!(mode(&state), 0o700, "robotd left {} at {:o}", state.display(), mode(&state));
    let log = robot.log();
    assert!(log.contains("made it 0700") && log.contains("0755"), "robotd did not say it tightened the mode:\n{log}");
    // `robotd id` (run by an admin before the first start) does the same.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
    assert!(robot.admin(&["id"]).status.success());
    assert_eq!(mode(&state), 0o700);
}

/// Open file descriptors of a process.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// 1100 idle connections to the admin socket (more than the 1024 files a
/// service may open by default): robotd keeps at most 16 of them, closes the
/// rest at once and cuts the idle ones off after 2 s, so its descriptors stay
/// few and `robotd status` is answered in seconds, not after the minutes a
/// queue of 1100 idle clients at 5 s each would take.
#[test]
fn a_thousand_idle_admin_connections_neither_exhaust_descriptors_nor_hold_up_status() {
    let broker = Broker::start();
    let mut robot = Robot::configure(&broker, "");
    robot.spawn_with_fd_limit(1024);
    assert!(wait_until(SOON, || status(&robot.config).is_some()), "robotd never answered:\n{}", robot.log());
    let fds_before = open_fds(robot.pid());

    let end = std::time::Instant::now() + Duration::from_secs(60);
    let mut idle = Vec::new();
    while idle.len() < 1100 && std::time::Instant::now() < end {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(robot.socket()) {
            idle.push(s);
        }
    }
    let fds_during = open_fds(robot.pid());
    let t = std::time::Instant::now();
    let answered = status(&robot.config);
    let took = t.elapsed();
    eprintln!(
        "FIGURE admin socket: {} idle connections; robotd fds {fds_before} before, {fds_during} during; status answered in {took:?}",
        idle.len()
    );
    assert_eq!(idle.len(), 1100, "could not even open the idle connections");
    assert!(
        fds_during <= fds_before + 2 * robotd::daemon::control::MAX_CONNECTIONS,
        "robotd holds {fds_during} descriptors with the idle connections open ({fds_before} before)"
    );
    assert!(answered.is_some(), "robotd status failed with 1100 idle connections open:\n{}", robot.log());
    assert!(took < Duration::from_secs(10), "robotd status took {took:?}");
    assert!(!robot.log().contains("accept failed"), "robotd ran out of descriptors:\n{}", robot.log());

    // And afterwards robotd is fine.
    drop(idle);
    assert!(status(&robot.config).is_some());
    assert!(robot.stop().success(), "{}", robot.log());
}
