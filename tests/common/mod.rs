//! Test harness: a real Mosquitto per test on a free loopback port, the real
//! `robotd` binary, and an MQTT probe. Everything is torn down on drop, so
//! also when a test panics. Waits are event-based with generous timeouts.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

/// Generous timeout for anything that should happen "soon" on a busy machine.
pub const SOON: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 (bound and released; the kernel will not
/// hand it out again immediately).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A log without its colour codes (`ESC [ ... m`).
pub fn plain(log: &str) -> String {
    let mut out = String::new();
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Wait until `f` returns true, polling every 20 ms, up to `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("mosquitto not found: run scripts/test.sh (it installs the Debian package `mosquitto`)");
}

/// A Mosquitto broker on 127.0.0.1:port, killed on drop.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Broker { port: free_port(), dir, child: None };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type all\nmax_keepalive 600\n",
                self.port
            ),
        )
        .unwrap();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(SOON, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "mosquitto did not listen on {port}"
        );
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stop the broker (SIGTERM, wait).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Stop and start again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A robotd process with its own config and state directory.
pub struct Robot {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub id: String,
    child: Option<Child>,
}

pub fn robotd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_robotd")
}

pub fn robotctl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_robotctl")
}

/// Merge `extra` over `base` (tables merged key by key, `extra` wins).
pub fn merge_toml(base: &str, extra: &str) -> String {
    fn merge(a: &mut toml::Table, b: toml::Table) {
        for (k, v) in b {
            match (a.get_mut(&k), v) {
                (Some(toml::Value::Table(at)), toml::Value::Table(bt)) => merge(at, bt),
                (_, v) => {
                    a.insert(k, v);
                }
            }
        }
    }
    let mut a: toml::Table = base.parse().unwrap();
    merge(&mut a, extra.parse().expect("test config TOML"));
    toml::to_string(&a).unwrap()
}

impl Robot {
    /// Write a config (base + `extra` TOML appended) and create the robot ID.
    pub fn configure(broker: &Broker, extra: &str) -> Robot {
        Robot::configure_url(&broker.url(), extra)
    }

    /// [`Robot::configure`] for a broker at `url` that is not a [`Broker`]
    /// (e.g. the namespace internet's, tests/common/netns.rs).
    pub fn configure_url(url: &str, extra: &str) -> Robot {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("robotd.toml");
        let state = dir.path().join("state");
        let sock = dir.path().join("control.sock");
        let base = format!(
            "[robot]\nstate_dir = \"{}\"\n[mqtt]\nurl = \"{}\"\nkeep_alive_s = 5\n[control]\nsocket = \"{}\"\n",
            state.display(),
            url,
            sock.display()
        );
        std::fs::write(&config, merge_toml(&base, extra)).unwrap();
        let out = Command::new(robotd_bin()).arg("-c").arg(&config).arg("id").output().unwrap();
        assert!(out.status.success(), "robotd id failed: {}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Robot { dir, config, id, child: None }
    }

    /// Merge `extra` into the written config (before [`Robot::spawn`]), for
    /// settings that need the robot ID (e.g. its broker user name).
    #[allow(dead_code)]
    pub fn reconfigure(&mut self, extra: &str) {
        let now = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, merge_toml(&now, extra)).unwrap();
    }

    /// Configure and start.
    pub fn start(broker: &Broker, extra: &str) -> Robot {
        let mut r = Robot::configure(broker, extra);
        r.spawn();
        r
    }

    pub fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    /// Start with extra environment variables (e.g. `NOTIFY_SOCKET`, set
    /// after the harness removes the inherited one).
    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        let mut cmd = Command::new(robotd_bin());
        cmd.arg("-c").arg(&self.config);
        self.launch(cmd, env);
    }

    /// Start as `wrapper ROBOTD -c CONFIG`, for a wrapper that execs its
    /// arguments (so the PID stays robotd's): `ip netns exec NS`, `taskset`.
    pub fn spawn_wrapped(&mut self, mut wrapper: Command) {
        wrapper.arg(robotd_bin()).arg("-c").arg(&self.config);
        self.launch(wrapper, &[]);
    }

    /// Start as systemd does for a unit with `WatchdogSec=`: `NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC`, and `WATCHDOG_PID` = robotd's own PID (a shell sets
    /// it to `$$` and then `exec`s robotd, which keeps the PID).
    pub fn spawn_under_watchdog(&mut self, notify_socket: &Path, watchdog_usec: u64, env: &[(&str, &str)]) {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg("export WATCHDOG_PID=$$; exec \"$0\" -c \"$1\"").arg(robotd_bin()).arg(&self.config);
        let usec = watchdog_usec.to_string();
        let sock = notify_socket.to_str().expect("UTF-8 path");
        let mut all = vec![("NOTIFY_SOCKET", sock), ("WATCHDOG_USEC", usec.as_str())];
        all.extend_from_slice(env);
        self.launch(cmd, &all);
    }

    /// Start with a soft limit of `limit` open files, as systemd gives a
    /// service by default (`LimitNOFILE=` 1024), whatever this shell allows.
    pub fn spawn_with_fd_limit(&mut self, limit: u32) {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("ulimit -n \"$2\" && exec \"$0\" -c \"$1\"")
            .arg(robotd_bin())
            .arg(&self.config)
            .arg(limit.to_string());
        self.launch(cmd, &[]);
    }

    fn launch(&mut self, mut cmd: Command, env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.dir.path().join("robotd.log")).unwrap();
        let child = cmd
            .env("RUST_LOG", "robotd=debug,info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start robotd");
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("robotd.log")).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Run `robotd <args>` against this robot's config.
    pub fn admin(&self, args: &[&str]) -> std::process::Output {
        Command::new(robotd_bin()).arg("-c").arg(&self.config).args(args).output().unwrap()
    }
}

impl Drop for Robot {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- robotd log ----\n{}", self.log());
        }
    }
}

/// A message seen by a probe.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    pub props: Option<PublishProperties>,
}

impl Seen {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// An MQTT 5 test client that records everything it receives.
pub struct Probe {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Seen>,
    pub seen: Vec<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    /// Connect and subscribe to `filters` (QoS 1); returns once SUBACKed.
    pub async fn connect(broker: &Broker, filters: &[&str]) -> Probe {
        Probe::connect_to("127.0.0.1", broker.port, filters).await
    }

    /// [`Probe::connect`] to a broker at `host:port` that is not a [`Broker`].
    pub async fn connect_to(host: &str, port: u16, filters: &[&str]) -> Probe {
        let id = format!("probe-{}", rand::random::<u64>());
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(Some(1 << 20));
        let (client, mut el) = AsyncClient::new(o, 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Seen {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload,
                            retain: p.retain,
                            props: p.properties,
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        for f in filters {
            client.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
        }
        for _ in filters {
            tokio::time::timeout(SOON, ack_rx.recv()).await.expect("SUBACK").unwrap();
        }
        Probe { client, rx, seen: Vec::new(), task }
    }

    /// Wait for a message matching `pred`; records everything seen meanwhile.
    pub async fn expect(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Seen) -> bool) -> Seen {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(end, self.rx.recv()).await {
                Ok(Some(m)) => {
                    self.seen.push(m.clone());
                    if pred(&m) {
                        return m;
                    }
                }
                _ => panic!("timed out waiting for {what}; saw {:#?}", self.seen),
            }
        }
    }

    /// Wait for `topic` with exactly `payload`.
    pub async fn expect_msg(&mut self, topic: &str, payload: &str) -> Seen {
        let t = topic.to_owned();
        let p = payload.to_owned();
        self.expect(&format!("{topic} = {payload}"), SOON, move |m| m.topic == t && m.payload == p.as_bytes()).await
    }

    /// Collect everything that arrives within `d` (used only to assert that
    /// something does NOT happen, after a positive control has passed).
    pub async fn collect_for(&mut self, d: Duration) -> Vec<Seen> {
        let end = tokio::time::Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(end, self.rx.recv()).await {
            self.seen.push(m.clone());
            out.push(m);
        }
        out
    }

    pub async fn publish(&self, topic: &str, payload: &[u8], retain: bool, props: Option<PublishProperties>) {
        match props {
            Some(p) => {
                self.client.publish_with_properties(topic, QoS::AtLeastOnce, retain, payload.to_vec(), p).await.unwrap()
            }
            None => self.client.publish(topic, QoS::AtLeastOnce, retain, payload.to_vec()).await.unwrap(),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A private CA (`ca.pem`) and a server certificate for `localhost` and
/// 127.0.0.1 signed by it (`cert`, `key`), written into `dir`. Subject and
/// issuer names differ: OpenSSL (mosquitto's clients) takes a certificate
/// whose subject equals its issuer for a self-signed one.
#[allow(dead_code)]
pub fn write_test_certs(dir: &Path, cert: &str, key: &str) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "robotd test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server = params.signed_by(&server_key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join(cert), server.pem()).unwrap();
    std::fs::write(dir.join(key), server_key.serialize_pem()).unwrap();
}

/// A harness=false bench's `--quick` (or `ROBOTD_BENCH_QUICK`).
pub fn bench_quick(args: &[String]) -> bool {
    args.iter().any(|a| a == "--quick") || std::env::var_os("ROBOTD_BENCH_QUICK").is_some()
}

/// A harness=false bench's `--only a,b` or `--only=a,b` (empty: everything).
pub fn bench_only(args: &[String]) -> Vec<String> {
    args.iter()
        .find_map(|a| a.strip_prefix("--only="))
        .or_else(|| Some(args.get(args.iter().position(|a| a == "--only")? + 1)?.as_str()))
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}
