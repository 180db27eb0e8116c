//! `robotctl demo`: the whole scenario against a robot running on this
//! machine, with a timeline of what happened.
//!
//! Pair through the robot's admin socket, call, drive a little (forward and
//! back, then tell the robot it is on its dock again, since a manual drive
//! loses its place), go to the kitchen (arrives), try the bedroom (the door
//! is shut: blocked), record the first seconds of the decrypted video and
//! save a decoded frame (what the robot sees at the shut door), hang up. Every step is timed out generously; the
//! exit status is non-zero if any step failed.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use robotd::broker::BrokerAuth;
use robotd::config::Config;
use robotd::daemon::control::{self, Request};
use robotd::phone::{ActiveCall, Keys, Offer, Phone};
use robotd::robot::admin::{AtPlace, PairShown, Status};
use robotd::wire::identity;
use robotd::wire::pairing::PairingUri;
use robotd::wire::topics;
use serde_json::{Value, json};

use super::{Media, next_response, pair_and_save, parse_step, start_call};

/// Wait for anything that should happen soon, on a busy machine.
const SOON: Duration = Duration::from_secs(30);
/// Most a goto across the demo flat may take (it takes 10 to 20 s).
const GOTO_TIMEOUT: Duration = Duration::from_secs(120);
/// Frames to decode before driving: the video works.
const FIRST_FRAMES: u64 = 30;
/// Pings while waiting, well inside the robot's call timeout.
const PING_EVERY: Duration = Duration::from_secs(2);

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The running robot's configuration (robotd's): the demo reads
    /// `control.socket` from it to open a pairing window.
    #[arg(long, short)]
    config: PathBuf,
    /// Directory for the keys, the recording (call.mkv) and the frame (frame.png).
    #[arg(long, default_value = "robotd-demo")]
    out: PathBuf,
    /// The phone's number.
    #[arg(long, default_value = "+48 555 555 555")]
    phone: String,
    /// The name the robot will know the phone by.
    #[arg(long, default_value = "Alice")]
    nickname: String,
    /// Seconds of video to record, from the start of the call.
    #[arg(long, default_value_t = 5.0)]
    record_s: f64,
}

/// The timeline: one line per step, as it happens, then a summary.
struct Timeline {
    start: Instant,
    steps: usize,
    failed: Vec<String>,
}

impl Timeline {
    fn new() -> Self {
        Timeline { start: Instant::now(), steps: 0, failed: Vec::new() }
    }

    fn print(&self, step: &str, what: impl Display) {
        println!("{:6.1} s  {step:<16} {what}", self.start.elapsed().as_secs_f64());
    }

    /// A step that went as expected.
    fn ok(&mut self, step: &str, what: impl Display) {
        self.steps += 1;
        self.print(step, what);
    }

    /// A step that did not.
    fn fail(&mut self, step: &str, what: impl Display) {
        self.steps += 1;
        self.failed.push(format!("{step}: {what}"));
        self.print(step, format!("FAILED: {what}"));
    }

    /// Record the outcome of a step.
    fn step<T>(&mut self, step: &str, r: anyhow::Result<T>, what: impl FnOnce(&T) -> String) -> Option<T> {
        match r {
            Ok(v) => {
                let w = what(&v);
                self.ok(step, w);
                Some(v)
            }
            Err(e) => {
                self.fail(step, format!("{e:#}"));
                None
            }
        }
    }
}

pub async fn run(keys: Option<&Path>, auth: &BrokerAuth, a: DemoArgs) -> anyhow::Result<()> {
    let mut t = Timeline::new();
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let keys = keys.map(Path::to_path_buf).unwrap_or_else(|| a.out.join("keys.json"));
    println!("robotd demo: config {}, output in {}", a.config.display(), a.out.display());
    println!("  time  step             what happened");
    if let Err(e) = script(&mut t, &keys, auth, &a).await {
        t.fail("demo", format!("stopped: {e:#}"));
    }
    let total = t.start.elapsed().as_secs_f64();
    println!();
    if t.failed.is_empty() {
        println!("demo finished in {total:.1} s: all {} steps ok", t.steps);
        println!(
            "  files: {}, {}, {}",
            a.out.join("call.mkv").display(),
            a.out.join("frame.png").display(),
            keys.display()
        );
        Ok(())
    } else {
        println!("demo FAILED after {total:.1} s: {} of {} steps failed:", t.failed.len(), t.steps);
        for f in &t.failed {
            println!("  - {f}");
        }
        bail!("{} demo step(s) failed", t.failed.len())
    }
}

/// Ask the robot's admin socket (blocking; off the async threads).
async fn admin<T: serde::de::DeserializeOwned + Send + 'static>(socket: &Path, req: Request) -> anyhow::Result<T> {
    let socket = socket.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || control::call_as(&socket, &req)).await??)
}

/// The simulated pose from `robotd status`, for the timeline.
async fn sim_pose(socket: &Path) -> String {
    match admin::<Status>(socket, Request::Status).await {
        Ok(Status { sim: Some(s), .. }) => {
            // Rounded first, so that -0.001 shows as 0.00 rather than -0.00.
            let f = |v: f64, scale: f64, places: i32| {
                let p = 10f64.powi(places);
                (v * scale * p).round() / p + 0.0
            };
            format!(
                "x {:.2} m, y {:.2} m, heading {:.0}°",
                f(s.x, 1.0, 2),
                f(s.y, 1.0, 2),
                f(s.heading, 180.0 / std::f64::consts::PI, 0)
            )
        }
        Ok(_) => "no simulator".into(),
        Err(e) => format!("status unavailable: {e:#}"),
    }
}

/// Pairing, the call and what is done in it. Steps that later ones cannot do
/// without end it with an error; the others are recorded and it goes on.
async fn script(t: &mut Timeline, keys: &Path, auth: &BrokerAuth, a: &DemoArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&a.config)?;
    let socket = cfg.control.socket.clone();
    if cfg.nav.is_none() {
        bail!("{} has no [nav] map; use config/flat.toml", a.config.display());
    }

    // Pairing: a window through the admin socket, as `robotd pair` opens one.
    let data = admin::<PairShown>(&socket, Request::Pair { replace: None }).await;
    let uri = t.step("open pairing", data.and_then(|d| Ok(PairingUri::parse(&d.uri)?)), |u| {
        format!("window open on robot {} (admin socket {})", u.robot, socket.display())
    });
    let uri = uri.context("cannot pair without a pairing window")?;
    let phone_id = identity::human_id(&identity::normalize_e164(&a.phone)?);
    let mut p = super::connect(&uri.broker, phone_id, keys, auth).await?;
    let online = wait_online(&mut p, &uri).await;
    t.step("robot online", online, |_| format!("retained presence true on {}", uri.broker)).context("robot offline")?;
    let paired = pair_and_save(&mut p, keys, &uri, &a.nickname).await;
    let robot = t
        .step("pair", paired, |r| {
            format!("{} ({}) is an owner of {}; key in {}", a.nickname, a.phone, r.nickname, keys.display())
        })
        .context("not paired")?;
    // What `robotctl call` would use: the keys file as saved.
    let robot = Keys::load(keys)?.robot(Some(robot.robot.as_str()))?.clone();

    // The call, with the video on loopback.
    let host = std::net::IpAddr::from([127, 0, 0, 1]);
    let offer = Offer::new(host, super::free_udp_port(host)?);
    let mkv = a.out.join("call.mkv");
    let png = a.out.join("frame.png");
    for f in [&mkv, &png] {
        let _ = std::fs::remove_file(f);
    }
    let media = Media {
        record: Some(mkv.clone()),
        record_for: Some(Duration::from_secs_f64(a.record_s)),
        snapshot: Some(png.clone()),
    };
    let call = start_call(&mut p, &robot, &offer, media, SOON).await;
    let (mut c, receiver) = t
        .step("call", call, |(c, _)| {
            let v = &c.accept["video"];
            format!(
                "accepted: {} {}x{}@{} {} kbps, SRTP to {}:{}",
                v["codec"].as_str().unwrap_or("?"),
                v["width"],
                v["height"],
                v["fps"],
                v["kbps"],
                offer.host,
                offer.video_port
            )
        })
        .context("no call")?;
    t.print("", format!("recording the first {} s to {}", a.record_s, mkv.display()));

    let in_call = in_call(t, &mut p, &mut c, &receiver, &socket).await;
    if let Err(e) = in_call {
        t.fail("call", format!("stopped: {e:#}"));
    }

    // Hang up (whatever happened), then finish the files.
    let v = p.request(&mut c, "hangup", json!({}), SOON).await;
    t.step("hangup", v.map_err(Into::into), |v| match v["reason"].as_str() {
        Some(r) => format!("{} ({r})", v["status"].as_str().unwrap_or("?")),
        None => v["status"].as_str().unwrap_or("?").to_owned(),
    });
    let frames = receiver.frames();
    let size = receiver.frame_size();
    let snap = tokio::task::block_in_place(|| receiver.wait_snapshot(Duration::from_secs(5)));
    let stopped = tokio::task::spawn_blocking(move || receiver.stop()).await?;
    t.step("video", stopped.map_err(Into::into), |_| {
        let (w, h) = size.unwrap_or_default();
        format!("{frames} frames decoded ({w}x{h}) in the call")
    });
    let rec = std::fs::metadata(&mkv).map_err(anyhow::Error::from).and_then(|m| {
        let mut head = [0u8; 4];
        std::io::Read::read_exact(&mut std::fs::File::open(&mkv)?, &mut head)?;
        if head != [0x1a, 0x45, 0xdf, 0xa3] || m.len() < 10_000 {
            bail!("{} is not a Matroska recording ({} bytes)", mkv.display(), m.len());
        }
        Ok(m.len())
    });
    t.step("recording", rec, |n| format!("{} ({} KiB, the first {} s)", mkv.display(), n / 1024, a.record_s));
    let frame = snap.map_err(anyhow::Error::from).and_then(|written| {
        if !written {
            bail!("no frame was saved");
        }
        let d = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png)?));
        let r = d.read_info()?;
        Ok((r.info().width, r.info().height))
    });
    t.step("frame", frame, |(w, h)| format!("{} ({w}x{h} PNG)", png.display()));
    p.close().await;
    Ok(())
}

/// Wait for the robot's retained presence: it subscribes before it says
/// `true`, so a pairing request sent after that is not lost.
async fn wait_online(p: &mut Phone, uri: &PairingUri) -> anyhow::Result<()> {
    let topic = topics::is_connected(&uri.robot);
    p.subscribe(&topic).await?;
    p.recv_until(SOON, |m| m.topic == topic && &m.payload[..] == b"true")
        .await
        .map(|_| ())
        .with_context(|| format!("robot {} not online on {} within {} s", uri.robot, uri.broker, SOON.as_secs()))
}

/// What happens during the call.
async fn in_call(
    t: &mut Timeline,
    p: &mut Phone,
    c: &mut ActiveCall,
    receiver: &robotd::video::Receiver,
    socket: &Path,
) -> anyhow::Result<()> {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // The video decodes; keep the call alive meanwhile.
    let waited = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let got = loop {
        if receiver.frames() >= FIRST_FRAMES {
            break true;
        }
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        let soon = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
        while next_response(p, c, soon, &mut ping, |_, _| false).await.is_some() {}
    };
    if !got {
        bail!("only {} of {FIRST_FRAMES} frames decoded within 60 s", receiver.frames());
    }
    let (w, h) = receiver.frame_size().unwrap_or_default();
    t.ok("frames", format!("{FIRST_FRAMES} frames decoded ({w}x{h}) after {:.1} s", waited.elapsed().as_secs_f64()));

    // Drive a little: forward, then back the same way; the deadman stops the motors.
    for (line, dir) in [("drive 0.3 0 800", "forward"), ("drive -0.3 0 800", "back")] {
        let r = drive(p, c, &mut ping, line).await;
        t.step(line, r, |m| format!("ok, 3 times 0.5 s apart ({dir}); the deadman stopped the motors: {m}"));
    }
    t.print("", format!("simulated pose {}", sim_pose(socket).await));
    // A manual drive loses the robot's place: put it back on its dock.
    let r = admin::<AtPlace>(socket, Request::SetAt { place: "home".into() }).await;
    t.step("at home", r, |_| "robotd at home: back on the dock (a manual drive loses the place)".into());

    for (place, expected, why) in [("kitchen", "arrived", ""), ("bedroom", "blocked", ": the door is shut")] {
        let step = format!("goto {place}");
        match goto(t, p, c, &mut ping, place).await {
            Ok((s, what)) if s == expected => {
                t.ok(&step, format!("{what}{why}; pose {}", sim_pose(socket).await));
                if place == "bedroom" {
                    // The frame to keep: what the robot sees, stopped at the door.
                    receiver.retake_snapshot();
                    let _ = tokio::task::block_in_place(|| receiver.wait_snapshot(Duration::from_secs(5)));
                }
            }
            Ok((_, what)) => t.fail(&step, format!("{what}, expected {expected}")),
            Err(e) => t.fail(&step, format!("{e:#}")),
        }
    }
    let r = p.request(c, "ping", json!({}), SOON).await;
    t.step("ping", r.map_err(Into::into), |v| {
        format!("motion {}, at {}", v["motion"].as_str().unwrap_or("?"), v["at"].as_str().unwrap_or("?"))
    });
    Ok(())
}

/// Send `line` (a drive) three times, 0.5 s apart, then wait until the
/// deadman has stopped the motors. Returns the motion the robot reports then.
async fn drive(
    p: &mut Phone,
    c: &mut ActiveCall,
    ping: &mut tokio::time::Interval,
    line: &str,
) -> anyhow::Result<String> {
    let (cmd, payload) = parse_step(line)?;
    for _ in 0..3 {
        let v = p.request(c, &cmd, payload.clone(), SOON).await?;
        if v["status"] != "ok" {
            bail!("{line}: {v}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The last drive's 800 ms run out (and the wheels spin down); a busy
    // machine gets a few seconds more before that counts as a failure.
    let mut motion = String::new();
    for _ in 0..10 {
        let end = tokio::time::Instant::now() + Duration::from_millis(1000);
        while next_response(p, c, end, ping, |_, _| false).await.is_some() {}
        let v = p.request(c, "ping", json!({}), SOON).await?;
        motion = v["motion"].as_str().unwrap_or("?").to_owned();
        if motion == "idle" {
            return Ok(motion);
        }
    }
    bail!("still {motion} 10 s after the last drive")
}

/// Go to `place`: prints `accepted`, progress in quarters and any wait for an
/// obstacle; returns the final status and a line about it.
async fn goto(
    t: &mut Timeline,
    p: &mut Phone,
    c: &mut ActiveCall,
    ping: &mut tokio::time::Interval,
    place: &str,
) -> anyhow::Result<(String, String)> {
    let step = format!("goto {place}");
    let re = p.send(c, "goto", &json!({ "destination": place })).await;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + GOTO_TIMEOUT;
    let mut quarter = 0;
    let mut waiting = false;
    let mut updates = 0;
    loop {
        let Some((_, v)) = next_response(p, c, deadline, ping, |cmd, v| cmd == "goto" && v["re"] == re).await else {
            bail!("no final status within {} s ({updates} progress updates)", GOTO_TIMEOUT.as_secs());
        };
        match v["status"].as_str().unwrap_or("?") {
            "accepted" => {
                let route: Vec<&str> =
                    v["route"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                t.print(
                    &step,
                    format!(
                        "accepted (route {}, {:.1} m)",
                        route.join(" > "),
                        v["remaining_m"].as_f64().unwrap_or(0.0)
                    ),
                );
            }
            "moving" => {
                updates += 1;
                let progress = v["progress"].as_f64().unwrap_or(0.0);
                let remaining = v["remaining_m"].as_f64().unwrap_or(0.0);
                let now_waiting = v["waiting"].as_str().is_some();
                if now_waiting && !waiting {
                    t.print(
                        "",
                        format!(
                            "waiting: {} ahead ({:.0}%, {remaining:.1} m to go)",
                            v["waiting"].as_str().unwrap_or("?"),
                            progress * 100.0
                        ),
                    );
                }
                waiting = now_waiting;
                let q = (progress * 4.0).floor() as i32;
                if q > quarter && q < 4 {
                    quarter = q;
                    t.print("", format!("moving {:.0}% ({remaining:.1} m to go)", progress * 100.0));
                }
            }
            other => {
                let mut what =
                    format!("{other} after {:.1} s ({updates} progress updates)", started.elapsed().as_secs_f64());
                if let Some(r) = v["reason"].as_str() {
                    what += &format!("; {r}: {}", v["detail"].as_str().unwrap_or(""));
                }
                return Ok((other.to_owned(), what));
            }
        }
    }
}
