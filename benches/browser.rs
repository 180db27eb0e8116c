//! What a person sees in a real browser (issue 17 items 1, 2 and 6):
//! glass-to-glass video latency in Chromium at 720p30, time from tapping
//! "call" to the first frame presented (on the home LAN and through TURN),
//! the bytes the phone app downloads on opening and its time to "robot
//! online". docs/benchmarks.md ("In a real browser") explains the method
//! and holds the results.
//!
//!     cargo bench --bench browser                 # ~5 min
//!     cargo bench --bench browser -- --quick      # ~2.5 min
//!     cargo bench --bench browser -- --floors bare,chain,gcc,gcc2x
//!
//! Needs root (network namespaces, tests/common/netns.rs), Debian's
//! Chromium and web/node_modules (scripts/setup.sh); prints why and exits
//! 0 without them. Everything runs in namespaces made here: robotd and the
//! floor sender on the robot in the home LAN, Mosquitto (WebSockets) and
//! coturn on the namespace internet, Chromium with the app's static server
//! on a phone, so no ICE candidate is this machine's address.
//!
//! Glass-to-glass: the simulated camera (`video.device = "sim"`) draws the
//! capture wall-clock time into every frame as a time code
//! (`robotd::video::simview::read_timecode`); web/e2e/bench.mjs reads it
//! back from a canvas in each `requestVideoFrameCallback` and subtracts it
//! from the frame's `expectedDisplayTime` (same machine clock). The floor
//! is this binary re-executed as `floor-sender` in the robot's namespace:
//! a bare webrtcbin with the same simview source and x264enc settings as
//! `robotd-media` (src/webrtc/robot.rs), no congestion control, to the same
//! page, interleaved round by round with the app's calls.

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "../tests/common/calls.rs"]
mod calls_kit;

#[path = "../tests/common/netns.rs"]
mod netns;

#[path = "../tests/common/webapp.rs"]
mod webapp_kit;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use calls_kit::*;
use common::*;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtp::prelude::*;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;
use netns::{Internet, Ns};
use robotd::hal::config::Obstacle;
use serde_json::{Value, json};
use webapp_kit::*;

/// The picture both senders send: the web app asks for up to 1280x720@30
/// and 2500 kbit/s (web/src/app/config.ts); robotd.toml's default is 2000.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const FPS: u32 = 30;
const KBPS: u32 = 2000;

/// One page-driver run may take this long before it is killed.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(420);

fn missing() -> Option<String> {
    if let Some(reason) = browser_missing() {
        return Some(reason);
    }
    if let Some(reason) = netns::unavailable() {
        return Some(reason);
    }
    None
}

/// The flat's walls: what robotd's simulated camera renders.
fn flat_world() -> Vec<Obstacle> {
    let t = flat_toml();
    let obstacles = t.get("hardware").and_then(|h| h.get("sim")).and_then(|s| s.get("obstacles")).cloned();
    obstacles.map(|o| o.try_into().expect("flat.toml's obstacles")).unwrap_or_default()
}

fn sim_video() -> String {
    format!("[video]\ndevice = \"sim\"\nwidth = {WIDTH}\nheight = {HEIGHT}\nfps = {FPS}\nkbps = {KBPS}\n")
}

// ---------------------------------------------------------------- floor sender

/// The floor: a bare webrtcbin sender (run in the robot's namespace). Reads
/// the page's offer (`{"sdp":...}`, all candidates in it) on stdin, prints
/// the answer with all of its own, sends until stdin closes.
fn floor_sender() {
    robotd::webrtc::init().expect("gst::init and rtpgccbwe");
    let mut lines = std::io::stdin().lock().lines();
    let offer: Value = serde_json::from_str(&lines.next().expect("an offer").expect("stdin")).expect("offer JSON");
    let offer = offer["sdp"].as_str().expect("offer.sdp").to_string();
    let info = robotd::webrtc::sdp::check_offer(&offer).expect("an offer with H.264");
    // The same source and encoder settings as src/webrtc/robot.rs; without
    // its valve, videoscale/videorate (pass-through at the call's size) and
    // congestion control.
    // The variant (`--floors`): `bare`; `chain` adds robotd's scaling and
    // rate elements; `gcc` adds to that rtpgccbwe (its pacer) with robotd's
    // bounds and transport-cc; `gcc2x` the same with the estimator's start
    // and maximum at 2.5x the encoder's rate (the pacer faster than the
    // encoder, as libwebrtc's pacing factor 2.5).
    let variant = std::env::var("ROBOTD_FLOOR").unwrap_or_else(|_| "bare".into());
    let chain = if variant == "bare" {
        String::new()
    } else {
        format!(
            "! videoscale ! videorate ! video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate={FPS}/1 \
             ! videoscale ! capsfilter caps=video/x-raw,width={WIDTH},height={HEIGHT},pixel-aspect-ratio=1/1"
        )
    };
    let gcc = variant.starts_with("gcc") && info.twcc_id.is_some();
    let desc = format!(
        "appsrc name=src is-live=true format=time do-timestamp=true max-buffers=2 leaky-type=downstream \
         caps=video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate={FPS}/1,pixel-aspect-ratio=1/1 \
         ! videoconvert {chain} \
         ! {x264} \
         ! video/x-h264,profile=constrained-baseline ! h264parse config-interval=-1 \
         ! rtph264pay name=pay pt={pt} config-interval=-1 aggregate-mode=zero-latency mtu=1200 \
         ! capssetter caps=\"application/x-rtp,profile-level-id=(string)42e01f\" \
         ! webrtcbin name=webrtc bundle-policy=max-bundle",
        x264 = robotd::video::Encoder::X264.launch_description("x264", KBPS, FPS),
        pt = info.payload_type,
    );
    let pipeline = gst::parse::launch(&desc).expect("floor pipeline").downcast::<gst::Pipeline>().unwrap();
    let webrtc = pipeline.by_name("webrtc").unwrap();
    pipeline.set_state(gst::State::Ready).expect("READY");
    let tr = webrtc.emit_by_name::<Option<gst_webrtc::WebRTCRTPTransceiver>>("get-transceiver", &[&0i32]).unwrap();
    tr.set_direction(gst_webrtc::WebRTCRTPTransceiverDirection::Sendonly);
    let mut prefs = format!(
        "application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,payload={},\
         packetization-mode=(string)1,profile-level-id=(string)42e01f",
        info.payload_type
    );
    if let (true, Some(id)) = (gcc, info.twcc_id) {
        let uri = robotd::webrtc::TWCC_URI;
        let ext = gstreamer_rtp::RTPHeaderExtension::create_from_uri(uri).expect("rtphdrexttwcc");
        ext.set_id(u32::from(id));
        pipeline.by_name("pay").unwrap().emit_by_name::<()>("add-extension", &[&ext]);
        prefs.push_str(&format!(",extmap-{id}=(string){uri},rtcp-fb-transport-cc=(boolean)true"));
        // As congestion::install: bounds from the call's rate over HEADROOM.
        let factor = if variant == "gcc2x" { 2.5 } else { 1.0 };
        let bps = |kbps: u32, f: f64| (f64::from(kbps) * 1000.0 * f / robotd::webrtc::congestion::HEADROOM) as u32;
        let bwe = gst::ElementFactory::make("rtpgccbwe").build().expect("rtpgccbwe");
        bwe.set_property("min-bitrate", bps(robotd::webrtc::congestion::FLOOR_KBPS, 1.0));
        bwe.set_property("max-bitrate", bps(KBPS, factor));
        bwe.set_property("estimated-bitrate", bps(KBPS, factor));
        let used = AtomicBool::new(false);
        webrtc.connect("request-aux-sender", false, move |_| {
            (!used.swap(true, Ordering::Relaxed)).then(|| bwe.to_value())
        });
    }
    tr.set_codec_preferences(Some(&gst::Caps::from_str(&prefs).unwrap()));
    webrtc.connect_pad_added(|_, pad| {
        // Nothing comes back but RTCP; an unlinked source pad would fail the pipeline.
        if pad.direction() == gst::PadDirection::Src {
            let sink = gst::ElementFactory::make("fakesink").build().unwrap();
            let bin = pad.parent_element().and_then(|e| e.parent()).and_downcast::<gst::Bin>().unwrap();
            bin.add(&sink).unwrap();
            sink.sync_state_with_parent().unwrap();
            let _ = pad.link(&sink.static_pad("sink").unwrap());
        }
    });
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    let call = |signal: &str, arg: &gst::glib::Value| -> Option<gst::Structure> {
        let (tx, rx) = mpsc::channel();
        let promise = gst::Promise::with_change_func(move |r| {
            let _ = tx.send(r.ok().flatten().map(|s| s.to_owned()));
        });
        webrtc.emit_by_name::<()>(signal, &[arg, &promise]);
        rx.recv_timeout(Duration::from_secs(10)).expect(signal)
    };
    let msg = gst_sdp::SDPMessage::parse_buffer(offer.as_bytes()).expect("offer SDP");
    let offer = gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Offer, msg);
    call("set-remote-description", &offer.to_value());
    let reply = call("create-answer", &None::<gst::Structure>.to_value()).expect("an answer");
    let answer = reply.get::<gst_webrtc::WebRTCSessionDescription>("answer").expect("answer");
    call("set-local-description", &answer.to_value());
    let end = Instant::now() + Duration::from_secs(10);
    while webrtc.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state")
        != gst_webrtc::WebRTCICEGatheringState::Complete
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let local = webrtc.property::<gst_webrtc::WebRTCSessionDescription>("local-description");
    println!("{}", json!({ "sdp": local.sdp().as_text().unwrap() }));
    std::io::stdout().flush().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let appsrc = pipeline.by_name("src").unwrap().downcast::<gst_app::AppSrc>().unwrap();
    // The same renderer and pacing as robotd's sim camera.
    let scene = robotd::video::simcam::SimScene::new(flat_world());
    robotd::video::simcam::spawn(appsrc, scene, WIDTH, HEIGHT, FPS, stop.clone()).expect("sim camera thread");
    // Until the harness closes stdin.
    for _ in lines.by_ref() {}
    stop.store(true, Ordering::Relaxed);
    let _ = pipeline.set_state(gst::State::Null);
}

/// The harness's end of a floor sender.
struct Floor {
    child: Child,
}

impl Floor {
    fn start(ns: &Ns, variant: &str, offer: &Value, log: &Path) -> Result<(Floor, String), String> {
        let err = std::fs::File::create(log).unwrap();
        let mut child = ns
            .command(std::env::current_exe().unwrap())
            .arg("floor-sender")
            .env("ROBOTD_FLOOR", variant)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{offer}").map_err(|e| e.to_string())?;
        child.stdin = Some(stdin);
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let floor = Floor { child };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if !line.trim().is_empty() => Ok((floor, line.trim().to_string())),
            _ => Err(format!("the floor sender gave no answer:\n{}", std::fs::read_to_string(log).unwrap_or_default())),
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- page driver

/// Run web/e2e/bench.mjs in `ns`, answer its requests, return its RESULT.
fn drive(ns: &Ns, robot_ns: &Ns, robot: &Robot, env: &[(&str, String)], work: &Path) -> Value {
    let mut cmd = ns.command("node");
    cmd.arg(web_dir().join("e2e/bench.mjs")).current_dir(web_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("node");
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel::<Option<String>>();
    for (i, out) in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(Some(if i == 0 { l } else { format!("(stderr) {l}") }));
            }
            if i == 0 {
                let _ = tx.send(None);
            }
        });
    }
    let child = Server(child);
    let end = Instant::now() + DRIVER_TIMEOUT;
    let mut floor: Option<Floor> = None;
    let mut result = None;
    let mut n = 0;
    loop {
        let line = match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(_) => panic!("the page driver did not finish within {DRIVER_TIMEOUT:?}"),
        };
        if let Some(r) = line.strip_prefix("RESULT ") {
            result = Some(serde_json::from_str::<Value>(r).expect("RESULT JSON"));
            continue;
        }
        let Some(req) = line.strip_prefix("@@ ") else {
            eprintln!("{line}");
            continue;
        };
        let req: Value = serde_json::from_str(req).expect("request JSON");
        let answer = match req["op"].as_str() {
            Some("status") => status_sync(robot),
            Some("floor-offer") => {
                floor = None;
                n += 1;
                match Floor::start(
                    robot_ns,
                    req["variant"].as_str().unwrap_or("bare"),
                    &req["offer"],
                    &work.join(format!("floor-{n}.log")),
                ) {
                    Ok((f, answer)) => {
                        floor = Some(f);
                        serde_json::from_str(&answer).unwrap_or_else(|e| json!({ "error": e.to_string() }))
                    }
                    Err(e) => json!({ "error": e }),
                }
            }
            Some("floor-stop") => {
                floor = None;
                json!({})
            }
            other => json!({ "error": format!("unknown request {other:?}") }),
        };
        if writeln!(stdin, "{answer}").is_err() {
            break;
        }
    }
    drop(floor);
    let mut child = child;
    let status = child.0.wait().unwrap();
    assert!(status.success(), "the page driver failed ({status}); robotd:\n{}", robot.log());
    result.expect("the page driver printed no RESULT")
}

// ---------------------------------------------------------------- figures

fn nums(v: &Value) -> Vec<f64> {
    let mut x: Vec<f64> = v.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
    x.sort_by(f64::total_cmp);
    x
}

fn pct(x: &[f64], p: f64) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    x[((x.len() - 1) as f64 * p).round() as usize]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    format!(
        "nproc {}; CPU {}; loadavg {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        model.unwrap_or("?"),
        loadavg()
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()
}

/// Glass-to-glass rows: each sender's percentiles and its ratio to the bare floor.
fn g2g_report(r: &Value) {
    println!("\n### Glass-to-glass, {WIDTH}x{HEIGHT}@{FPS}, capture -> expectedDisplayTime (ms)\n");
    println!(
        "| sender | frames read | unreadable | p50 | p90 | p99 | max | p50 / bare floor | p99 / bare floor | \
         receive->display p50 | jitter buffer avg | decode avg | p50 by round |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let Some(all) = r["g2g"].as_object() else { return };
    let floor = nums(&r["g2g"]["floor:bare"]["ms"]);
    let mean = |x: &[f64]| if x.is_empty() { f64::NAN } else { x.iter().sum::<f64>() / x.len() as f64 };
    for (who, g) in all {
        let ms = nums(&g["ms"]);
        let name = match who.as_str() {
            "app" => "robotd (the app's call)".to_string(),
            "floor:bare" => "floor: bare webrtcbin".to_string(),
            "floor:chain" => "floor + robotd's videoscale/videorate".to_string(),
            "floor:gcc" => "floor + chain + rtpgccbwe (robotd's bounds)".to_string(),
            "floor:gcc2x" => "floor + chain + rtpgccbwe at 2.5x".to_string(),
            other => other.to_string(),
        };
        println!(
            "| {name} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x | {:.2}x | {:.1} | {:.1} | {:.1} | {} |",
            ms.len(),
            g["unreadable"].as_u64().unwrap_or(0),
            pct(&ms, 0.5),
            pct(&ms, 0.9),
            pct(&ms, 0.99),
            ms.last().copied().unwrap_or(f64::NAN),
            pct(&ms, 0.5) / pct(&floor, 0.5),
            pct(&ms, 0.99) / pct(&floor, 0.99),
            pct(&nums(&g["recv_to_display"]), 0.5),
            mean(&nums(&g["jitter_ms"])),
            mean(&nums(&g["decode_ms"])),
            g["rounds"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| format!("{:.0}", r["p50"].as_f64().unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    println!("\n(goal: p50 <= 50 ms, p99 <= 100 ms)");
}

/// `ROBOTD_BENCH_TRACE=1`: where each call's set-up time went, from
/// robotd's and its helpers' logs (helper start, its steps to the answer,
/// robotd's receipt of the answer).
fn setup_trace(label: &str, robot: &Robot) {
    if std::env::var_os("ROBOTD_BENCH_TRACE").is_none() {
        return;
    }
    let keys = [
        "invite",
        "media helper started",
        "media helper ready",
        "answer ready",
        "answer sent",
        "media helper answered",
    ];
    for line in robot.log().lines().filter(|l| keys.iter().any(|k| l.contains(k))) {
        eprintln!("setup {label}: {line}");
    }
}

fn ttff_report(label: &str, r: &Value, goal_ms: u32) {
    let t = nums(&r["ttff"]);
    let c = nums(&r["connected"]);
    println!(
        "| {label} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {goal_ms} |",
        t.len(),
        r["no_frame"].as_u64().unwrap_or(0),
        pct(&t, 0.5),
        t.last().copied().unwrap_or(f64::NAN),
        t.first().copied().unwrap_or(f64::NAN),
        pct(&c, 0.5),
    );
}

fn app_report(r: &Value) {
    let open = &r["open"];
    println!("\n### The phone app on opening (cold cache)\n");
    println!("| resource | bytes | gzip | brotli |");
    println!("|---|---|---|---|");
    let (mut raw, mut gz, mut br) = (0, 0, 0);
    for f in open["files"].as_array().into_iter().flatten() {
        let g = |k: &str| f[k].as_u64().unwrap_or(0);
        println!("| {} | {} | {} | {} |", f["path"].as_str().unwrap_or("?"), g("bytes"), g("gzip"), g("brotli"));
        raw += g("bytes");
        gz += g("gzip");
        br += g("brotli");
    }
    println!("| **total** | {raw} | {gz} | {br} |");
    println!("\n(goal: <= 150 KB compressed; the QR decoder chunk is not among them: {})", open["lazy"]);
    let online = nums(&open["online_ms"]);
    println!(
        "\nopening the page -> robot shown online: {} opens, p50 {:.0} ms, max {:.0} ms (DOMContentLoaded p50 {:.0} ms)",
        online.len(),
        pct(&online, 0.5),
        online.last().copied().unwrap_or(f64::NAN),
        pct(&nums(&open["dcl_ms"]), 0.5),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("floor-sender") {
        floor_sender();
        return;
    }
    let quick = common::bench_quick(&args);
    if let Some(reason) = missing() {
        println!("browser bench skipped: {reason}");
        return;
    }
    let (rounds, seconds) = if quick { (2, 8) } else { (6, 10) };
    // `--floors bare,chain,gcc,gcc2x`: which floor variants run each round
    // (`chain` is robotd's chain before videorate went from the sim path).
    let floors = args
        .iter()
        .position(|a| a == "--floors")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| if quick { "bare".into() } else { "bare,chain".into() });
    let started = Instant::now();
    println!("# robotd browser bench\n\n{}; {rounds} rounds of {seconds} s per sender; floors {floors}\n", machine());

    // Home LAN: the phone on the robot's Wi-Fi.
    let Some(mut net) = Internet::new() else { return };
    net.start_mosquitto();
    let work = tempfile::tempdir().unwrap();
    let dist = work.path().join("dist");
    build_app(&dist, &net.broker_ws_url(), None);
    let mut robot = Robot::configure_url(&net.broker_url(), &merge_toml(&flat(), &sim_video()));
    robot.spawn_wrapped(net.robot.command("env"));
    let lan = {
        let _server = serve(&net.lan_phone, &dist, &work.path().join("http-lan.log"));
        let env = vec![
            ("APP_URL", "http://127.0.0.1:8000/".to_string()),
            ("ROBOT_ID", robot.id.clone()),
            ("PAIR_URI", pairing_uri(&robot).to_string()),
            ("MODE", "lan".to_string()),
            ("ROUNDS", rounds.to_string()),
            ("SECONDS", seconds.to_string()),
            ("FLOORS", floors.clone()),
            ("DIST", dist.display().to_string()),
        ];
        drive(&net.lan_phone, &net.robot, &robot, &env, work.path())
    };
    let lan_load = loadavg();
    setup_trace("home LAN", &robot);
    drop(robot);
    // Printed now, so a failure in the TURN part keeps them.
    g2g_report(&lan);
    app_report(&lan);
    println!("\n### Time to first frame: tap \"call\" -> first frame presented (ms)\n");
    println!("| path | calls with a frame | calls without | p50 | max | min | tap -> connected p50 | goal |");
    println!("|---|---|---|---|---|---|---|---|");
    ttff_report("home LAN (direct)", &lan, 1000);
    std::io::stdout().flush().unwrap();

    // The phone on a carrier network (symmetric NAT), the robot at home:
    // the call goes through the TURN relay (robotd has the credentials).
    let secret = "n0t-in-any-page";
    net.start_turn(&netns::TurnAuth::shared_secret(secret));
    let dist_turn = work.path().join("dist-turn");
    let ice = json!([{ "urls": net.stun_url() }]).to_string();
    build_app(&dist_turn, &net.broker_ws_url(), Some(&ice));
    let secret_file = work.path().join("turn-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let webrtc =
        format!("[webrtc]\nturn = [\"{}\"]\nturn_secret_file = \"{}\"\n", net.turn_url("udp"), secret_file.display());
    let mut robot = Robot::configure_url(&net.broker_url(), &merge_toml(&merge_toml(&flat(), &sim_video()), &webrtc));
    robot.spawn_wrapped(net.robot.command("env"));
    let turn = {
        let _server = serve(&net.phone, &dist_turn, &work.path().join("http-turn.log"));
        let env = vec![
            ("APP_URL", "http://127.0.0.1:8000/".to_string()),
            ("ROBOT_ID", robot.id.clone()),
            ("PAIR_URI", pairing_uri(&robot).to_string()),
            ("MODE", "turn".to_string()),
            ("ROUNDS", (rounds + 1).to_string()),
            ("SECONDS", "0".to_string()),
            ("DIST", dist_turn.display().to_string()),
        ];
        drive(&net.phone, &net.robot, &robot, &env, work.path())
    };
    let relayed = net.turn_log().contains("ALLOCATE processed, success");
    setup_trace("TURN", &robot);
    drop(robot);

    ttff_report(
        if relayed { "carrier NAT, through TURN" } else { "carrier NAT (no TURN allocation seen!)" },
        &turn,
        2000,
    );
    println!(
        "\nloadavg after the LAN part: {lan_load}; at the end: {}; total {:.0} s",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
}
