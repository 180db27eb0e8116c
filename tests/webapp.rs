//! The phone web app (web/) end to end in a real browser: Debian's Chromium,
//! driven by playwright-core (web/e2e/phone.mjs) in a phone-sized, touch
//! viewport, against real Mosquitto (its WebSockets listener) and robotd on
//! the simulated robot with the example flat (config/flat.toml: a kitchen,
//! and a bedroom behind a shut door).
//!
//! Everything runs in network namespaces made here (tests/common/netns.rs):
//! robotd in the home LAN, the broker on the namespace internet's server,
//! the browser and the app's static server (127.0.0.1 of the phone's own
//! namespace, a secure context) on a phone, so no ICE candidate is this
//! machine's address. Skips when not root, without `ip netns`, or without
//! `web/node_modules` (`scripts/setup.sh` installs it), unless
//! `ROBOTD_NETNS_REQUIRED=1` (CI), which makes those failures.

#[path = "common/calls.rs"]
mod calls_kit;
mod common;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/webapp.rs"]
mod webapp_kit;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use calls_kit::*;
use common::*;
use netns::{Internet, Ns};
use webapp_kit::*;

/// md5("+48555555555"): the phone ID of the number phone.mjs types.
const ALICE_ID: &str = "36940d0ece18aebf69d0ef6825534e24";
const ALICE_BROKER_PASSWORD: &str = "al1ce-broker-pw";

/// The whole browser scenario may take this long on a busy 2-core machine.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(600);

fn e2e_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web/e2e/phone.mjs")
}

fn skip_without_browser() -> bool {
    let Some(reason) = browser_missing() else { return false };
    if std::env::var_os("ROBOTD_NETNS_REQUIRED").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("browser tests required (ROBOTD_NETNS_REQUIRED) but {reason}");
    }
    eprintln!("skipping: {reason}");
    true
}

/// The robot's pairing QR code (`pairing-qr.png`, written by `robotd pair`)
/// as a short Y4M video: what Chromium's fake camera shows the app.
fn qr_video(png: &Path, out: &Path) {
    let mut c = Command::new("gst-launch-1.0");
    c.arg("-q").args(["filesrc", &format!("location={}", png.display()), "!", "pngdec", "!", "videoconvert"]);
    c.args(["!", "videoscale", "!", "video/x-raw,width=640,height=480,pixel-aspect-ratio=1/1"]);
    c.args(["!", "imagefreeze", "num-buffers=30", "!", "video/x-raw,framerate=15/1"]);
    c.args(["!", "videoconvert", "!", "video/x-raw,format=I420", "!", "y4menc", "!", "filesink"]);
    c.arg(format!("location={}", out.display()));
    run(c, "gst-launch-1.0 (QR code to Y4M)");
}

/// A 440 Hz tone (a WAV the fake microphone loops).
fn tone_wav(out: &Path) {
    let mut c = Command::new("gst-launch-1.0");
    c.arg("-q").args(["audiotestsrc", "wave=sine", "freq=440", "volume=0.5", "num-buffers=250", "!"]);
    c.args(["audio/x-raw,format=S16LE,rate=48000,channels=1", "!", "wavenc", "!", "filesink"]);
    c.arg(format!("location={}", out.display()));
    run(c, "gst-launch-1.0 (tone)");
}

/// Where the scenario's screenshots are kept after the test (next to the
/// other build output, so CI keeps them with the test logs).
fn output_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("webapp").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The first IPv4 address of `ns`'s eth0.
fn ns_addr(ns: &Ns) -> String {
    let out = ns.command("ip").args(["-4", "-o", "addr", "show", "dev", "eth0"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let word = text.split_whitespace().skip_while(|w| *w != "inet").nth(1).expect("eth0 has an IPv4 address");
    word.split('/').next().unwrap().to_string()
}

/// What a browser scenario needs beside the robot: a fresh pairing window
/// (its QR code made into the fake camera's video, its URI for a pairing
/// link), a tone for the fake microphone, the app served in `ns`, and the
/// environment of web/e2e/phone.mjs.
struct Phone {
    env: Vec<(&'static str, String)>,
    out: PathBuf,
    _server: Server,
}

impl Phone {
    fn prepare(ns: &Ns, robot: &Robot, work: &Path, dist: &Path, name: &str, steps: &str) -> Phone {
        let uri = pairing_uri(robot).to_string();
        let qr = work.join("qr.y4m");
        qr_video(&robot.state_dir().join("pairing-qr.png"), &qr);
        let tone = work.join("tone.wav");
        tone_wav(&tone);
        let server = serve(ns, dist, &work.join("http.log"));
        let out = output_dir(name);
        let env = vec![
            ("APP_URL", "http://127.0.0.1:8000/".to_string()),
            ("ROBOT_ID", robot.id.clone()),
            ("QR_VIDEO", qr.display().to_string()),
            ("TONE_WAV", tone.display().to_string()),
            ("OUT_DIR", out.display().to_string()),
            ("STEPS", steps.to_string()),
            ("PAIR_URI", uri),
            ("INSECURE_URL", format!("http://{}:8000/", ns_addr(ns))),
        ];
        Phone { env, out, _server: server }
    }
}

/// Run web/e2e/phone.mjs in `ns` and answer its requests until it exits.
fn drive_phone(net: &mut Internet, ns_of: fn(&Internet) -> &Ns, robot: &mut Robot, env: &[(&str, String)]) -> String {
    let mut cmd = ns_of(net).command("node");
    cmd.arg(e2e_script()).current_dir(web_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("node");
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel::<Option<String>>();
    let out_tx = tx.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(Some(l));
        }
        let _ = out_tx.send(None);
    });
    let stderr = child.stderr.take().unwrap();
    let err_tx = tx;
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(Some(format!("(stderr) {l}")));
        }
    });
    let end = Instant::now() + SCENARIO_TIMEOUT;
    let mut transcript = String::new();
    // Bob, a second owner (robotctl), for the busy step.
    let bob_dir = tempfile::tempdir().unwrap();
    let mut bob: Option<std::process::Child> = None;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(_) => {
                let _ = child.kill();
                panic!("the browser scenario did not finish within {SCENARIO_TIMEOUT:?}:\n{transcript}");
            }
        };
        let Some(req) = line.strip_prefix("@@ ") else {
            eprintln!("{line}");
            transcript += &line;
            transcript.push('\n');
            continue;
        };
        let op = serde_json::from_str::<serde_json::Value>(req).ok().and_then(|v| v["op"].as_str().map(String::from));
        let answer = match op.as_deref() {
            Some("status") => status_sync(robot).to_string(),
            Some("stop-broker") => {
                net.stop_mosquitto();
                eprintln!("harness: broker stopped");
                "{}".into()
            }
            Some("kill-helper") => match helper_pid(robot.pid()) {
                Some(pid) => {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    eprintln!("harness: media helper {pid} killed");
                    "{}".into()
                }
                None => serde_json::json!({ "error": "robotd has no media helper" }).to_string(),
            },
            Some("stop-robot") => {
                let st = robot.stop();
                eprintln!("harness: robotd stopped ({st})");
                "{}".into()
            }
            Some("other-call-start") => {
                let keys = bob_dir.path().join("bob.json");
                let uri = pairing_uri(robot).to_string();
                let mut pair = ns_of(net).command(robotctl_bin());
                pair.arg("--keys").arg(&keys).args(["pair", &uri, "--phone", "+48 555 555 556", "--nickname", "Bob"]);
                run(pair, "robotctl pair (Bob)");
                let mut call = ns_of(net).command(robotctl_bin());
                call.arg("--keys").arg(&keys).args(["call", "--webrtc", "-x", "wait 12"]);
                let log = std::fs::File::create(bob_dir.path().join("bob.log")).unwrap();
                let err = log.try_clone().unwrap();
                bob = Some(call.stdin(Stdio::null()).stdout(log).stderr(err).spawn().unwrap());
                let calling = wait_until(SOON, || status_sync(robot)["call"].is_object());
                eprintln!("harness: Bob calls the robot");
                if calling {
                    "{}".into()
                } else {
                    serde_json::json!({ "error": "Bob's call did not start" }).to_string()
                }
            }
            Some("other-call-stop") => {
                // robotctl waits up to 60 s for a first frame, then 12 s.
                let end = Duration::from_secs(90);
                let done = bob.as_mut().is_some_and(|b| wait_until(end, || b.try_wait().unwrap().is_some()));
                let free = wait_until(SOON, || status_sync(robot)["call"].is_null());
                eprintln!("harness: Bob hung up");
                if done && free {
                    "{}".into()
                } else {
                    let said = std::fs::read_to_string(bob_dir.path().join("bob.log")).unwrap_or_default();
                    let st = status_sync(robot);
                    let error = format!("Bob's call did not end; robotctl said:\n{said}\nrobotd status: {st}");
                    serde_json::json!({ "error": error }).to_string()
                }
            }
            Some("cut-udp") => {
                net.set_udp_only(true);
                net.cut();
                eprintln!("harness: the carrier drops all UDP");
                "{}".into()
            }
            Some("restore") => {
                net.clear();
                eprintln!("harness: the carrier passes everything again");
                "{}".into()
            }
            Some("start-broker") => {
                net.start_mosquitto();
                eprintln!("harness: broker started again");
                "{}".into()
            }
            _ => serde_json::json!({ "error": format!("unknown request {req}") }).to_string(),
        };
        if writeln!(stdin, "{answer}").is_err() {
            break;
        }
    }
    if let Some(mut b) = bob {
        let _ = b.kill();
        let _ = b.wait();
    }
    let status = child.wait().unwrap();
    // Let the stderr thread drain.
    while let Ok(Some(l)) = rx.recv_timeout(Duration::from_millis(200)) {
        transcript += &l;
        transcript.push('\n');
    }
    assert!(status.success(), "the browser scenario failed ({status}):\n{transcript}\nrobotd:\n{}", robot.log());
    transcript
}

/// Everything the issue asks of the phone, in one browser session on the
/// robot's LAN: first run, pairing by scanning the robot's QR code with the
/// (fake) camera, a call whose video decodes at the negotiated size, goto
/// kitchen (arrived) and bedroom (blocked at the shut door), the joystick
/// (the simulated pose changes; release stops it), push-to-talk (the fake
/// microphone's tone reaches the robot's test speaker while unmuted, silence
/// after muting), the broker restarted
/// mid-call (banner shown and gone, the call goes on), hang-up on both
/// sides; a call while another owner is in one (busy, said so); then a call
/// whose media helper is killed (the phone shows
/// `media_failed` at once) and a robot gone offline (shown, and no call is
/// placed). Saves `call-screen.png`.
#[test]
fn the_web_app_pairs_by_qr_calls_drives_and_survives_a_broker_restart() {
    if skip_without_browser() {
        return;
    }
    let Some(mut net) = Internet::new() else { return };
    net.start_mosquitto();
    let work = tempfile::tempdir().unwrap();
    let dist = work.path().join("dist");
    build_app(&dist, &net.broker_ws_url(), None);

    // The robot's test microphone (a tone to the phone) and its test
    // speaker, which measures the level of what the phone sends.
    let audio = "[audio]\ndevice = \"test\"\nspeaker = \"test\"\n";
    // The flat's simulated camera, small: the phone checks that the shut
    // bedroom door fills the picture when the goto ends blocked.
    let video = "[video]\ndevice = \"sim\"\nwidth = 320\nheight = 240\nfps = 30\nkbps = 600\n";
    let mut robot = Robot::configure_url(&net.broker_url(), &merge_toml(&merge_toml(&flat(), video), audio));
    robot.spawn_wrapped(net.robot.command("env"));
    let steps = "pair,call,goto,drive,talk,broker,hangup,busy,media-failed,offline";
    let mut phone = Phone::prepare(&net.lan_phone, &robot, work.path(), &dist, "lan", steps);
    let (_, u, v) = robotd::video::simview::wall_colour(0);
    phone.env.push(("DOOR_UV", format!("{u},{v}")));
    let said = drive_phone(&mut net, |n| &n.lan_phone, &mut robot, &phone.env);
    let out = &phone.out;
    for step in [
        "paired by scanning",
        "call connected",
        "goto kitchen",
        "goto bedroom: blocked",
        "the door fills",
        "joystick released",
        "talk:",
    ] {
        assert!(said.contains(step), "no {step:?} in:\n{said}");
    }
    assert!(said.contains("broker restarted") && said.contains("hung up"), "{said}");
    assert!(said.contains("ended media_failed") && said.contains("robot offline: call refused"), "{said}");
    assert!(said.contains("busy: ") && said.contains("not a secure context: "), "{said}");
    assert!(out.join("call-screen.png").exists(), "no screenshot in {}", out.display());
    eprintln!("screenshot: {}", out.join("call-screen.png").display());
}

/// The case the web app exists for: the phone on a carrier network (behind
/// a symmetric NAT), the robot at home behind its router. The app is built
/// with only a STUN server (no TURN credentials in a web page), the robot
/// has the TURN relay (robotd-made credentials, docs/install.md): the call
/// connects through the relay, the video decodes, and hang-up ends it. The
/// broker takes no anonymous clients: the app logs in with its phone ID and
/// the password given at first run (a phone with a wrong one is told that
/// the broker refused its login). This phone pairs from a pairing link
/// (the URI in the app's URL fragment), which leaves the address bar at once.
/// Then its media path is lost for good (the carrier drops UDP, the broker
/// stays): the app calls again by itself and the new call replaces the old.
#[test]
fn the_web_app_on_a_carrier_network_calls_the_robot_at_home_through_turn() {
    if skip_without_browser() {
        return;
    }
    let Some(mut net) = Internet::new() else { return };
    let work = tempfile::tempdir().unwrap();
    // A broker that wants accounts (docs/install.md): the robot logs in with
    // its robot ID, the phone with its phone ID and the password typed at
    // first run; nobody gets in anonymously.
    let mut robot = Robot::configure_url(&net.broker_url(), "");
    let passwd = net.dir().join("passwd");
    for (i, (user, password)) in [(robot.id.as_str(), "r0bot-pw"), (ALICE_ID, ALICE_BROKER_PASSWORD)].iter().enumerate()
    {
        let mut c = Command::new("mosquitto_passwd");
        if i == 0 {
            c.arg("-c");
        }
        c.arg("-b").arg(&passwd).args([user, password]);
        run(c, "mosquitto_passwd");
    }
    net.start_mosquitto_with(&format!("allow_anonymous false\npassword_file {}\n", passwd.display()));
    let secret = "n0t-in-any-page";
    net.start_turn(&netns::TurnAuth::shared_secret(secret));
    let dist = work.path().join("dist");
    let ice = serde_json::json!([{ "urls": net.stun_url() }]).to_string();
    build_app(&dist, &net.broker_ws_url(), Some(&ice));

    let secret_file = work.path().join("turn-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let webrtc =
        format!("[webrtc]\nturn = [\"{}\"]\nturn_secret_file = \"{}\"\n", net.turn_url("udp"), secret_file.display());
    let pw_file = work.path().join("mqtt-password");
    std::fs::write(&pw_file, "r0bot-pw\n").unwrap();
    let account = format!("[mqtt]\nusername = \"{}\"\npassword_file = \"{}\"\n", robot.id, pw_file.display());
    let extra = merge_toml(&merge_toml(&merge_toml(&flat(), TEST_VIDEO), &webrtc), &account);
    robot.reconfigure(&extra);
    robot.spawn_wrapped(net.robot.command("env"));
    let mut phone = Phone::prepare(
        &net.phone,
        &robot,
        work.path(),
        &dist,
        "carrier",
        "refused-login,pair-link,call,network-change,hangup",
    );
    phone.env.push(("BROKER_PASSWORD", ALICE_BROKER_PASSWORD.to_string()));
    let said = drive_phone(&mut net, |n| &n.phone, &mut robot, &phone.env);
    assert!(said.contains("paired from a pairing link"), "{said}");
    assert!(said.contains("wrong broker password: \"The broker refused the login"), "{said}");
    assert!(said.contains("call connected") && said.contains("hung up"), "{said}");
    assert!(said.contains("the new call replaced the old one"), "{said}");
    let turn = net.turn_log();
    assert!(turn.contains("ALLOCATE processed, success"), "no relay allocated:\n{turn}");
    assert!(
        turn.contains("CREATE_PERMISSION processed, success") || turn.contains("CHANNEL_BIND processed, success"),
        "no permission for the phone:\n{turn}"
    );
}
