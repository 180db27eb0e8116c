//! Call helpers shared by `tests/calls.rs` and `tests/motion.rs`: a robot
//! with one paired owner phone, calls, `robotd status`, media receivers and
//! what `/proc` says about the robotd process.
//!
//! Loaded with `#[path = "common/calls.rs"] mod calls_kit;` next to `mod common;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use robotd::phone::{ActiveCall, InviteOutcome, Offer, PairedRobot, Phone};
use robotd::video::{Receiver, ReceiverParams, SrtpKey};
use robotd::wire::identity::ClientId;
use robotd::wire::pairing::PairingUri;
use serde_json::{Value, json};

use crate::common::*;

/// Media always goes to loopback.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Over [`TEST_VIDEO`]: 10 frames/s at 200 kbit/s, for tests that measure
/// robotd's CPU and want the call's own share small.
pub const SMALL_VIDEO: &str = "[video]\nfps = 10\nkbps = 200\n";

/// The test camera, small and cheap to encode.
pub const TEST_VIDEO: &str = "[video]\ndevice = \"test\"\nwidth = 320\nheight = 240\nfps = 30\nkbps = 600\n";

/// A free UDP port on 127.0.0.1 (bound, read, released).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// Run blocking work (a child process, a pipeline start) without stalling
/// the runtime's other tasks (the phone's MQTT loop).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A broker, a robot with the test camera, and one phone paired with it.
pub struct Owned {
    pub broker: Broker,
    pub robot: Robot,
    pub phone: Phone,
    pub paired: PairedRobot,
}

/// Wait until the robot is online (its retained presence is `true`).
pub async fn wait_online(broker: &Broker, robot: &Robot) {
    let topic = format!("user/{}/isConnected", robot.id);
    let mut probe = Probe::connect(broker, &[&topic]).await;
    probe.expect_msg(&topic, "true").await;
}

/// Open a pairing window with `robotd pair` and return its URI.
pub fn pairing_uri(robot: &Robot) -> PairingUri {
    let mut last = String::new();
    let mut uri = None;
    // The admin socket appears a moment after start.
    let ok = wait_until(SOON, || {
        let out = robot.admin(&["pair"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        last = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        uri = stdout
            .split(|c: char| c.is_whitespace() || c == '\'')
            .find(|w| w.starts_with("robotd://pair?"))
            .map(|w| PairingUri::parse(w).expect("robotd pair prints a valid URI"));
        out.status.success() && uri.is_some()
    });
    assert!(ok, "robotd pair did not print a pairing URI:\n{last}");
    uri.unwrap()
}

/// Pair a new phone (random ID) with `robot`.
pub async fn pair_phone(broker: &Broker, robot: &Robot, nickname: &str) -> (Phone, PairedRobot) {
    let uri = blocking(|| pairing_uri(robot));
    let mut phone = Phone::connect(&broker.url(), ClientId::random()).await.expect("phone connects");
    let paired = phone.pair(&uri, nickname, SOON).await.expect("pairing succeeds");
    (phone, paired)
}

/// Start a broker and a robot (test camera + `extra` TOML) and pair one phone.
pub async fn robot_with_owner(extra: &str) -> Owned {
    let broker = Broker::start();
    let robot = Robot::start(&broker, &merge_toml(TEST_VIDEO, extra));
    wait_online(&broker, &robot).await;
    let (phone, paired) = pair_phone(&broker, &robot, "Alice").await;
    Owned { broker, robot, phone, paired }
}

/// Invite with `offer`; the call must be accepted.
pub async fn call_with(phone: &mut Phone, paired: &PairedRobot, offer: &Offer) -> ActiveCall {
    match phone.invite(paired, offer, SOON).await.expect("an answer to the invite") {
        InviteOutcome::Accepted(c) => c,
        InviteOutcome::Refused(v) => panic!("call refused: {v}"),
    }
}

/// Call with the default offer (720p30, 2.5 Mbit/s) to `127.0.0.1:port`.
pub async fn call(phone: &mut Phone, paired: &PairedRobot, port: u16) -> ActiveCall {
    call_with(phone, paired, &Offer::new(LOCALHOST, port)).await
}

/// Send `command` and wait for its response (`re` = its seq).
pub async fn request(phone: &mut Phone, call: &mut ActiveCall, command: &str, payload: Value) -> Value {
    phone.request(call, command, payload, SOON).await.unwrap_or_else(|e| panic!("no response to {command}: {e}"))
}

/// `ping`; returns the response (its `motion` says idle/driving).
pub async fn ping(phone: &mut Phone, call: &mut ActiveCall) -> Value {
    let v = request(phone, call, "ping", json!({})).await;
    assert_eq!(v["status"], "ok", "ping: {v}");
    v
}

/// A drive at `linear` (straight) for `ms`; must be answered `ok`.
pub async fn drive(phone: &mut Phone, call: &mut ActiveCall, linear: f64, ms: u64) {
    let v = request(phone, call, "drive", json!({"linear": linear, "angular": 0.0, "ms": ms})).await;
    assert_eq!(v["status"], "ok", "drive: {v}");
}

/// Wait for the call's `ended` message (on the hangup response topic).
pub async fn ended(phone: &mut Phone, call: &ActiveCall, timeout: Duration) -> Value {
    phone
        .response(call, timeout, |cmd, v| cmd == "hangup" && v["status"] == "ended")
        .await
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no `ended` within {timeout:?}"))
}

/// `robotd status` as JSON (through the admin socket, not MQTT).
/// `broker.connects` of a `robotd status`.
pub fn connects(st: &Value) -> u64 {
    st["broker"]["connects"].as_u64().unwrap_or_else(|| panic!("no broker.connects in {st}"))
}

pub fn status(robot: &Robot) -> Value {
    blocking(|| status_sync(robot))
}

/// [`status`] for use inside [`wait_until`] (already blocking).
pub fn status_sync(robot: &Robot) -> Value {
    let out = robot.admin(&["status"]);
    assert!(out.status.success(), "robotd status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("robotd status prints JSON")
}

/// The simulated pose and wheel speeds from `robotd status`.
#[derive(Debug, Clone, Copy)]
pub struct SimPose {
    pub x: f64,
    pub y: f64,
    pub heading: f64,
    pub wheels: [f64; 2],
}

pub fn sim_pose(status: &Value) -> SimPose {
    let s = &status["sim"];
    let f = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("status.sim is not the sim's pose: {status}"));
    SimPose {
        x: f(&s["x"]),
        y: f(&s["y"]),
        heading: f(&s["heading"]),
        wheels: [f(&s["wheel_speed_mps"][0]), f(&s["wheel_speed_mps"][1])],
    }
}

/// Wait until the simulated wheels have stopped, then check that the pose
/// stays put for `hold`; returns the pose. Panics if the robot keeps moving.
pub async fn wait_until_still(robot: &Robot, hold: Duration) -> SimPose {
    let mut last = sim_pose(&status(robot));
    let still = blocking(|| {
        wait_until(SOON, || {
            last = sim_pose(&status_sync(robot));
            last.wheels.iter().all(|w| w.abs() < 1e-3)
        })
    });
    assert!(still, "the wheels kept turning: {last:?}");
    tokio::time::sleep(hold).await;
    let now = sim_pose(&status(robot));
    assert!(
        (now.x - last.x).abs() < 1e-3 && (now.y - last.y).abs() < 1e-3 && (now.heading - last.heading).abs() < 1e-3,
        "the robot moved although its wheels had stopped: {last:?} then {now:?}"
    );
    now
}

/// How many times the robot has logged a deadman expiry.
pub fn deadman_count(robot: &Robot) -> usize {
    robot.log().matches("deadman: drive expired").count()
}

/// Start a receiver for the call's video on `127.0.0.1:port` with `key`.
pub async fn receiver(port: u16, ssrc: u32, key: SrtpKey) -> Arc<Receiver> {
    let params = ReceiverParams::new(SocketAddr::new(LOCALHOST, port), ssrc, key);
    let r = tokio::task::spawn_blocking(move || Receiver::start(params)).await.unwrap().expect("receiver starts");
    Arc::new(r)
}

/// Stop a receiver (it must not be shared any more).
pub async fn stop_receiver(r: Arc<Receiver>) {
    let r = Arc::try_unwrap(r).unwrap_or_else(|_| panic!("receiver still shared"));
    tokio::task::spawn_blocking(move || r.stop()).await.unwrap().expect("receiver stops");
}

/// Wait until `rx` has decoded at least `n` frames, pinging every 2 s so
/// that a slow start cannot time the call out. `false` on timeout.
pub async fn frames_with_pings(
    phone: &mut Phone,
    call: &mut ActiveCall,
    rx: &Receiver,
    n: u64,
    timeout: Duration,
) -> bool {
    let end = Instant::now() + timeout;
    let mut next_ping = Instant::now();
    while Instant::now() < end {
        if rx.frames() >= n {
            return true;
        }
        if Instant::now() >= next_ping {
            phone.send(call, "ping", &json!({})).await;
            next_ping = Instant::now() + Duration::from_secs(2);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rx.frames() >= n
}

/// Sleep `d`, pinging every second (keeps a call alive while we watch
/// for something that must not happen).
pub async fn sleep_pinging(phone: &mut Phone, call: &mut ActiveCall, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        phone.send(call, "ping", &json!({})).await;
        tokio::time::sleep(Duration::from_secs(1).min(end.saturating_duration_since(Instant::now()))).await;
    }
}

/// Threads of robotd `pid` and of its media helper.
pub fn thread_count(pid: i32) -> usize {
    robot_pids(pid).iter().map(|p| std::fs::read_dir(format!("/proc/{p}/task")).map(|d| d.count()).unwrap_or(0)).sum()
}

/// robotd `pid` and its media helper (`robotd-media`, which runs a call's
/// media), if one runs: "the robot" when counting threads and sockets.
fn robot_pids(pid: i32) -> Vec<i32> {
    std::iter::once(pid).chain(helper_pid(pid)).collect()
}

/// Socket inodes held open by process `pid`.
fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// UDP sockets held open by robotd `pid` and its media helper (their fds matched against
/// `/proc/net/udp{,6}` by inode).
pub fn udp_socket_count(pid: i32) -> usize {
    let mine: Vec<u64> = robot_pids(pid).into_iter().flat_map(socket_inodes).collect();
    let mut n = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if let Some(inode) = line.split_whitespace().nth(9).and_then(|s| s.parse::<u64>().ok()) {
                if mine.contains(&inode) {
                    n += 1;
                }
            }
        }
    }
    n
}

/// A UDP socket that keeps `port` open (so the robot's packets are not
/// answered with ICMP errors) and can tell whether anything arrived.
pub struct UdpSink {
    pub socket: UdpSocket,
    pub port: u16,
}

impl UdpSink {
    pub fn bind() -> UdpSink {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = socket.local_addr().unwrap().port();
        UdpSink { socket, port }
    }

    /// Whether a datagram arrives within `d`.
    pub fn receives_within(&self, d: Duration) -> bool {
        self.socket.set_read_timeout(Some(d)).unwrap();
        let mut buf = [0u8; 2048];
        blocking(|| self.socket.recv(&mut buf).is_ok())
    }
}

/// An answer in a call without its freshness token (protocol 5.7), which
/// every one of them but `ended` must carry: it differs every time.
pub fn untokened(mut v: Value) -> Value {
    let token = v.as_object_mut().and_then(|o| o.remove("token"));
    assert!(token.as_ref().is_some_and(|t| t.is_string()), "an answer in a call without a token: {v}");
    v
}

/// Resident memory of `pid` in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// CPU time of `pid` (user + system, /proc/PID/stat fields 14 and 15).
/// robotd's CPU use (cores) during a 3 s quiet stretch of the call, the
/// phone pinging meanwhile: the baseline of the flood measurements.
pub async fn quiet_cpu_rate(phone: &mut Phone, call: &mut ActiveCall, pid: i32) -> f64 {
    let (q0, qt) = (cpu_time(pid), std::time::Instant::now());
    sleep_pinging(phone, call, Duration::from_secs(3)).await;
    (cpu_time(pid) - q0).as_secs_f64() / qt.elapsed().as_secs_f64()
}

pub fn cpu_time(pid: i32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let ticks = f[11] + f[12];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Every drop counter of `robotd status` (link and auth), by name.
pub fn drop_counts(st: &Value) -> BTreeMap<String, u64> {
    let d = &st["dropped"];
    let mut m = BTreeMap::new();
    for k in ["topic", "size", "backlog"] {
        m.insert(k.to_owned(), d[k].as_u64().unwrap_or(0));
    }
    if let Some(a) = d["auth"].as_object() {
        for (k, v) in a {
            m.insert(format!("auth.{k}"), v.as_u64().unwrap_or(0));
        }
    }
    m
}

/// `after[k] - before[k]` of two [`drop_counts`].
pub fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, k: &str) -> u64 {
    after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
}

/// What [`owner_series`] saw.
#[derive(Debug, Default)]
pub struct OwnerSeries {
    /// Requests sent.
    pub sent: usize,
    /// Answered with `status: ok`.
    pub ok: usize,
    /// Answered otherwise (the answers).
    pub refused: Vec<Value>,
    /// Never answered (their seqs).
    pub lost: Vec<u64>,
    /// Send-to-answer times of the answered ones, sorted.
    pub latencies: Vec<Duration>,
}

impl OwnerSeries {
    /// The `p`-quantile (0..=1) of the latencies.
    pub fn pct(&self, p: f64) -> Duration {
        let l = &self.latencies;
        l.get(((l.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default()
    }
}

/// The owner at work: `n` requests every `period`, alternately a short slow
/// `drive` and a `ping`, collecting answers as they come; after the last one
/// waits up to [`SOON`] for the rest. What is not answered by then is lost.
pub async fn owner_series(phone: &mut Phone, call: &mut ActiveCall, n: usize, period: Duration) -> OwnerSeries {
    let mut out = OwnerSeries { sent: n, ..OwnerSeries::default() };
    let mut pending: BTreeMap<u64, Instant> = BTreeMap::new();
    let take = |out: &mut OwnerSeries, pending: &mut BTreeMap<u64, Instant>, v: Value| {
        let t = pending.remove(&v["re"].as_u64().unwrap()).unwrap();
        out.latencies.push(t.elapsed());
        if v["status"] == "ok" {
            out.ok += 1;
        } else {
            out.refused.push(v);
        }
    };
    let mut tick = tokio::time::interval(period);
    for i in 0..n {
        tick.tick().await;
        let seq = if i % 2 == 0 {
            phone.send(call, "drive", &json!({"linear": 0.2, "angular": 0.0, "ms": 500})).await
        } else {
            phone.send(call, "ping", &json!({})).await
        };
        pending.insert(seq, Instant::now());
        loop {
            let keys: Vec<u64> = pending.keys().copied().collect();
            let Some((_, v)) = phone
                .response(call, Duration::ZERO, |_, v| v["re"].as_u64().is_some_and(|re| keys.contains(&re)))
                .await
            else {
                break;
            };
            take(&mut out, &mut pending, v);
        }
    }
    let done = Instant::now();
    while !pending.is_empty() && done.elapsed() < SOON {
        let keys: Vec<u64> = pending.keys().copied().collect();
        let Some((_, v)) = phone
            .response(call, Duration::from_secs(1), |_, v| v["re"].as_u64().is_some_and(|re| keys.contains(&re)))
            .await
        else {
            continue;
        };
        take(&mut out, &mut pending, v);
    }
    out.lost = pending.into_keys().collect();
    out.latencies.sort();
    out
}

/// The pid of `robotd-media`, robotd's child, once there is one.
pub fn helper_pid(robotd: i32) -> Option<i32> {
    let kids = std::fs::read_to_string(format!("/proc/{robotd}/task/{robotd}/children")).ok()?;
    kids.split_whitespace().filter_map(|p| p.parse().ok()).find(|p: &i32| {
        std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
            let arg0 = c.split(|&b| b == 0).next().unwrap_or_default();
            std::path::Path::new(std::ffi::OsStr::from_bytes(arg0)).file_name() == Some("robotd-media".as_ref())
        })
    })
}
