//! `robotctl`: the phone side of the robotd protocol, for tests, demos and
//! people trying a robot without the app.

mod demo;
mod webrtc;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use robotd::broker::BrokerAuth;
use robotd::phone::{ActiveCall, InviteOutcome, Keys, Offer, PairedRobot, Phone, ROBOTCTL_FLAGS};
use robotd::video::{Receiver, ReceiverParams};
use robotd::wire::identity::{self, ClientId};
use robotd::wire::pairing::PairingUri;
use serde_json::{Value, json};

/// robotctl: talk to a robotd robot as a phone would.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The phone's keys file (made by `robotctl pair`).
    #[arg(long, global = true, env = "ROBOTCTL_KEYS")]
    keys: Option<PathBuf>,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(subcommand)]
    command: Command,
}

/// How to log in to the broker (its URL comes from the pairing URI and is
/// kept in the keys file): needed for `mqtts://` and brokers with passwords.
#[derive(clap::Args, Clone, Default)]
struct BrokerArgs {
    /// PEM file of the CA that signed the broker's certificate (for mqtts://).
    #[arg(long, global = true, env = "ROBOTCTL_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Broker user name (with Mosquitto's ACLs in docs/install.md: the phone ID, `robotctl id`).
    #[arg(long, global = true, env = "ROBOTCTL_USERNAME")]
    username: Option<String>,
    /// File holding the broker password (kept off the command line).
    #[arg(long, global = true, env = "ROBOTCTL_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
}

impl BrokerArgs {
    fn auth(&self) -> BrokerAuth {
        BrokerAuth {
            ca_file: self.ca_file.clone(),
            username: self.username.clone(),
            password_file: self.password_file.clone(),
            ..Default::default()
        }
    }
}

/// Connect as `id` to `broker` with the command line's TLS and credentials,
/// under the private MQTT client identifier of the keys file at `keys_path`
/// (made and saved there when it has none yet).
async fn connect(broker: &str, id: ClientId, keys_path: &Path, auth: &BrokerAuth) -> anyhow::Result<Phone> {
    let client_id = client_id(keys_path)?;
    Ok(Phone::connect_with(broker, id, &client_id, auth, &ROBOTCTL_FLAGS).await?)
}

/// The keys file's private MQTT client identifier. A file from before
/// protocol 1.1 gets one when loaded; it is saved at once so the next run
/// uses the same one. A missing file is not created here (`pair` saves it).
fn client_id(keys_path: &Path) -> anyhow::Result<robotd::wire::identity::MqttClientId> {
    let keys = Keys::load(keys_path)?;
    if keys_path.exists() {
        let text = std::fs::read_to_string(keys_path).with_context(|| format!("reading {}", keys_path.display()))?;
        if !text.contains("\"mqtt_client_id\"") {
            keys.save(keys_path)?;
        }
    }
    Ok(keys.mqtt_client_id)
}

#[derive(Subcommand)]
enum Command {
    /// Print the client ID of a phone number: md5 of its E.164 form.
    Id {
        /// The phone number with its country code; spaces allowed (`+48 555 555 555`).
        #[arg(required = true, num_args = 1..)]
        number: Vec<String>,
        /// Use the keyed variant, HMAC-SHA256 with this deployment secret.
        #[arg(long, env = "ROBOTD_ID_SECRET")]
        keyed: Option<String>,
    },
    /// Pair with a robot using the URI from its QR code (`robotd pair`).
    Pair {
        /// `robotd://pair?v=1&robot=...&secret=...&broker=...`
        uri: String,
        /// This phone's number (its ID is md5 of the E.164 form).
        #[arg(long)]
        phone: String,
        /// The name the robot will know this phone by.
        #[arg(long, default_value = "robotctl")]
        nickname: String,
    },
    /// List the robots this phone has paired with.
    Robots,
    /// Call a robot: receive its video, send commands, hang up.
    Call(CallArgs),
    /// The scripted demo on a robot running on this machine: pair through its
    /// admin socket, call, drive, go to the kitchen and the bedroom, record,
    /// hang up, and print a timeline. Exits non-zero if any step failed.
    Demo(demo::DemoArgs),
}

#[derive(clap::Args)]
struct CallArgs {
    /// Robot ID (needed only when several are paired).
    #[arg(long)]
    robot: Option<String>,
    /// Address the robot sends media to (this machine, as the robot reaches it).
    #[arg(long, default_value = "127.0.0.1")]
    media_host: IpAddr,
    /// UDP port for the video (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Largest picture to ask for.
    #[arg(long, default_value_t = 1280)]
    max_width: u32,
    #[arg(long, default_value_t = 720)]
    max_height: u32,
    #[arg(long, default_value_t = 30)]
    max_fps: u32,
    #[arg(long, default_value_t = 2500)]
    max_kbps: u32,
    /// Record the received video to this Matroska file.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Save the first decoded frame as PNG.
    #[arg(long)]
    snapshot: Option<PathBuf>,
    /// Wait until this many frames were decoded before running the commands.
    #[arg(long, default_value_t = 0)]
    frames: u64,
    /// A command to send, in order: `drive LINEAR ANGULAR [MS]`, `stop`, `ping`,
    /// `goto PLACE`, `destinations`, `video KBPS`, `video WxH@FPS`, `wait SECONDS`.
    /// Without any, robotctl reads commands from standard input.
    #[arg(short = 'x', long = "exec")]
    exec: Vec<String>,
    /// Call with protocol version 2 (WebRTC: through NATs, with a STUN/TURN
    /// server when needed) instead of version 1 (pre-keyed SRTP to
    /// --media-host, same LAN only).
    #[arg(long)]
    webrtc: bool,
    /// Version 2: STUN server for this phone's reflexive candidates
    /// (`stun:host[:port]`). None by default.
    #[arg(long)]
    stun: Option<String>,
    /// Version 2: offer audio both ways, sending a 440 Hz test tone as the
    /// phone's microphone (mute with the `mute` and `unmute` steps), and
    /// count the robot's audio ("decoded N audio buffers").
    #[arg(long)]
    audio: bool,
    /// Version 2: print receive statistics every second ("stats: N kbit/s,
    /// F fps, loss L % (R repaired, U unrecovered), rtt T ms, jitter J ms,
    /// N NACK, K keyframe requests") and each freeze when the video resumes
    /// ("freeze: no new frame for N ms, video resumed at frame M").
    #[arg(long)]
    stats: bool,
}

fn main() -> std::process::ExitCode {
    robotd::daemon::exit_code(real_main())
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let keys_path = cli.keys.clone().unwrap_or_else(Keys::default_path);
    let auth = cli.broker.auth();
    match cli.command {
        Command::Id { number, keyed } => {
            let e164 = identity::normalize_e164(&number.join(" "))?;
            let id = match keyed {
                Some(secret) => identity::keyed_human_id(secret.as_bytes(), &e164),
                None => identity::human_id(&e164),
            };
            println!("{id}");
            Ok(())
        }
        Command::Robots => {
            let keys = Keys::load(&keys_path)?;
            for r in &keys.robots {
                println!("{}  {}  {}", r.robot, r.nickname, r.broker);
            }
            Ok(())
        }
        Command::Pair { uri, phone, nickname } => runtime()?.block_on(pair(&keys_path, &auth, &uri, &phone, &nickname)),
        Command::Call(args) => runtime()?.block_on(call(&keys_path, &auth, args)),
        Command::Demo(args) => runtime()?.block_on(demo::run(cli.keys.as_deref(), &auth, args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("async runtime")
}

async fn pair(keys_path: &Path, auth: &BrokerAuth, uri: &str, phone: &str, nickname: &str) -> anyhow::Result<()> {
    let uri = PairingUri::parse(uri)?;
    let phone_id: ClientId = identity::human_id(&identity::normalize_e164(phone)?);
    let mut p = connect(&uri.broker, phone_id, keys_path, auth).await?;
    let paired = pair_and_save(&mut p, keys_path, &uri, nickname).await?;
    println!("paired with {} ({})", paired.nickname, paired.robot);
    println!("keys saved in {}", keys_path.display());
    p.close().await;
    Ok(())
}

/// Pair `p` with the robot of `uri` and store the owner key (and the phone's
/// ID) in the keys file at `keys_path`.
async fn pair_and_save(
    p: &mut Phone,
    keys_path: &Path,
    uri: &PairingUri,
    nickname: &str,
) -> anyhow::Result<PairedRobot> {
    let mut keys = Keys::load(keys_path)?;
    let paired = p.pair(uri, nickname, Duration::from_secs(15)).await?;
    keys.mqtt_client_id = p.client_id().clone();
    keys.phone = Some(p.id.clone());
    keys.upsert(paired.clone());
    keys.save(keys_path)?;
    Ok(paired)
}

fn free_udp_port(host: IpAddr) -> anyhow::Result<u16> {
    Ok(UdpSocket::bind(SocketAddr::new(host, 0))?.local_addr()?.port())
}

/// Turn a command line into (command, payload).
fn parse_step(line: &str) -> anyhow::Result<(String, Value)> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> anyhow::Result<f64> {
        w.get(i).context("missing number")?.parse::<f64>().with_context(|| format!("{:?} is not a number", w[i]))
    };
    Ok(match w.as_slice() {
        ["drive", ..] if w.len() >= 3 => {
            let mut v = json!({"linear": num(1)?, "angular": num(2)?});
            if w.len() > 3 {
                v["ms"] = json!(num(3)? as u64);
            }
            ("drive".into(), v)
        }
        ["goto", place] => ("goto".into(), json!({"destination": place})),
        ["video", spec] => match spec.split_once('x') {
            Some((wd, rest)) => {
                let (h, fps) = rest.split_once('@').context("video WxH@FPS")?;
                (
                    "video".into(),
                    json!({"width": wd.parse::<u32>()?, "height": h.parse::<u32>()?, "fps": fps.parse::<u32>()?}),
                )
            }
            None => ("video".into(), json!({"kbps": spec.parse::<u32>()?})),
        },
        [cmd @ ("stop" | "ping" | "destinations" | "hangup")] => ((*cmd).into(), json!({})),
        _ => bail!("unknown command {line:?}; try drive, stop, ping, goto, destinations, video, wait, hangup"),
    })
}

async fn call(keys_path: &Path, auth: &BrokerAuth, a: CallArgs) -> anyhow::Result<()> {
    let keys = Keys::load(keys_path)?;
    let phone_id = keys.phone.clone().context("no phone ID in the keys file; pair first")?;
    let robot = keys.robot(a.robot.as_deref())?.clone();
    if a.webrtc {
        return call_v2(keys_path, auth, phone_id, &robot, a).await;
    }
    if a.audio {
        bail!("--audio is for version 2 calls: add --webrtc");
    }
    let port = if a.port == 0 { free_udp_port(a.media_host)? } else { a.port };
    let offer = Offer {
        host: a.media_host,
        video_port: port,
        audio_port: None,
        max_width: a.max_width,
        max_height: a.max_height,
        max_fps: a.max_fps,
        max_kbps: a.max_kbps,
    };
    let mut p = connect(&robot.broker, phone_id, keys_path, auth).await?;
    let media = Media { record: a.record.clone(), record_for: None, snapshot: a.snapshot.clone() };
    let (mut c, receiver) = start_call(&mut p, &robot, &offer, media, Duration::from_secs(15)).await?;
    println!("accepted: {}", c.accept);
    if a.frames > 0 {
        let n = a.frames;
        let r = &receiver;
        let ok = tokio::task::block_in_place(|| r.wait_frames(n, Duration::from_secs(60)));
        if !ok {
            bail!("only {} of {n} frames decoded within 60 s", receiver.frames());
        }
        println!("decoded {} frames", receiver.frames());
    }
    let steps: Vec<String> = if a.exec.is_empty() {
        println!(
            "commands: drive LINEAR ANGULAR [MS], stop, ping, goto PLACE, destinations, video KBPS|WxH@FPS, hangup"
        );
        let mut lines = Vec::new();
        let mut input = String::new();
        while std::io::stdin().read_line(&mut input)? > 0 {
            lines.push(std::mem::take(&mut input));
            let l = lines.last().unwrap().trim();
            if l == "hangup" || l == "quit" {
                break;
            }
        }
        lines
    } else {
        a.exec.clone()
    };
    let mut ping = tokio::time::interval(Duration::from_secs(5));
    for step in steps.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if let Some(secs) = step.strip_prefix("wait ") {
            let end = tokio::time::Instant::now() + Duration::from_secs_f64(secs.trim().parse()?);
            // Keep the call alive and print what the robot says meanwhile.
            while let Some((cmd, v)) = next_response(&mut p, &mut c, end, &mut ping, |_, _| true).await {
                println!("{cmd}: {v}");
            }
            continue;
        }
        if step == "quit" {
            break;
        }
        let (cmd, payload) = parse_step(step)?;
        let v = p.request(&mut c, &cmd, payload, Duration::from_secs(10)).await?;
        println!("{cmd}: {v}");
        if cmd == "hangup" {
            break;
        }
    }
    if !steps.iter().any(|s| s.trim() == "hangup") {
        let v = p.request(&mut c, "hangup", json!({}), Duration::from_secs(10)).await?;
        println!("hangup: {v}");
    }
    let frames = receiver.frames();
    tokio::task::spawn_blocking(move || receiver.stop()).await??;
    println!("decoded {frames} frames in total");
    p.close().await;
    Ok(())
}

/// `call --webrtc`: like `call`, with the media over WebRTC.
async fn call_v2(
    keys_path: &Path,
    auth: &BrokerAuth,
    phone_id: ClientId,
    robot: &PairedRobot,
    a: CallArgs,
) -> anyhow::Result<()> {
    let stun = match &a.stun {
        None => None,
        Some(s) => {
            let u = robotd::config::webrtc::parse_ice_url(s).map_err(|e| anyhow::anyhow!("--stun: {e}"))?;
            Some(format!("stun://{}:{}", u.host, u.port))
        }
    };
    let ice = robotd::webrtc::IceConfig { stun, turn: vec![], relay_only: false };
    let limits =
        webrtc::Limits { max_width: a.max_width, max_height: a.max_height, max_fps: a.max_fps, max_kbps: a.max_kbps };
    let mut p = connect(&robot.broker, phone_id, keys_path, auth).await?;
    let keep = robotd::webrtc::phone::Keep { record: a.record.clone(), snapshot: a.snapshot.clone() };
    let (mut c, mut media) = webrtc::start(&mut p, robot, ice, a.audio, keep, &limits, Duration::from_secs(15)).await?;
    media.stats = a.stats;
    println!("accepted: {}", c.accept["video"]);
    let result = async {
        media.wait_frames(&mut p, &mut c, a.frames.max(1), Duration::from_secs(60)).await?;
        println!("decoded {} frames", media.frames());
        for step in a.exec.iter().map(|s| s.trim()).filter(|s| !s.is_empty() && *s != "hangup") {
            media.pump(&mut p, &mut c).await?;
            if let Some(secs) = step.strip_prefix("wait ") {
                let until = tokio::time::Instant::now() + Duration::from_secs_f64(secs.trim().parse()?);
                while tokio::time::Instant::now() < until {
                    media.pump(&mut p, &mut c).await?;
                    if let Some(why) = &media.failed {
                        bail!("{why}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
            if step == "mute" || step == "unmute" {
                media.set_mic_muted(step == "mute");
                println!("{step}d");
                continue;
            }
            let (cmd, payload) = parse_step(step)?;
            let v = p.request(&mut c, &cmd, payload, Duration::from_secs(10)).await?;
            println!("{cmd}: {v}");
        }
        anyhow::Ok(())
    }
    .await;
    // A call the robot ended has nobody to hang up on.
    let hangup = if media.robot_ended {
        None
    } else {
        Some(p.request(&mut c, "hangup", json!({}), Duration::from_secs(10)).await)
    };
    let frames = media.frames();
    let audio = media.audio_buffers();
    let snapshot = a.snapshot.as_ref().map(|path| (path, media.wait_snapshot(Duration::from_secs(5))));
    media.stop().await;
    println!("decoded {frames} frames in total");
    match snapshot {
        Some((path, Ok(true))) => println!("snapshot: {}", path.display()),
        Some((path, Ok(false))) => eprintln!("snapshot: no frame was decoded, {} not written", path.display()),
        Some((path, Err(e))) => eprintln!("snapshot: {} could not be written: {e}", path.display()),
        None => {}
    }
    if let Some(path) = &a.record {
        match std::fs::metadata(path) {
            Ok(m) => println!("recording: {} ({} KiB)", path.display(), m.len() / 1024),
            Err(e) => eprintln!("recording: {}: {e}", path.display()),
        }
    }
    if a.audio {
        println!("decoded {audio} audio buffers in total");
    }
    p.close().await;
    result?;
    if let Some(h) = hangup {
        println!("hangup: {}", h?);
    }
    Ok(())
}

/// What the phone does with the video of a call.
#[derive(Debug, Clone, Default)]
struct Media {
    /// Record the received H.264 to this Matroska file...
    record: Option<PathBuf>,
    /// ...for this long from the first packet (the whole call if None).
    record_for: Option<Duration>,
    /// Save the first decoded frame as PNG.
    snapshot: Option<PathBuf>,
}

/// Invite `robot` and start receiving its video on `offer`'s address.
async fn start_call(
    p: &mut Phone,
    robot: &PairedRobot,
    offer: &Offer,
    media: Media,
    timeout: Duration,
) -> anyhow::Result<(ActiveCall, Receiver)> {
    let mut c = match p.invite(robot, offer, timeout).await? {
        InviteOutcome::Accepted(c) => c,
        InviteOutcome::Refused(v) => bail!("call refused: {v}"),
    };
    let mut params =
        ReceiverParams::new(SocketAddr::new(offer.host, offer.video_port), c.video_ssrc, c.srtp_video.clone());
    params.record = media.record;
    params.record_for = media.record_for;
    params.snapshot = media.snapshot;
    match tokio::task::spawn_blocking(move || Receiver::start(params)).await? {
        Ok(r) => Ok((c, r)),
        Err(e) => {
            // Do not leave the robot sending to nobody until the call times out.
            let _ = p.request(&mut c, "hangup", json!({}), Duration::from_secs(5)).await;
            Err(e.into())
        }
    }
}

/// The next response in the call matching `pred`, or None at `deadline`.
/// Pings on every tick of `ping` meanwhile, so the call stays up however long
/// the wait (a goto across the flat, a door that stays shut).
async fn next_response(
    p: &mut Phone,
    c: &mut ActiveCall,
    deadline: tokio::time::Instant,
    ping: &mut tokio::time::Interval,
    pred: impl Fn(&str, &Value) -> bool,
) -> Option<(String, Value)> {
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            r = p.response(c, left, &pred) => return r,
            _ = ping.tick() => { p.send(c, "ping", &json!({})).await; }
        }
    }
}
