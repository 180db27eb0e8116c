//! Self-test of the namespace internet (tests/common/netns.rs): each test
//! asserts one promise of the topology that the WebRTC tests build on. They
//! skip, with a message, when not root or without `ip netns`.

#[path = "common/netns.rs"]
mod netns;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netns::{CARRIER_WAN, HOME_WAN, Internet, LAN_PHONE, PHONE, ROBOT, SERVER, SERVER2, TurnAuth};

/// A connection that should fail is given this long (only after a positive
/// control showed the same path works when it is allowed).
const REFUSE_WAIT: Duration = Duration::from_secs(2);

fn mqtt_connack(from: &netns::Ns) -> bool {
    let Ok(mut s) = from.tcp_connect((SERVER, netns::MQTT_PORT), Duration::from_secs(10)) else { return false };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s, empty client id.
    s.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0]).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).is_ok() && ack == [0x20, 2, 0, 0]
}

fn websocket_upgrade(from: &netns::Ns) -> String {
    let mut s = from.tcp_connect((SERVER, netns::MQTT_WS_PORT), Duration::from_secs(10)).expect("connect ws port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /mqtt HTTP/1.1\r\nHost: {SERVER}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn robot_and_phones_reach_the_broker_on_the_public_address() {
    let Some(mut net) = Internet::new() else { return };
    net.start_mosquitto();
    for ns in [&net.robot, &net.lan_phone, &net.phone, &net.public, &net.attacker] {
        assert!(mqtt_connack(ns), "no CONNACK from the broker seen from {}", ns.name());
    }
    let reply = websocket_upgrade(&net.phone);
    assert!(reply.starts_with("HTTP/1.1 101"), "WebSockets listener: {reply:?}");
}

#[test]
fn the_internet_cannot_open_connections_to_the_robot_or_the_phone() {
    let Some(net) = Internet::new() else { return };
    let robot_l = net.robot.tcp_listen((std::net::Ipv4Addr::UNSPECIFIED, 7000));
    let phone_l = net.phone.tcp_listen((std::net::Ipv4Addr::UNSPECIFIED, 7000));
    robot_l.set_nonblocking(true).unwrap();
    phone_l.set_nonblocking(true).unwrap();
    // Positive controls: the listeners are reachable where no NAT is crossed.
    assert!(net.lan_phone.tcp_connect((ROBOT, 7000), REFUSE_WAIT).is_ok(), "LAN phone cannot reach the robot");
    assert!(net.carrier.tcp_connect((PHONE, 7000), REFUSE_WAIT).is_ok(), "carrier cannot reach the phone");
    // From the public side (which has routes to both private ranges), to the
    // routers' public addresses, and from one NAT to the private side of the
    // other: nothing gets in. (Tried at the same time: each waits REFUSE_WAIT.)
    let attempts = [
        (&net.public, ROBOT, "pub reached the robot"),
        (&net.public, PHONE, "pub reached the phone"),
        (&net.public, HOME_WAN, "pub reached a service behind the home router's public address"),
        (&net.public, CARRIER_WAN, "pub reached a service behind the carrier's public address"),
        (&net.robot, PHONE, "the robot reached the phone's private address"),
        (&net.phone, ROBOT, "the phone reached the robot's private address"),
    ];
    std::thread::scope(|s| {
        let tries: Vec<_> = attempts
            .iter()
            .map(|&(from, to, what)| (what, s.spawn(move || from.tcp_connect((to, 7000), REFUSE_WAIT))))
            .collect();
        for (what, t) in tries {
            assert!(t.join().unwrap().is_err(), "{what}");
        }
    });

    // UDP too: a datagram from pub to the robot never arrives.
    let robot_u = net.robot.udp((std::net::Ipv4Addr::UNSPECIFIED, 7001));
    robot_u.set_read_timeout(Some(REFUSE_WAIT)).unwrap();
    let lan = net.lan_phone.udp((std::net::Ipv4Addr::UNSPECIFIED, 0));
    lan.send_to(b"control", (ROBOT, 7001)).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(robot_u.recv_from(&mut buf).map(|(n, _)| &buf[..n]).ok(), Some(&b"control"[..]));
    let public = net.public.udp((SERVER, 0));
    public.send_to(b"intruder", (ROBOT, 7001)).unwrap();
    assert!(robot_u.recv_from(&mut buf).is_err(), "a datagram from pub reached the robot");
}

/// Send one datagram from `sock` to each of `targets`; return the source
/// each target saw, after checking that a reply to it comes back.
fn mappings(sock: &UdpSocket, targets: &[&UdpSocket]) -> Vec<SocketAddr> {
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut seen = Vec::new();
    for t in targets {
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        sock.send_to(b"ping", t.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 16];
        let (_, from) = t.recv_from(&mut buf).expect("datagram to pub");
        t.send_to(b"pong", from).unwrap();
        let (n, _) = sock.recv_from(&mut buf).expect("reply through the NAT");
        assert_eq!(&buf[..n], b"pong");
        seen.push(from);
    }
    seen
}

#[test]
fn the_carrier_nat_is_symmetric_and_the_home_nat_keeps_ports() {
    let Some(net) = Internet::new() else { return };
    let targets = [net.public.udp((SERVER, 5000)), net.public.udp((SERVER2, 5000)), net.public.udp((SERVER, 5001))];
    let targets: Vec<&UdpSocket> = targets.iter().collect();

    let phone = net.phone.udp((PHONE, 40000));
    let seen = mappings(&phone, &targets);
    assert!(seen.iter().all(|a| a.ip() == CARRIER_WAN), "phone seen as {seen:?}");
    let ports: HashSet<u16> = seen.iter().map(|a| a.port()).collect();
    assert!(ports.len() > 1, "symmetric NAT: one socket, three destinations, still one port: {seen:?}");

    let robot = net.robot.udp((ROBOT, 40000));
    let seen = mappings(&robot, &targets);
    assert!(seen.iter().all(|a| *a == SocketAddr::from((HOME_WAN, 40000))), "robot seen as {seen:?}");
}

fn assert_turn_ok(net: &Internet, auth: &TurnAuth, tcp: bool) {
    let (status, out) = net.turn_client(&net.phone, auth, tcp);
    let recv = out
        .lines()
        .filter_map(|l| l.split("tot_recv_msgs=").nth(1))
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    assert!(
        status.is_some_and(|s| s.success()) && recv > 0,
        "TURN allocation from the phone failed ({status:?}, {recv} messages relayed):\n{out}\n---- coturn ----\n{}",
        net.turn_log()
    );
}

fn assert_turn_refused(net: &Internet, auth: &TurnAuth, tcp: bool) {
    let (status, out) = net.turn_client(&net.phone, auth, tcp);
    assert!(
        status.is_some_and(|s| !s.success()) && out.contains("Cannot complete Allocation"),
        "TURN with wrong credentials was not refused ({status:?}):\n{out}"
    );
}

#[test]
fn a_turn_allocation_works_through_the_symmetric_nat_with_a_long_term_user() {
    let Some(mut net) = Internet::new() else { return };
    net.start_turn(&TurnAuth::long_term("robot", "s3cret"));
    // STUN first: the server reflects each side's public address.
    for (ns, public) in [(&net.phone, CARRIER_WAN), (&net.robot, HOME_WAN)] {
        let (status, out) = net.stun_client(ns);
        assert!(
            status.is_some_and(|s| s.success()) && out.contains(&format!("reflexive addr: {public}:")),
            "STUN from {} should reflect {public}: {status:?}\n{out}",
            ns.name()
        );
    }
    assert_turn_ok(&net, &TurnAuth::long_term("robot", "s3cret"), false);
    assert_turn_refused(&net, &TurnAuth::long_term("robot", "wrong"), false);
}

#[test]
fn a_turn_allocation_works_over_tcp_with_the_shared_secret_scheme() {
    let Some(mut net) = Internet::new() else { return };
    net.start_turn(&TurnAuth::shared_secret("correct horse"));
    assert_turn_ok(&net, &TurnAuth::shared_secret("correct horse"), true);
    assert!(net.turn_log().contains(":robot>"), "expected a time-limited <expiry>:robot username in coturn's log");
    assert_turn_refused(&net, &TurnAuth::shared_secret("battery staple"), true);
}

/// Give a socket a large receive buffer, so a burst is not lost in it.
fn big_rcvbuf(s: &UdpSocket) {
    let size: libc::c_int = 8 << 20;
    // SAFETY: setsockopt with a valid fd and an int option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// Send `n` datagrams of `size` bytes from `tx` to `to`, `per_ms` of them per
/// millisecond, while a thread counts what `rx` receives (until 1 s of
/// silence after the sender is done). Returns (sent, received, sending time).
fn blast(tx: &UdpSocket, to: SocketAddr, rx: &UdpSocket, n: u32, size: usize, per_ms: u32) -> (u32, u32, Duration) {
    big_rcvbuf(rx);
    rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let counter = s.spawn(|| {
            let mut got = HashSet::new();
            let mut buf = vec![0u8; size + 16];
            loop {
                match rx.recv_from(&mut buf) {
                    Ok((k, _)) if k >= 4 => {
                        got.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                    }
                    Ok(_) => {}
                    Err(_) if done.load(Ordering::SeqCst) => break,
                    Err(_) => {}
                }
                if got.len() as u32 == n {
                    break;
                }
            }
            got.len() as u32
        });
        let start = Instant::now();
        let mut pkt = vec![0u8; size];
        for i in 0..n {
            pkt[..4].copy_from_slice(&i.to_be_bytes());
            tx.send_to(&pkt, to).unwrap();
            if (i + 1) % per_ms == 0 {
                // Pace against the clock: after a stall, catch up in a burst.
                let due = start + Duration::from_millis(u64::from((i + 1) / per_ms));
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        }
        let took = start.elapsed();
        done.store(true, Ordering::SeqCst);
        (n, counter.join().unwrap(), took)
    })
}

/// A phone socket and a pub socket that have exchanged a datagram (so the
/// carrier NAT has a mapping and replies may come in): (phone, public, the
/// phone as seen from pub).
fn udp_pair(net: &Internet, port: u16) -> (UdpSocket, UdpSocket, SocketAddr) {
    let phone = net.phone.udp((PHONE, 0));
    let public = net.public.udp((SERVER, port));
    let seen = mappings(&phone, &[&public])[0];
    (phone, public, seen)
}

fn lost_share(sent: u32, got: u32) -> f64 {
    f64::from(sent - got) / f64::from(sent)
}

#[test]
fn loss_drops_about_the_configured_share_both_ways_and_clear_restores() {
    let Some(mut net) = Internet::new() else { return };
    let (phone, public, phone_seen) = udp_pair(&net, 6000);
    let up = public.local_addr().unwrap();

    net.set_loss(5);
    let (sent, got, _) = blast(&phone, up, &public, 2000, 200, 4);
    let share = lost_share(sent, got);
    eprintln!("loss: lost {share:.3} of {sent}");
    assert!((0.01..=0.12).contains(&share), "5 % loss upstream: lost {share:.3} of {sent}");
    let (sent, got, _) = blast(&public, phone_seen, &phone, 2000, 200, 4);
    let share = lost_share(sent, got);
    eprintln!("loss: lost {share:.3} of {sent}");
    assert!((0.01..=0.12).contains(&share), "5 % loss downstream: lost {share:.3} of {sent}");

    net.clear();
    let (sent, got, _) = blast(&phone, up, &public, 2000, 200, 4);
    assert!(lost_share(sent, got) <= 0.005, "after clear(): lost {} of {sent}", sent - got);
}

#[test]
fn the_rate_cap_limits_throughput_each_way_and_clear_lifts_it() {
    let Some(mut net) = Internet::new() else { return };
    let (phone, public, phone_seen) = udp_pair(&net, 6000);
    let up = public.local_addr().unwrap();
    const CAP: u32 = 100; // kbytes/s; the senders offer about 1000 kbytes/s.
    const SIZE: usize = 1000;
    let wire = (SIZE + 28) as f64; // what nft counts: the IP packet
    net.set_rate_cap(CAP);
    for (what, tx, to, rx) in [("up", &phone, up, &public), ("down", &public, phone_seen, &phone)] {
        let (sent, got, took) = blast(tx, to, rx, 2000, SIZE, 1);
        let cap = f64::from(CAP) * 1024.0;
        // Up to one second of burst (nft's bucket) on top of the rate, +25 %.
        let most = cap * (took.as_secs_f64() + 1.0) * 1.25;
        let least = (cap * took.as_secs_f64()).min(f64::from(sent) * wire) * 0.5;
        let bytes = f64::from(got) * wire;
        eprintln!("rate {what}: {bytes} bytes in {took:?}, bounds {least:.0}..{most:.0}");
        assert!(
            (least..=most).contains(&bytes),
            "{what}: {bytes} bytes in {took:?} through a {CAP} kbytes/s cap (expected {least:.0}..{most:.0})"
        );
    }
    net.clear();
    let (sent, got, took) = blast(&phone, up, &public, 2000, SIZE, 1);
    assert!(f64::from(got) >= f64::from(sent) * 0.95, "after clear(): {got} of {sent} in {took:?}");
}

#[test]
fn cut_drops_everything_and_restore_brings_it_back() {
    let Some(mut net) = Internet::new() else { return };
    net.start_mosquitto();
    let (phone, public, _) = udp_pair(&net, 6000);
    public.set_read_timeout(Some(REFUSE_WAIT)).unwrap();
    let to = public.local_addr().unwrap();
    let mut buf = [0u8; 16];

    net.cut();
    phone.send_to(b"lost", to).unwrap();
    assert!(public.recv_from(&mut buf).is_err(), "a datagram crossed a cut");
    assert!(net.phone.tcp_connect((SERVER, netns::MQTT_PORT), REFUSE_WAIT).is_err(), "TCP crossed a cut");
    // The robot's side of the internet is not affected.
    assert!(net.robot.tcp_connect((SERVER, netns::MQTT_PORT), REFUSE_WAIT).is_ok());

    // Scoped to UDP: the signalling (TCP) passes, media does not.
    net.set_udp_only(true);
    assert!(net.phone.tcp_connect((SERVER, netns::MQTT_PORT), REFUSE_WAIT).is_ok(), "udp_only cut blocked TCP");
    phone.send_to(b"lost", to).unwrap();
    assert!(public.recv_from(&mut buf).is_err(), "a datagram crossed a UDP cut");

    net.restore();
    phone.send_to(b"back", to).unwrap();
    public.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (n, _) = public.recv_from(&mut buf).expect("datagram after restore()");
    assert_eq!(&buf[..n], b"back");
}

fn netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn drop_removes_every_namespace_and_process_even_on_panic() {
    let Some(mut net) = Internet::new() else { return };
    net.start_mosquitto();
    net.start_turn(&TurnAuth::shared_secret("s"));
    let prefix = net.public.name().trim_end_matches("pub").to_owned();
    assert_eq!(netns_names().iter().filter(|n| n.starts_with(&prefix)).count(), 7);
    // A process the test starts and forgets: Drop must kill it too.
    let mut sleeper = net.robot.command("sleep").arg("600").spawn().unwrap();
    let id = sleeper.id() as i32;
    assert!(wait_until(Duration::from_secs(10), || net.robot.pids().contains(&id)), "sleep never entered `robot`");
    let mut pids: Vec<i32> = [&net.public, &net.robot].iter().flat_map(|ns| ns.pids()).collect();
    assert!(pids.len() >= 3, "mosquitto, turnserver and sleep: {pids:?}");
    pids.retain(|&p| p != id);
    drop(net);
    assert!(netns_names().iter().all(|n| !n.starts_with(&prefix)), "left behind: {:?}", netns_names());
    let killed = wait_until(Duration::from_secs(10), || sleeper.try_wait().unwrap().is_some());
    if !killed {
        let _ = sleeper.kill();
    }
    assert!(killed, "a process the test started in `robot` outlived the internet");
    assert!(
        wait_until(Duration::from_secs(10), || pids.iter().all(|&p| !alive(p))),
        "processes survived: {:?}",
        pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );

    // And when the test panics while holding the internet.
    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let net = Internet::new().expect("available a moment ago");
        names.lock().unwrap().push(net.phone.name().to_owned());
        panic!("a failing test");
    });
    assert!(r.is_err());
    let gone = names.lock().unwrap()[0].clone();
    assert!(!netns_names().contains(&gone), "{gone} left behind after a panic");
}

#[test]
fn namespaces_of_dead_test_processes_are_swept() {
    if netns::unavailable().is_some() {
        let _ = Internet::new(); // prints the reason
        return;
    }
    // A PID that is surely dead: our own finished child.
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    let stale = format!("rbd{dead}x0-pub");
    let ok = std::process::Command::new("ip").args(["netns", "add", &stale]).status().unwrap().success();
    if !ok {
        let _ = Internet::new();
        return;
    }
    let net = Internet::new();
    let left = netns_names().contains(&stale);
    if left {
        let _ = std::process::Command::new("ip").args(["netns", "del", &stale]).status();
    }
    drop(net);
    assert!(!left, "{stale} of a dead process survived the sweep");
}

#[test]
fn lan_hosts_reach_each_other_directly() {
    let Some(net) = Internet::new() else { return };
    let robot = net.robot.udp((ROBOT, 7100));
    let lan = net.lan_phone.udp((LAN_PHONE, 7100));
    let seen = mappings(&lan, &[&robot]);
    assert_eq!(seen, vec![SocketAddr::from((LAN_PHONE, 7100))], "no NAT on the LAN");
}
