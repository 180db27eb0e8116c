//! The simulated robot's camera as a live source: [`SimScene`] (the world and
//! the robot's latest pose) rendered by [`super::simview`] into an `appsrc`
//! at the call's size and frame rate, so the encoder chain behind it is the
//! camera's. Used by the media helper's WebRTC sender and by the version 1
//! sender, for `video.device = "sim"`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer_app as gst_app;

use super::simview::{self, ViewPose};
use crate::hal::config::Obstacle;

/// What the simulated camera sees: the world (obstacles) and the robot's
/// latest pose, which robotd updates as the robot moves.
pub struct SimScene {
    world: Vec<Obstacle>,
    pose: Mutex<ViewPose>,
    /// Frames per second from the `video` command (0: the call's).
    fps: AtomicU32,
}

impl std::fmt::Debug for SimScene {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimScene").field("obstacles", &self.world.len()).field("pose", &self.pose()).finish()
    }
}

impl SimScene {
    /// A scene of `world`, seen from the origin until the first pose.
    pub fn new(world: Vec<Obstacle>) -> Arc<SimScene> {
        Arc::new(SimScene { world, pose: Mutex::new(ViewPose::default()), fps: AtomicU32::new(0) })
    }

    /// The robot moved.
    pub fn set_pose(&self, pose: ViewPose) {
        *self.pose.lock().unwrap_or_else(|p| p.into_inner()) = pose;
    }

    /// Render `fps` frames a second from now on (the `video` command; the
    /// `appsrc` caps must say the same).
    pub fn set_fps(&self, fps: u32) {
        self.fps.store(fps.max(1), Ordering::Relaxed);
    }

    /// The latest pose.
    pub fn pose(&self) -> ViewPose {
        self.pose.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The `appsrc` caps a [`spawn`]ed camera pushes: I420 at `w`x`h`, `fps`.
/// At most 2 frames queued, the oldest dropped, so a slow encoder never
/// builds up delay or memory.
pub fn appsrc_description(name: &str, w: u32, h: u32, fps: u32) -> String {
    format!(
        "appsrc name={name} is-live=true format=time do-timestamp=true max-buffers=2 leaky-type=downstream \
         caps=video/x-raw,format=I420,width={w},height={h},framerate={fps}/1,pixel-aspect-ratio=1/1"
    )
}

/// Render and push a frame every 1/fps until `stop`: the latest pose, the
/// capture time in the overlay. The frame size is the call's (the encoder
/// chain scales when the bandwidth adaptation shrinks it).
pub fn spawn(
    appsrc: gst_app::AppSrc,
    scene: Arc<SimScene>,
    w: u32,
    h: u32,
    fps: u32,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    if scene.fps.load(Ordering::Relaxed) == 0 {
        scene.set_fps(fps);
    }
    std::thread::Builder::new().name("sim-camera".into()).spawn(move || {
        let mut frame = Vec::new();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let period = Duration::from_secs(1) / scene.fps.load(Ordering::Relaxed).max(1);
            let time_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            simview::render_i420(&scene.world, &scene.pose(), Some(&simview::Overlay { time_ms }), w, h, &mut frame);
            // Before PLAYING and after stop the push is refused; that is fine.
            let _ = appsrc.push_buffer(gst::Buffer::from_mut_slice(std::mem::take(&mut frame)));
            next += period;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
    })?;
    Ok(())
}
