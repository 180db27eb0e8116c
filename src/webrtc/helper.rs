//! The media helper process, `robotd-media` (src/bin/robotd-media.rs, next
//! to robotd's binary): one call's media, driven by robotd over the control
//! channel on fd 0 (one end of a Unix socket pair; see [`super::ipc`]). A
//! version 2 call's robot peer (webrtcbin), or a version 1 call's SRTP
//! senders ([`crate::video::VideoSender`], [`crate::video::AudioSender`]):
//! all GStreamer lives here, so robotd's own process never maps it.
//!
//! - It sandboxes itself first: `PR_SET_NO_NEW_PRIVS` (no setuid gains),
//!   `PR_SET_PDEATHSIG(SIGKILL)` (it dies with robotd), and when it runs as
//!   root every capability dropped (bounding and ambient sets included).
//!   After GStreamer is initialised (which may exec `gst-plugin-scanner`),
//!   a seccomp denylist (all threads) refuses with EPERM: exec, ptrace and
//!   process_vm_*, mount/namespace/chroot calls, bpf, perf_event_open,
//!   kexec and kernel modules, the key ring, userfaultfd, io_uring,
//!   personality, set*id/setgroups, and sockets other than AF_UNIX,
//!   AF_INET, AF_INET6 and AF_NETLINK. Landlock file rules (best effort)
//!   come before any thread starts; see [`apply_landlock`].
//! - It sends a `Heartbeat` every second, so robotd can tell a hung helper;
//!   a spare ([`SPARE_ARG`]: started ahead of a call, with GStreamer loaded
//!   and its DTLS certificate made) only from its first message on.
//! - On end of stream (robotd gone or closed the socket), on `Stop`, or when
//!   the call's media ends, it stops the pipeline (bounded) and `_exit`s: a
//!   stuck driver cannot keep it alive.
//! - One call per process: GStreamer's DTLS certificate is made once per
//!   process, so a fresh helper per call means a fresh certificate per call.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::congestion;
use super::ipc::{self, FromHelper, ToHelper};
use super::{PeerEvent, RobotPeer, SIM_DEVICE, SimScene};
use crate::video::simview::ViewPose;
use crate::video::{self, AudioParams, AudioSender, AudioSource, SenderParams, VideoSender, VideoSource};

/// How long teardown may take before the helper exits anyway.
const STOP_BOUND: Duration = Duration::from_secs(3);

type Out = Arc<Mutex<File>>;

fn send(out: &Out, msg: &FromHelper) {
    let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = ipc::write_frame(&mut *w, msg) {
        tracing::debug!(error = %e, "media control channel write failed");
    }
}

/// The argument robotd starts a spare helper with ([`crate::daemon::helper::Spare`]):
/// it loads its plugins and makes its DTLS certificate at once ([`super::warm_up`]), then waits for its call.
pub const SPARE_ARG: &str = "--spare";

/// A `Heartbeat` every second from now on, so robotd can tell a hung helper.
fn start_heartbeat(out: &Out) {
    let out = out.clone();
    let _ = std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
        loop {
            send(&out, &FromHelper::Heartbeat);
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// Apply the process-wide restrictions; the first thing the helper does.
pub fn sandbox() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // The parent may have died before PDEATHSIG was armed: then we are
    // re-parented and must not run on.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        exit_now(0);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        drop_capabilities().map_err(|e| std::io::Error::other(format!("dropping capabilities: {e}")))?;
    }
    if std::env::var_os(LANDLOCK_OFF_ENV).is_some_and(|v| v == "1") {
        tracing::warn!(env = LANDLOCK_OFF_ENV, "landlock: off by request");
    } else {
        match apply_landlock() {
            Ok(status) => tracing::info!(status, "landlock: {status}"),
            Err(e) => return Err(std::io::Error::other(format!("landlock: {e}"))),
        }
    }
    Ok(())
}

/// Set to `1` to run the helper without Landlock (to rule it out when a
/// camera stack needs a path the rules do not grant).
pub const LANDLOCK_OFF_ENV: &str = "ROBOTD_MEDIA_NO_LANDLOCK";

/// Landlock file rules, best effort (kernels without Landlock, e.g. Raspberry
/// Pi OS's, run without): read and execute the system (`/usr`, `/lib*`,
/// `/etc`, `/proc`, `/sys`, `/run/udev`), read and write the camera, DRM and
/// sound devices, `/dev/{null,zero,random,urandom}`, `/tmp` (ORC's JIT code
/// file) and GStreamer's registry directory. Everything else, e.g.
/// `/dev/gpiomem*`, `/dev/gpiochip*`, PWM in `/sys/class/pwm` (read only),
/// robotd's state directory and its admin socket, is denied.
/// Landlock binds the calling thread and the threads it starts later: this
/// runs before the helper starts any thread.
fn apply_landlock() -> Result<&'static str, landlock::RulesetError> {
    use landlock::{
        ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
        path_beneath_rules,
    };
    let abi = ABI::V5;
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let system = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/run/udev"];
    let mut writable: Vec<std::path::PathBuf> = [
        "/dev/null",
        "/dev/zero",
        "/dev/random",
        "/dev/urandom",
        "/dev/dri",
        "/dev/dma_heap",
        "/dev/snd",
        "/dev/v4l",
        "/tmp",
    ]
    .iter()
    .map(Into::into)
    .collect();
    if let Ok(dir) = std::fs::read_dir("/dev") {
        for e in dir.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if ["video", "media", "v4l-subdev"].iter().any(|p| name.starts_with(p)) {
                writable.push(e.path());
            }
        }
    }
    if let Some(registry) = gstreamer_registry_dir() {
        let _ = std::fs::create_dir_all(&registry);
        writable.push(registry);
    }
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .create()?
        .add_rules(path_beneath_rules(system, read))?
        .add_rules(path_beneath_rules(writable, all))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced (older kernel ABI)",
        RulesetStatus::NotEnforced => "not enforced (the kernel has no Landlock)",
    })
}

/// Where `gst::init` keeps (and may rewrite) its plugin registry.
fn gstreamer_registry_dir() -> Option<std::path::PathBuf> {
    if let Some(file) = std::env::var_os("GST_REGISTRY") {
        return std::path::Path::new(&file).parent().map(Into::into);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    Some(cache.join("gstreamer-1.0"))
}

/// Clear every capability set. Capabilities are per thread: this runs before
/// the helper starts any thread, so all later threads inherit the empty sets.
fn drop_capabilities() -> Result<(), caps::errors::CapsError> {
    use caps::CapSet;
    // The bounding set first: dropping from it needs CAP_SETPCAP.
    caps::clear(None, CapSet::Bounding)?;
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::clear(None, CapSet::Effective)?;
    caps::clear(None, CapSet::Permitted)?;
    Ok(())
}

/// The seccomp denylist (see the module doc), on every thread of the
/// process. `Ok(false)`: seccompiler has no backend for this architecture
/// (it has x86_64, aarch64 and riscv64; not 32-bit ARM, i.e. armv7 Raspberry
/// Pi OS), so the helper runs without a filter of its own; the systemd
/// unit's `SystemCallFilter`, which robotd's children inherit, still applies.
// `c_long` (the type of `libc::SYS_*`) is i64 on 64-bit targets and i32 on
// 32-bit ARM: `i64::from` is a no-op on the first and needed on the second.
#[allow(clippy::useless_conversion)]
pub fn apply_seccomp() -> Result<bool, String> {
    use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule};
    let Ok(arch) = seccompiler::TargetArch::try_from(std::env::consts::ARCH) else {
        return Ok(false);
    };
    let denied = [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_keyctl,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_personality,
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
    ];
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> =
        denied.into_iter().map(|nr| (i64::from(nr), Vec::new())).collect();
    // socket(domain, …): anything but AF_UNIX (1), AF_INET (2), AF_INET6 (10)
    // and AF_NETLINK (16, libnice lists the interfaces) is refused.
    let dom = |op, v: i32| SeccompCondition::new(0, SeccompCmpArgLen::Dword, op, v as u64);
    let rule = |c: Vec<Result<SeccompCondition, seccompiler::BackendError>>| -> Result<SeccompRule, String> {
        let c: Result<Vec<_>, _> = c.into_iter().collect();
        SeccompRule::new(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())
    };
    rules.insert(
        i64::from(libc::SYS_socket),
        vec![
            rule(vec![dom(SeccompCmpOp::Eq, libc::AF_UNSPEC)])?,
            rule(vec![dom(SeccompCmpOp::Ge, 3), dom(SeccompCmpOp::Le, 9)])?,
            rule(vec![dom(SeccompCmpOp::Ge, 11), dom(SeccompCmpOp::Le, 15)])?,
            rule(vec![dom(SeccompCmpOp::Gt, libc::AF_NETLINK)])?,
        ],
    );
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
        .map_err(|e| e.to_string())?;
    let program: seccompiler::BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())?;
    Ok(true)
}

fn exit_now(code: i32) -> ! {
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once, without running atexit
    // handlers or destructors (GStreamer threads may be stuck).
    unsafe { libc::_exit(code) }
}

/// The running senders of a version 1 call.
struct V1 {
    video: VideoSender,
    audio: Option<AudioSender>,
}

type V1Slot = Arc<Mutex<Option<V1>>>;

/// `robotd-media`: never returns.
pub fn main() -> ! {
    let born = std::time::Instant::now();
    if let Err(e) = sandbox() {
        eprintln!("robotd-media: sandbox: {e}");
        exit_now(2);
    }
    let fd = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("robotd-media: fd 0 (the control socket): {e}");
            exit_now(2);
        }
    };
    let mut input = File::from(fd);
    let out: Out = match input.try_clone() {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => {
            eprintln!("robotd-media: fd 0: {e}");
            exit_now(2);
        }
    };
    // A spare waits, unwatched, for a call that may come hours later: its
    // heartbeats start with its first message (robotd reads it from then on).
    let spare = std::env::args().nth(1).as_deref() == Some(SPARE_ARG);
    if !spare {
        start_heartbeat(&out);
    }
    // GStreamer first (it may exec the plugin scanner), then seccomp.
    if let Err(e) = super::init() {
        send(&out, &FromHelper::Ended { reason: "video_failed".into(), detail: e.to_string() });
        exit_now(2);
    }
    match apply_seccomp() {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            arch = std::env::consts::ARCH,
            "no seccomp filter of the helper's own on this architecture (seccompiler has none for it); \
             the systemd unit's SystemCallFilter still applies"
        ),
        Err(e) => {
            send(&out, &FromHelper::Ended { reason: "internal".into(), detail: format!("seccomp: {e}") });
            exit_now(2);
        }
    }
    tracing::info!(
        spare,
        ms = format!("{:.1}", born.elapsed().as_secs_f64() * 1e3),
        "media helper ready (sandbox, GStreamer, seccomp)"
    );
    // A spare warms up beside the read below, so a call that comes while it
    // does gets heartbeats at once (it waits for the warm-up, not robotd).
    let mut warming =
        if spare { std::thread::Builder::new().name("warm-up".into()).spawn(super::warm_up).ok() } else { None };
    let mut watched = !spare;
    let peer: Arc<Mutex<Option<RobotPeer>>> = Arc::new(Mutex::new(None));
    let v1: V1Slot = Arc::new(Mutex::new(None));
    // Device `sim`'s world and pose (set by Start, moved by Pose).
    let mut scene: Option<Arc<SimScene>> = None;
    let end = |peer: &Arc<Mutex<Option<RobotPeer>>>, code: i32| -> ! {
        stop_bounded(peer);
        stop_v1_bounded(&v1);
        exit_now(code)
    };
    let started = |peer: &Arc<Mutex<Option<RobotPeer>>>, v1: &V1Slot| {
        peer.lock().unwrap_or_else(|p| p.into_inner()).is_some()
            || v1.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    };
    loop {
        let msg = match ipc::read_frame::<_, ToHelper>(&mut input) {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::info!("media control channel closed; stopping");
                end(&peer, 0);
            }
            Err(e) => {
                tracing::warn!(error = %e, "bad media control message; stopping");
                send(&out, &FromHelper::Ended { reason: "internal".into(), detail: e.to_string() });
                end(&peer, 2);
            }
        };
        if !std::mem::replace(&mut watched, true) {
            start_heartbeat(&out);
        }
        if let Some(w) = warming.take() {
            let _ = w.join();
        }
        match msg {
            ToHelper::StartV1 { host, video_port, video_ssrc, video_key, video, device, encoder, audio, sim_world } => {
                if started(&peer, &v1) {
                    send(
                        &out,
                        &FromHelper::Ended { reason: "internal".into(), detail: "second Start in one helper".into() },
                    );
                    end(&peer, 2);
                }
                scene = (device == SIM_DEVICE).then(|| SimScene::new(sim_world.unwrap_or_default()));
                let req = V1Request { host, video_port, video_ssrc, video_key, video, device, encoder, audio };
                match start_v1(req, scene.clone()) {
                    Ok(senders) => {
                        let s = senders.video.current();
                        let msg = FromHelper::V1Sending {
                            video: s.video,
                            encoder: s.encoder.map(|e| e.element_name().to_string()),
                            audio: senders.audio.is_some(),
                        };
                        let failed = senders.video.failed();
                        *v1.lock().unwrap_or_else(|p| p.into_inner()) = Some(senders);
                        send(&out, &msg);
                        spawn_v1_watch(failed, out.clone(), v1.clone());
                    }
                    Err(detail) => {
                        send(&out, &FromHelper::Ended { reason: "video_failed".into(), detail });
                        end(&peer, 0);
                    }
                }
            }
            ToHelper::SetBitrate { kbps } => {
                if let Some(s) = v1.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    if let Err(e) = s.video.set_bitrate(kbps) {
                        tracing::warn!(error = %e, "video bitrate not changed");
                    }
                }
            }
            ToHelper::SetFormat { width, height, fps } => {
                if let Some(s) = v1.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    if let Err(e) = s.video.set_format(width, height, fps) {
                        tracing::warn!(error = %e, "video format not changed");
                    }
                }
            }
            ToHelper::Start { offer_sdp, video, audio, ice, sim_world } => {
                if started(&peer, &v1) {
                    send(
                        &out,
                        &FromHelper::Ended { reason: "internal".into(), detail: "second Start in one helper".into() },
                    );
                    end(&peer, 2);
                }
                let (tx, rx) = mpsc::channel();
                scene = (video.device == SIM_DEVICE).then(|| SimScene::new(sim_world.unwrap_or_default()));
                match RobotPeer::answer_with_scene(&offer_sdp, &video, &audio, &ice, tx, scene.clone()) {
                    Ok((p, sdp)) => {
                        *peer.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
                        send(&out, &FromHelper::Answer { sdp });
                        tracing::info!(
                            since_start_ms = format!("{:.1}", born.elapsed().as_secs_f64() * 1e3),
                            "answer sent"
                        );
                        spawn_stats(out.clone(), peer.clone());
                        spawn_forwarder(rx, out.clone(), peer.clone());
                    }
                    Err(e) => {
                        let reason = match e {
                            super::WebrtcError::Sdp(_) => "bad_offer",
                            super::WebrtcError::Video(_) | super::WebrtcError::MissingElement { .. } => "video_failed",
                            _ => "internal",
                        };
                        send(&out, &FromHelper::Ended { reason: reason.into(), detail: e.to_string() });
                        end(&peer, 0);
                    }
                }
            }
            ToHelper::RemoteCandidate { mline, candidate } => {
                if let Some(p) = peer.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    p.add_remote_candidate(mline, &candidate);
                }
            }
            ToHelper::Pose { x, y, heading, state } => {
                if let Some(scene) = &scene {
                    scene.set_pose(ViewPose { x, y, heading, state });
                }
            }
            ToHelper::Video { width, height, fps, kbps } => {
                if let Some(p) = peer.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    p.set_video(congestion::Limits { width, height, fps, kbps });
                }
            }
            ToHelper::EndOfCandidates => {
                if let Some(p) = peer.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    p.end_of_candidates();
                }
            }
            ToHelper::Stop => {
                stop_bounded(&peer);
                stop_v1_bounded(&v1);
                send(&out, &FromHelper::Ended { reason: "stopped".into(), detail: String::new() });
                exit_now(0);
            }
        }
    }
}

/// [`ToHelper::StartV1`]'s fields.
struct V1Request {
    host: std::net::IpAddr,
    video_port: u16,
    video_ssrc: u32,
    video_key: ipc::HexSecret,
    video: crate::wire::payloads::VideoParams,
    device: String,
    encoder: String,
    audio: Option<ipc::V1Audio>,
}

fn srtp_key(hex_key: &str) -> Result<video::SrtpKey, String> {
    let bytes = hex::decode(hex_key).map_err(|e| format!("SRTP key: {e}"))?;
    let key: [u8; 30] = bytes.try_into().map_err(|b: Vec<u8>| format!("SRTP key of {} bytes, not 30", b.len()))?;
    Ok(video::SrtpKey(key))
}

/// Start a version 1 call's senders as robotd did in its own process
/// before: the video sender, then the audio sender (optional: the call goes
/// on without it). Blocking (camera probing, plugin loading).
fn start_v1(req: V1Request, scene: Option<Arc<SimScene>>) -> Result<V1, String> {
    let source = match scene {
        Some(s) => VideoSource::Sim(s),
        None => resolve_source(&req.device)?,
    };
    let encoder = req.encoder.parse().map_err(|e: video::VideoError| e.to_string())?;
    let params = SenderParams {
        host: req.host,
        port: req.video_port,
        ssrc: req.video_ssrc,
        srtp_key: srtp_key(&req.video_key.0)?,
        video: req.video,
        encoder,
        source,
    };
    let video = VideoSender::start(params).map_err(|e| e.to_string())?;
    let audio = req.audio.and_then(|a| {
        let start = |srtp_key| {
            let p = AudioParams {
                host: req.host,
                port: a.port,
                ssrc: a.ssrc,
                srtp_key,
                bitrate: 32_000,
                source: AudioSource::from_config(&a.device),
            };
            AudioSender::start(p).map_err(|e| e.to_string())
        };
        // Audio is optional: the call goes on without it.
        srtp_key(&a.key.0)
            .and_then(start)
            .inspect_err(|e| tracing::warn!(error = %e, "audio could not start; the call continues without it"))
            .ok()
    });
    tracing::info!(settings = ?video.current(), "video streaming");
    Ok(V1 { video, audio })
}

/// `video.device` to a source: `test`, a path, or `auto` (first camera with
/// a usable capture format).
fn resolve_source(device: &str) -> Result<VideoSource, String> {
    if device != "auto" {
        return Ok(VideoSource::from_config(device));
    }
    video::camera::list_cameras()
        .into_iter()
        .find(|c| !c.formats.is_empty())
        .map(|c| VideoSource::Device(c.path))
        .ok_or_else(|| {
            "no camera found (video.device = \"auto\"); connect one, check `robotd cameras`, or set video.device = \"test\" for a test pattern".into()
        })
}

/// A version 1 video sender failing (camera unplugged, EOS) ends the helper
/// with `video_failed` and what the pipeline said.
fn spawn_v1_watch(mut failed: tokio::sync::watch::Receiver<Option<String>>, out: Out, v1: V1Slot) {
    let _ = std::thread::Builder::new().name("v1-watch".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the video sender");
                return;
            }
        };
        let detail = rt.block_on(async move {
            loop {
                if let Some(detail) = failed.borrow_and_update().clone() {
                    return Some(detail);
                }
                if failed.changed().await.is_err() {
                    return None;
                }
            }
        });
        if let Some(detail) = detail {
            send(&out, &FromHelper::Ended { reason: "video_failed".into(), detail });
            stop_v1_bounded(&v1);
            exit_now(0);
        }
    });
}

/// Stop a version 1 call's senders on a thread; give up waiting after
/// [`STOP_BOUND`].
fn stop_v1_bounded(v1: &V1Slot) {
    let taken = v1.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(V1 { video, audio }) = taken else { return };
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("stop".into()).spawn(move || {
        if let Err(e) = video.stop() {
            tracing::warn!(error = %e, "video sender did not stop cleanly");
        }
        if let Some(a) = audio {
            if let Err(e) = a.stop() {
                tracing::warn!(error = %e, "audio sender did not stop cleanly");
            }
        }
        let _ = tx.send(());
    });
    if spawned.is_ok() {
        let _ = rx.recv_timeout(STOP_BOUND);
    }
}

/// `Stats` (and `Speaker`, when the robot takes the phone's audio) every
/// 250 ms while the peer runs.
fn spawn_stats(out: Out, peer: Arc<Mutex<Option<RobotPeer>>>) {
    let _ = std::thread::Builder::new().name("stats".into()).spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let (stats, speaker) = match peer.lock() {
                Ok(g) => match g.as_ref() {
                    Some(p) => (stats_of(p), p.speaker_level()),
                    None => return,
                },
                Err(_) => return,
            };
            send(&out, &stats);
            if let Some(level) = speaker {
                send(&out, &FromHelper::Speaker { level });
            }
        }
    });
}

fn stats_of(p: &RobotPeer) -> FromHelper {
    use std::sync::atomic::Ordering::Relaxed;
    let r = p.readings();
    let get = |f: fn(&super::congestion::Readings) -> u32| r.map_or(0, f);
    FromHelper::Stats {
        frames_sent: p.frames_sent(),
        bytes_encoded: r.map_or(0, |r| r.bytes_encoded.load(Relaxed)),
        estimate_kbps: get(|r| r.estimate_kbps.load(Relaxed)),
        encoder_kbps: get(|r| r.encoder_kbps.load(Relaxed)),
        width: get(|r| r.width.load(Relaxed)),
        height: get(|r| r.height.load(Relaxed)),
    }
}

/// Turn peer events into messages; an ending event stops the helper.
fn spawn_forwarder(rx: mpsc::Receiver<PeerEvent>, out: Out, peer: Arc<Mutex<Option<RobotPeer>>>) {
    let _ = std::thread::Builder::new().name("events".into()).spawn(move || {
        for ev in rx {
            let (msg, ends) = match ev {
                PeerEvent::LocalCandidate { mline, candidate } => {
                    (FromHelper::LocalCandidate { mline, candidate }, false)
                }
                PeerEvent::EndOfCandidates => (FromHelper::EndOfCandidates, false),
                PeerEvent::IceState(ice) => {
                    let failed = ice == "failed";
                    let msg = if failed {
                        FromHelper::Ended { reason: "ice_failed".into(), detail: "ICE connection failed".into() }
                    } else {
                        FromHelper::State { ice }
                    };
                    (msg, failed)
                }
                PeerEvent::Connected => (FromHelper::Connected, false),
                PeerEvent::FingerprintMismatch { want, got } => (
                    FromHelper::Ended {
                        reason: "fingerprint_mismatch".into(),
                        detail: format!("DTLS certificate {got}, the offer names {want}"),
                    },
                    true,
                ),
                PeerEvent::Failed(detail) => (FromHelper::Ended { reason: "internal".into(), detail }, true),
            };
            send(&out, &msg);
            if ends {
                stop_bounded(&peer);
                exit_now(0);
            }
        }
    });
}

/// Stop the peer on a thread; give up waiting after [`STOP_BOUND`].
fn stop_bounded(peer: &Arc<Mutex<Option<RobotPeer>>>) {
    let taken = peer.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(p) = taken else { return };
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name("stop".into()).spawn(move || {
        p.stop();
        let _ = tx.send(());
    });
    if spawned.is_ok() {
        let _ = rx.recv_timeout(STOP_BOUND);
    }
}
