//! Version 2 (WebRTC) call benchmarks (docs/benchmarks.md, issue 17 item 3
//! and issue 13's memory figures), in the network namespaces of
//! tests/common/netns.rs: the robot behind the home NAT relaying through
//! coturn, the phone behind the carrier's symmetric NAT, where the
//! impairments are applied.
//!
//! - **adapt**: a 720p30 call starting at 2000 kbit/s (`test:snow`, a scene
//!   that fills any bitrate) from robotd's media helper (`robotd-media`) to
//!   the GStreamer phone peer (`PhonePeer`, what robotctl uses), relayed by
//!   tests/common/webrtc_peers.rs. Phases: unimpaired (the floor: frames
//!   decoded / sent, inter-frame gaps), a 598 kbit/s policer (time until the
//!   send rate stays under the cap, share of the cap used afterwards, the
//!   longest gap between decoded frames), and, in a second call, 5 % loss
//!   both ways (frames decoded / sent). The cap itself is measured with a
//!   plain UDP flood through the same policer.
//! - **memory**: robotd (MQTT, the real binary) paired and idle, then in a v2
//!   call from `robotctl call --webrtc`: VmHWM/VmRSS of the main process and
//!   of its media helper, against a bare `gst-launch-1.0` with the helper's
//!   encoder chain and the phone peer (robotctl) in the same run.
//!
//! `cargo bench --bench webrtc [-- --quick] [-- --only adapt,memory]`; needs
//! root and `ip netns` (skips otherwise), coturn, mosquitto, gst-launch-1.0.

#[path = "../tests/common/calls.rs"]
mod calls_kit;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/netns.rs"]
mod netns;
#[path = "../tests/common/webrtc_peers.rs"]
mod peers;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Robot, merge_toml, robotctl_bin};
use peers::{CALL_TIMEOUT, Call, Opts, Tamper};
use robotd::webrtc::VideoSpec;

/// The policer: 73 KiB/s of IP packets each way = 598 kbit/s.
const CAP_KBYTES: u32 = 73;
const CAP_KBPS: f64 = CAP_KBYTES as f64 * 1024.0 * 8.0 / 1000.0;
const FREEZE: Duration = Duration::from_millis(500);

struct Plan {
    quick: bool,
    reps: usize,
    base_s: u64,
    cap_s: u64,
    loss_s: u64,
    only: Vec<String>,
}

impl Plan {
    fn from_args(args: &[String]) -> Plan {
        let (quick, only) = (common::bench_quick(args), common::bench_only(args));
        if quick {
            Plan { quick, reps: 2, base_s: 8, cap_s: 20, loss_s: 15, only }
        } else {
            Plan { quick, reps: 4, base_s: 15, cap_s: 30, loss_s: 30, only }
        }
    }
    fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }
}

fn video() -> VideoSpec {
    VideoSpec { device: "test:snow".into(), width: 1280, height: 720, fps: 30, kbps: 2000, encoder: "auto".into() }
}

/// Nearest-rank percentile of `v` (sorted here), ms.
fn pct_ms(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort();
    let i = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

/// The carrier's counters: bytes from the internet (what the robot's relay
/// sends towards the phone, before the policer) and bytes to the phone
/// (after it).
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    offered: u64,
    delivered: u64,
}

fn sample(net: &netns::Internet) -> Sample {
    let (offered, _) = net.carrier.link_bytes("wan");
    let (_, delivered) = net.carrier.link_bytes("lan");
    Sample { at: Instant::now(), offered, delivered }
}

fn kbps(a: &Sample, b: &Sample, bytes: fn(&Sample) -> u64) -> f64 {
    (bytes(b) - bytes(a)) as f64 * 8.0 / b.at.duration_since(a.at).as_secs_f64() / 1000.0
}

/// Relay the call for `d`, sampling the carrier every 250 ms.
fn pump_sampling(call: &mut Call, net: &netns::Internet, d: Duration) -> Vec<Sample> {
    let end = Instant::now() + d;
    let mut v = vec![sample(net)];
    while Instant::now() < end {
        call.pump(Duration::from_millis(250).min(end.saturating_duration_since(Instant::now())), |_| false);
        v.push(sample(net));
    }
    v
}

/// Frames decoded / sent and the inter-frame gaps while `f` relays.
struct Window {
    sent: u64,
    decoded: u64,
    gaps: Vec<Duration>,
    samples: Vec<Sample>,
}

impl Window {
    fn ratio(&self) -> f64 {
        self.decoded as f64 / self.sent.max(1) as f64
    }
    fn max_gap_ms(&self) -> f64 {
        pct_ms(&self.gaps, 100.0)
    }
    fn freezes(&self) -> usize {
        self.gaps.iter().filter(|g| **g > FREEZE).count()
    }
}

fn window(call: &mut Call, net: &netns::Internet, d: Duration) -> Window {
    let (s0, d0, g0) = (call.frames_sent, call.frames, call.gaps.len());
    let samples = pump_sampling(call, net, d);
    // The gaps reported during the window (their lag, ≤ 250 ms, is the
    // same as that of the frame counters).
    let gaps = call.gaps[g0..].iter().map(|(_, g)| *g).collect();
    Window { sent: call.frames_sent - s0, decoded: call.frames - d0, gaps, samples }
}

/// The cap measured: a plain UDP flood at twice its rate from the server to
/// the phone (through the carrier's NAT, as the relayed media comes), IP
/// bytes received per second after the policer's 1 s bucket has drained.
fn flood_floor(net: &mut netns::Internet) -> f64 {
    net.set_rate_cap(CAP_KBYTES);
    let server = net.public.udp(SocketAddr::from((netns::SERVER, 0)));
    let to = server.local_addr().unwrap();
    let phone = net.phone.udp(SocketAddr::from(([0, 0, 0, 0], 0)));
    phone.send_to(b"hello", to).unwrap();
    server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1500];
    let (_, mapped) = server.recv_from(&mut buf).expect("the phone's hello through the carrier NAT");
    const PAYLOAD: usize = 1172; // 1200-byte IP packets
    let flood = std::thread::spawn(move || {
        let gap = Duration::from_secs_f64(1200.0 / (2.0 * CAP_KBPS * 1000.0 / 8.0));
        let (start, mut next) = (Instant::now(), Instant::now());
        while start.elapsed() < Duration::from_secs(7) {
            let _ = server.send_to(&[0u8; PAYLOAD], mapped);
            next += gap;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    phone.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let t0 = Instant::now();
    let (mut bytes, mut from) = (0u64, None);
    while t0.elapsed() < Duration::from_secs(7) {
        if let Ok(n) = phone.recv(&mut buf) {
            if t0.elapsed() >= Duration::from_secs(2) {
                from.get_or_insert_with(Instant::now);
                bytes += n as u64 + 28;
            }
        }
    }
    flood.join().unwrap();
    net.clear();
    let secs = from.map_or(1.0, |f| f.elapsed().as_secs_f64());
    bytes as f64 * 8.0 / secs / 1000.0
}

/// One repetition's figures.
struct Rep {
    cap_floor: f64,
    base: Window,
    base_kbps: f64,
    /// From the cap until the send rate (1 s windows) stays under the cap.
    settle: Option<f64>,
    /// After settling: delivered and offered kbit/s.
    after_delivered: f64,
    after_offered: f64,
    cap: Window,
    end_encoder: u32,
    end_size: (u32, u32),
    loss_base: Window,
    loss: Window,
}

fn start_call(net: &netns::Internet, ice: &(robotd::webrtc::IceConfig, robotd::webrtc::IceConfig)) -> Call {
    let opts = Opts { video: video(), ..Opts::default() };
    let mut call = Call::start_with(net, &net.robot, &net.phone, ice.0.clone(), ice.1.clone(), Tamper::Nothing, opts);
    let ok = call.pump(CALL_TIMEOUT, |c| c.frames >= 15 || c.robot_ended().is_some());
    assert!(ok && call.frames >= 15, "no video: {}", call.report());
    call
}

/// `ROBOTD_BENCH_TRACE=1`: the capped phase second by second on stderr, and
/// every 1 s window (at each 250 ms sample) whose offered rate is over the cap.
fn trace(call: &Call, s: &[Sample], capped: Instant, cap_floor: f64) {
    for i in 4..s.len() {
        let over = kbps(&s[i - 4], &s[i], |x| x.offered) > cap_floor;
        if i % 4 != 0 && !over {
            continue;
        }
        let (from, to) = (s[i - 4].at, s[i].at);
        let r = call.rates.iter().rfind(|r| r.at <= to);
        let gap = call.gaps.iter().filter(|(at, _)| *at > from && *at <= to).map(|(_, g)| *g).max();
        eprintln!(
            "t={:5.1}s offered {:4.0} delivered {:4.0} kbit/s{}; estimate {:?} encoder {:?} size {:?}; max gap {:?} ms",
            to.duration_since(capped).as_secs_f64(),
            kbps(&s[i - 4], &s[i], |x| x.offered),
            kbps(&s[i - 4], &s[i], |x| x.delivered),
            if over { " (over the cap)" } else { "" },
            r.map(|r| r.estimate_kbps),
            r.map(|r| r.encoder_kbps),
            r.map(|r| (r.width, r.height)),
            gap.map(|g| g.as_millis()),
        );
    }
}

fn adapt_rep(plan: &Plan) -> Option<Rep> {
    let mut net = netns::Internet::new()?;
    let cap_floor = flood_floor(&mut net);
    let ice = peers::relayed(&mut net);

    let mut call = start_call(&net, &ice);
    call.pump(Duration::from_secs(5), |_| false);
    let base = window(&mut call, &net, Duration::from_secs(plan.base_s));
    let base_kbps = kbps(&base.samples[0], base.samples.last().unwrap(), |s| s.offered);
    net.set_rate_cap(CAP_KBYTES);
    let capped = Instant::now();
    let cap = window(&mut call, &net, Duration::from_secs(plan.cap_s));
    let s = &cap.samples;
    // 1 s windows (4 samples apart): the end of the last one above the cap.
    let over = (4..s.len()).rev().find(|&i| kbps(&s[i - 4], &s[i], |x| x.offered) > cap_floor);
    let settle_i = over.unwrap_or(0);
    let settle = (settle_i + 4 < s.len()).then(|| s[settle_i].at.duration_since(capped).as_secs_f64());
    let last = s.last().unwrap();
    let (after_delivered, after_offered) = if settle_i + 4 < s.len() {
        (kbps(&s[settle_i], last, |x| x.delivered), kbps(&s[settle_i], last, |x| x.offered))
    } else {
        (f64::NAN, f64::NAN)
    };
    if std::env::var_os("ROBOTD_BENCH_TRACE").is_some() {
        trace(&call, s, capped, cap_floor);
        // With ROBOTD_HELPER_LOG=robotd::webrtc::congestion=debug: the adapter's changes.
        for line in call.robot.log().lines().filter(|l| l.contains("bandwidth")) {
            eprintln!("helper: {line}");
        }
    }
    let r = call.last_rates().expect("Stats from the helper");
    drop(call);
    net.clear();

    let mut call = start_call(&net, &ice);
    call.pump(Duration::from_secs(5), |_| false);
    let loss_base = window(&mut call, &net, Duration::from_secs(plan.base_s.min(plan.loss_s)));
    net.set_loss(5);
    let loss = window(&mut call, &net, Duration::from_secs(plan.loss_s));
    drop(call);
    Some(Rep {
        cap_floor,
        base,
        base_kbps,
        settle,
        after_delivered,
        after_offered,
        cap,
        end_encoder: r.encoder_kbps,
        end_size: (r.width, r.height),
        loss_base,
        loss,
    })
}

fn spread(v: &[f64], digits: usize) -> String {
    let ok: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if ok.is_empty() {
        return "n/a".into();
    }
    let mut s = ok.clone();
    s.sort_by(f64::total_cmp);
    let each = v.iter().map(|x| if x.is_finite() { format!("{x:.digits$}") } else { "-".into() }).collect::<Vec<_>>();
    format!("{:.digits$}-{:.digits$} ({})", s[0], s[s.len() - 1], each.join(", "))
}

fn adapt(plan: &Plan, out: &mut Vec<String>) {
    let mut reps = Vec::new();
    for i in 0..plan.reps {
        let t = Instant::now();
        let Some(r) = adapt_rep(plan) else {
            out.push("\n### Adaptation: skipped (no network namespaces)".into());
            return;
        };
        eprintln!(
            "rep {i}: floor {:.0} kbit/s, settle {:?}, after {:.0}/{:.0} kbit/s, cap max gap {:.0} ms, loss {:.3} ({} s)",
            r.cap_floor,
            r.settle,
            r.after_delivered,
            r.after_offered,
            r.cap.max_gap_ms(),
            r.loss.ratio(),
            t.elapsed().as_secs()
        );
        reps.push(r);
    }
    let col = |f: &dyn Fn(&Rep) -> f64, d: usize| spread(&reps.iter().map(f).collect::<Vec<_>>(), d);
    out.push(format!(
        "\n### Adaptation, 720p30 `test:snow` from 2000 kbit/s, through TURN to the carrier's phone, {} repetitions \
         (unimpaired {} s, capped {} s, 5 % loss {} s)\n\n\
         | figure | goal | range (each run) |\n|---|---|---|\n\
         | cap measured by a UDP flood at 2x through the policer, kbit/s (floor) | | {} |\n\
         | unimpaired: offered kbit/s at the carrier | | {} |\n\
         | unimpaired: frames decoded / sent (floor) | | {} |\n\
         | unimpaired: inter-frame gap p99 / max, ms (floor) | | {} / {} |\n\
         | capped: time until the send rate stays under the cap, s | <= 5 | {} |\n\
         | capped, after settling: delivered / cap | >= 0.70 | {} |\n\
         | capped, after settling: offered / cap | | {} |\n\
         | capped: longest gap between decoded frames, ms | <= 500 | {} |\n\
         | capped: gaps over 500 ms | 0 | {} |\n\
         | capped: inter-frame gap p99, ms | | {} |\n\
         | capped: frames decoded / sent | | {} |\n\
         | capped, at the end: encoder kbit/s | | {} |\n\
         | capped, at the end: frame height | | {} |\n\
         | second call, unimpaired: frames decoded / sent (floor) | | {} |\n\
         | 5 % loss both ways: frames decoded / sent | >= 0.97 | {} |\n\
         | 5 % loss: longest gap, ms | | {} |",
        reps.len(),
        plan.base_s,
        plan.cap_s,
        plan.loss_s,
        col(&|r| r.cap_floor, 0),
        col(&|r| r.base_kbps, 0),
        col(&|r| r.base.ratio(), 3),
        col(&|r| pct_ms(&r.base.gaps, 99.0), 0),
        col(&|r| r.base.max_gap_ms(), 0),
        col(&|r| r.settle.unwrap_or(f64::NAN), 1),
        col(&|r| r.after_delivered / r.cap_floor, 2),
        col(&|r| r.after_offered / r.cap_floor, 2),
        col(&|r| r.cap.max_gap_ms(), 0),
        col(&|r| r.cap.freezes() as f64, 0),
        col(&|r| pct_ms(&r.cap.gaps, 99.0), 0),
        col(&|r| r.cap.ratio(), 3),
        col(&|r| f64::from(r.end_encoder), 0),
        col(&|r| f64::from(r.end_size.1), 0),
        col(&|r| r.loss_base.ratio(), 3),
        col(&|r| r.loss.ratio(), 3),
        col(&|r| r.loss.max_gap_ms(), 0),
    ));
    println!("{}", out.last().unwrap());
}

// ---------------------------------------------------------------- memory

fn status_kb(pid: i32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// VmHWM and the largest VmRSS seen of a process, sampled.
#[derive(Default, Clone, Copy)]
struct Mem {
    hwm: u64,
    rss: u64,
}

impl Mem {
    fn see(&mut self, pid: i32) {
        self.hwm = self.hwm.max(status_kb(pid, "VmHWM:"));
        self.rss = self.rss.max(status_kb(pid, "VmRSS:"));
    }
}

fn memory(plan: &Plan, out: &mut Vec<String>) {
    let Some(mut net) = netns::Internet::new() else {
        out.push("\n### Memory: skipped (no network namespaces)".into());
        return;
    };
    net.start_mosquitto();
    let cfg = "[video]\ndevice = \"test\"\nwidth = 1280\nheight = 720\nfps = 30\nkbps = 2000\n";
    let mut robot = Robot::configure_url(&net.broker_url(), &merge_toml(calls_kit::TEST_VIDEO, cfg));
    robot.spawn_wrapped(net.robot.command("env"));
    let keys = net.dir().join("keys.json");
    let uri = calls_kit::pairing_uri(&robot).to_string();
    let robotctl = |args: &[&str]| {
        let mut c = net.lan_phone.command(robotctl_bin());
        c.arg("--keys").arg(&keys).args(args).stdin(Stdio::null());
        c
    };
    let paired = robotctl(&["pair", &uri, "--phone", "+48 555 555 555"]).output().unwrap();
    assert!(paired.status.success(), "pairing: {}", String::from_utf8_lossy(&paired.stderr));
    std::thread::sleep(Duration::from_secs(5));
    let pid = robot.pid();
    let idle = Mem { hwm: status_kb(pid, "VmHWM:"), rss: status_kb(pid, "VmRSS:") };

    let call_s: u64 = if plan.quick { 12 } else { 24 };
    let mut args = vec!["call", "--webrtc", "--frames", "1"];
    for _ in 0..call_s / 6 {
        args.extend(["-x", "wait 6", "-x", "ping"]);
    }
    let mut phone = robotctl(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let (mut main, mut helper, mut peer) = (Mem::default(), Mem::default(), Mem::default());
    let end = Instant::now() + Duration::from_secs(call_s + 60);
    let mut saw_helper = false;
    while Instant::now() < end && phone.try_wait().unwrap().is_none() {
        main.see(pid);
        peer.see(phone.id() as i32);
        if let Some(h) = calls_kit::helper_pid(pid) {
            saw_helper = true;
            helper.see(h);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = phone.kill();
    let ok = phone.wait().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let after = Mem { hwm: status_kb(pid, "VmHWM:"), rss: status_kb(pid, "VmRSS:") };

    // The floor: the helper's encoder chain alone (same source, size, x264
    // settings and payloader), into a fakesink.
    let desc = format!(
        "videotestsrc is-live=true ! videoconvert ! videoscale ! videorate \
         ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1 ! {} \
         ! video/x-h264,profile=constrained-baseline ! h264parse config-interval=-1 \
         ! rtph264pay config-interval=-1 aggregate-mode=zero-latency mtu=1200 ! fakesink",
        robotd::video::Encoder::X264.launch_description("x264", 2000, 30)
    );
    let mut g = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(desc.split_whitespace())
        .stdout(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0");
    let mut gst = Mem::default();
    for _ in 0..(call_s * 2).min(40) {
        std::thread::sleep(Duration::from_millis(250));
        gst.see(g.id() as i32);
    }
    let _ = g.kill();
    let _ = g.wait();
    drop(robot);
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    out.push(format!(
        "\n### Memory in a v2 call (720p30 test source, 2000 kbit/s, robotctl on the robot's LAN, {call_s} s; \
         robotctl exit {ok}, helper seen: {saw_helper})\n\n\
         | process | VmHWM kB | max VmRSS kB | floor | ratio (VmHWM) |\n|---|---|---|---|---|\n\
         | robotd main, paired, idle 5 s | {} | {} | goal 10240 | {:.2}x the goal |\n\
         | robotd main, during the call | {} | {} | idle VmHWM {} | {:.2}x |\n\
         | robotd main, 3 s after the call (VmRSS now) | {} | {} | | |\n\
         | media helper (`robotd-media`), during the call | {} | {} | gst-launch-1.0 encoder chain {} | {:.2}x |\n\
         | phone peer (robotctl) | {} | {} | | |\n\
         | gst-launch-1.0, the helper's encoder chain to fakesink (floor) | {} | {} | | |",
        idle.hwm,
        idle.rss,
        ratio(idle.hwm, 10240),
        main.hwm,
        main.rss,
        idle.hwm,
        ratio(main.hwm, idle.hwm),
        after.hwm,
        after.rss,
        helper.hwm,
        helper.rss,
        gst.hwm,
        ratio(helper.hwm, gst.hwm),
        peer.hwm,
        peer.rss,
        gst.hwm,
        gst.rss,
    ));
    println!("{}", out.last().unwrap());
}

fn main() {
    peers::phone_process_if_asked();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let plan = Plan::from_args(&args);
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned();
    let mut out = vec![format!(
        "## robotd WebRTC benchmarks ({} run)\n\nstart: nproc {}; loadavg {}",
        if plan.quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load()
    )];
    println!("{}", out[0]);
    let t = Instant::now();
    if plan.wants("memory") {
        memory(&plan, &mut out);
    }
    if plan.wants("adapt") {
        adapt(&plan, &mut out);
    }
    out.push(format!("\nend: loadavg {}; total {} s", load(), t.elapsed().as_secs()));
    let text = out.join("\n") + "\n";
    let path = std::env::var("ROBOTD_BENCH_OUT").unwrap_or_else(|_| "target/bench-webrtc.md".into());
    if let Some(dir) = std::path::Path::new(&path).parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    if std::fs::write(&path, &text).is_ok() {
        println!("\nwritten to {path}");
    }
}
