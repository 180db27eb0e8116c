//! System benchmarks of robotd against a real Mosquitto on 127.0.0.1 and the
//! real `robotd` binary (docs/benchmarks.md explains each one and the results).
//!
//!     cargo bench --bench system                       # full run (~10 min)
//!     cargo bench --bench system -- --quick            # short run (~3 min)
//!     cargo bench --bench system -- --only latency,stop,flood,memory,video,video-latency,idle
//!
//! `ROBOTD_BENCH_QUICK=1` is the same as `--quick`. Every figure is printed
//! next to a floor measured in the same run (interleaved where possible).
//!
//! "Pin changed" is observed through `[hardware.sim] pin_events`: the
//! simulator sends one datagram per output pin change with a CLOCK_MONOTONIC
//! timestamp taken when the pin was set, so the observer's own wake-up is not
//! part of the figure. The floor subscriber (a separate process, this binary
//! re-executed as `floor-sub`) sends the same datagram, with pin 255, when
//! the message reaches it.
//!
//! The binary also re-executes itself as `flood` (a raw MQTT 5 client that
//! writes forged PUBLISH packets to the robot's topics as fast as the broker
//! reads them).

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "../tests/common/calls.rs"]
mod calls_kit;

#[path = "../tests/common/flood.rs"]
mod flood_kit;

use std::io::{BufRead, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calls_kit::*;
use common::*;
use robotd::phone::{ActiveCall, Phone};
use robotd::wire::identity::ClientId;
use robotd::wire::props::now_ms;
use robotd::wire::topics;
use serde_json::{Value, json};

/// Pin number the floor subscriber reports as.
const FLOOR_PIN: u8 = 255;

fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------- sizes

struct Plan {
    quick: bool,
    commands: usize,
    stops: usize,
    flood_commands: usize,
    video_s: u64,
    video_reps: usize,
    latency_s: u64,
    only: Vec<String>,
}

impl Plan {
    fn from_args(args: &[String]) -> Plan {
        let (quick, only) = (common::bench_quick(args), common::bench_only(args));
        if quick {
            Plan {
                quick,
                commands: 1500,
                stops: 100,
                flood_commands: 1000,
                video_s: 10,
                video_reps: 2,
                latency_s: 10,
                only,
            }
        } else {
            Plan {
                quick,
                commands: 10_000,
                stops: 300,
                flood_commands: 3000,
                video_s: 30,
                video_reps: 2,
                latency_s: 30,
                only,
            }
        }
    }
    fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }
}

// ---------------------------------------------------------------- statistics

#[derive(Clone, Copy)]
struct Stats {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Percentiles (nearest rank) of nanosecond samples, in milliseconds.
fn stats(samples: &[u64]) -> Stats {
    let mut v = samples.to_vec();
    v.sort_unstable();
    let n = v.len();
    if n == 0 {
        return Stats { n, p50: f64::NAN, p99: f64::NAN, max: f64::NAN };
    }
    let at = |q: f64| v[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1e6;
    Stats { n, p50: at(0.50), p99: at(0.99), max: v[n - 1] as f64 / 1e6 }
}

fn row(name: &str, s: Stats, floor: Option<Stats>) -> String {
    match floor {
        Some(f) => format!(
            "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.2}x | {:.2}x |",
            s.n,
            s.p50,
            s.p99,
            s.max,
            s.p50 / f.p50,
            s.p99 / f.p99
        ),
        None => format!("| {name} | {} | {:.3} | {:.3} | {:.3} | | |", s.n, s.p50, s.p99, s.max),
    }
}

const HEADER: &str =
    "| series | n | p50 ms | p99 ms | max ms | p50 / floor | p99 / floor |\n|---|---|---|---|---|---|---|";

// ---------------------------------------------------------------- pin events

/// The bench's end of `hardware.sim.pin_events` (also the floor subscriber's target).
struct Events {
    sock: tokio::net::UnixDatagram,
    pub path: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy)]
struct PinEvent {
    pin: u8,
    ns: u64,
}

impl Events {
    fn bind(dir: &std::path::Path) -> Events {
        let path = dir.join("pins.sock");
        let std = UnixDatagram::bind(&path).expect("bind pin event socket");
        std.set_nonblocking(true).unwrap();
        // Room for bursts: never lose an event because the bench was slow to read.
        let sock = tokio::net::UnixDatagram::from_std(std).unwrap();
        Events { sock, path }
    }

    fn drain(&self) {
        let mut b = [0u8; 64];
        while self.sock.try_recv(&mut b).is_ok() {}
    }

    async fn next(&self, timeout: Duration) -> Option<PinEvent> {
        let mut b = [0u8; 64];
        match tokio::time::timeout(timeout, self.sock.recv(&mut b)).await {
            Ok(Ok(17)) => Some(PinEvent { pin: b[0], ns: u64::from_le_bytes(b[1..9].try_into().unwrap()) }),
            _ => None,
        }
    }

    /// The first event at or after `t0` that `want` accepts.
    async fn first_after(&self, t0: u64, timeout: Duration, want: impl Fn(u8) -> bool) -> Option<PinEvent> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let e = self.next(left).await?;
            if e.ns >= t0 && want(e.pin) {
                return Some(e);
            }
        }
    }

    /// After `first`, the last robot pin event of the same burst (events
    /// until `quiet` passes without one).
    async fn burst_end(&self, first: PinEvent, quiet: Duration) -> PinEvent {
        let mut last = first;
        while let Some(e) = self.next(quiet).await {
            if e.pin != FLOOR_PIN {
                last = e;
            }
        }
        last
    }
}

// ---------------------------------------------------------------- processes

/// A child process killed on drop.
struct Kid(Option<Child>);

impl Kid {
    fn pid(&self) -> i32 {
        self.0.as_ref().unwrap().id() as i32
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// robotd with production logging (`info`), not the tests' `debug`.
fn spawn_robotd(robot: &Robot) -> Kid {
    let log = std::fs::File::create(robot.dir.path().join("robotd.log")).unwrap();
    Kid(Some(
        Command::new(robotd_bin())
            .arg("-c")
            .arg(&robot.config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start robotd"),
    ))
}

fn self_exe() -> std::path::PathBuf {
    std::env::current_exe().expect("own path")
}

/// The floor: a plain MQTT subscriber in its own process.
fn spawn_floor_sub(port: u16, topic: &str, sock: &std::path::Path) -> Kid {
    let mut c = Command::new(self_exe())
        .args(["floor-sub", &port.to_string(), topic])
        .arg(sock)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start floor subscriber");
    let mut line = String::new();
    std::io::BufReader::new(c.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "floor subscriber did not subscribe");
    Kid(Some(c))
}

/// `/proc/<pid>/status` field in kB.
fn status_kb(pid: i32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

/// utime + stime of `pid` (all threads) in seconds.
fn cpu_s(pid: i32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the comm: state is field 3, utime 14, stime 15 (1-based) -> index 11, 12.
    let ticks: u64 =
        f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0) + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// Voluntary + involuntary context switches of all of `pid`'s threads
/// (each switch away from a thread is one wake-up ending, near enough).
fn switches(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .map(|t| {
            let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            s.lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// `/proc/<pid>/smaps_rollup` fields (kB) that say what the RSS is made of.
fn rollup(pid: i32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    ["Rss:", "Private_Clean:", "Private_Dirty:", "Shared_Clean:", "Anonymous:"]
        .iter()
        .filter_map(|f| {
            s.lines().find_map(|l| l.strip_prefix(f)).map(|v| format!("{} {}", f.trim_end_matches(':'), v.trim()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------- helper modes

/// `floor-sub PORT TOPIC SOCK`: subscribe QoS 1; per message, a datagram.
async fn floor_sub(args: &[String]) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let port: u16 = args[0].parse().unwrap();
    let topic = args[1].clone();
    let sock = UnixDatagram::unbound().unwrap();
    let target = std::path::PathBuf::from(&args[2]);
    let mut o = MqttOptions::new(format!("floor-{}", rand::random::<u32>()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    // The same socket options as robotd's link.
    let mut net = o.network_options();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    let (client, mut el) = AsyncClient::new(o, 64);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3600);
    while Instant::now() < deadline {
        match el.poll().await {
            Ok(Event::Incoming(Packet::Publish(_))) => {
                let mut msg = [0u8; 17];
                msg[0] = FLOOR_PIN;
                msg[1..9].copy_from_slice(&mono_ns().to_le_bytes());
                let _ = sock.send_to(&msg, &target);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                println!("ready");
                std::io::stdout().flush().unwrap();
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------- the robot

const HARDWARE: &str = "[hardware]\nbackend = \"sim\"\n";

struct Rig {
    broker: Broker,
    _custom_broker: Option<Kid>,
    robot: Robot,
    robotd: Kid,
    phone: Phone,
    paired: robotd::phone::PairedRobot,
}

/// The broker: tests/common's Mosquitto, or (with `ROBOTD_BENCH_BROKER_CONF`,
/// extra mosquitto.conf lines separated by `;`) one restarted on the same
/// port with those lines added, to try broker settings.
fn broker() -> (Broker, Option<Kid>) {
    let mut broker = Broker::start();
    let Ok(extra) = std::env::var("ROBOTD_BENCH_BROKER_CONF") else { return (broker, None) };
    broker.stop();
    let dir = tempfile::tempdir().unwrap().keep();
    let conf = dir.join("mosquitto.conf");
    let lines = extra.split(';').map(str::trim).collect::<Vec<_>>().join("\n");
    std::fs::write(
        &conf,
        format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_keepalive 600\n{lines}\n",
            broker.port
        ),
    )
    .unwrap();
    let kid = Kid(Some(
        Command::new("mosquitto").arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    ));
    let port = broker.port;
    assert!(wait_until(SOON, || TcpStream::connect(("127.0.0.1", port)).is_ok()), "mosquitto with {extra}");
    (broker, Some(kid))
}

/// With `ROBOTD_BENCH_RAW=DIR`, the samples (ns, one per line) go to DIR/NAME.txt.
fn dump(name: &str, v: &[u64]) {
    if let Ok(dir) = std::env::var("ROBOTD_BENCH_RAW") {
        let text: String = v.iter().map(|x| format!("{x}\n")).collect();
        let _ = std::fs::write(std::path::Path::new(&dir).join(format!("{name}.txt")), text);
    }
}

async fn rig(extra: &str) -> Rig {
    let (broker, custom) = broker();
    let robot = Robot::configure(&broker, &merge_toml(HARDWARE, extra));
    let robotd = spawn_robotd(&robot);
    wait_online(&broker, &robot).await;
    let (phone, paired) = pair_phone(&broker, &robot, "Bench").await;
    Rig { broker, _custom_broker: custom, robot, robotd, phone, paired }
}

fn drive_body(i: usize, ms: u32) -> Value {
    // A different speed every time (40 values), so a lost command cannot
    // hide behind an unchanged pin.
    json!({"linear": 0.3 + (i % 40) as f64 * 0.01, "angular": 0.0, "ms": ms})
}

/// A topic of the same length as `like`, that robotd does not subscribe to.
fn floor_topic(like: &str) -> String {
    format!("floor/{}", "f".repeat(like.len() - 6))
}

struct Floor {
    topic: String,
    key: [u8; 32],
    seq: u64,
}

impl Floor {
    /// Publish exactly as `Phone::send` does (JSON, MAC, QoS 1), to the floor topic.
    async fn publish(&mut self, phone: &Phone, body: &Value) -> u64 {
        self.seq += 1;
        let payload = serde_json::to_vec(body).unwrap();
        let t0 = mono_ns();
        phone.publish_signed(&self.key, self.floor_topic(), payload, self.seq, now_ms()).await;
        t0
    }
    fn floor_topic(&self) -> String {
        self.topic.clone()
    }
}

/// Drive at 50 Hz: each 20 ms period holds one `drive` (until a pin changes)
/// and, 10 ms later, one floor message (until the floor subscriber has it).
async fn drive_series(
    phone: &mut Phone,
    call: &mut ActiveCall,
    ev: &Events,
    floor: &mut Floor,
    n: usize,
) -> (Vec<u64>, Vec<u64>, usize) {
    let (mut robot, mut base, mut lost) = (Vec::with_capacity(n), Vec::with_capacity(n), 0);
    let period = Duration::from_millis(20);
    let mut next = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(next).await;
        ev.drain();
        let body = drive_body(i, 1000);
        // The drive must echo a fresh token (protocol 5.7); fetching one is
        // not part of the drive's latency.
        phone.refresh_token(call).await;
        let t0 = mono_ns();
        phone.send(call, "drive", &body).await;
        match ev.first_after(t0, Duration::from_secs(1), |p| p != FLOOR_PIN).await {
            Some(e) => robot.push(e.ns - t0),
            None => lost += 1,
        }
        tokio::time::sleep_until(next + period / 2).await;
        ev.drain();
        let t0 = floor.publish(phone, &body).await;
        if let Some(e) = ev.first_after(t0, Duration::from_secs(1), |p| p == FLOOR_PIN).await {
            base.push(e.ns - t0);
        }
        next += period;
        if tokio::time::Instant::now() > next + period {
            next = tokio::time::Instant::now(); // fell behind: do not burst
        }
    }
    (robot, base, lost)
}

/// robotd's drop counters (`robotd status`: link drops by topic, size and
/// backlog; service drops by authentication reason).
fn dropped(robot: &Robot) -> Value {
    status_sync(robot)["dropped"].clone()
}

fn sum(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::Object(m) => m.values().map(sum).sum(),
        _ => 0,
    }
}

async fn motion_benches(plan: &Plan, out: &mut Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let ev = Events::bind(dir.path());
    // A 720p30 x264 call is up while commands are timed (issue 17 item 4).
    let extra = format!("{}[hardware.sim]\npin_events = \"{}\"\n", video_720p30(), ev.path.display());
    let mut r = rig(&extra).await;
    let sink = UdpSink::bind();
    let mut call = call(&mut r.phone, &r.paired, sink.port).await;
    let like = topics::session_request(&call.session, "drive");
    let mut floor = Floor { topic: floor_topic(&like), key: rand::random(), seq: 0 };
    let _floor_sub = spawn_floor_sub(r.broker.port, &floor.topic, &ev.path);
    // Warm-up (connections, caches, the video pipeline settling).
    let _ = drive_series(&mut r.phone, &mut call, &ev, &mut floor, 100).await;

    let mut quiet_p99 = None;
    if plan.wants("latency") {
        let t = Instant::now();
        let (robot, base, lost) = drive_series(&mut r.phone, &mut call, &ev, &mut floor, plan.commands).await;
        let (s, f) = (stats(&robot), stats(&base));
        dump("latency_robot", &robot);
        dump("latency_floor", &base);
        quiet_p99 = Some(s.p99);
        out.push(format!(
            "\n### Command latency (drive published -> first motor pin changed), 50 Hz, {} s, {} lost\n\n{HEADER}\n{}\n{}",
            t.elapsed().as_secs(),
            lost,
            row("broker floor (plain publish -> plain subscriber)", f, None),
            row("drive -> pin", s, Some(f)),
        ));
        println!("{}", out.last().unwrap());
    }

    if plan.wants("stop") {
        // Deadman: drive for D ms from standstill; the pins must be off at t_on + D.
        let d_ms = 100u32;
        let mut late = Vec::new();
        let mut early = 0usize;
        for i in 0..plan.stops {
            tokio::time::sleep(Duration::from_millis(20)).await;
            ev.drain();
            let t0 = mono_ns();
            r.phone.send(&mut call, "drive", &drive_body(i, d_ms)).await;
            let Some(on) = ev.first_after(t0, Duration::from_secs(1), |p| p != FLOOR_PIN).await else { continue };
            // Let the drive's own pin writes pass, then wait for the stop.
            tokio::time::sleep(Duration::from_millis(u64::from(d_ms) / 2)).await;
            ev.drain();
            let Some(first) = ev
                .first_after(on.ns + u64::from(d_ms) / 4 * 1_000_000, Duration::from_secs(2), |p| p != FLOOR_PIN)
                .await
            else {
                continue;
            };
            let off = ev.burst_end(first, Duration::from_millis(5)).await;
            let deadline = on.ns + u64::from(d_ms) * 1_000_000;
            if off.ns >= deadline {
                late.push(off.ns - deadline);
            } else {
                early += 1;
                late.push(0);
            }
        }
        // `stop`: drive, then stop 30 ms later; interleaved with a floor message.
        let (mut stops, mut base) = (Vec::new(), Vec::new());
        for i in 0..plan.stops {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ev.drain();
            r.phone.send(&mut call, "drive", &drive_body(i, 1000)).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
            ev.drain();
            let t0 = mono_ns();
            r.phone.send(&mut call, "stop", &json!({})).await;
            if let Some(first) = ev.first_after(t0, Duration::from_secs(1), |p| p != FLOOR_PIN).await {
                let off = ev.burst_end(first, Duration::from_millis(5)).await;
                stops.push(off.ns - t0);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            ev.drain();
            let t0 = floor.publish(&r.phone, &json!({})).await;
            if let Some(e) = ev.first_after(t0, Duration::from_secs(1), |p| p == FLOOR_PIN).await {
                base.push(e.ns - t0);
            }
        }
        let f = stats(&base);
        out.push(format!(
            "\n### Stop latency ({} early deadman stops)\n\n{HEADER}\n{}\n{}\n{}",
            early,
            row("broker floor (plain publish -> plain subscriber)", f, None),
            row(&format!("deadman: pins off after t_on + {d_ms} ms (lateness)"), stats(&late), None),
            row("stop published -> all pins off", stats(&stops), Some(f)),
        ));
        println!("{}", out.last().unwrap());
    }

    if plan.wants("flood") {
        let robot_id = r.robot.id.parse::<ClientId>().expect("robot id");
        let flood_topics = vec![
            topics::session_request(&call.session, "drive"),
            topics::session_request(&call.session, "stop"),
            topics::invite(&robot_id, &ClientId::random()),
            topics::pair_request(&robot_id, &ClientId::random()),
        ];
        let secs = (plan.flood_commands as u64 * 20 / 1000) * 3 / 2 + 10;
        let drops_before = blocking(|| dropped(&r.robot));
        let mut flooder = Command::new(self_exe())
            .args(["flood", &format!("127.0.0.1:{}", r.broker.port), &secs.to_string(), &u64::MAX.to_string()])
            .arg(r.phone.id.as_str())
            .args(&flood_topics)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start flooder");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t = Instant::now();
        let cpu0 = cpu_s(r.robotd.pid());
        let (robot, base, lost) = drive_series(&mut r.phone, &mut call, &ev, &mut floor, plan.flood_commands).await;
        let elapsed = t.elapsed().as_secs_f64();
        let cpu = cpu_s(r.robotd.pid()) - cpu0;
        let drops_after = blocking(|| dropped(&r.robot));
        let _ = flooder.kill();
        let o = flooder.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (sent, flood_s) = flood_kit::last_report(&text);
        let (s, f) = (stats(&robot), stats(&base));
        let ratio = quiet_p99.map(|q| format!("{:.2}x the quiet p99", s.p99 / q)).unwrap_or_default();
        out.push(format!(
            "\n### Flood: forged messages on the robot's topics while driving at 50 Hz\n\n\
             flooder: wrote {sent} forged PUBLISH packets ({:.0}/s, as fast as the broker read them); \
             robotd dropped {} messages during the run ({:.0}/s; counters after: `{drops_after}`); \
             robotd CPU {:.0}% of one core; owner drives lost: {lost} of {}; drive p99 = {ratio}\n\n{HEADER}\n{}\n{}",
            sent as f64 / flood_s,
            sum(&drops_after).saturating_sub(sum(&drops_before)),
            sum(&drops_after).saturating_sub(sum(&drops_before)) as f64 / elapsed,
            cpu / elapsed * 100.0,
            plan.flood_commands,
            row("broker floor under flood", f, None),
            row("drive -> pin under flood", s, Some(f)),
        ));
        println!("{}", out.last().unwrap());
    }
    let _ = r.phone.send(&mut call, "hangup", &json!({})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
}

// ---------------------------------------------------------------- idle

/// Idle wake-ups and memory: robotd paired, no call, nothing moving, with
/// the simulated backend; once plain and once with an e-stop and a pairing
/// button configured (the core polls those every 20 and 50 ms, the same
/// code path as on the rppal backend). The floor is a plain idle MQTT
/// client (the floor subscriber, rumqttc, keep-alive 30 s) over the same window.
async fn idle_benches(plan: &Plan, out: &mut Vec<String>) {
    let window = Duration::from_secs(plan.latency_s);
    let mut rows = Vec::new();
    for (name, extra) in [
        ("sim backend, no e-stop or button", ""),
        (
            "sim backend, e-stop and pairing button polled",
            "[hardware.estop]\npin = 25\nactive = \"low\"\npull = \"up\"\n[pairing.button]\npin = 26\nactive = \"low\"\npull = \"up\"\n",
        ),
    ] {
        let r = rig(extra).await;
        let pid = r.robotd.pid();
        let dir = tempfile::tempdir().unwrap();
        let floor = spawn_floor_sub(r.broker.port, "floor/idle", &dir.path().join("nobody"));
        // Settle: pairing, the first status, the simulator coming to rest.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (r0, f0, c0, t) = (switches(pid), switches(floor.pid()), cpu_s(pid), Instant::now());
        tokio::time::sleep(window).await;
        let secs = t.elapsed().as_secs_f64();
        let (rw, fw) = ((switches(pid) - r0) as f64 / secs, (switches(floor.pid()) - f0) as f64 / secs);
        let cpu = (cpu_s(pid) - c0) / secs * 100.0;
        rows.push(format!(
            "| {name} | {rw:.1} | {fw:.1} | {:.2}x the 10/s goal | {cpu:.2} % | {} | {} |",
            rw / 10.0,
            status_kb(pid, "VmRSS:"),
            rollup(pid)
        ));
    }
    out.push(format!(
        "\n### Idle: wake-ups (context switches of all threads per second) and memory, paired, no call, {} s\n\n\
         | robotd | wake-ups/s | floor: idle MQTT client | ratio | CPU | VmRSS kB | smaps_rollup kB |\n\
         |---|---|---|---|---|---|---|\n{}",
        window.as_secs(),
        rows.join("\n")
    ));
    println!("{}", out.last().unwrap());
}

// ---------------------------------------------------------------- video

const W: u32 = 1280;
const H: u32 = 720;
const FPS: u32 = 30;
const KBPS: u32 = 2500;

/// robotd's sender pipeline (src/video/sender.rs, x264enc branch) as a
/// gst-launch description.
fn sender_description(ssrc: u32, key_hex: &str, port: u16, pay_extra: &str) -> String {
    format!(
        "videotestsrc is-live=true pattern=smpte ! videoconvert ! videoscale ! videorate drop-only=true \
         ! video/x-raw,format=I420,width={W},height={H},framerate={FPS}/1,pixel-aspect-ratio=1/1 \
         ! queue leaky=downstream max-size-buffers=2 max-size-bytes=0 max-size-time=0 \
         ! {} \
         ! h264parse config-interval=-1 ! rtph264pay name=pay pt=96 ssrc={ssrc} config-interval=-1 {pay_extra} \
         ! srtpenc key={key_hex} rtp-cipher=aes-128-icm rtp-auth=hmac-sha1-80 rtcp-cipher=aes-128-icm rtcp-auth=hmac-sha1-80 \
         ! udpsink name=usink host=127.0.0.1 port={port} sync=false async=false",
        robotd::video::Encoder::X264.launch_description("x264", KBPS, FPS)
    )
}

/// The test camera at 720p30 through x264enc, as the video benches run it.
fn video_720p30() -> String {
    format!(
        "[video]\ndevice = \"test\"\nwidth = {W}\nheight = {H}\nfps = {FPS}\nkbps = {KBPS}\nencoder = \"x264enc\"\n"
    )
}

async fn video_benches(plan: &Plan, out: &mut Vec<String>) {
    let video = video_720p30();
    let mut r = rig(&video).await;
    let pid = r.robotd.pid();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_hwm = status_kb(pid, "VmHWM:");
    let idle_rss = status_kb(pid, "VmRSS:");
    let sink = UdpSink::bind();
    let (mut robot_cpu, mut gst_cpu) = (Vec::new(), Vec::new());
    let (mut gst_hwm, mut helper_hwm) = (0, 0);
    let warm = Duration::from_secs(3);
    for _ in 0..plan.video_reps {
        // robotd in a 720p30 call.
        let mut c = call(&mut r.phone, &r.paired, sink.port).await;
        sleep_pinging(&mut r.phone, &mut c, warm).await;
        // The call's pipeline runs in robotd's media helper (robotd-media):
        // robotd and the helper together, over a window the helper lives through.
        let helper = helper_pid(pid).unwrap_or(pid);
        let both = || cpu_s(pid) + if helper == pid { 0.0 } else { cpu_s(helper) };
        let c0 = both();
        let t = Instant::now();
        sleep_pinging(&mut r.phone, &mut c, Duration::from_secs(plan.video_s)).await;
        robot_cpu.push((both() - c0) / t.elapsed().as_secs_f64() * 60.0);
        // The helper's peak, read while it lives (it exits at the hangup).
        if helper != pid {
            helper_hwm = helper_hwm.max(status_kb(helper, "VmHWM:"));
        }
        let _ = r.phone.request(&mut c, "hangup", json!({}), SOON).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // gst-launch-1.0 with the same source, encoder, payloader and srtpenc.
        let desc = sender_description(0x1234_5678, &"ab".repeat(30), sink.port, "");
        let g = Kid(Some(
            Command::new("gst-launch-1.0")
                .arg("-q")
                .args(desc.split_whitespace())
                .stdout(Stdio::null())
                .spawn()
                .expect("gst-launch-1.0"),
        ));
        tokio::time::sleep(warm).await;
        let c0 = cpu_s(g.pid());
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(plan.video_s)).await;
        gst_cpu.push((cpu_s(g.pid()) - c0) / t.elapsed().as_secs_f64() * 60.0);
        gst_hwm = gst_hwm.max(status_kb(g.pid(), "VmHWM:"));
        drop(g);
    }
    let call_hwm = status_kb(pid, "VmHWM:");
    let (rc, gc): (f64, f64) = (robot_cpu.iter().sum(), gst_cpu.iter().sum());
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ");
    out.push(format!(
        "\n### Memory (VmHWM / VmRSS of robotd and of its media helper)\n\n| what | kB | floor | ratio |\n|---|---|---|---|\n\
         | robotd idle (paired, no call, 5 s): VmHWM | {idle_hwm} | goal 10240 | {:.2}x the goal |\n\
         | robotd idle: VmRSS | {idle_rss} | | |\n\
         | robotd after {} x {} s 720p30 calls: VmHWM | {call_hwm} | its idle VmHWM {idle_hwm} | {:.2}x |\n\
         | robotd-media in a call: VmHWM | {helper_hwm} | gst-launch-1.0 same pipeline VmHWM {gst_hwm} | {:.2}x |",
        idle_hwm as f64 / 10240.0,
        plan.video_reps,
        plan.video_s,
        call_hwm as f64 / idle_hwm.max(1) as f64,
        helper_hwm as f64 / gst_hwm.max(1) as f64,
    ));
    println!("{}", out.last().unwrap());
    out.push(format!(
        "\n### Video CPU, 720p30 x264 {KBPS} kbit/s, {} alternating windows of {} s\n\n\
         | process | CPU s per minute (each window) | mean | ratio |\n|---|---|---|---|\n\
         | gst-launch-1.0 (floor) | {} | {:.1} | |\n| robotd + robotd-media in a call | {} | {:.1} | {:.2}x |",
        plan.video_reps * 2,
        plan.video_s,
        fmt(&gst_cpu),
        gc / gst_cpu.len() as f64,
        fmt(&robot_cpu),
        rc / robot_cpu.len() as f64,
        rc / gc,
    ));
    println!("{}", out.last().unwrap());
    drop(r);
}

/// Capture-to-receiver latency: robotd's sender chain and a receiver in one
/// pipeline (one clock, one base time), over 127.0.0.1 UDP. The payloader's
/// `timestamp-offset=0` makes an RTP timestamp the frame's capture running
/// time (videotestsrc is-live stamps each frame with its capture time).
fn video_latency(plan: &Plan, out: &mut Vec<String>) {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    gst::init().unwrap();
    let port = free_udp_port();
    let key_hex = "cd".repeat(30);
    let ssrc = 0x0bad_cafeu32;
    let desc = format!(
        "{} udpsrc address=127.0.0.1 port={port} caps=\"application/x-srtp,media=(string)video,clock-rate=(int)90000,\
         encoding-name=(string)H264,payload=(int)96,ssrc=(uint){ssrc},srtp-key=(buffer){key_hex},\
         srtp-cipher=(string)aes-128-icm,srtp-auth=(string)hmac-sha1-80,srtcp-cipher=(string)aes-128-icm,\
         srtcp-auth=(string)hmac-sha1-80\" ! srtpdec name=dec ! rtph264depay ! h264parse ! avdec_h264 name=vdec \
         ! fakesink sync=false",
        sender_description(ssrc, &key_hex, port, "timestamp-offset=0")
    );
    let pipeline = gst::parse::launch(&desc).expect("latency pipeline").downcast::<gst::Pipeline>().unwrap();
    let clock = gst::SystemClock::obtain();
    pipeline.use_clock(Some(&clock));
    #[derive(Default)]
    struct Acc {
        sent: Vec<u64>,
        recv: Vec<u64>,
        decoded: Vec<u64>,
        pts_to_rtp: HashMap<u64, u32>,
        unmatched: u64,
    }
    let acc = Arc::new(Mutex::new(Acc::default()));
    let running_now = {
        let p = pipeline.clone();
        move || -> Option<u64> {
            let now = p.clock()?.time();
            Some(now.nseconds().saturating_sub(p.base_time()?.nseconds()))
        }
    };
    // RTP header: byte 1 bit 7 = marker, bytes 4..8 = timestamp (SRTP leaves the header in clear).
    let rtp = |b: &gst::BufferRef| -> Option<(bool, u32)> {
        let m = b.map_readable().ok()?;
        (m.len() >= 12).then(|| (m[1] & 0x80 != 0, u32::from_be_bytes([m[4], m[5], m[6], m[7]])))
    };
    let lat = |now: u64, ts: u32| now.saturating_sub(u64::from(ts) * 1_000_000_000 / 90_000);
    let probe = |el: &str, pad: &str, f: Box<dyn Fn(&gst::BufferRef) + Send + Sync>| {
        let kinds = gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST;
        pipeline.by_name(el).unwrap().static_pad(pad).unwrap().add_probe(kinds, move |_, info| {
            match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => f(b),
                Some(gst::PadProbeData::BufferList(l)) => l.iter().for_each(&f),
                _ => {}
            }
            gst::PadProbeReturn::Ok
        });
    };
    {
        let (acc, now) = (acc.clone(), running_now.clone());
        probe(
            "usink",
            "sink",
            Box::new(move |b| {
                if let (Some((true, ts)), Some(n)) = (rtp(b), now()) {
                    acc.lock().unwrap().sent.push(lat(n, ts));
                }
            }),
        );
    }
    {
        let (acc, now) = (acc.clone(), running_now.clone());
        probe(
            "dec",
            "rtp_src",
            Box::new(move |b| {
                let (Some((marker, ts)), Some(n)) = (rtp(b), now()) else { return };
                let mut a = acc.lock().unwrap();
                if let Some(pts) = b.pts() {
                    a.pts_to_rtp.insert(pts.nseconds(), ts);
                }
                if marker {
                    a.recv.push(lat(n, ts));
                }
            }),
        );
    }
    {
        let (acc, now) = (acc.clone(), running_now.clone());
        probe(
            "vdec",
            "src",
            Box::new(move |b| {
                let Some(n) = now() else { return };
                let mut a = acc.lock().unwrap();
                match b.pts().and_then(|p| a.pts_to_rtp.get(&p.nseconds()).copied()) {
                    Some(ts) => a.decoded.push(lat(n, ts)),
                    None => a.unmatched += 1,
                }
            }),
        );
    }
    pipeline.set_state(gst::State::Playing).expect("play");
    std::thread::sleep(Duration::from_secs(2));
    {
        let mut a = acc.lock().unwrap();
        a.sent.clear();
        a.recv.clear();
        a.decoded.clear();
        a.unmatched = 0;
    }
    std::thread::sleep(Duration::from_secs(plan.latency_s));
    let _ = pipeline.set_state(gst::State::Null);
    let a = acc.lock().unwrap();
    let sent = stats(&a.sent);
    out.push(format!(
        "\n### Video capture-to-receiver latency, 720p30 on 127.0.0.1, {} s ({} decoded frames not matched to an RTP timestamp)\n\n{HEADER}\n{}\n{}\n{}",
        plan.latency_s,
        a.unmatched,
        row("capture -> last packet of the frame leaves udpsink (sender floor)", sent, None),
        row("capture -> last packet received and decrypted (srtpdec)", stats(&a.recv), Some(sent)),
        row("capture -> frame decoded (avdec_h264, no jitter buffer)", stats(&a.decoded), Some(sent)),
    ));
    println!("{}", out.last().unwrap());
}

// ---------------------------------------------------------------- main

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = mem.lines().next().unwrap_or("").to_owned();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "nproc {}; CPU {model}; {total}; loadavg {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.trim()
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    match args.first().map(String::as_str) {
        Some("floor-sub") => return rt.block_on(floor_sub(&args[1..])),
        Some("flood") => return flood_kit::flood(&args[1..]),
        _ => {}
    }
    let plan = Plan::from_args(&args);
    let mut out = vec![format!(
        "## robotd system benchmarks ({} run)\n\nstart: {}",
        if plan.quick { "quick" } else { "full" },
        machine()
    )];
    println!("{}", out[0]);
    let t = Instant::now();
    rt.block_on(async {
        if ["latency", "stop", "flood"].iter().any(|w| plan.wants(w)) {
            motion_benches(&plan, &mut out).await;
        }
        if plan.wants("memory") || plan.wants("video") {
            video_benches(&plan, &mut out).await;
        }
        if plan.wants("idle") {
            idle_benches(&plan, &mut out).await;
        }
    });
    if plan.wants("video-latency") {
        video_latency(&plan, &mut out);
    }
    out.push(format!(
        "\nend: loadavg {}; total {} s",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        t.elapsed().as_secs()
    ));
    let text = out.join("\n") + "\n";
    let path = std::env::var("ROBOTD_BENCH_OUT").unwrap_or_else(|_| "target/bench-system.md".into());
    if let Some(dir) = std::path::Path::new(&path).parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    if std::fs::write(&path, &text).is_ok() {
        println!("\nwritten to {path}");
    }
}
