//! The call state machine: idle -> in call -> ended. No I/O inside.
//!
//! The core feeds it authenticated invites, session requests, the
//! caller's presence and the clock, and carries out what it returns
//! (publish, start or stop video, stop the motors). Keeping I/O out makes
//! every timing rule testable with a made-up `now`.

use std::time::{Duration, Instant};

use crate::wire::freshness::{ReplayError, ReplayWindow};
use crate::wire::identity::ClientId;
use crate::wire::keys::{self, Key32, SrtpKey};
use bytes::Bytes;

use crate::wire::payloads::VideoParams;
use crate::wire::token::{self, TokenError};
use crate::wire::webrtc::{Candidate, VideoLimits};

/// What was agreed for a call's media.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// The phone's `max_*` (caps later `video` changes).
    pub limits: VideoLimits,
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
    /// The phone's `max_*` (caps later `video` changes).
    pub limits: VideoLimits,
    pub video: VideoParams,
    pub video_ssrc: u32,
    pub audio_ssrc: Option<u32>,
    replay: ReplayWindow,
    last_request: Instant,
    /// When the call was accepted: the origin of its freshness tokens.
    started: Instant,
    /// The key of this call's freshness tokens; only the robot knows it.
    token_key: Key32,
    /// When the caller's presence turned `false`, unless a request came since.
    pub offline_since: Option<Instant>,
    /// The robot's `seq` in this call: starts at 1.
    next_seq: u64,
    /// Version 2 (WebRTC) state; `None` for a v1 call.
    pub webrtc: Option<WebRtcCall>,
}

/// A version 2 call's signalling state. `Debug` leaves the key out.
pub struct WebRtcCall {
    /// The owner key `K`, to answer the invite once the helper answered
    /// (or to refuse it if the helper cannot).
    pub owner_key: Key32,
    /// The invite's correlation data, for that answer.
    pub correlation: Option<Bytes>,
    /// Whether the accept (with the SDP answer) went out.
    pub answered: bool,
    /// When it went out (the media must connect within [`super::webrtc::CONNECT_TIMEOUT`]).
    pub answered_at: Option<Instant>,
    /// Local candidates held until the accept went out (at most [`MAX_HELD_CANDIDATES`]).
    pub held: Vec<Candidate>,
    /// Whether the helper said gathering is complete before the accept.
    pub held_end: bool,
}

/// Most local candidates held before the accept.
pub const MAX_HELD_CANDIDATES: usize = 64;

impl std::fmt::Debug for WebRtcCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcCall").field("answered", &self.answered).field("held", &self.held.len()).finish()
    }
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
        token_key: Key32,
    ) -> Call {
        let Negotiated { limits, video, video_ssrc, audio_ssrc } = agreed;
        let sid = session.to_bytes();
        Call {
            session_key: keys::session_key(owner_key, &sid, &robot_nonce),
            srtp_video: keys::srtp_video_key(owner_key, &sid, &robot_nonce),
            srtp_audio: keys::srtp_audio_key(owner_key, &sid, &robot_nonce),
            session,
            caller,
            robot_nonce,
            limits,
            video,
            video_ssrc,
            audio_ssrc,
            replay: ReplayWindow::default(),
            last_request: now,
            started: now,
            token_key,
            offline_since: None,
            next_seq: 1,
            webrtc: None,
        }
    }

    /// A request passed the MAC: check the replay window and, if it is
    /// new, count it as a sign of life.
    pub fn accept_request(&mut self, seq: u64, now: Instant) -> Result<(), ReplayError> {
        self.replay.check_and_record(seq)?;
        self.last_request = now;
        // The caller is evidently there, whatever its presence said.
        self.offline_since = None;
        Ok(())
    }

    /// A fresh token for a response sent at `now` (docs/protocol.md 5.7).
    pub fn token(&self, now: Instant) -> String {
        token::issue(&self.token_key, self.robot_ms(now))
    }

    /// The age of a motion request's echoed token at `now`, if it is one of
    /// this call's and at most [`token::MAX_TOKEN_AGE_MS`] old.
    pub fn check_token(&self, echoed: Option<&str>, now: Instant) -> Result<u64, TokenError> {
        token::check(&self.token_key, echoed, self.robot_ms(now))
    }

    fn robot_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    /// When the call was set up.
    pub fn started(&self) -> Instant {
        self.started
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
                limits: inv.video.limits(),
                video: VideoParams { width: 1280, height: 720, fps: 30, kbps: 2000 },
                video_ssrc: 12345,
                audio_ssrc: None,
            },
            now,
            [5u8; 32],
        )
    }

    #[test]
    fn tokens_are_issued_and_checked_on_the_calls_monotonic_clock() {
        let t0 = Instant::now();
        let c = call(t0);
        let tok = c.token(t0 + Duration::from_millis(300));
        assert!(tok.starts_with("300."), "{tok}");
        assert_eq!(c.check_token(Some(&tok), t0 + Duration::from_millis(1800)), Ok(1500));
        assert_eq!(c.check_token(Some(&tok), t0 + Duration::from_millis(1801)), Err(TokenError::Old(1501)));
        assert_eq!(c.check_token(None, t0), Err(TokenError::Missing));
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
    }
}
