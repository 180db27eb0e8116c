//! The call state machine: idle -> in call -> ended. No I/O inside.
//!
//! The service feeds it authenticated invites, session requests, the
//! caller's presence and the clock, and carries out what it returns
//! (publish, start or stop video, stop the motors). Keeping I/O out makes
//! every timing rule testable with a made-up `now`.

use std::time::{Duration, Instant};

use crate::wire::freshness::{ReplayError, ReplayWindow};
use crate::wire::identity::ClientId;
use crate::wire::keys::{self, Key32, SrtpKey};
use crate::wire::payloads::{Invite, VideoParams};

/// A motion request (`drive`, `goto`) that arrives more than this many
/// milliseconds later than the call's fastest message is refused as `stale`
/// (docs/protocol.md 5.5): it waited somewhere (a partition that healed, a
/// phone that queued it while offline, a broker holding it back) and the
/// person who sent it no longer sees what it would do.
pub const MAX_LATENESS_MS: u64 = 2000;

/// `now_ms - ts_ms` as a signed number of milliseconds.
fn age_ms(ts_ms: u64, now_ms: u64) -> i64 {
    (i128::from(now_ms) - i128::from(ts_ms)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Why a call ended (the `reason` of the `ended` response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Hangup,
    CallerOffline,
    Timeout,
    Shutdown,
    VideoFailed,
    /// The caller was removed from the owners (robotd decision, documented).
    Revoked,
}

impl EndReason {
    /// The protocol string.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Hangup => "hangup",
            EndReason::CallerOffline => "caller_offline",
            EndReason::Timeout => "timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::VideoFailed => "video_failed",
            EndReason::Revoked => "revoked",
        }
    }
}

/// What was agreed for a call's media.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub invite: Invite,
    pub video: VideoParams,
    pub video_ssrc: u32,
    pub audio_ssrc: Option<u32>,
}

/// A call in progress. `Debug` leaves the keys out.
pub struct Call {
    pub session: ClientId,
    pub caller: ClientId,
    pub robot_nonce: [u8; 16],
    /// Session key `Ks` for `session/` messages in both directions.
    pub session_key: Key32,
    pub srtp_video: SrtpKey,
    pub srtp_audio: SrtpKey,
    pub invite: Invite,
    pub video: VideoParams,
    pub video_ssrc: u32,
    pub audio_ssrc: Option<u32>,
    replay: ReplayWindow,
    last_request: Instant,
    /// The smallest `now - ts` seen in this call, the invite included (ms):
    /// the fastest transit plus the offset between the two clocks. Lateness
    /// is measured from it, so the clocks need not agree.
    transit_floor_ms: i64,
    /// The robot's `seq` in this call: starts at 1.
    next_seq: u64,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("session", &self.session)
            .field("caller", &self.caller)
            .field("video", &self.video)
            .field("video_ssrc", &self.video_ssrc)
            .field("audio_ssrc", &self.audio_ssrc)
            .finish_non_exhaustive()
    }
}

impl Call {
    /// Set up a call for an authenticated, parsed invite, received at
    /// `now` / `now_ms` with the `ts` `invite_ts_ms`.
    pub fn new(
        session: ClientId,
        caller: ClientId,
        owner_key: &Key32,
        robot_nonce: [u8; 16],
        agreed: Negotiated,
        now: Instant,
        (invite_ts_ms, now_ms): (u64, u64),
    ) -> Call {
        let Negotiated { invite, video, video_ssrc, audio_ssrc } = agreed;
        let sid = session.to_bytes();
        Call {
            session_key: keys::session_key(owner_key, &sid, &robot_nonce),
            srtp_video: keys::srtp_video_key(owner_key, &sid, &robot_nonce),
            srtp_audio: keys::srtp_audio_key(owner_key, &sid, &robot_nonce),
            session,
            caller,
            robot_nonce,
            invite,
            video,
            video_ssrc,
            audio_ssrc,
            replay: ReplayWindow::default(),
            last_request: now,
            transit_floor_ms: age_ms(invite_ts_ms, now_ms),
            next_seq: 1,
        }
    }

    /// A request passed the MAC: check the replay window and, if it is
    /// new, count it as a sign of life.
    pub fn accept_request(&mut self, seq: u64, now: Instant) -> Result<(), ReplayError> {
        self.replay.check_and_record(seq)?;
        self.last_request = now;
        Ok(())
    }

    /// How much later (ms) than the call's fastest message a request with
    /// this `ts` arrived; a faster one lowers the floor. Call it for every
    /// request that passed the MAC and the replay window.
    pub fn lateness_ms(&mut self, ts_ms: u64, now_ms: u64) -> u64 {
        let age = age_ms(ts_ms, now_ms);
        self.transit_floor_ms = self.transit_floor_ms.min(age);
        age.abs_diff(self.transit_floor_ms)
    }

    /// When the call times out unless a request arrives.
    pub fn deadline(&self, timeout: Duration) -> Instant {
        self.last_request + timeout
    }

    /// Whether the idle timeout has passed.
    pub fn timed_out(&self, now: Instant, timeout: Duration) -> bool {
        now >= self.deadline(timeout)
    }

    /// The robot's next `seq` in this call.
    pub fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::payloads::Invite;

    fn call(now: Instant) -> Call {
        let inv = Invite::parse(
            br#"{"media":{"host":"127.0.0.1","port":5004},"video":{"codecs":["H264"],"max_width":1280,"max_height":720,"max_fps":30,"max_kbps":2500}}"#,
        )
        .unwrap();
        let k: Key32 = hex::decode("a0369cd9bece6225fa9218e192b9d2f976f5e830a3dc8d76060f9ba004da8f0f")
            .unwrap()
            .try_into()
            .unwrap();
        let nonce: [u8; 16] = hex::decode("ffeeddccbbaa99887766554433221100").unwrap().try_into().unwrap();
        Call::new(
            "00112233445566778899aabbccddeeff".parse().unwrap(),
            "36940d0ece18aebf69d0ef6825534e24".parse().unwrap(),
            &k,
            nonce,
            Negotiated {
                invite: inv,
                video: VideoParams { width: 1280, height: 720, fps: 30, kbps: 2000 },
                video_ssrc: 12345,
                audio_ssrc: None,
            },
            now,
            (1_764_072_000_000, 1_764_072_000_100),
        )
    }

    #[test]
    fn lateness_is_measured_from_the_fastest_message_whatever_the_clock_offset() {
        let mut c = call(Instant::now());
        // The invite took 100 ms (or the clocks differ by that): the floor.
        let t = 1_764_072_001_000;
        assert_eq!(c.lateness_ms(t, t + 100), 0);
        assert_eq!(c.lateness_ms(t, t + 2100), 2000);
        assert_eq!(c.lateness_ms(t, t + 2101), 2001);
        // A faster message lowers the floor (phone clock 5 s ahead: negative age).
        assert_eq!(c.lateness_ms(t + 5000, t), 0);
        assert_eq!(c.lateness_ms(t + 5000, t + 1500), 1500);
        // Nonsense timestamps saturate instead of wrapping, and fail safe:
        // a `ts` far in the future makes every later request late.
        assert!(c.lateness_ms(0, u64::MAX) > MAX_LATENESS_MS);
        assert_eq!(c.lateness_ms(u64::MAX, 0), 0);
        assert!(c.lateness_ms(t, t + 100) > MAX_LATENESS_MS);
    }

    #[test]
    fn keys_follow_the_protocol_vectors() {
        let c = call(Instant::now());
        assert_eq!(hex::encode(c.session_key), "61edd9aca22ea26a0234b90e26ea7a69e592d8b50fa7b4d1ddbe38c2d10458b8");
        assert_eq!(hex::encode(c.srtp_video.0), "149ffed491d44212d2672dae6389779a919e58f9d95716ab76edadfb00b6");
    }

    #[test]
    fn requests_keep_the_call_alive_and_replays_do_not() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(15);
        let mut c = call(t0);
        assert!(!c.timed_out(t0 + Duration::from_secs(14), timeout));
        assert!(c.timed_out(t0 + Duration::from_secs(15), timeout));
        c.accept_request(1, t0 + Duration::from_secs(10)).unwrap();
        assert!(!c.timed_out(t0 + Duration::from_secs(24), timeout));
        // A replay neither passes nor extends the call.
        assert_eq!(c.accept_request(1, t0 + Duration::from_secs(20)), Err(ReplayError::Duplicate));
        assert!(c.timed_out(t0 + Duration::from_secs(25), timeout));
    }

    #[test]
    fn robot_seq_starts_at_one_per_call() {
        let mut c = call(Instant::now());
        assert_eq!(c.next_seq(), 1);
        assert_eq!(c.next_seq(), 2);
        assert_eq!(EndReason::CallerOffline.as_str(), "caller_offline");
    }
}
