//! The control channel between robotd and its media helper (`robotd-media`):
//! length-prefixed JSON frames on a Unix socket (the helper's fd 0).
//!
//! A frame is a u32 big-endian length followed by that many bytes of JSON,
//! at most [`MAX_FRAME`]. Messages are internally tagged (`"type"`).
//! The blocking helpers here serve the helper process; robotd's async side
//! reads the 4-byte header, checks it with [`frame_len`], reads the body and
//! calls [`decode`]; it writes [`encode`]'s bytes.

use std::io::{self, Read, Write};
use std::net::IpAddr;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{AudioSpec, IceConfig, SpeakerLevel, VideoSpec};
use crate::hal::config::Obstacle;
use crate::wire::payloads::VideoParams;

/// Largest frame body accepted or sent (an SDP offer is at most ~12 KB).
pub const MAX_FRAME: usize = 64 * 1024;

/// robotd → helper.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ToHelper {
    /// Answer this offer and send video (and audio, protocol.md 7.8).
    Start {
        offer_sdp: String,
        video: VideoSpec,
        /// The robot's microphone and speaker (absent: neither).
        #[serde(default)]
        audio: AudioSpec,
        ice: IceConfig,
        /// The simulated world (`[[hardware.sim.obstacles]]`) that video
        /// device `sim` renders; absent (an older robotd, a real robot): none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sim_world: Option<Vec<Obstacle>>,
    },
    /// A version 1 call (protocol.md "Calls"): send H.264 in SRTP to the
    /// caller's host and port (and Opus to its audio port). The helper
    /// answers `V1Sending` once the senders run, or `Ended` (`video_failed`)
    /// if they cannot start; a sender failing later ends it the same way.
    StartV1 {
        /// The caller's `media.host`.
        host: IpAddr,
        video_port: u16,
        video_ssrc: u32,
        /// SRTP master key || salt for video (30 bytes, hex).
        video_key: HexSecret,
        /// Size, frame rate and bitrate as accepted.
        video: VideoParams,
        /// `video.device`: `test`, `sim`, `auto` or a device path.
        device: String,
        /// `video.encoder`: `auto` or an element name.
        encoder: String,
        /// Audio, when negotiated and a microphone is configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio: Option<V1Audio>,
        /// The simulated world, for device `sim`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sim_world: Option<Vec<Obstacle>>,
    },
    /// A version 1 call's `video` command: this bitrate from now on (robotd
    /// checked it).
    SetBitrate { kbps: u32 },
    /// A version 1 call's `video` command: this size and frame rate (robotd
    /// checked them, and that the sender re-encodes).
    SetFormat { width: u32, height: u32, fps: u32 },
    /// The simulated robot's pose and state, for video device `sim`
    /// (robotd sends it while such a call runs, when the pose changed).
    Pose {
        /// Metres.
        x: f64,
        /// Metres.
        y: f64,
        /// Radians, 0 along +x, counter-clockwise positive.
        heading: f64,
        /// `idle`, `driving`, `blocked`… (shown in the picture).
        #[serde(default)]
        state: String,
    },
    /// The owner's `video` command: from now on the frame size, frame rate
    /// and the bitrate's maximum (each at most the call's); the bandwidth
    /// adaptation works below them.
    Video { width: u32, height: u32, fps: u32, kbps: u32 },
    /// A candidate of the phone's (`candidate:…`).
    RemoteCandidate { mline: u32, candidate: String },
    /// The phone has no more candidates.
    EndOfCandidates,
    /// Hang up: the helper stops the pipeline and exits.
    Stop,
}

/// A secret carried as hex (an SRTP master key || salt): on the wire the
/// plain string, and `Debug` never shows it, so a message holding one can be
/// logged safely (as [`crate::wire::keys`]' keys).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HexSecret(pub String);

impl std::fmt::Debug for HexSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HexSecret(..)")
    }
}

/// The audio half of [`ToHelper::StartV1`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct V1Audio {
    /// The caller's `media.audio_port`.
    pub port: u16,
    pub ssrc: u32,
    /// SRTP master key || salt for audio (30 bytes, hex).
    pub key: HexSecret,
    /// `audio.device`: `test` or an ALSA device.
    pub device: String,
}

/// helper → robotd.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum FromHelper {
    /// The SDP answer to `Start`'s offer.
    Answer {
        sdp: String,
    },
    LocalCandidate {
        mline: u32,
        candidate: String,
    },
    EndOfCandidates,
    /// ICE connection state (webrtcbin's names: checking, connected, failed…).
    State {
        ice: String,
    },
    /// DTLS done, the phone's certificate matched the offer: video flows.
    Connected,
    /// The call's media ended; the helper exits after sending this.
    /// `reason`: `fingerprint_mismatch`, `video_failed`, `ice_failed`,
    /// `bad_offer`, `internal`, `stopped`.
    Ended {
        reason: String,
        detail: String,
    },
    /// A version 1 call's senders run, with these settings (the camera may
    /// lower the frame rate, a native H.264 camera sets size and rate).
    /// `encoder`: the element re-encoding, absent when a native H.264 camera
    /// is passed through (size and rate cannot change then).
    V1Sending {
        video: VideoParams,
        #[serde(default)]
        encoder: Option<String>,
        /// Whether the audio sender runs too.
        #[serde(default)]
        audio: bool,
    },
    /// Sent every second, from the moment the helper runs.
    Heartbeat,
    /// Every 250 ms once answered: encoded frames sent since the phone's
    /// certificate was verified, and the bandwidth adaptation
    /// (src/webrtc/congestion.rs; all 0 when the offer had no transport-cc).
    Stats {
        frames_sent: u64,
        /// Encoded bytes since the call started (rate = difference over time).
        #[serde(default)]
        bytes_encoded: u64,
        /// The bandwidth estimate, kbit/s (0 without transport-cc).
        #[serde(default)]
        estimate_kbps: u32,
        /// The encoder's bitrate setting, kbit/s.
        #[serde(default)]
        encoder_kbps: u32,
        /// The frame size sent.
        #[serde(default)]
        width: u32,
        #[serde(default)]
        height: u32,
    },
    /// Every 250 ms once answered, when the robot takes the phone's audio
    /// (a speaker is configured and the offer's audio m-line sends Opus):
    /// what the speaker path measures.
    Speaker {
        level: SpeakerLevel,
    },
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("media control channel: {0}")]
    Io(#[from] io::Error),
    #[error("media control frame of {len} bytes is larger than the {MAX_FRAME}-byte limit")]
    TooLarge { len: usize },
    #[error("media control channel closed inside a frame")]
    Truncated,
    #[error("media control message is not valid: {0}")]
    Json(#[from] serde_json::Error),
}

/// Check a frame header; the body length it announces.
pub fn frame_len(header: [u8; 4]) -> Result<usize, IpcError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge { len });
    }
    Ok(len)
}

/// A message as a whole frame (header and body).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, IpcError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(IpcError::TooLarge { len: body.len() });
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A frame body as a message.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, IpcError> {
    Ok(serde_json::from_slice(body)?)
}

/// Write one message (one `write_all`, so frames from several threads that
/// share a locked writer never interleave).
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), IpcError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

/// Read one message; `Ok(None)` on a clean end of stream between frames.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>, IpcError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(IpcError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = frame_len(header)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => IpcError::Truncated,
        _ => IpcError::Io(e),
    })?;
    decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> ToHelper {
        ToHelper::Start {
            offer_sdp: "v=0\r\n".into(),
            video: video(),
            audio: AudioSpec { mic: Some("test".into()), speaker: Some("plughw:0,0".into()) },
            ice: IceConfig::default(),
            sim_world: Some(vec![Obstacle::Box { min: [3.0, -0.6], max: [3.05, 0.6] }]),
        }
    }

    #[test]
    fn stats_carry_the_bandwidth_and_read_without_it() {
        let st = FromHelper::Stats {
            frames_sent: 9,
            bytes_encoded: 12_000,
            estimate_kbps: 480,
            encoder_kbps: 432,
            width: 640,
            height: 360,
        };
        let bytes = encode(&st).unwrap();
        assert_eq!(decode::<FromHelper>(&bytes[4..]).unwrap(), st);
        // A helper without adaptation fields (or an older one): zeros.
        let old = decode::<FromHelper>(br#"{"type":"Stats","frames_sent":3}"#).unwrap();
        assert!(matches!(old, FromHelper::Stats { frames_sent: 3, estimate_kbps: 0, encoder_kbps: 0, .. }));
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &start()).unwrap();
        let pose = ToHelper::Pose { x: 1.5, y: -0.25, heading: 0.5, state: "driving".into() };
        write_frame(&mut buf, &pose).unwrap();
        write_frame(&mut buf, &ToHelper::Stop).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame::<_, ToHelper>(&mut r).unwrap(), Some(start()));
        assert_eq!(read_frame::<_, ToHelper>(&mut r).unwrap(), Some(pose));
        assert_eq!(read_frame::<_, ToHelper>(&mut r).unwrap(), Some(ToHelper::Stop));
        assert!(read_frame::<_, ToHelper>(&mut r).unwrap().is_none());
        let e = FromHelper::Ended { reason: "fingerprint_mismatch".into(), detail: "x".into() };
        let bytes = encode(&e).unwrap();
        assert_eq!(decode::<FromHelper>(&bytes[4..]).unwrap(), e);
        assert!(String::from_utf8_lossy(&bytes[4..]).contains(r#""type":"Ended""#));
        // Silence is a finite floor: JSON has no -inf.
        let quiet = FromHelper::Speaker {
            level: SpeakerLevel { receiving: true, rms_db: Some(super::super::SILENCE_DB), peak_db: None },
        };
        assert_eq!(decode::<FromHelper>(&encode(&quiet).unwrap()[4..]).unwrap(), quiet);
        // A Start without `audio` (an older robotd) means no microphone and no speaker.
        let old = br#"{"type":"Start","offer_sdp":"v=0","video":{"device":"test","width":320,"height":240,"fps":15,"kbps":300},"ice":{}}"#;
        assert!(
            matches!(decode::<ToHelper>(old).unwrap(), ToHelper::Start { audio, sim_world: None, .. } if audio == AudioSpec::default())
        );
    }

    #[test]
    fn turn_credentials_never_show_in_debug() {
        let ice = IceConfig {
            stun: None,
            turn: vec!["turn://1700000000%3Arobot:s3cret%2Fpass@198.51.100.7:3478?transport=udp".into()],
            relay_only: true,
        };
        let shown = format!("{ice:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("robot"), "{shown}");
        assert!(shown.contains("198.51.100.7:3478?transport=udp") && shown.contains("relay_only: true"), "{shown}");
    }

    #[test]
    fn version_1_starts_and_settings_round_trip() {
        let v1 = ToHelper::StartV1 {
            host: "127.0.0.1".parse().unwrap(),
            video_port: 5004,
            video_ssrc: 0x1234_5678,
            video_key: HexSecret("ab".repeat(30)),
            video: VideoParams { width: 640, height: 360, fps: 15, kbps: 500 },
            device: "sim".into(),
            encoder: "auto".into(),
            audio: Some(V1Audio { port: 5006, ssrc: 9, key: HexSecret("cd".repeat(30)), device: "test".into() }),
            sim_world: Some(vec![Obstacle::Box { min: [3.0, -0.6], max: [3.05, 0.6] }]),
        };
        // The keys travel, but never show in a log line.
        let shown = format!("{v1:?}");
        assert!(shown.contains("HexSecret(..)") && !shown.contains("abab") && !shown.contains("cdcd"), "{shown}");
        assert!(String::from_utf8_lossy(&encode(&v1).unwrap()).contains(&"ab".repeat(30)));
        let mut buf = Vec::new();
        write_frame(&mut buf, &v1).unwrap();
        write_frame(&mut buf, &ToHelper::SetFormat { width: 320, height: 240, fps: 10 }).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame::<_, ToHelper>(&mut r).unwrap(), Some(v1));
        assert_eq!(
            read_frame::<_, ToHelper>(&mut r).unwrap(),
            Some(ToHelper::SetFormat { width: 320, height: 240, fps: 10 })
        );
        let sending = FromHelper::V1Sending {
            video: VideoParams { width: 640, height: 360, fps: 15, kbps: 500 },
            encoder: None,
            audio: true,
        };
        assert_eq!(decode::<FromHelper>(&encode(&sending).unwrap()[4..]).unwrap(), sending);
    }

    #[test]
    fn oversized_frames_are_refused_before_reading_the_body() {
        let mut r = &((MAX_FRAME as u32 + 1).to_be_bytes())[..];
        assert!(matches!(read_frame::<_, ToHelper>(&mut r), Err(IpcError::TooLarge { .. })));
        let mut r = &u32::MAX.to_be_bytes()[..];
        assert!(matches!(read_frame::<_, ToHelper>(&mut r), Err(IpcError::TooLarge { .. })));
        let big = ToHelper::Start {
            offer_sdp: "x".repeat(MAX_FRAME),
            video: video(),
            audio: AudioSpec::default(),
            ice: IceConfig::default(),
            sim_world: None,
        };
        assert!(matches!(encode(&big), Err(IpcError::TooLarge { .. })));
    }

    fn video() -> VideoSpec {
        VideoSpec { device: "test".into(), width: 320, height: 240, fps: 15, kbps: 300, encoder: "auto".into() }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for body in
            [&b"not json"[..], b"{}", br#"{"type":"Nope"}"#, br#"{"type":"RemoteCandidate","mline":-1}"#, b"\xff\xfe"]
        {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(body);
            assert!(matches!(read_frame::<_, ToHelper>(&mut &frame[..]), Err(IpcError::Json(_))), "{body:?}");
        }
        // Truncated header and body.
        assert!(matches!(read_frame::<_, ToHelper>(&mut &[0u8, 0][..]), Err(IpcError::Truncated)));
        assert!(matches!(read_frame::<_, ToHelper>(&mut &[0u8, 0, 0, 9, b'{'][..]), Err(IpcError::Truncated)));
    }
}
