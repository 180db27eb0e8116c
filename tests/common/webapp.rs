//! The phone web app for the browser test (tests/webapp.rs) and the browser
//! bench (benches/browser.rs): where it is, what Chromium needs, building it
//! for a broker, serving it in a namespace, and the demo flat it calls.
//! Loaded with `#[path = "common/webapp.rs"] mod webapp_kit;` beside
//! `mod common;` and `mod netns;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{SOON, wait_until};
use crate::netns::Ns;

pub fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// web/, or `ROBOTD_WEB_DIR` (another checkout's, while working on the app).
pub fn web_dir() -> PathBuf {
    std::env::var_os("ROBOTD_WEB_DIR").map(PathBuf::from).unwrap_or_else(|| manifest().join("web"))
}

/// `Some(reason)` when the browser cannot run here.
pub fn browser_missing() -> Option<String> {
    if !web_dir().join("node_modules/playwright-core").exists() {
        return Some("web/node_modules is missing (run scripts/setup.sh, which runs npm ci)".into());
    }
    if !Path::new("/usr/bin/chromium").exists() {
        return Some("/usr/bin/chromium is missing (scripts/setup.sh installs Debian's chromium)".into());
    }
    None
}

/// Run `cmd` to completion; panics with its output when it fails.
pub fn run(mut cmd: Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Build the app for this run's broker (and ICE servers) into `out`.
pub fn build_app(out: &Path, broker_ws: &str, ice_servers: Option<&str>) {
    let mut cmd = Command::new("npm");
    cmd.current_dir(web_dir()).args(["run", "--silent", "build"]);
    cmd.env("ROBOTD_BROKER_WS", broker_ws).env("ROBOTD_WEB_OUTDIR", out);
    if let Some(ice) = ice_servers {
        cmd.env("ROBOTD_ICE_SERVERS", ice);
    }
    run(cmd, "npm run build");
    assert!(out.join("index.html").exists(), "the build made no index.html in {}", out.display());
}

/// A child process (the app's static server) killed and reaped when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serve `dist` on port 8000 of `ns`: the page opens from 127.0.0.1 (the
/// namespace's own loopback, a secure context), and from the namespace's
/// network address (not one: the app must say so).
pub fn serve(ns: &Ns, dist: &Path, log: &Path) -> Server {
    let f = std::fs::File::create(log).unwrap();
    let child = ns
        .command("python3")
        .args(["-m", "http.server", "--bind", "0.0.0.0", "8000", "--directory"])
        .arg(dist)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("python3 -m http.server");
    let server = Server(child);
    let up = wait_until(SOON, || ns.tcp_connect(([127, 0, 0, 1], 8000), Duration::from_secs(1)).is_ok());
    assert!(up, "the app's static server did not start:\n{}", std::fs::read_to_string(log).unwrap_or_default());
    server
}

/// config/flat.toml as a table.
pub fn flat_toml() -> toml::Table {
    let text = std::fs::read_to_string(manifest().join("config/flat.toml")).unwrap();
    text.parse().unwrap()
}

/// config/flat.toml without its broker, state and socket (the harness's).
pub fn flat() -> String {
    let mut t = flat_toml();
    t.remove("mqtt");
    t.remove("control");
    if let Some(robot) = t.get_mut("robot").and_then(|r| r.as_table_mut()) {
        robot.remove("state_dir");
    }
    toml::to_string(&t).unwrap()
}
