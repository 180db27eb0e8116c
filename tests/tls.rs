//! mqtts:// with a private CA and username/password, against a real
//! Mosquitto TLS listener with a password file: robotd, and robotctl pairing
//! through it.

mod common;

use common::*;
use std::process::{Command, Stdio};

struct TlsBroker {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_broker() -> TlsBroker {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    write_test_certs(dir.path(), "server.pem", "server.key");
    let st = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(p("passwd"))
        .args(["rover", "s3cret"])
        .status()
        .expect("mosquitto_passwd (package mosquitto)");
    assert!(st.success());
    // A phone's login (the ACL-free broker here lets any user use any topic).
    let st = Command::new("mosquitto_passwd").arg("-b").arg(p("passwd")).args(["phone", "ph0ne"]).status().unwrap();
    assert!(st.success());
    let port = free_port();
    std::fs::write(
        p("m.conf"),
        format!(
            "per_listener_settings true\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\ncafile {}\ncertfile {}\nkeyfile {}\npersistence false\n",
            p("passwd").display(),
            p("ca.pem").display(),
            p("server.pem").display(),
            p("server.key").display()
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(p("m.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(p("mosquitto.log")).unwrap())
        .spawn()
        .expect("start mosquitto");
    assert!(
        wait_until(SOON, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "TLS broker did not listen"
    );
    TlsBroker { port, dir, child }
}

fn robot_config(b: &TlsBroker, password: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), format!("{password}\n")).unwrap();
    let cfg = dir.path().join("r.toml");
    std::fs::write(
        &cfg,
        format!(
            "[robot]\nstate_dir = \"{st}\"\n[mqtt]\nurl = \"mqtts://127.0.0.1:{port}\"\nca_file = \"{ca}\"\nusername = \"rover\"\npassword_file = \"{pw}\"\n[control]\nsocket = \"{sock}\"\n",
            st = dir.path().join("state").display(),
            port = b.port,
            ca = b.dir.path().join("ca.pem").display(),
            pw = dir.path().join("pw").display(),
            sock = dir.path().join("c.sock").display(),
        ),
    )
    .unwrap();
    (dir, cfg)
}

fn status(cfg: &std::path::Path) -> Option<serde_json::Value> {
    let out = Command::new(robotd_bin()).arg("-c").arg(cfg).arg("status").output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn connects_over_tls_with_password_and_refuses_a_wrong_one() {
    let b = tls_broker();
    for (password, should_connect) in [("s3cret", true), ("wrong", false)] {
        let (_dir, cfg) = robot_config(&b, password);
        let mut child =
            Command::new(robotd_bin()).arg("-c").arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // The admin socket answers whether or not the broker accepted us.
        assert!(wait_until(SOON, || status(&cfg).is_some()), "robotd did not come up");
        if should_connect {
            assert!(
                wait_until(SOON, || status(&cfg).is_some_and(|s| s["broker"]["connected"] == true)),
                "no TLS connection: {:?}",
                status(&cfg)
            );
        } else {
            // Positive control above; here the broker refuses the password: it
            // keeps retrying (connects counts CONNACKs) and never gets one.
            std::thread::sleep(std::time::Duration::from_secs(3));
            let s = status(&cfg).unwrap();
            assert_eq!(s["broker"]["connected"], false, "{s}");
            assert_eq!(s["broker"]["connects"], 0, "{s}");
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// robotctl over the same listener: `mqtts://` from the pairing URI, the CA
/// file, a user name and a password file (flags, or the ROBOTCTL_* variables).
#[test]
fn robotctl_pairs_over_tls_with_a_password_file() {
    let b = tls_broker();
    let (dir, cfg) = robot_config(&b, "s3cret");
    std::fs::write(&cfg, format!("{}[pairing]\nopen_when_unowned = false\n", std::fs::read_to_string(&cfg).unwrap()))
        .unwrap();
    let mut robotd =
        Command::new(robotd_bin()).arg("-c").arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    assert!(
        wait_until(SOON, || status(&cfg).is_some_and(|s| s["broker"]["connected"] == true)),
        "robotd did not connect over TLS: {:?}",
        status(&cfg)
    );
    let out = Command::new(robotd_bin()).arg("-c").arg(&cfg).arg("pair").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let uri =
        text.split(['\'', ' ', '\n']).find(|w| w.starts_with("robotd://pair?")).expect("a pairing URI").to_owned();
    assert!(uri.contains("mqtts"), "{uri}");
    std::fs::write(dir.path().join("phone-pw"), "ph0ne\n").unwrap();
    let keys = dir.path().join("keys.json");
    let robotctl = |extra: &[&str]| {
        let mut c = Command::new(robotctl_bin());
        c.arg("--keys").arg(&keys).args(["pair", &uri, "--phone", "+48 555 555 555"]).args(extra);
        c.env_remove("ROBOTCTL_CA_FILE").env_remove("ROBOTCTL_USERNAME").env_remove("ROBOTCTL_PASSWORD_FILE");
        c
    };

    // Without the CA file robotctl cannot check the broker: it says which flag.
    let out = robotctl(&[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--ca-file"), "{err}");

    let ca = b.dir.path().join("ca.pem");
    let out = robotctl(&["--username", "phone"])
        .arg("--ca-file")
        .arg(&ca)
        .env("ROBOTCTL_PASSWORD_FILE", dir.path().join("phone-pw"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "robotctl pair over TLS failed: {stdout}{stderr}");
    assert!(stdout.contains("paired with"), "{stdout}");
    let owners = Command::new(robotd_bin()).arg("-c").arg(&cfg).arg("owners").output().unwrap();
    assert!(String::from_utf8_lossy(&owners.stdout).contains("36940d0ece18aebf69d0ef6825534e24"));
    let _ = robotd.kill();
    let _ = robotd.wait();
}
