//! The admin commands and configuration errors, as a person sees them.

mod common;

use common::*;
use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn robotctl_id_prints_md5_of_e164() {
    let (ok, out, _) = run(robotctl_bin(), &["id", "+48", "555", "555", "555"]);
    assert!(ok);
    assert_eq!(out.trim(), "36940d0ece18aebf69d0ef6825534e24");
    let (ok, _, err) = run(robotctl_bin(), &["id", "555 555 555"]);
    assert!(!ok);
    assert!(err.contains("country code"), "{err}");
}

#[test]
fn robotd_id_is_stable_and_check_config_prints_effective_values() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("r.toml");
    std::fs::write(&cfg, format!("[robot]\nnickname = \"Bob\"\nstate_dir = \"{}\"\n", dir.path().join("s").display()))
        .unwrap();
    let c = cfg.to_str().unwrap();
    let (ok, a, err) = run(robotd_bin(), &["-c", c, "id"]);
    assert!(ok, "{err}");
    let (_, b, _) = run(robotd_bin(), &["-c", c, "id"]);
    assert_eq!(a, b);
    assert!(robotd::wire::identity::is_client_id(a.trim()));
    let (ok, out, _) = run(robotd_bin(), &["-c", c, "check-config"]);
    assert!(ok);
    assert!(out.contains("nickname = \"Bob\"") && out.contains("keep_alive_s = 5"), "{out}");
}

#[test]
fn bad_config_files_give_the_documented_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[mqtt]\nkeep_alive_s = 0\n", "key `mqtt.keep_alive_s`: 0 is outside 5..=600 seconds"),
        ("[mqtt]\nurl = \"http://broker\"\n", "key `mqtt.url`"),
        ("[robot]\nnickame = \"x\"\n", "key `robot.nickame`: unknown field"),
        ("[robot\n", "is not valid TOML"),
    ];
    for (text, want) in cases {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        let (ok, _, err) = run(robotd_bin(), &["-c", cfg.to_str().unwrap(), "check-config"]);
        assert!(!ok, "{text:?} was accepted");
        assert!(err.contains(want) && err.contains("bad.toml"), "{text:?}: {err}");
        // The daemon itself refuses to start with the same message.
        let (ok, _, err) = run(robotd_bin(), &["-c", cfg.to_str().unwrap()]);
        assert!(!ok && err.contains(want), "{err}");
    }
    let (ok, _, err) = run(robotd_bin(), &["-c", "/nonexistent/robotd.toml", "check-config"]);
    assert!(!ok && err.contains("/nonexistent/robotd.toml"), "{err}");
}

#[test]
fn help_lists_the_commands() {
    let (ok, out, _) = run(robotd_bin(), &["--help"]);
    assert!(ok);
    for c in ["run", "id", "check-config"] {
        assert!(out.contains(c), "{out}");
    }
}
