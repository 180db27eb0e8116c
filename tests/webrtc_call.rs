//! Version 2 calls end to end (docs/protocol.md 7.8): robotd with its media
//! helper, `robotctl call --webrtc` as the phone, the broker on the
//! namespace internet's server (tests/common/netns.rs). Everything runs in
//! namespaces made here, so no ICE candidate is this machine's address.
//! Skips when not root or without `ip netns`, unless `ROBOTD_NETNS_REQUIRED=1`.

#[path = "common/calls.rs"]
mod calls_kit;
mod common;
#[path = "common/netns.rs"]
mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use calls_kit::*;
use common::*;
use netns::{Internet, Ns};

/// robotd in the home LAN behind its router, with a test pattern.
fn robot_in(net: &Internet) -> Robot {
    let mut robot = Robot::configure_url(&net.broker_url(), &merge_toml(TEST_VIDEO, SMALL_VIDEO));
    robot.spawn_wrapped(net.robot.command("env"));
    robot
}

/// `robotctl --keys FILE ARGS...` inside `ns`.
fn robotctl(ns: &Ns, keys: &Path, args: &[&str]) -> Command {
    let mut c = ns.command(robotctl_bin());
    c.arg("--keys").arg(keys).args(args).stdin(Stdio::null());
    c
}

/// Pair a robotctl in `ns` with `robot`; returns its keys file.
fn pair(ns: &Ns, robot: &Robot, dir: &Path) -> PathBuf {
    pair_as(ns, robot, dir, "+48 555 555 555")
}

/// [`pair`] with the phone number `phone` (another owner).
fn pair_as(ns: &Ns, robot: &Robot, dir: &Path, phone: &str) -> PathBuf {
    let uri = pairing_uri(robot).to_string();
    let keys = dir.join("keys.json");
    let out = robotctl(ns, &keys, &["pair", &uri, "--phone", phone]).output().unwrap();
    assert!(out.status.success(), "pairing: {}", said(&out));
    keys
}

fn said(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// "decoded N frames" of robotctl's output.
fn decoded(out: &str) -> u64 {
    out.lines().filter_map(|l| l.strip_prefix("decoded ")?.split_whitespace().next()?.parse().ok()).max().unwrap_or(0)
}

/// A phone on the robot's LAN (host candidates only, no STUN or TURN) calls
/// with WebRTC: the accept carries the robot's answer, candidates trickle
/// both ways, the video decodes, and the phone drives the robot; it records
/// the video (a finished Matroska file) and saves a frame (PNG, the call's size).
#[test]
fn a_phone_on_the_robots_lan_calls_over_webrtc_sees_video_drives_records_and_saves_a_frame() {
    let Some(mut net) = Internet::new() else { return };
    net.start_mosquitto();
    let robot = robot_in(&net);
    let dir = tempfile::tempdir().unwrap();
    let keys = pair(&net.lan_phone, &robot, dir.path());
    let start = sim_pose(&status(&robot));
    let (mkv, png) = (dir.path().join("call.mkv"), dir.path().join("frame.png"));
    let (mkv_s, png_s) = (mkv.to_str().unwrap(), png.to_str().unwrap());
    let args = ["call", "--webrtc", "--frames", "30", "--record", mkv_s, "--snapshot", png_s];
    let args = [&args[..], &["-x", "ping", "-x", "drive 0.4 0 600", "-x", "wait 1"]].concat();
    let out = robotctl(&net.lan_phone, &keys, &args).output().unwrap();
    let text = said(&out);
    assert!(out.status.success(), "robotctl call --webrtc failed:\n{text}\nrobotd:\n{}", robot.log());
    assert!(decoded(&text) >= 30, "{text}");
    assert!(text.contains(&format!("snapshot: {png_s}")) && text.contains(&format!("recording: {mkv_s}")), "{text}");
    let file = std::fs::read(&mkv).expect("call.mkv");
    assert!(file.len() > 10_000, "call.mkv has only {} bytes", file.len());
    assert_eq!(&file[..4], &[0x1a, 0x45, 0xdf, 0xa3], "call.mkv is Matroska (EBML)");
    assert!(file.windows(4).any(|w| w == [0x1c, 0x53, 0xbb, 0x6b]), "call.mkv was finished (Cues)");
    let info = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).expect("frame.png")))
        .read_info()
        .expect("frame.png is a PNG");
    assert_eq!((info.info().width, info.info().height), (320, 240), "TEST_VIDEO's size");
    assert!(text.contains("ping: {\"status\":\"ok\""), "{text}");
    assert!(text.contains("drive: {\"status\":\"ok\""), "{text}");
    let now = sim_pose(&status(&robot));
    assert!(((now.x - start.x).powi(2) + (now.y - start.y).powi(2)).sqrt() > 0.01, "did not move: {start:?} {now:?}");
    let log = robot.log();
    assert!(log.contains("media helper started") && log.contains("v2 call accepted"), "{log}");
    assert!(status(&robot)["call"].is_null(), "the call did not end: {}", status(&robot));
}

/// Talk to the room through robotd (issue 14): robotctl offers audio with a
/// tone; robotd with `[audio] device = "test"` and `speaker = "test"` shows
/// the tone's level in `robotd status` (`media.speaker_receiving`,
/// `media.speaker_level_db`) while unmuted and silence after robotctl mutes;
/// the robot's microphone reaches robotctl; after the call the level is gone.
#[test]
fn the_phones_audio_reaches_the_robots_speaker_as_robotd_status_shows() {
    let Some(mut net) = Internet::new() else { return };
    net.start_mosquitto();
    let audio = "[audio]\ndevice = \"test\"\nspeaker = \"test\"\n";
    let mut robot = Robot::configure_url(&net.broker_url(), &merge_toml(&merge_toml(TEST_VIDEO, SMALL_VIDEO), audio));
    robot.spawn_wrapped(net.robot.command("env"));
    let dir = tempfile::tempdir().unwrap();
    let keys = pair(&net.lan_phone, &robot, dir.path());
    // Pings keep the call inside its 15 s timeout.
    let mut args = vec!["call", "--webrtc", "--audio", "--frames", "10"];
    for step in ["wait 8", "ping", "wait 8", "ping", "mute", "wait 8", "ping", "wait 8", "ping", "wait 8"] {
        args.extend(["-x", step]);
    }
    let phone = robotctl(&net.lan_phone, &keys, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let level = |st: &serde_json::Value| st["media"]["speaker_level_db"].as_f64();
    let mut last = serde_json::Value::Null;
    let loud = wait_until(Duration::from_secs(60), || {
        last = status_sync(&robot);
        last["media"]["speaker_receiving"] == true && level(&last).is_some_and(|db| db > -40.0)
    });
    assert!(loud, "no tone in robotd status: {last}\n{}", robot.log());
    assert_eq!(last["media"]["speaker"], "test", "{last}");
    let silent = wait_until(Duration::from_secs(60), || {
        last = status_sync(&robot);
        last["media"]["speaker_receiving"] == false || level(&last).is_some_and(|db| db < -70.0)
    });
    assert!(silent, "the level did not fall after the mute: {last}\n{}", robot.log());
    let out = phone.wait_with_output().unwrap();
    let text = said(&out);
    assert!(out.status.success(), "robotctl call --webrtc --audio failed:\n{text}\nrobotd:\n{}", robot.log());
    let heard = text
        .lines()
        .find_map(|l| l.strip_prefix("decoded ")?.strip_suffix(" audio buffers in total")?.parse::<u64>().ok());
    assert!(heard.is_some_and(|n| n > 0), "the robot's microphone did not reach robotctl:\n{text}");
    let st = status(&robot);
    assert!(st["call"].is_null() && st["media"]["speaker_level_db"].is_null(), "{st}");
}

/// The `video` command in a version 2 call (protocol.md 8): `video KBPS`
/// caps the bandwidth adaptation (the encoder's bitrate in `robotd status`
/// falls to it although the estimate is higher), `video WxH@FPS` sets the
/// frame size the robot sends, and anything above the call's accepted
/// values is `invalid_request`.
#[test]
fn the_video_command_caps_the_adaptation_in_a_webrtc_call() {
    video_command_call(TEST_VIDEO);
}

/// The same with the simulated camera, which has no videorate: the frame
/// rate change reaches its renderer and its caps, and the call goes on.
#[test]
fn the_video_command_changes_the_sim_cameras_rate_too() {
    video_command_call("[video]\ndevice = \"sim\"\nwidth = 320\nheight = 240\nfps = 30\nkbps = 600\n");
}

fn video_command_call(video: &str) {
    let Some(mut net) = Internet::new() else { return };
    net.start_mosquitto();
    // With SMALL_VIDEO: 320x240@10, 200 kbit/s.
    let mut robot = Robot::configure_url(&net.broker_url(), &merge_toml(video, SMALL_VIDEO));
    robot.spawn_wrapped(net.robot.command("env"));
    let dir = tempfile::tempdir().unwrap();
    let keys = pair(&net.lan_phone, &robot, dir.path());
    let mut args = vec!["call", "--webrtc", "--frames", "10", "-x", "video 400", "-x", "video 120", "-x", "wait 6"];
    args.extend(["-x", "ping", "-x", "video 160x120@5", "-x", "wait 6", "-x", "ping", "-x", "wait 4"]);
    let phone = robotctl(&net.lan_phone, &keys, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let video = |st: &serde_json::Value| st["media"]["video"].clone();
    let mut last = serde_json::Value::Null;
    let capped = wait_until(Duration::from_secs(60), || {
        last = status_sync(&robot);
        video(&last)["encoder_kbps"].as_u64().is_some_and(|k| k > 0 && k <= 120)
    });
    assert!(capped, "the encoder's bitrate did not fall to the 120 kbit/s cap: {last}\n{}", robot.log());
    let smaller = wait_until(Duration::from_secs(60), || {
        last = status_sync(&robot);
        (video(&last)["width"].as_u64(), video(&last)["height"].as_u64()) == (Some(160), Some(120))
    });
    assert!(smaller, "the frame size did not become 160x120: {last}\n{}", robot.log());
    let out = phone.wait_with_output().unwrap();
    let text = said(&out);
    assert!(out.status.success(), "robotctl failed:\n{text}\nrobotd:\n{}", robot.log());
    let line = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect::<Vec<_>>();
    let answers = line("video: ");
    assert_eq!(answers.len(), 3, "{text}");
    assert!(
        answers[0].contains("\"rejected\"")
            && answers[0].contains("invalid_request")
            && answers[0].contains("above the call's"),
        "400 > 200: {text}"
    );
    assert!(answers[1].contains("\"ok\"") && answers[1].contains("\"kbps\":120"), "{text}");
    assert!(answers[2].contains("\"ok\"") && answers[2].contains("\"width\":160"), "{text}");
    assert!(decoded(&text) >= 10, "{text}");
    assert!(!robot.log().contains("not-negotiated"), "{}", robot.log());
}

/// The media helper killed with SIGKILL mid-call: the phone hears `ended`
/// `media_failed` at once (not after a frame timeout), robotd stays up with
/// the motors stopped, and the next call starts a fresh helper and works.
#[test]
fn a_killed_media_helper_ends_the_call_media_failed_and_the_next_call_works() {
    let Some(mut net) = Internet::new() else { return };
    net.start_mosquitto();
    let robot = robot_in(&net);
    let dir = tempfile::tempdir().unwrap();
    let keys = pair(&net.lan_phone, &robot, dir.path());
    let args = ["call", "--webrtc", "--frames", "10", "-x", "drive 0.3 0 1000", "-x", "wait 60"];
    let mut phone =
        robotctl(&net.lan_phone, &keys, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let found = wait_until(Duration::from_secs(30), || {
        status_sync(&robot)["call"].is_object() && helper_pid(robot.pid()).is_some() && robot.log().contains("video")
    });
    assert!(found, "no call with a media helper: {}", robot.log());
    // Frames flow before the kill (robotctl waits for 10 before driving).
    assert!(wait_until(Duration::from_secs(30), || status_sync(&robot)["motion"] != "idle"
        || robot.log().contains("deadman")));
    let helper = helper_pid(robot.pid()).unwrap();
    let killed = Instant::now();
    unsafe { libc::kill(helper, libc::SIGKILL) };
    // Generous: robotctl says so as soon as the robot's `ended` arrives.
    let ended = wait_until(Duration::from_secs(20), || phone.try_wait().unwrap().is_some());
    let _ = phone.kill();
    let out = phone.wait_with_output().unwrap();
    let text = said(&out);
    assert!(ended, "robotctl did not notice the end within 20 s:\n{text}");
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("media_failed") && text.contains("signal 9"), "{text}\n{}", robot.log());
    eprintln!("FIGURE helper killed -> robotctl exited: {:?}", killed.elapsed());
    let st = status(&robot);
    assert!(st["call"].is_null() && st["motion"] == "idle", "{st}");

    let again =
        robotctl(&net.lan_phone, &keys, &["call", "--webrtc", "--frames", "10", "-x", "ping"]).output().unwrap();
    assert!(again.status.success(), "the next call:\n{}\nrobotd:\n{}", said(&again), robot.log());
    assert!(decoded(&said(&again)) >= 10);
}

/// `[video] prestart_helper` (the default): robotd keeps a spare media
/// helper (`robotd-media --spare`) while idle; a call takes it (its answer
/// does not wait for GStreamer and the DTLS certificate), the call's end
/// starts the next one, and a spare that died while idle is replaced by a
/// fresh helper at the next call, which works. With `prestart_helper =
/// false` there is no helper while idle.
#[test]
fn a_spare_media_helper_takes_the_next_call_and_a_dead_one_is_replaced() {
    let Some(mut net) = Internet::new() else { return };
    net.start_mosquitto();
    let robot = robot_in(&net);
    let dir = tempfile::tempdir().unwrap();
    let keys = pair(&net.lan_phone, &robot, dir.path());
    let cmdline = |pid: i32| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let is_spare = |pid: i32| cmdline(pid).split(|&b| b == 0).nth(1) == Some(&b"--spare"[..]);
    let spare = helper_pid(robot.pid()).expect("a spare media helper while idle");
    assert!(is_spare(spare), "{:?}", String::from_utf8_lossy(&cmdline(spare)));

    let call =
        || robotctl(&net.lan_phone, &keys, &["call", "--webrtc", "--frames", "10", "-x", "ping"]).output().unwrap();
    let first = call();
    assert!(first.status.success(), "{}\nrobotd:\n{}", said(&first), robot.log());
    assert!(decoded(&said(&first)) >= 10, "{}", said(&first));
    let log = plain(&robot.log());
    assert!(log.contains(&format!("pid={spare} spare=true")), "the call did not take the spare {spare}:\n{log}");

    // The call's end starts the next spare (the old helper may still be stopping).
    let mut next = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            next = helper_pid(robot.pid()).filter(|&p| p != spare && is_spare(p));
            next.is_some()
        }),
        "no new spare after the call:\n{}",
        robot.log()
    );
    let next = next.unwrap();
    unsafe { libc::kill(next, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(10), || !std::path::Path::new(&format!("/proc/{next}/cmdline")).exists()
        || cmdline(next).is_empty()));
    let second = call();
    assert!(second.status.success(), "after the spare died:\n{}\nrobotd:\n{}", said(&second), robot.log());
    assert!(decoded(&said(&second)) >= 10, "{}", said(&second));
    let log = plain(&robot.log());
    assert!(log.contains("the spare media helper has gone; starting a fresh one"), "{log}");
    assert!(log.contains("spare=false"), "the second call had a fresh helper:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    drop(robot);

    let mut off = Robot::configure_url(
        &net.broker_url(),
        &merge_toml(&merge_toml(TEST_VIDEO, SMALL_VIDEO), "[video]\nprestart_helper = false\n"),
    );
    off.spawn_wrapped(net.robot.command("env"));
    // Its admin socket answers: robotd is past start-up, where it would have made a spare.
    assert!(wait_until(Duration::from_secs(20), || off.admin(&["status"]).status.success()), "{}", off.log());
    assert_eq!(helper_pid(off.pid()), None, "a helper with prestart_helper = false");
}

/// The TURN credentials robotd makes from `[webrtc] turn_secret_file` (the
/// coturn REST scheme) are accepted by coturn in `use-auth-secret` mode, from
/// the robot's namespace behind its NAT; made from another secret they are
/// refused. (The same credentials go into the helper's `turn://` URL.)
#[test]
fn robotds_turn_credentials_are_accepted_by_coturn() {
    let Some(mut net) = Internet::new() else { return };
    net.start_turn(&netns::TurnAuth::shared_secret("n0t-in-any-log"));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("turn-secret");
    let robot_id = "0123456789abcdef0123456789abcdef";
    for (written, accepted) in [("n0t-in-any-log", true), ("another secret", false)] {
        std::fs::write(&secret, format!("{written}\n")).unwrap();
        let cfg: robotd::config::webrtc::WebRtcConfig = toml::from_str(&format!(
            "turn = [\"{}\"]\nturn_secret_file = \"{}\"",
            net.turn_url("udp"),
            secret.display()
        ))
        .unwrap();
        cfg.validate().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let servers = cfg.ice_servers(robot_id, now).unwrap();
        let url = url::Url::parse(&servers.turn[0]).unwrap();
        let decode = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().unwrap().1.into_owned();
        let (user, pass) = (decode(url.username()), decode(url.password().unwrap()));
        assert!(user.ends_with(&format!(":{robot_id}")), "{user}");
        let (status, out) = net.turn_client(&net.robot, &netns::TurnAuth::long_term(&user, &pass), false);
        assert_eq!(status.is_some_and(|s| s.success()), accepted, "secret {written:?}:\n{out}\n{}", net.turn_log());
    }
}

/// robotd configured with the coturn on the public server (shared-secret
/// scheme: robotd makes time-limited credentials per call).
/// The namespace internet with the broker and coturn (shared-secret
/// credentials, the secret [`TURN_SECRET`]), and robotd using them; `None`
/// when namespaces are unavailable.
fn relayed_world() -> Option<(Internet, Robot, tempfile::TempDir)> {
    let mut net = Internet::new()?;
    net.start_mosquitto();
    net.start_turn(&netns::TurnAuth::shared_secret(TURN_SECRET));
    let (robot, secrets) = robot_with_turn(&net, TURN_SECRET);
    Some((net, robot, secrets))
}

/// The TURN secret of [`relayed_world`]: must never show in a log.
const TURN_SECRET: &str = "n0t-in-any-log";

fn robot_with_turn(net: &Internet, secret: &str) -> (Robot, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("turn-secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let webrtc = format!("[webrtc]\nturn = [\"{}\"]\nturn_secret_file = \"{}\"\n", net.turn_url("udp"), file.display());
    let mut robot = Robot::configure_url(&net.broker_url(), &merge_toml(&merge_toml(TEST_VIDEO, SMALL_VIDEO), &webrtc));
    robot.spawn_wrapped(net.robot.command("env"));
    (robot, secrets)
}

/// The robot behind a home NAT, the phone behind a symmetric carrier NAT:
/// no direct path. With a TURN relay for the robot (and only STUN for the
/// phone, docs/install.md) the call connects through the relay and the
/// video decodes; the TURN secret and the derived URL never show in
/// robotd's log.
#[test]
fn robot_behind_home_nat_and_phone_behind_carrier_nat_connect_through_turn() {
    let Some((net, robot, _secrets)) = relayed_world() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keys = pair(&net.phone, &robot, dir.path());
    let stun = net.stun_url();
    let args = ["call", "--webrtc", "--stun", &stun, "--frames", "30", "-x", "ping", "-x", "drive 0.3 0 300"];
    let out = robotctl(&net.phone, &keys, &args).output().unwrap();
    let text = said(&out);
    let turn = net.turn_log();
    assert!(out.status.success(), "call through TURN failed:\n{text}\nrobotd:\n{}\nturn:\n{turn}", robot.log());
    assert!(decoded(&text) >= 30, "{text}");
    assert!(text.contains("drive: {\"status\":\"ok\""), "{text}");
    // The media went through the relay: coturn installed a permission (or
    // channel) for the phone's public address.
    assert!(turn.contains("ALLOCATE processed, success"), "no relay allocated:\n{turn}");
    assert!(
        turn.contains("CREATE_PERMISSION processed, success") || turn.contains("CHANNEL_BIND processed, success"),
        "no permission for the phone:\n{turn}"
    );
    let log = robot.log();
    assert!(!log.contains(TURN_SECRET) && !log.contains("turn://"), "TURN credentials in robotd's log:\n{log}");
}

/// The same two NATs without a TURN server: there is no path, and the call
/// ends `ice_failed` within the 20 s connect bound; robotctl says so before
/// driving, and the robot never moves.
#[test]
fn without_turn_two_nats_end_the_call_ice_failed_and_nothing_moves() {
    let Some(mut net) = Internet::new() else { return };
    net.start_mosquitto();
    net.start_turn(&netns::TurnAuth::shared_secret("unused"));
    let robot = robot_in(&net);
    let dir = tempfile::tempdir().unwrap();
    let keys = pair(&net.phone, &robot, dir.path());
    let start = sim_pose(&status(&robot));
    let stun = net.stun_url();
    let t = Instant::now();
    let args = ["call", "--webrtc", "--stun", &stun, "--frames", "10", "-x", "drive 0.5 0 1000"];
    let out = robotctl(&net.phone, &keys, &args).output().unwrap();
    let text = said(&out);
    assert!(!out.status.success(), "a call without any path succeeded:\n{text}");
    assert!(text.contains("ice_failed") && text.contains("TURN"), "{text}\nrobotd:\n{}", robot.log());
    assert!(!text.contains("drive: "), "robotctl drove without video:\n{text}");
    eprintln!("FIGURE no path -> robotctl exited after {:?}", t.elapsed());
    let now = sim_pose(&status(&robot));
    assert!(((now.x - start.x).powi(2) + (now.y - start.y).powi(2)).sqrt() < 1e-6, "{start:?} {now:?}");
    assert!(status(&robot)["call"].is_null());
}

/// robotctl's output lines as they come, each with the moment it was read.
fn timed_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<(Instant, String)> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    for pipe in [
        child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|e| Box::new(e) as _),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// The gap of robotctl's `freeze: no new frame for N ms, ...` line.
fn freeze_ms(line: &str) -> Option<u64> {
    line.strip_prefix("freeze: no new frame for ")?.split_whitespace().next()?.parse().ok()
}

/// The kbit/s and frames per second of a `--stats` line.
fn stats_rates(line: &str) -> Option<(f64, f64)> {
    let mut it = line.strip_prefix("stats: ")?.split(", ");
    let kbps = it.next()?.strip_suffix(" kbit/s")?.parse().ok()?;
    let fps = it.next()?.strip_suffix(" fps")?.parse().ok()?;
    Some((kbps, fps))
}

/// Wait up to `limit` for a line that satisfies `f`, keeping every line read in `seen`.
fn line_until(
    rx: &std::sync::mpsc::Receiver<(Instant, String)>,
    seen: &mut Vec<String>,
    limit: Duration,
    f: impl Fn(&str) -> bool,
) -> Option<Instant> {
    let end = Instant::now() + limit;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let Ok((at, line)) = rx.recv_timeout(left) else { break };
        let hit = f(&line);
        seen.push(line);
        if hit {
            return Some(at);
        }
    }
    None
}

/// The media path cut for 3 s mid-call (everything between the phone and
/// the internet dropped, the phone behind the carrier's NAT and the robot
/// on its TURN relay), then restored: the same call goes on and the video
/// resumes; how long after the restoration is a FIGURE (the goal, 1 s, is a
/// benchmark's, not an assert's).
#[test]
fn a_3_s_cut_of_the_media_path_leaves_the_call_up_and_the_video_resumes() {
    let Some((mut net, robot, _secrets)) = relayed_world() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keys = pair(&net.phone, &robot, dir.path());
    let stun = net.stun_url();
    // Pings keep the call inside its 15 s timeout; the cut falls in the first wait.
    let mut args = vec!["call", "--webrtc", "--stun", &stun, "--stats", "--frames", "30"];
    for step in ["wait 7", "ping", "wait 7", "ping", "wait 2"] {
        args.extend(["-x", step]);
    }
    let mut phone = robotctl(&net.phone, &keys, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let lines = timed_lines(&mut phone);
    let mut seen = Vec::new();
    let flowing = line_until(&lines, &mut seen, Duration::from_secs(90), |l| l.starts_with("decoded 30 frames"));
    assert!(flowing.is_some(), "no video before the cut:\n{}\nrobotd:\n{}", seen.join("\n"), robot.log());
    let session = status(&robot)["call"]["session"].clone();
    assert!(session.is_string(), "{}", status(&robot));
    std::thread::sleep(Duration::from_millis(500));
    net.cut();
    std::thread::sleep(Duration::from_secs(3));
    net.restore();
    let restored = Instant::now();
    // The freeze that spans the cut (a shorter one before it would not).
    let resumed = line_until(&lines, &mut seen, Duration::from_secs(10), |l| freeze_ms(l).is_some_and(|ms| ms >= 2500));
    let st = status(&robot);
    let out = seen.join("\n");
    let resumed = resumed
        .unwrap_or_else(|| panic!("no video within 10 s of the restoration:\n{out}\nrobotd:\n{}\n{st}", robot.log()));
    eprintln!("FIGURE 3 s cut: video resumed {:?} after the restoration", resumed.saturating_duration_since(restored));
    assert_eq!(st["call"]["session"], session, "not the same call after the cut: {st}\n{}", robot.log());
    let status_code = phone.wait().unwrap();
    line_until(&lines, &mut seen, Duration::from_secs(5), |l| l.starts_with("hangup: "));
    let out = seen.join("\n");
    assert!(status_code.success(), "robotctl failed after the cut:\n{out}\nrobotd:\n{}", robot.log());
    assert!(out.contains("ping: {\"status\":\"ok\""), "{out}");
    // `--stats`: a line a second, with video flowing before and after the
    // cut, and at least one second of nothing within it.
    let rates: Vec<(f64, f64)> = seen.iter().filter_map(|l| stats_rates(l)).collect();
    assert!(rates.len() >= 10, "{} stats lines in a ~16 s call:\n{out}", rates.len());
    assert!(rates.iter().filter(|(k, f)| *k > 10.0 && *f > 5.0).count() >= 5, "{out}");
    assert!(rates.iter().any(|(k, f)| *k == 0.0 && *f == 0.0), "no stats line of the cut:\n{out}");
}

/// The same phone keys under another MQTT client identifier: the phone's
/// new connection after its network changed (its old one may linger until
/// the broker notices it is dead).
fn same_phone_new_connection(keys: &Path, dir: &Path) -> PathBuf {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(keys).unwrap()).unwrap();
    v["mqtt_client_id"] = hex::encode(rand::random::<[u8; 16]>()).into();
    let path = dir.join("mobile-keys.json");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    path
}

/// The phone changes network mid-call (docs/protocol.md 7.8): on the robot's
/// Wi-Fi first, then behind the carrier's NAT with a new address, where the
/// old ICE pair cannot follow (webrtcbin 1.22 has no ICE restart). It places
/// a new invite with the same keys: the robot ends the old call `replaced`
/// at once and the new one decodes video and drives; meanwhile another
/// owner's invite is still `busy`.
#[test]
fn a_phone_that_changes_network_calls_again_and_replaces_its_call() {
    let Some((net, robot, _secrets)) = relayed_world() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keys = pair(&net.lan_phone, &robot, dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let other_keys = pair_as(&net.lan_phone, &robot, other_dir.path(), "+48 555 555 556");
    let mobile_keys = same_phone_new_connection(&keys, dir.path());

    let mut args = vec!["call", "--webrtc", "--frames", "10"];
    for _ in 0..10 {
        args.extend(["-x", "wait 4", "-x", "ping"]);
    }
    let mut wifi =
        robotctl(&net.lan_phone, &keys, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let wifi_lines = timed_lines(&mut wifi);
    let mut wifi_said = Vec::new();
    let flowing = line_until(&wifi_lines, &mut wifi_said, Duration::from_secs(90), |l| l.starts_with("decoded 10"));
    assert!(flowing.is_some(), "no video on Wi-Fi:\n{}\nrobotd:\n{}", wifi_said.join("\n"), robot.log());
    let first = status(&robot)["call"].clone();
    assert!(first["session"].is_string(), "{first}");

    // Another owner is busy, and the call goes on.
    let other = robotctl(&net.lan_phone, &other_keys, &["call", "--webrtc", "--frames", "1"]).output().unwrap();
    assert!(!other.status.success() && said(&other).contains("busy"), "another owner:\n{}", said(&other));
    assert_eq!(status(&robot)["call"]["session"], first["session"]);

    let stun = net.stun_url();
    let t0 = Instant::now();
    let args = ["call", "--webrtc", "--stun", &stun, "--frames", "30", "-x", "ping", "-x", "drive 0.3 0 300"];
    let mut mobile =
        robotctl(&net.phone, &mobile_keys, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mobile_lines = timed_lines(&mut mobile);
    let replaced = line_until(&wifi_lines, &mut wifi_said, Duration::from_secs(30), |l| l.contains("replaced"));
    let wifi_out = wifi_said.join("\n");
    let replaced = replaced.unwrap_or_else(|| panic!("the Wi-Fi call was not replaced:\n{wifi_out}\n{}", robot.log()));
    let wifi_status = wifi.wait().unwrap();
    let mut mobile_said = Vec::new();
    let decoded30 =
        line_until(&mobile_lines, &mut mobile_said, Duration::from_secs(90), |l| l.starts_with("decoded 30"));
    let now = status(&robot)["call"].clone();
    let done = mobile.wait().unwrap();
    line_until(&mobile_lines, &mut mobile_said, Duration::from_secs(5), |l| l.starts_with("hangup: "));
    let mobile_out = mobile_said.join("\n");
    assert!(decoded30.is_some() && done.success(), "the new call:\n{mobile_out}\nrobotd:\n{}", robot.log());
    eprintln!(
        "FIGURE network change: new robotctl started -> old call ended `replaced` {:?}, -> 30 frames decoded {:?}",
        replaced - t0,
        decoded30.unwrap() - t0
    );
    assert!(!wifi_status.success(), "{wifi_out}");
    assert!(wifi_out.contains("\"reason\":\"replaced\""), "{wifi_out}");
    assert!(mobile_out.contains("drive: {\"status\":\"ok\""), "{mobile_out}");
    assert!(now["session"].is_string() && now["session"] != first["session"], "{now} {first}");
    assert_eq!(now["caller"], first["caller"]);
    let log = robot.log();
    assert!(log.contains("replaces its call"), "{log}");
    assert!(status(&robot)["call"].is_null(), "{}", status(&robot));
}

/// The media path cut for good while the signalling still gets through (UDP
/// dropped, MQTT over TCP not): the call does not hang on without video; it
/// ends `ice_failed` when the ICE agent gives up on the pair (about 50 s of
/// libnice keepalive checks; FIGURE), saying the path was lost, not that a
/// TURN server is missing, and robotctl reports it at once. (The phone's own
/// ICE agent runs the same checks and may give up first: robotctl then says
/// "ICE failed", or "peer connection failed" when webrtcbin reports the
/// failed connection before its ICE state, and hangs up, which ends the
/// call too. CI once saw the second.)
#[test]
fn a_media_path_that_stays_cut_ends_the_call_ice_failed_saying_it_was_lost() {
    let Some((mut net, robot, _secrets)) = relayed_world() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keys = pair(&net.phone, &robot, dir.path());
    let stun = net.stun_url();
    let mut args = vec!["call", "--webrtc", "--stun", &stun, "--frames", "30"];
    for _ in 0..30 {
        args.extend(["-x", "wait 4", "-x", "ping"]);
    }
    let mut phone = robotctl(&net.phone, &keys, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let lines = timed_lines(&mut phone);
    let mut seen = Vec::new();
    let flowing = line_until(&lines, &mut seen, Duration::from_secs(90), |l| l.starts_with("decoded 30 frames"));
    assert!(flowing.is_some(), "no video before the cut:\n{}\nrobotd:\n{}", seen.join("\n"), robot.log());
    net.set_udp_only(true);
    net.cut();
    let cut = Instant::now();
    let over =
        |l: &str| l.contains("ended the call") || l.contains("ICE failed") || l.contains("peer connection failed");
    let ended = line_until(&lines, &mut seen, Duration::from_secs(110), over);
    let out = seen.join("\n");
    let ended = ended.unwrap_or_else(|| panic!("the call outlived its media path:\n{out}\nrobotd:\n{}", robot.log()));
    let by_robot = out.contains("ended the call");
    eprintln!("FIGURE media path cut for good: the call ended after {:?} (by the robot: {by_robot})", ended - cut);
    wait_until(SOON, || phone.try_wait().unwrap().is_some());
    let _ = phone.kill();
    let _ = phone.wait();
    if by_robot {
        assert!(out.contains("\"reason\":\"ice_failed\"") && out.contains("lost after it worked"), "{out}");
        assert!(!out.contains("TURN server may be needed"), "{out}");
    }
    let gone = wait_until(SOON, || status_sync(&robot)["call"].is_null());
    assert!(gone, "robotd still has the call: {}", status(&robot));
    let st = status(&robot);
    assert!(st["call"].is_null() && st["motion"] == "idle", "{st}");
}
