//! The broker set-up docs/install.md documents, for real: a Mosquitto
//! started from the configuration and ACL blocks *of that document* (only
//! the port, file paths and the certificate are the test's), a password
//! per client. The robot and its owner work through it; an outsider with an
//! account of its own can neither publish the robot's presence nor take over
//! the robot's connection with its identifier, and without an account it
//! cannot connect at all (issue 15, "Presence and broker set-up").

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// The fenced block that follows the line containing `marker` in install.md.
fn block_after(doc: &str, marker: &str) -> String {
    let start = doc.find(marker).unwrap_or_else(|| panic!("install.md no longer has {marker:?}"));
    let rest = &doc[start..];
    let open = rest.find("```\n").expect("a fenced block") + 4;
    let close = rest[open..].find("```").expect("its end") + open;
    rest[open..close].to_owned()
}

struct AclBroker {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for AclBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AclBroker {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `mosquitto_pub`/`mosquitto_sub` over the TLS listener, MQTT 5 (by name:
    /// libmosquitto checks the certificate's DNS name, not its IP address).
    fn client(&self, prog: &str, user: Option<(&str, &str)>) -> Command {
        let mut c = Command::new(prog);
        c.args(["-h", "localhost", "-p", &self.port.to_string(), "-V", "mqttv5", "--cafile"]).arg(self.path("ca.pem"));
        if let Some((u, pw)) = user {
            c.args(["-u", u, "-P", pw]);
        }
        c.stdin(Stdio::null());
        c
    }
}

fn passwd(file: &Path, user: &str, password: &str, create: bool) {
    let mut c = Command::new("mosquitto_passwd");
    c.arg("-b");
    if create {
        c.arg("-c");
    }
    assert!(c.arg(file).args([user, password]).status().expect("mosquitto_passwd").success());
}

/// The documented broker, with these users.
fn acl_broker(users: &[(&str, &str)]) -> AclBroker {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/install.md")).unwrap();
    let conf = block_after(&doc, "`/etc/mosquitto/conf.d/robotd.conf`:");
    let acl = block_after(&doc, "`/etc/mosquitto/robotd.acl`");
    assert!(conf.contains("use_username_as_clientid true") && acl.contains("pattern write user/%c/isConnected"));
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    write_test_certs(dir.path(), "server.crt", "server.key");
    for (i, (u, pw)) in users.iter().enumerate() {
        passwd(&p("passwd"), u, pw, i == 0);
    }
    std::fs::write(p("robotd.acl"), &acl).unwrap();
    let port = free_port();
    // The document's lines, with this test's port and files.
    let conf = conf
        .replace("listener 8883", &format!("listener {port} 127.0.0.1"))
        .replace("/etc/mosquitto/certs/server.crt", &p("server.crt").display().to_string())
        .replace("/etc/mosquitto/certs/server.key", &p("server.key").display().to_string())
        .replace("/etc/mosquitto/passwd", &p("passwd").display().to_string())
        .replace("/etc/mosquitto/robotd.acl", &p("robotd.acl").display().to_string());
    let conf = format!("{conf}persistence_location {}/\n", dir.path().display());
    std::fs::write(p("m.conf"), conf).unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(p("m.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(p("mosquitto.log")).unwrap())
        .spawn()
        .expect("start mosquitto");
    assert!(
        wait_until(SOON, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "the documented broker did not listen: {}",
        std::fs::read_to_string(p("mosquitto.log")).unwrap_or_default()
    );
    AclBroker { port, dir, child }
}

fn robotd(cfg: &Path, args: &[&str]) -> Output {
    Command::new(robotd_bin()).arg("-c").arg(cfg).args(args).output().unwrap()
}

fn status(cfg: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&robotd(cfg, &["status"]).stdout).ok()
}

/// The retained presence of `id` as the owner's phone reads it.
fn presence(b: &AclBroker, reader: (&str, &str), id: &str) -> String {
    let out = b
        .client("mosquitto_sub", Some(reader))
        .args(["-t", &format!("user/{id}/isConnected"), "-C", "1", "-W", "5"])
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("mosquitto_sub: {} {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_documented_acl_lets_the_owner_in_and_keeps_an_outsider_off_the_robots_topics() {
    // The robot's ID first (made in its state directory), for its login.
    let run = tempfile::tempdir().unwrap();
    let cfg = run.path().join("r.toml");
    let write_cfg = |port: u16, ca: &Path, robot: &str| {
        std::fs::write(run.path().join("pw"), "r0bot\n").unwrap();
        std::fs::write(
            &cfg,
            format!(
                "[robot]\nstate_dir = \"{st}\"\n[mqtt]\nurl = \"mqtts://127.0.0.1:{port}\"\nca_file = \"{ca}\"\nusername = \"{robot}\"\npassword_file = \"{pw}\"\n[control]\nsocket = \"{sock}\"\n[pairing]\nopen_when_unowned = false\n[video]\ndevice = \"test\"\nwidth = 320\nheight = 240\n",
                st = run.path().join("state").display(),
                ca = ca.display(),
                pw = run.path().join("pw").display(),
                sock = run.path().join("c.sock").display(),
            ),
        )
        .unwrap();
    };
    write_cfg(1, Path::new("/nonexistent"), "x");
    let id = robotd(&cfg, &["id"]);
    assert!(id.status.success(), "{}", String::from_utf8_lossy(&id.stderr));
    let robot = String::from_utf8_lossy(&id.stdout).trim().to_owned();
    let phone = "36940d0ece18aebf69d0ef6825534e24"; // md5("+48555555555")
    let mallory = "8d1a5bd8e7a7bfd5ae0d2bf04b6a0ad1";
    let b = acl_broker(&[(&robot, "r0bot"), (phone, "ph0ne"), (mallory, "m4llory")]);
    write_cfg(b.port, &b.path("ca.pem"), &robot);

    let mut daemon =
        Command::new(robotd_bin()).arg("-c").arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    assert!(
        wait_until(SOON, || status(&cfg).is_some_and(|s| s["broker"]["connected"] == true)),
        "robotd did not connect through the documented broker: {:?}",
        status(&cfg)
    );
    assert_eq!(presence(&b, (phone, "ph0ne"), &robot), "true");

    // The owner pairs and calls through it.
    let out = robotd(&cfg, &["pair"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let uri =
        text.split(['\'', ' ', '\n']).find(|w| w.starts_with("robotd://pair?")).expect("a pairing URI").to_owned();
    std::fs::write(run.path().join("phone-pw"), "ph0ne\n").unwrap();
    let keys = run.path().join("keys.json");
    let robotctl = |args: &[&str]| {
        Command::new(robotctl_bin())
            .arg("--keys")
            .arg(&keys)
            .args(args)
            .args(["--username", phone, "--ca-file"])
            .arg(b.path("ca.pem"))
            .arg("--password-file")
            .arg(run.path().join("phone-pw"))
            .output()
            .unwrap()
    };
    let out = robotctl(&["pair", &uri, "--phone", "+48 555 555 555"]);
    assert!(out.status.success(), "pairing through the ACL: {}", String::from_utf8_lossy(&out.stderr));
    let call = || robotctl(&["call", "-x", "ping", "-x", "drive 0.3 0 300", "-x", "hangup"]);
    let out = call();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("\"ok\""), "a call through the ACL: {said}");

    // An outsider without an account cannot connect at all.
    let anon =
        b.client("mosquitto_pub", None).args(["-t", &format!("user/{robot}/isConnected"), "-m", "false"]).output();
    assert!(!anon.unwrap().status.success(), "an anonymous client was let in");
    // With an account of its own it cannot publish the robot's presence ...
    let connects = status(&cfg).unwrap()["broker"]["connects"].clone();
    let _ = b
        .client("mosquitto_pub", Some((mallory, "m4llory")))
        .args(["-t", &format!("user/{robot}/isConnected"), "-m", "false", "-r", "-q", "1"])
        .output()
        .unwrap();
    assert_eq!(presence(&b, (phone, "ph0ne"), &robot), "true", "an outsider changed the robot's presence");
    // ... nor, with the robot's identifier, take over its connection.
    for _ in 0..5 {
        let _ = b
            .client("mosquitto_pub", Some((mallory, "m4llory")))
            .args(["-i", &robot, "-t", &format!("user/{mallory}/isConnected"), "-m", "x"])
            .output()
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    let s = status(&cfg).unwrap();
    assert_eq!((s["broker"]["connected"].clone(), s["broker"]["connects"].clone()), (true.into(), connects), "{s}");
    // The owner still calls.
    let out = call();
    assert!(out.status.success(), "the owner's second call: {}", String::from_utf8_lossy(&out.stderr));
    let _ = daemon.kill();
    let _ = daemon.wait();

    // robotd's instance marker (twin detection, protocol 2.3) was accepted
    // and is kept for the robot's login only: a phone does not see it.
    let marker = |reader: (&str, &str)| {
        let out = b
            .client("mosquitto_sub", Some(reader))
            .args(["-t", &format!("user/{robot}/instance"), "-C", "1", "-W", "3"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(marker((&robot, "r0bot")).contains("\"gen\""), "the robot's marker was not retained");
    assert_eq!(marker((phone, "ph0ne")), "", "a phone can read the robot's instance marker");
}
