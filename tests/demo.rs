//! The one-command demo: `scripts/run-local.sh --once` with the binaries of
//! this build, on a free port and its own run directory.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The whole demo takes about 40 s; a busy machine gets plenty more.
const DEMO_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn run_local_once_pairs_calls_drives_navigates_and_records() {
    let run = tempfile::tempdir().unwrap();
    let bins = Path::new(robotd_bin()).parent().unwrap();
    let port = free_port();
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-local.sh"))
        .arg("--once")
        .env("ROBOTD_BIN_DIR", bins)
        .env("ROBOTD_DEMO_PORT", port.to_string())
        .env("ROBOTD_WEB_PORT", free_port().to_string())
        .env("ROBOTD_DEMO_DIR", run.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a hung run can be stopped as a whole.
        .process_group(0)
        .spawn()
        .expect("start scripts/run-local.sh");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let pid = child.id() as i32;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > DEMO_TIMEOUT {
            // SIGTERM: the script's trap stops robotd and the broker.
            unsafe { libc::kill(-pid, libc::SIGTERM) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let log = std::fs::read_to_string(run.path().join("robotd.log")).unwrap_or_default();
    let context = format!("stdout:\n{out}\nstderr:\n{err}\nrobotd.log (end):\n{}", tail(&log, 40));
    let status = status.unwrap_or_else(|| panic!("the demo did not finish within {DEMO_TIMEOUT:?}\n{context}"));
    assert!(status.success(), "run-local.sh --once failed ({status})\n{context}");
    eprintln!("demo took {:.1} s\n{out}", elapsed.as_secs_f64());

    // The timeline says what happened.
    let line = |step: &str| out.lines().rev().find(|l| l.contains(step)).unwrap_or_default().to_owned();
    assert!(line("goto kitchen").contains("arrived"), "{context}");
    assert!(line("goto bedroom").contains("blocked"), "{context}");
    assert!(out.contains("route home > hall > kitchen"), "{context}");
    assert!(out.contains("demo finished in"), "{context}");
    assert!(!out.contains("FAILED"), "{context}");
    // The phone web app was built for the demo broker's WebSockets listener,
    // served, and a link with a fresh pairing URI printed.
    let web = line("web app: served on");
    assert!(web.contains("#pair=robotd%3A%2F%2Fpair%3Fv%3D1%26robot%3D"), "{context}");
    let html = std::fs::read_to_string(run.path().join("web/index.html")).expect("the built web app");
    assert!(html.contains(&format!("connect-src 'self' ws://127.0.0.1:{}", port + 1)), "CSP: {html}");

    // The files.
    let demo = run.path().join("demo");
    let mkv = std::fs::read(demo.join("call.mkv")).expect("call.mkv");
    assert!(mkv.len() > 50_000, "call.mkv has only {} bytes", mkv.len());
    assert_eq!(&mkv[..4], &[0x1a, 0x45, 0xdf, 0xa3], "call.mkv is Matroska (EBML)");
    assert!(mkv.windows(4).any(|w| w == [0x1c, 0x53, 0xbb, 0x6b]), "call.mkv was finished (Cues)");
    let png = std::fs::File::open(demo.join("frame.png")).expect("frame.png");
    let mut reader = png::Decoder::new(std::io::BufReader::new(png)).read_info().expect("frame.png is a PNG");
    // config/flat.toml's video: 640x480.
    assert_eq!((reader.info().width, reader.info().height), (640, 480));
    // The frame is the simulated camera's when the bedroom goto ended blocked,
    // 0.2 m before the shut door (obstacle 0): the door's colour fills the view.
    // (The first frame, on the dock, facing the same door 3 m away: 29 %.)
    let mut rgb = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut rgb).expect("frame.png decodes");
    assert_eq!(frame.color_type, png::ColorType::Rgb, "frame.png is RGB");
    let door = door_fraction(&rgb[..frame.buffer_size()]);
    assert!(door > 0.8, "the door covers only {:.0} % of frame.png\n{context}", door * 100.0);

    // Stopped cleanly: robotd said goodbye and nothing listens any more.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the broker is still running");
    assert!(log.contains("shutting down") && log.trim_end().ends_with("stopped"), "{context}");
}

/// The share of RGB pixels with the shut door's colour (its U and V; the
/// renderer's shading changes only Y), BT.601.
fn door_fraction(rgb: &[u8]) -> f64 {
    let (_, du, dv) = robotd::video::simview::wall_colour(0);
    let near = |px: &[u8]| {
        let (r, g, b) = (f64::from(px[0]), f64::from(px[1]), f64::from(px[2]));
        let u = -0.169 * r - 0.331 * g + 0.5 * b + 128.0;
        let v = 0.5 * r - 0.419 * g - 0.081 * b + 128.0;
        (u - f64::from(du)).abs() < 25.0 && (v - f64::from(dv)).abs() < 25.0
    };
    let px: Vec<&[u8]> = rgb.chunks_exact(3).collect();
    px.iter().filter(|p| near(p)).count() as f64 / px.len().max(1) as f64
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
