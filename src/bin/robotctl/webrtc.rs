//! `robotctl call --webrtc`: a version 2 call (docs/protocol.md 7.8). The
//! phone offers in the invite; its candidates go out once the accept gave
//! it `Ks`; the robot's candidates come back on `session/{sid}/ice/response`.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use robotd::phone::{ActiveCall, InviteOutcome, PairedRobot, Phone};
use robotd::webrtc::phone::{Keep, PhoneOptions, PhonePeer, ReceiveStats};
use robotd::webrtc::{IceConfig, PeerEvent};

/// The phone side of a v2 call's media.
pub struct V2Media {
    peer: Option<PhonePeer>,
    events: tokio::sync::mpsc::UnboundedReceiver<PeerEvent>,
    /// Local candidates not yet sent, and whether gathering ended.
    held: Vec<Value>,
    held_end: bool,
    /// The robot ended the call or the media failed: say so at once.
    pub failed: Option<String>,
    /// The robot ended the call (no `hangup` to send).
    pub robot_ended: bool,
    /// `--stats`: a line of receive statistics every [`STATS_EVERY`], and
    /// each freeze (no new frame for [`FREEZE`] or more).
    pub stats: bool,
    /// The statistics last printed, and when.
    last_stats: Option<(std::time::Instant, ReceiveStats)>,
    /// Frames decoded when last looked at, and when that count last grew.
    last_frames: u64,
    last_growth: std::time::Instant,
}

/// `--stats` prints a line of receive statistics this often.
pub const STATS_EVERY: Duration = Duration::from_secs(1);

/// A gap between decoded frames this long or longer is a freeze.
pub const FREEZE: Duration = Duration::from_millis(500);

/// The limits a phone asks for.
pub struct Limits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_fps: u32,
    pub max_kbps: u32,
}

/// Make the offer, invite, and apply the robot's answer.
pub async fn start(
    p: &mut Phone,
    robot: &PairedRobot,
    ice: IceConfig,
    audio: bool,
    keep: Keep,
    limits: &Limits,
    timeout: Duration,
) -> anyhow::Result<(ActiveCall, V2Media)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (peer, offer) = tokio::task::block_in_place(|| {
        PhonePeer::offer_keeping(&ice, PhoneOptions { audio, ..PhoneOptions::default() }, keep, tx)
    })?;
    // PeerEvents come from GStreamer threads; hand them to this task.
    let (etx, events) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for e in rx {
            if etx.send(e).is_err() {
                break;
            }
        }
    });
    let payload = json!({
        "v": 2,
        "sdp": {"type": "offer", "sdp": offer},
        "video": {"max_width": limits.max_width, "max_height": limits.max_height,
                  "max_fps": limits.max_fps, "max_kbps": limits.max_kbps},
    });
    let mut media = V2Media {
        peer: Some(peer),
        events,
        held: Vec::new(),
        held_end: false,
        failed: None,
        robot_ended: false,
        stats: false,
        last_stats: None,
        last_frames: 0,
        last_growth: std::time::Instant::now(),
    };
    let c = match p.invite_with(robot, serde_json::to_vec(&payload)?, timeout).await? {
        InviteOutcome::Accepted(c) => c,
        InviteOutcome::Refused(v) => {
            media.stop().await;
            bail!("call refused: {v}")
        }
    };
    let answer = c.accept["sdp"]["sdp"].as_str().context("the accept has no sdp answer")?.to_owned();
    let peer = media.peer.as_ref().expect("running");
    if let Err(e) = peer.set_answer(&answer) {
        media.stop().await;
        bail!("the robot's answer was not usable: {e}");
    }
    Ok((c, media))
}

impl V2Media {
    fn note(&mut self, e: PeerEvent) {
        match e {
            PeerEvent::LocalCandidate { mline, candidate } => {
                self.held.push(json!({"mline": mline, "candidate": candidate}))
            }
            PeerEvent::EndOfCandidates => self.held_end = true,
            PeerEvent::IceState(s) if s == "failed" => self.failed = Some("ICE failed".into()),
            PeerEvent::FingerprintMismatch { want, got } => {
                self.failed = Some(format!("the robot's DTLS certificate {got} is not the one in its answer ({want})"))
            }
            PeerEvent::Failed(why) => self.failed = Some(why),
            _ => {}
        }
    }

    pub fn frames(&self) -> u64 {
        self.peer.as_ref().map_or(0, PhonePeer::frames_decoded)
    }

    /// The robot's audio buffers decoded (with `--audio`).
    pub fn audio_buffers(&self) -> u64 {
        self.peer.as_ref().map_or(0, PhonePeer::audio_buffers_decoded)
    }

    /// Mute or unmute the phone's tone.
    pub fn set_mic_muted(&self, muted: bool) {
        if let Some(p) = &self.peer {
            p.set_mic_muted(muted);
        }
    }

    /// Exchange what is pending: our candidates out, the robot's in, the
    /// peer's failures noted. Never waits for more than one request.
    pub async fn pump(&mut self, p: &mut Phone, c: &mut ActiveCall) -> anyhow::Result<()> {
        self.watch_freezes();
        self.print_stats();
        while let Ok(e) = self.events.try_recv() {
            self.note(e);
        }
        while !self.held.is_empty() || self.held_end {
            let n = self.held.len().min(robotd::wire::webrtc::MAX_CANDIDATES);
            let batch: Vec<Value> = self.held.drain(..n).collect();
            let end = self.held_end && self.held.is_empty();
            self.held_end &= !end;
            let body = json!({"gen": 0, "candidates": batch, "end": end});
            let v = p.request(c, "ice", body, Duration::from_secs(5)).await?;
            if v["status"] != "ok" {
                bail!("the robot refused our candidates: {v}");
            }
        }
        while let Some((cmd, v)) = p.response(c, Duration::ZERO, |cmd, v| cmd == "ice" || v["status"] == "ended").await
        {
            if v["status"] == "ended" {
                self.failed = Some(format!("the robot ended the call: {v}"));
                self.robot_ended = true;
                break;
            }
            debug_assert_eq!(cmd, "ice");
            let peer = self.peer.as_ref().expect("running");
            for cand in v["candidates"].as_array().into_iter().flatten() {
                if let (Some(m), Some(line)) = (cand["mline"].as_u64(), cand["candidate"].as_str()) {
                    peer.add_remote_candidate(m as u32, line);
                }
            }
            if v["end"] == true {
                peer.end_of_candidates();
            }
        }
        Ok(())
    }

    /// Wait until `n` frames were decoded (pumping meanwhile); fails at once
    /// when the robot ends the call or the media fails.
    pub async fn wait_frames(
        &mut self,
        p: &mut Phone,
        c: &mut ActiveCall,
        n: u64,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let end = tokio::time::Instant::now() + limit;
        let mut last_ping = tokio::time::Instant::now();
        while self.frames() < n {
            self.pump(p, c).await?;
            if let Some(why) = &self.failed {
                bail!("{why}; {} of {n} frames decoded", self.frames());
            }
            if tokio::time::Instant::now() >= end {
                bail!("only {} of {n} frames decoded within {} s", self.frames(), limit.as_secs());
            }
            if last_ping.elapsed() >= Duration::from_secs(5) {
                p.send(c, "ping", &json!({})).await;
                last_ping = tokio::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// With `--stats`, say when the video resumes after a freeze (the line
    /// is printed when the first new frame is seen, so its time is the
    /// resumption's, within one poll).
    fn watch_freezes(&mut self) {
        let (n, now) = (self.frames(), std::time::Instant::now());
        if n == self.last_frames {
            return;
        }
        let gap = now.duration_since(self.last_growth);
        if self.stats && self.last_frames > 0 && gap >= FREEZE {
            println!("freeze: no new frame for {} ms, video resumed at frame {n}", gap.as_millis());
        }
        (self.last_frames, self.last_growth) = (n, now);
    }

    /// With `--stats`, a line of what was received over the last
    /// [`STATS_EVERY`] ([`ReceiveStats::line`]); the first once the video
    /// stream exists.
    fn print_stats(&mut self) {
        let Some(peer) = self.peer.as_ref().filter(|_| self.stats) else { return };
        let now = std::time::Instant::now();
        if self.last_stats.is_some_and(|(at, _)| now.duration_since(at) < STATS_EVERY) {
            return;
        }
        let Some(st) = tokio::task::block_in_place(|| peer.receive_stats()) else { return };
        if let Some((at, before)) = &self.last_stats {
            println!("{}", st.line(before, now.duration_since(*at)));
        }
        self.last_stats = Some((now, st));
    }

    /// Wait for `--snapshot` (see [`PhonePeer::wait_snapshot`]).
    pub fn wait_snapshot(&self, timeout: Duration) -> Result<bool, String> {
        match &self.peer {
            Some(peer) => tokio::task::block_in_place(|| peer.wait_snapshot(timeout)),
            None => Ok(false),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(peer) = self.peer.take() {
            let _ = tokio::task::spawn_blocking(move || peer.stop()).await;
        }
    }
}
