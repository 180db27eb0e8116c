//! A small internet in network namespaces, for the NAT-traversal tests:
//!
//! ```text
//!                       pub (the "public internet", 198.51.100.0/24, bridge br0)
//!                       198.51.100.10 SERVER: Mosquitto (MQTT 1883, WebSockets 8080), coturn 3478
//!                       198.51.100.11 SERVER2: a second public host for tests
//!                       198.51.100.40 ATTACKER: a host of its own on the internet (namespace `attacker`)
//!                  ┌────────────┴─────────────┐
//!     198.51.100.20 wan                          wan 198.51.100.30
//!   home: NAT (masquerade)               carrier: symmetric NAT (masquerade random,fully-random)
//!     192.168.77.1 lan (bridge)                  lan 10.77.0.1      impairments live here
//!        ┌──────┴───────┐                          │
//!   robot 192.168.77.2   lan_phone 192.168.77.3   phone 10.77.0.2
//! ```
//!
//! The routers forward new connections only from the inside out; from the
//! outside only replies (conntrack established/related) pass. `pub` even has
//! routes to both private ranges (as a hostile neighbour on the provider's
//! segment could), so "inbound is blocked" is the routers' doing, not a
//! missing route. The private ranges exist only inside these namespaces, and
//! nothing is connected to the host's network: all traffic stays inside.
//! IPv6 is off in every namespace (a clean IPv4 internet: no link-local ICE
//! candidates that would sneak past the NATs on a shared bridge).
//!
//! Every namespace name starts with `rbd<pid>x<n>-` (pid of the test
//! process, `n` counts `Internet`s in it), so parallel tests do not collide
//! and a later run can sweep what a killed run left behind. Interfaces are
//! created directly inside the namespaces, so their short fixed names
//! (`wan`, `lan`, `eth0`) never meet the host's.
//!
//! Use:
//! ```ignore
//! let Some(mut net) = netns::Internet::new() else { return }; // skips when not root
//! net.start_mosquitto();
//! net.start_turn(&TurnAuth::long_term("robot", "s3cret"));
//! let robotd = net.robot.command(robotd_bin()).arg("-c").arg(&config).spawn()?;
//! let sock = net.phone.run(|| UdpSocket::bind("0.0.0.0:0").unwrap()); // a socket in `phone`
//! net.set_loss(5);
//! ```
//! `Drop` kills every process left in the namespaces (whoever started it),
//! then deletes the namespaces, and with them every veth and nft table; it
//! runs when a test panics too.
//!
//! The tests skip (return early with a message) when not run as root or when
//! `ip netns` cannot work here; set `ROBOTD_NETNS_REQUIRED=1` to make that a
//! failure instead. Loaded with `#[path = "common/netns.rs"] mod netns;`.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The broker and TURN host in `pub`.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// A second public address in `pub` (another "host" on the internet).
pub const SERVER2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
/// A host of its own on the public segment (namespace `attacker`), for
/// floods that must not share the robot's or the phone's network path.
pub const ATTACKER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 40);
/// The home router's public (WAN) address: what the internet sees of the robot.
pub const HOME_WAN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// The carrier router's public (WAN) address: what the internet sees of the phone.
pub const CARRIER_WAN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 30);
pub const HOME_LAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
pub const ROBOT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
/// A phone on the robot's LAN (for the host-candidate test).
pub const LAN_PHONE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 3);
pub const CARRIER_LAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const PHONE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Fixed ports: the namespaces are ours alone, so no free-port search.
pub const MQTT_PORT: u16 = 1883;
pub const MQTT_WS_PORT: u16 = 8080;
pub const TURN_PORT: u16 = 3478;
pub const TURN_REALM: &str = "robotd.test";

/// Generous timeout for things that should happen "soon" on a busy machine.
const SOON: Duration = Duration::from_secs(20);

/// How the TURN server authenticates (one per server; `start_turn`).
#[derive(Clone, Debug)]
pub enum TurnAuth {
    /// A long-term user (`lt-cred-mech`, `user=`): static username and password.
    LongTerm { user: String, password: String },
    /// coturn's shared-secret scheme (`use-auth-secret`, `static-auth-secret`):
    /// username `<unix expiry>:<name>`, password base64(HMAC-SHA1(secret, username)).
    SharedSecret { secret: String },
}

impl TurnAuth {
    pub fn long_term(user: &str, password: &str) -> TurnAuth {
        TurnAuth::LongTerm { user: user.into(), password: password.into() }
    }
    pub fn shared_secret(secret: &str) -> TurnAuth {
        TurnAuth::SharedSecret { secret: secret.into() }
    }
}

/// What the carrier router does to the phone's traffic (forward path, both
/// directions). Rendered into its own nft table, `inet impair`, replaced
/// atomically on every change.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairments {
    /// Drop this share of packets at random (`numgen random mod 100 < N`).
    pub loss_percent: u8,
    /// Police each direction to this rate (`limit rate over N kbytes/second`,
    /// 1 kbyte = 1024 bytes of IP packet; nft's default bucket holds about one
    /// second of the rate). Excess is dropped, not queued.
    pub rate_kbytes_per_s: Option<u32>,
    /// Drop everything.
    pub cut: bool,
    /// Apply all of the above to UDP only (media, STUN, TURN over UDP), so
    /// the MQTT signalling (TCP) is spared. Default: all IP traffic.
    pub udp_only: bool,
}

/// One network namespace.
pub struct Ns {
    name: String,
}

impl Ns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME prog`: `ip` execs `prog` in place, so the child's
    /// PID is the program's own (kill and wait work as usual). Stop what you
    /// start before the `Internet` drops if it should exit gracefully; Drop
    /// SIGKILLs whatever is still inside (a child spawned a moment before,
    /// still on its way into the namespace, may escape that).
    pub fn command(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog);
        c
    }

    /// Run `f` on a fresh thread that has entered this namespace; returns its
    /// result (a panic in `f` is re-raised here). Sockets created inside stay
    /// in the namespace wherever they are used afterwards, and threads spawned
    /// from inside (e.g. a tokio runtime built in `f`) start in it too.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                self.enter();
                f()
            });
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Like [`Ns::run`] but detached, for long-running work in the namespace.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// A UDP socket bound to `addr` inside this namespace.
    pub fn udp(&self, addr: impl Into<SocketAddr>) -> UdpSocket {
        let addr = addr.into();
        self.run(|| UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind UDP {addr} in {}: {e}", self.name))
    }

    /// A TCP listener on `addr` inside this namespace.
    pub fn tcp_listen(&self, addr: impl Into<SocketAddr>) -> TcpListener {
        let addr = addr.into();
        self.run(|| TcpListener::bind(addr)).unwrap_or_else(|e| panic!("listen TCP {addr} in {}: {e}", self.name))
    }

    /// A TCP connection from this namespace to `addr`.
    pub fn tcp_connect(&self, addr: impl Into<SocketAddr>, timeout: Duration) -> std::io::Result<TcpStream> {
        let addr = addr.into();
        self.run(|| TcpStream::connect_timeout(&addr, timeout))
    }

    /// Bytes received and sent so far by this namespace's interface `dev`
    /// (`ip -s link`; benches read the carrier's to measure rates).
    pub fn link_bytes(&self, dev: &str) -> (u64, u64) {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-s", "-j", "link", "show", "dev", dev])
            .stderr(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip -s link in {}: {e}", self.name));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let st = &v[0]["stats64"];
        (st["rx"]["bytes"].as_u64().unwrap_or(0), st["tx"]["bytes"].as_u64().unwrap_or(0))
    }

    /// PIDs of the processes whose network namespace this is.
    pub fn pids(&self) -> Vec<i32> {
        let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).stderr(Stdio::null()).output() else {
            return Vec::new();
        };
        let me = std::process::id() as i32;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p != me)
            .collect()
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn exists(&self) -> bool {
        self.path().exists()
    }

    fn enter(&self) {
        enter(&self.path());
    }

    /// `ip -n NAME <args>`; panics with ip's message on failure.
    fn ip(&self, args: &str) {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args.split_whitespace());
        check(c, &format!("ip -n {} {args}", self.name));
    }

    /// Load an nft ruleset (atomically) in this namespace.
    fn nft(&self, ruleset: &str) {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nft: run scripts/setup.sh (it installs the Debian package `nftables`)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(ruleset.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft in {} failed: {}\n{ruleset}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Write a sysctl of this namespace (`net.*` keys are per namespace).
    fn sysctl(&self, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", self.name));
    }

    /// Like `sysctl`, when the key exists (bridge netfilter is a module).
    fn sysctl_if_present(&self, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| if path.exists() { std::fs::write(&path, value) } else { Ok(()) })
            .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", self.name));
    }
}

/// Move the calling thread into the network namespace at `path`.
fn enter(path: &Path) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: setns on a valid namespace fd; it changes only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Run a command to completion; panic with its stderr if it fails.
fn check(mut c: Command, what: &str) {
    let out = c.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
}

/// Why namespaces cannot be used here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)".into());
    }
    for (prog, args, pkg) in [("ip", &["netns", "list"][..], "iproute2"), ("nft", &["--version"][..], "nftables")] {
        match Command::new(prog).args(args).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Some(format!("`{prog}` fails here: {}", String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => return Some(format!("`{prog}` not found ({e}): install the Debian package `{pkg}`")),
        }
    }
    None
}

/// Print why a test skips, or fail when `ROBOTD_NETNS_REQUIRED` is set.
fn skip(reason: &str) {
    if std::env::var_os("ROBOTD_NETNS_REQUIRED").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("network namespaces required (ROBOTD_NETNS_REQUIRED) but unavailable: {reason}");
    }
    eprintln!("skipping: network-namespace test needs root and `ip netns`: {reason}");
}

/// Remove namespaces that earlier test processes (now dead) left behind.
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else { return };
    let me = std::process::id();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) =
            name.strip_prefix("rbd").and_then(|r| r.split_once('x')).and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = pid == me || unsafe { libc::kill(pid as i32, 0) } == 0 || errno() != libc::ESRCH;
        if !alive {
            let ns = Ns { name };
            kill_all(&ns);
            // Errors ignored: a parallel sweep may have removed it first.
            let _ = Command::new("ip").args(["netns", "del", &ns.name]).stderr(Stdio::null()).status();
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// SIGKILL every process in `ns` and wait (bounded) until none is left.
fn kill_all(ns: &Ns) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = ns.pids();
        if pids.is_empty() || Instant::now() > end {
            return;
        }
        for p in pids {
            // SAFETY: plain kill(2) on a PID that lives in our namespace.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

static COUNT: AtomicU32 = AtomicU32::new(0);

/// A process the harness started (killed on drop; its log printed when the
/// test panics).
struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// The whole small internet; see the module doc.
pub struct Internet {
    pub public: Ns,
    pub home: Ns,
    pub robot: Ns,
    pub lan_phone: Ns,
    pub carrier: Ns,
    pub phone: Ns,
    /// On the public bridge at [`ATTACKER`], behind no router.
    pub attacker: Ns,
    dir: tempfile::TempDir,
    services: Vec<Service>,
    impair: Impairments,
}

impl Internet {
    /// Build the topology, or return `None` (after printing why) when this
    /// machine cannot: not root, no `ip netns`, or namespaces not permitted.
    pub fn new() -> Option<Internet> {
        if let Some(reason) = unavailable() {
            skip(&reason);
            return None;
        }
        sweep_stale();
        let prefix = format!("rbd{}x{}-", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed));
        let ns = |role: &str| Ns { name: format!("{prefix}{role}") };
        let net = Internet {
            public: ns("pub"),
            home: ns("home"),
            robot: ns("robot"),
            lan_phone: ns("lanphone"),
            carrier: ns("carrier"),
            phone: ns("phone"),
            attacker: ns("attacker"),
            dir: tempfile::tempdir().unwrap(),
            services: Vec::new(),
            impair: Impairments::default(),
        };
        // The first namespace tells whether we may (a root without
        // CAP_SYS_ADMIN, as in some containers, may not); from then on any
        // failure is a real one and panics (Drop cleans up what exists).
        let probe = Command::new("ip").args(["netns", "add", &net.public.name]).stdin(Stdio::null()).output();
        match probe {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                skip(&format!("`ip netns add` failed: {}", String::from_utf8_lossy(&o.stderr).trim()));
                return None;
            }
            Err(e) => {
                skip(&format!("`ip` not runnable: {e}"));
                return None;
            }
        }
        net.build();
        Some(net)
    }

    fn all(&self) -> [&Ns; 7] {
        [&self.public, &self.home, &self.robot, &self.lan_phone, &self.carrier, &self.phone, &self.attacker]
    }

    fn build(&self) {
        for ns in self.all() {
            if !ns.exists() {
                let mut c = Command::new("ip");
                c.args(["netns", "add", &ns.name]);
                check(c, &format!("ip netns add {}", ns.name));
            }
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
            ns.ip("link set lo up");
        }
        let (public, home, carrier) = (&self.public, &self.home, &self.carrier);

        // The internet: one bridge, two server addresses, and routes to the
        // private ranges via the routers (so only their firewalls say no).
        public.ip("link add br0 type bridge");
        public.ip(&format!("addr add {SERVER}/24 dev br0"));
        public.ip(&format!("addr add {SERVER2}/24 dev br0"));
        public.ip("link set br0 up");
        for (router, port, wan) in [(home, "to-home", HOME_WAN), (carrier, "to-carrier", CARRIER_WAN)] {
            router.ip(&format!("link add wan type veth peer name {port} netns {}", public.name));
            public.ip(&format!("link set {port} master br0 up"));
            router.ip(&format!("addr add {wan}/24 dev wan"));
            router.ip("link set wan up");
            router.ip("route add default dev wan");
            router.sysctl("net.ipv4.ip_forward", "1");
        }
        // A plain host on the internet, straight on the bridge.
        self.attacker.ip(&format!("link add eth0 type veth peer name to-attacker netns {}", public.name));
        public.ip("link set to-attacker master br0 up");
        self.attacker.ip(&format!("addr add {ATTACKER}/24 dev eth0"));
        self.attacker.ip("link set eth0 up");
        public.ip(&format!("route add 192.168.77.0/24 via {HOME_WAN}"));
        public.ip(&format!("route add 10.77.0.0/24 via {CARRIER_WAN}"));

        // The home LAN: a bridge on the router, the robot and a LAN phone on it.
        home.ip("link add lan type bridge");
        home.ip(&format!("addr add {HOME_LAN_GATEWAY}/24 dev lan"));
        home.ip("link set lan up");
        for (host, port, addr) in [(&self.robot, "robot", ROBOT), (&self.lan_phone, "lanphone", LAN_PHONE)] {
            host.ip(&format!("link add eth0 type veth peer name {port} netns {}", home.name));
            home.ip(&format!("link set {port} master lan up"));
            host.ip(&format!("addr add {addr}/24 dev eth0"));
            host.ip("link set eth0 up");
            host.ip(&format!("route add default via {HOME_LAN_GATEWAY}"));
        }
        // Bridged frames must not go through the router's IP firewall (the
        // host may have br_netfilter loaded, which would do that).
        for ns in [public, home] {
            ns.sysctl_if_present("net.bridge.bridge-nf-call-iptables", "0");
            ns.sysctl_if_present("net.bridge.bridge-nf-call-ip6tables", "0");
            ns.sysctl_if_present("net.bridge.bridge-nf-call-arptables", "0");
        }

        // The carrier: one phone on a point-to-point link.
        self.phone.ip(&format!("link add eth0 type veth peer name lan netns {}", carrier.name));
        carrier.ip(&format!("addr add {CARRIER_LAN_GATEWAY}/24 dev lan"));
        carrier.ip("link set lan up");
        self.phone.ip(&format!("addr add {PHONE}/24 dev eth0"));
        self.phone.ip("link set eth0 up");
        self.phone.ip(&format!("route add default via {CARRIER_LAN_GATEWAY}"));

        home.nft(&router_rules(""));
        carrier.nft(&router_rules(" random,fully-random"));
        self.apply_impairments();
    }

    /// The test's temporary directory (configs and logs of the services).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The MQTT URL of the broker started by [`Internet::start_mosquitto`].
    pub fn broker_url(&self) -> String {
        format!("mqtt://{SERVER}:{MQTT_PORT}")
    }

    /// The broker's MQTT-over-WebSockets URL.
    pub fn broker_ws_url(&self) -> String {
        format!("ws://{SERVER}:{MQTT_WS_PORT}")
    }

    /// `stun:198.51.100.10:3478`
    pub fn stun_url(&self) -> String {
        format!("stun:{SERVER}:{TURN_PORT}")
    }

    /// `turn:198.51.100.10:3478?transport=udp|tcp`
    pub fn turn_url(&self, transport: &str) -> String {
        format!("turn:{SERVER}:{TURN_PORT}?transport={transport}")
    }

    /// Start Mosquitto in `pub` on SERVER: MQTT on 1883 and MQTT over
    /// WebSockets on 8080, anonymous; returns once both accept connections.
    pub fn start_mosquitto(&mut self) {
        self.start_mosquitto_with("");
    }

    /// [`Internet::start_mosquitto`] with `global` (mosquitto.conf lines of
    /// global options, e.g. `sys_interval 1\n`) added before the listeners.
    pub fn start_mosquitto_with(&mut self, global: &str) {
        let conf = self.dir().join("mosquitto.conf");
        // Anonymous unless `global` says otherwise (e.g. a password_file).
        let anonymous = if global.contains("allow_anonymous") { "" } else { "allow_anonymous true\n" };
        std::fs::write(
            &conf,
            format!(
                "{anonymous}persistence false\nlog_dest stderr\nlog_type all\nmax_keepalive 600\n{global}\
                 listener {MQTT_PORT} {SERVER}\nlistener {MQTT_WS_PORT} {SERVER}\nprotocol websockets\n"
            ),
        )
        .unwrap();
        let mut cmd = self.public.command(find_bin(&["/usr/sbin/mosquitto", "/usr/bin/mosquitto"], "mosquitto"));
        cmd.arg("-c").arg(&conf);
        self.launch("mosquitto", cmd, |net| {
            [MQTT_PORT, MQTT_WS_PORT]
                .iter()
                .all(|&p| net.public.tcp_connect((SERVER, p), Duration::from_secs(1)).is_ok())
        });
    }

    /// Stop the broker started by [`Internet::start_mosquitto`] (killed, as
    /// in a crash: no Wills, and with `persistence false` no retained
    /// messages survive); start it again with [`Internet::start_mosquitto`].
    pub fn stop_mosquitto(&mut self) {
        if let Some(i) = self.services.iter().position(|s| s.name == "mosquitto") {
            let mut s = self.services.remove(i);
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }

    /// Start coturn in `pub`, listening and relaying only on SERVER:3478
    /// (UDP and TCP; no TLS, no CLI), with `auth`; returns once it listens.
    /// It logs (verbose) to `turnserver.log` in [`Internet::dir`].
    /// RFC 3489 STUN stays on (no `no-stun-backward-compatibility`): libnice
    /// 0.1.21, webrtcbin's ICE agent, sends its server-reflexive Binding
    /// requests without the RFC 5389 magic cookie (agent.c, srflx discovery
    /// with STUN_COMPATIBILITY_RFC3489), and would get no srflx candidate.
    pub fn start_turn(&mut self, auth: &TurnAuth) {
        let dir = self.dir().to_owned();
        let auth_conf = match auth {
            TurnAuth::LongTerm { user, password } => format!("lt-cred-mech\nuser={user}:{password}\n"),
            TurnAuth::SharedSecret { secret } => format!("use-auth-secret\nstatic-auth-secret={secret}\n"),
        };
        // Not `no-stun-backward-compatibility`: with it coturn 4.6 ignores the
        // srflx discovery requests of libnice 0.1.21 (webrtcbin's ICE), so a
        // phone behind the carrier NAT gets no server-reflexive candidate and a
        // robot's TURN relay no permission for it (docs/install.md).
        let conf = dir.join("turnserver.conf");
        std::fs::write(
            &conf,
            format!(
                "listening-ip={SERVER}\nrelay-ip={SERVER}\nlistening-port={TURN_PORT}\nrealm={TURN_REALM}\n\
                 {auth_conf}fingerprint\nno-cli\nno-tls\nno-dtls\nno-rfc5780\n\
                 no-multicast-peers\nverbose\nlog-file=stdout\npidfile={}\nuserdb={}\n",
                dir.join("turnserver.pid").display(),
                dir.join("turndb").display(),
            ),
        )
        .unwrap();
        let mut cmd = self.public.command(find_bin(&["/usr/bin/turnserver"], "coturn"));
        cmd.arg("-c").arg(&conf);
        let log = dir.join("turnserver.log");
        self.launch("turnserver", cmd, move |net| {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("UDP listener opened"))
                && net.public.tcp_connect((SERVER, TURN_PORT), Duration::from_secs(1)).is_ok()
        });
    }

    /// coturn's log so far.
    pub fn turn_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("turnserver.log")).unwrap_or_default()
    }

    /// Mosquitto's log so far.
    pub fn mosquitto_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("mosquitto.log")).unwrap_or_default()
    }

    /// Run coturn's `turnutils_uclient` in `from`: two clients allocate a
    /// relay each and exchange a few messages through them. Returns the exit
    /// status (None if it had to be killed after 60 s) and its output. With
    /// `TurnAuth::SharedSecret`, uclient derives the time-limited credentials.
    pub fn turn_client(&self, from: &Ns, auth: &TurnAuth, tcp: bool) -> (Option<ExitStatus>, String) {
        let mut cmd = from.command("turnutils_uclient");
        // -y: client to client (no peer server needed), -c: no RTCP pair,
        // -X: IPv4 relay, 5 messages 5 ms apart.
        cmd.args(["-y", "-c", "-X", "-n", "5", "-z", "5", "-p", &TURN_PORT.to_string()]);
        if tcp {
            cmd.arg("-t");
        }
        match auth {
            TurnAuth::LongTerm { user, password } => cmd.args(["-u", user, "-w", password]),
            TurnAuth::SharedSecret { secret } => cmd.args(["-u", "robot", "-W", secret]),
        };
        cmd.arg(SERVER.to_string());
        run_bounded(cmd, &self.out_file("uclient"), Duration::from_secs(60))
    }

    /// Run coturn's `turnutils_stunclient` in `from` (a STUN binding request
    /// to SERVER:3478); its output names the reflexive address
    /// ("UDP reflexive addr: 198.51.100.30:40123").
    pub fn stun_client(&self, from: &Ns) -> (Option<ExitStatus>, String) {
        let mut cmd = from.command("turnutils_stunclient");
        cmd.args(["-p", &TURN_PORT.to_string(), &SERVER.to_string()]);
        run_bounded(cmd, &self.out_file("stunclient"), Duration::from_secs(60))
    }

    /// A fresh file name in the test's directory.
    fn out_file(&self, what: &str) -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        self.dir().join(format!("{what}-{}.out", N.fetch_add(1, Ordering::Relaxed)))
    }

    fn launch(&mut self, name: &'static str, mut cmd: Command, ready: impl Fn(&Internet) -> bool) {
        let log_path = self.dir().join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.services.push(Service { name, child, log: log_path.clone() });
        let end = Instant::now() + SOON;
        while !ready(self) {
            let svc = self.services.last_mut().unwrap();
            if let Ok(Some(st)) = svc.child.try_wait() {
                panic!("{name} exited ({st}) at start:\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
            }
            assert!(
                Instant::now() < end,
                "{name} not ready after {SOON:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The carrier's current impairments.
    pub fn impairments(&self) -> Impairments {
        self.impair
    }

    /// Replace all impairments at once.
    pub fn set_impairments(&mut self, i: Impairments) {
        self.impair = i;
        self.apply_impairments();
    }

    /// Drop `percent` % of the phone's packets, both directions.
    pub fn set_loss(&mut self, percent: u8) {
        assert!(percent <= 100, "loss is a percentage");
        self.set_impairments(Impairments { loss_percent: percent, ..self.impair });
    }

    /// Police the phone's traffic to `kbytes_per_s` in each direction.
    pub fn set_rate_cap(&mut self, kbytes_per_s: u32) {
        self.set_impairments(Impairments { rate_kbytes_per_s: Some(kbytes_per_s), ..self.impair });
    }

    /// Limit the impairments to UDP (the signalling over TCP is spared).
    pub fn set_udp_only(&mut self, udp_only: bool) {
        self.set_impairments(Impairments { udp_only, ..self.impair });
    }

    /// Cut the phone off the internet (everything dropped, both ways).
    pub fn cut(&mut self) {
        self.set_impairments(Impairments { cut: true, ..self.impair });
    }

    /// Undo [`Internet::cut`] (loss and rate cap stay).
    pub fn restore(&mut self) {
        self.set_impairments(Impairments { cut: false, ..self.impair });
    }

    /// Remove every impairment.
    pub fn clear(&mut self) {
        self.set_impairments(Impairments::default());
    }

    fn apply_impairments(&self) {
        let i = self.impair;
        let m = if i.udp_only { "meta l4proto udp " } else { "" };
        let mut rules = String::new();
        if i.cut {
            rules += &format!("    {m}drop\n");
        }
        if i.loss_percent > 0 {
            rules += &format!("    {m}numgen random mod 100 < {} drop\n", i.loss_percent);
        }
        if let Some(r) = i.rate_kbytes_per_s {
            // One rule (and so one token bucket) per direction.
            rules += &format!("    {m}iifname \"lan\" limit rate over {r} kbytes/second drop\n");
            rules += &format!("    {m}oifname \"lan\" limit rate over {r} kbytes/second drop\n");
        }
        // Declare, delete, recreate: one atomic replacement, also the first time.
        self.carrier.nft(&format!(
            "table inet impair\ndelete table inet impair\ntable inet impair {{\n  chain forward {{\n    \
             type filter hook forward priority filter - 10; policy accept;\n{rules}  }}\n}}\n"
        ));
    }
}

/// A NAT router: masquerade out of `wan`; forward new flows only from `lan`
/// to `wan`, and from outside only what belongs to them.
fn router_rules(masquerade_flags: &str) -> String {
    format!(
        "table inet router {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" masquerade{masquerade_flags}
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname \"lan\" oifname \"wan\" accept
  }}
}}
"
    )
}

fn find_bin(paths: &[&str], package: &str) -> PathBuf {
    paths.iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| {
        panic!("{} not found: run scripts/setup.sh (it installs the Debian package `{package}`)", paths[0])
    })
}

/// Run `cmd` with stdout+stderr to `out`, killed after `timeout`.
fn run_bounded(mut cmd: Command, out: &Path, timeout: Duration) -> (Option<ExitStatus>, String) {
    let f = std::fs::File::create(out).unwrap();
    let mut child = cmd.stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f).spawn().expect("spawn");
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(out).unwrap_or_default())
}

impl Drop for Internet {
    fn drop(&mut self) {
        for s in &mut self.services {
            let _ = s.child.kill();
            let _ = s.child.wait();
            if std::thread::panicking() {
                let log = std::fs::read_to_string(&s.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("---- {} log (last lines) ----", s.name);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        // Whatever else runs in our namespaces (robotd, robotctl, helpers the
        // test spawned and lost track of) goes too; then the namespaces, and
        // with them their veths and nft tables.
        for ns in self.all() {
            if ns.exists() {
                kill_all(ns);
                let _ = Command::new("ip").args(["netns", "del", &ns.name]).stderr(Stdio::null()).status();
            }
        }
    }
}
