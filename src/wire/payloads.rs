//! Payload types of calls and commands (PROTOCOL: Calls; Commands).
//!
//! Requests are parsed leniently about unknown fields (newer phones may add
//! some) and strictly about values: anything out of range, non-finite or of
//! the wrong type is an `invalid_request` with a `detail` saying which field.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// An invite's `media` object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Media {
    /// Where the phone receives media: an IP address literal (no DNS on the robot).
    pub host: IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_port: Option<u16>,
}

/// An invite's `video` object: what the phone can receive.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct VideoOffer {
    pub codecs: Vec<String>,
    pub max_width: u32,
    pub max_height: u32,
    pub max_fps: u32,
    pub max_kbps: u32,
}

impl VideoOffer {
    /// The `max_*` limits (the same in both protocol versions).
    pub fn limits(&self) -> crate::wire::webrtc::VideoLimits {
        crate::wire::webrtc::VideoLimits {
            max_width: self.max_width,
            max_height: self.max_height,
            max_fps: self.max_fps,
            max_kbps: self.max_kbps,
        }
    }
}

/// An invite's optional `audio` object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AudioOffer {
    pub codecs: Vec<String>,
}

/// `invite/{robotId}/{sessionId}` payload.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Invite {
    pub media: Media,
    pub video: VideoOffer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioOffer>,
}

/// A video shape: size, frame rate and bitrate. On the wire, the parameters
/// in force (accept message and `video` responses); also the one type for
/// the robot's preference (`[video]` in the configuration), what a sender is
/// started with and what it runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoParams {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Bitrate in kbit/s.
    pub kbps: u32,
}

/// Limits the robot accepts for video, whatever the phone offers.
pub const MIN_WIDTH: u32 = 160;
pub const MIN_HEIGHT: u32 = 120;
pub const MAX_WIDTH: u32 = 1920;
pub const MAX_HEIGHT: u32 = 1080;
pub const MAX_FPS: u32 = 60;
pub const MIN_KBPS: u32 = 100;
pub const MAX_KBPS: u32 = 20_000;

/// Why an invite cannot be accepted (sent as `rejected` with this reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteError {
    /// Not the expected JSON, or values out of range.
    Invalid(String),
    /// The phone offers no codec the robot can send.
    NoCommonCodec,
}

impl InviteError {
    /// The protocol reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            InviteError::Invalid(_) => "invalid_request",
            InviteError::NoCommonCodec => "no_common_codec",
        }
    }
}

/// Why the robot must not send a call's media to `host`, if it must not
/// (docs/protocol.md 7.1): the unspecified address and `0.0.0.0/8`,
/// multicast, the limited broadcast `255.255.255.255` and the reserved
/// `240.0.0.0/4`, and link-local addresses (`169.254.0.0/16`, `fe80::/10`).
/// An IPv6 address that carries an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) is judged by that
/// IPv4 address. Loopback stays allowed: a phone on the robot itself (the
/// tests, the demo) receives there. A subnet's directed broadcast cannot be
/// told from a host address without knowing the network, so it is not
/// refused here.
pub fn media_host_problem(host: IpAddr) -> Option<&'static str> {
    match host {
        IpAddr::V4(v4) => ipv4_problem(v4),
        IpAddr::V6(v6) if v6.is_loopback() => None,
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let embedded = if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            } else {
                v6.to_ipv4()
            };
            if let Some(v4) = embedded {
                return ipv4_problem(v4).map(|_| "an IPv6 form of an IPv4 address the robot does not send to");
            }
            if v6.is_multicast() {
                Some("a multicast address")
            } else if v6.is_unicast_link_local() {
                Some("a link-local address")
            } else {
                None
            }
        }
    }
}

fn ipv4_problem(v4: Ipv4Addr) -> Option<&'static str> {
    let first = v4.octets()[0];
    if first == 0 {
        Some("the unspecified address or in 0.0.0.0/8")
    } else if v4.is_broadcast() {
        Some("the limited broadcast address")
    } else if v4.is_multicast() {
        Some("a multicast address")
    } else if first >= 240 {
        Some("a reserved address (240.0.0.0/4)")
    } else if v4.is_link_local() {
        Some("a link-local address")
    } else {
        None
    }
}

impl Invite {
    /// Parse and check an invite payload.
    pub fn parse(payload: &[u8]) -> Result<Invite, InviteError> {
        let inv: Invite = serde_json::from_slice(payload).map_err(|e| InviteError::Invalid(e.to_string()))?;
        if inv.media.port == 0 || inv.media.audio_port == Some(0) {
            return Err(InviteError::Invalid("media.port must be 1..=65535".into()));
        }
        if let Some(why) = media_host_problem(inv.media.host) {
            return Err(InviteError::Invalid(format!(
                "media.host {} is {why}; give the phone's own unicast address",
                inv.media.host
            )));
        }
        let v = &inv.video;
        if v.max_width < MIN_WIDTH || v.max_height < MIN_HEIGHT || v.max_fps == 0 || v.max_kbps < MIN_KBPS {
            return Err(InviteError::Invalid(format!(
                "video limits too small (at least {MIN_WIDTH}x{MIN_HEIGHT}, 1 fps, {MIN_KBPS} kbps)"
            )));
        }
        if !v.codecs.iter().any(|c| c.eq_ignore_ascii_case("H264")) {
            return Err(InviteError::NoCommonCodec);
        }
        Ok(inv)
    }

    /// Whether the phone asked for Opus audio.
    pub fn wants_audio(&self) -> bool {
        self.audio.as_ref().is_some_and(|a| a.codecs.iter().any(|c| c.eq_ignore_ascii_case("OPUS")))
            && self.media.audio_port.is_some()
    }

    /// Negotiate: the robot's preferred parameters capped by the phone's maxima ([`negotiate_video`]).
    pub fn negotiate(&self, preferred: VideoParams) -> VideoParams {
        negotiate_video(self.video.limits(), preferred)
    }
}

/// The robot's preferred parameters capped by the phone's maxima (both
/// protocol versions). Sizes are kept even (encoders need it) and the
/// aspect ratio of the preference is kept when the phone's box is smaller.
pub fn negotiate_video(v: crate::wire::webrtc::VideoLimits, preferred: VideoParams) -> VideoParams {
    let scale = f64::min(
        1.0,
        f64::min(v.max_width as f64 / preferred.width as f64, v.max_height as f64 / preferred.height as f64),
    );
    let even = |x: f64| ((x as u32) & !1).max(2);
    VideoParams {
        width: even(preferred.width as f64 * scale).clamp(MIN_WIDTH, MAX_WIDTH),
        height: even(preferred.height as f64 * scale).clamp(MIN_HEIGHT, MAX_HEIGHT),
        fps: preferred.fps.min(v.max_fps).clamp(1, MAX_FPS),
        kbps: preferred.kbps.min(v.max_kbps).clamp(MIN_KBPS, MAX_KBPS),
    }
}

/// The accept message.
pub fn accepted(robot_nonce: &[u8; 16], ssrc: u32, video: VideoParams, audio_ssrc: Option<u32>) -> Value {
    let mut v = json!({
        "status": "accepted",
        "nonce": hex::encode(robot_nonce),
        "video": {
            "codec": "H264", "payload_type": 96, "clock_rate": 90000, "ssrc": ssrc,
            "width": video.width, "height": video.height, "fps": video.fps, "kbps": video.kbps,
        },
        "srtp": { "profile": "AES_CM_128_HMAC_SHA1_80" },
    });
    if let Some(a) = audio_ssrc {
        v["audio"] = json!({ "codec": "OPUS", "payload_type": 111, "clock_rate": 48000, "ssrc": a });
    }
    v
}

/// A parsed in-call request.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Drive {
        linear: f64,
        angular: f64,
        ms: u32,
    },
    Stop,
    Goto {
        destination: String,
    },
    Destinations,
    Video(VideoChange),
    Ping,
    Hangup,
    /// Version 2: the phone's trickled ICE candidates.
    Ice(crate::wire::webrtc::IceCandidates),
}

/// What a `video` request changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoChange {
    Bitrate(u32),
    Format { width: u32, height: u32, fps: u32 },
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    UnknownCommand,
    Invalid(String),
}

impl CommandError {
    /// The `rejected` response payload.
    pub fn response(&self) -> Value {
        match self {
            CommandError::UnknownCommand => json!({"status":"rejected","reason":"unknown_command"}),
            CommandError::Invalid(d) => json!({"status":"rejected","reason":"invalid_request","detail":d}),
        }
    }
}

/// Default `ms` of a `drive` without one.
pub const DEFAULT_DRIVE_MS: u32 = 500;

fn object(payload: &[u8]) -> Result<serde_json::Map<String, Value>, CommandError> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(CommandError::Invalid("payload must be a JSON object".into())),
        Err(e) => Err(CommandError::Invalid(format!("bad JSON: {e}"))),
    }
}

/// Whether `x` is a speed fraction: finite and within -1..=1 (full reverse
/// to full forward). The one range check for `drive`'s `linear` and
/// `angular`, the differential-drive mixer ([`crate::motion::mix`]), the motor
/// drivers ([`crate::motion::check_speed`]) and the map's speeds.
pub fn is_speed_fraction(x: f64) -> bool {
    x.is_finite() && (-1.0..=1.0).contains(&x)
}

fn fraction(m: &serde_json::Map<String, Value>, key: &str) -> Result<f64, CommandError> {
    let v = m.get(key).ok_or_else(|| CommandError::Invalid(format!("{key} is required")))?;
    let x = v.as_f64().ok_or_else(|| CommandError::Invalid(format!("{key} must be a number")))?;
    if !is_speed_fraction(x) {
        return Err(CommandError::Invalid(format!("{key} must be within -1..1")));
    }
    Ok(x)
}

fn uint(
    m: &serde_json::Map<String, Value>,
    key: &str,
    range: std::ops::RangeInclusive<u32>,
) -> Result<Option<u32>, CommandError> {
    let Some(v) = m.get(key) else { return Ok(None) };
    let x = v.as_u64().and_then(|x| u32::try_from(x).ok()).filter(|x| range.contains(x)).ok_or_else(|| {
        CommandError::Invalid(format!("{key} must be an integer in {}..={}", range.start(), range.end()))
    })?;
    Ok(Some(x))
}

/// Parse a request by command name.
pub fn parse_command(command: &str, payload: &[u8]) -> Result<Command, CommandError> {
    let known = ["drive", "stop", "goto", "destinations", "video", "ping", "hangup", "ice"];
    if !known.contains(&command) {
        return Err(CommandError::UnknownCommand);
    }
    let m = object(payload)?;
    Ok(match command {
        "drive" => Command::Drive {
            linear: fraction(&m, "linear")?,
            angular: fraction(&m, "angular")?,
            ms: uint(&m, "ms", 1..=1000)?.unwrap_or(DEFAULT_DRIVE_MS),
        },
        "stop" => Command::Stop,
        "goto" => match m.get("destination").and_then(Value::as_str) {
            Some(d) if !d.is_empty() && d.len() <= 64 => Command::Goto { destination: d.to_owned() },
            _ => return Err(CommandError::Invalid("destination must be a place name (1 to 64 bytes)".into())),
        },
        "destinations" => Command::Destinations,
        "video" => {
            let kbps = uint(&m, "kbps", MIN_KBPS..=MAX_KBPS)?;
            let w = uint(&m, "width", MIN_WIDTH..=MAX_WIDTH)?;
            let h = uint(&m, "height", MIN_HEIGHT..=MAX_HEIGHT)?;
            let fps = uint(&m, "fps", 1..=MAX_FPS)?;
            match (kbps, w, h, fps) {
                (Some(k), None, None, None) => Command::Video(VideoChange::Bitrate(k)),
                (None, Some(width), Some(height), Some(fps)) => {
                    Command::Video(VideoChange::Format { width: width & !1, height: height & !1, fps })
                }
                _ => {
                    return Err(CommandError::Invalid("give either kbps, or width, height and fps together".into()));
                }
            }
        }
        "ping" => Command::Ping,
        "hangup" => Command::Hangup,
        "ice" => Command::Ice(crate::wire::webrtc::IceCandidates::parse(payload).map_err(CommandError::Invalid)?),
        _ => unreachable!("checked above"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = r#"{"media":{"host":"192.0.2.10","port":5004},"video":{"codecs":["H264"],"max_width":1280,"max_height":720,"max_fps":30,"max_kbps":2500}}"#;

    #[test]
    fn speed_fractions_are_finite_and_within_one() {
        for ok in [-1.0, -0.5, 0.0, -0.0, 0.25, 1.0] {
            assert!(is_speed_fraction(ok), "{ok}");
        }
        for bad in [1.0 + f64::EPSILON, -1.0001, 2.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(!is_speed_fraction(bad), "{bad}");
        }
    }

    #[test]
    fn protocol_invite_parses_and_negotiates() {
        let inv = Invite::parse(INVITE.as_bytes()).unwrap();
        assert_eq!(inv.media.port, 5004);
        assert!(!inv.wants_audio());
        let p = inv.negotiate(VideoParams { width: 1280, height: 720, fps: 30, kbps: 2000 });
        assert_eq!(p, VideoParams { width: 1280, height: 720, fps: 30, kbps: 2000 });
        let small = Invite {
            video: VideoOffer { max_width: 640, max_height: 640, max_fps: 15, max_kbps: 500, ..inv.video.clone() },
            ..inv
        };
        assert_eq!(
            small.negotiate(VideoParams { width: 1280, height: 720, fps: 30, kbps: 2000 }),
            VideoParams { width: 640, height: 360, fps: 15, kbps: 500 }
        );
    }

    #[test]
    fn bad_invites() {
        assert_eq!(Invite::parse(INVITE.replace("H264", "VP8").as_bytes()), Err(InviteError::NoCommonCodec));
        for bad in [
            INVITE.replace("192.0.2.10", "robot.local"),
            INVITE.replace("5004", "0"),
            INVITE.replace("5004", "70000"),
            INVITE.replace("192.0.2.10", "0.0.0.0"),
            INVITE.replace("1280", "10"),
            "[]".into(),
            "{".into(),
        ] {
            assert!(matches!(Invite::parse(bad.as_bytes()), Err(InviteError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn media_hosts_the_robot_must_not_send_to_are_refused_with_a_reason() {
        let with_host = |h: &str| Invite::parse(INVITE.replace("192.0.2.10", h).as_bytes());
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "169.254.1.1",
            "::",
            "ff02::1",
            "fe80::1",
            "febf::1",
            "::ffff:224.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
            "::ffff:169.254.0.1",
            "::224.0.0.1",
            "64:ff9b::e000:1",
        ] {
            match with_host(bad) {
                Err(InviteError::Invalid(d)) => {
                    assert!(d.starts_with("media.host ") && d.contains(" is "), "{bad}: {d}")
                }
                other => panic!("{bad} accepted: {other:?}"),
            }
        }
        // Loopback (a phone on the robot: tests, demo), private, public and
        // IPv4-mapped unicast addresses are fine.
        for ok in [
            "127.0.0.1",
            "::1",
            "192.168.1.20",
            "10.0.0.5",
            "203.0.113.7",
            "2001:db8::5",
            "fec0::1",
            "::ffff:192.168.1.20",
            "64:ff9b::c000:20a",
        ] {
            assert!(with_host(ok).is_ok(), "{ok}: {:?}", with_host(ok));
        }
    }

    #[test]
    fn accept_message_shape() {
        let v = accepted(&[0xff; 16], 12345, VideoParams { width: 1280, height: 720, fps: 30, kbps: 2000 }, None);
        assert_eq!(
            v.to_string(),
            r#"{"status":"accepted","nonce":"ffffffffffffffffffffffffffffffff","video":{"codec":"H264","payload_type":96,"clock_rate":90000,"ssrc":12345,"width":1280,"height":720,"fps":30,"kbps":2000},"srtp":{"profile":"AES_CM_128_HMAC_SHA1_80"}}"#
        );
        assert_eq!(
            accepted(&[0; 16], 1, VideoParams { width: 2, height: 2, fps: 1, kbps: 1 }, Some(7))["audio"]["ssrc"],
            7
        );
    }

    #[test]
    fn commands_parse_and_reject_bad_values() {
        assert_eq!(
            parse_command("drive", br#"{"linear":0.5,"angular":0.0,"ms":500}"#),
            Ok(Command::Drive { linear: 0.5, angular: 0.0, ms: 500 })
        );
        assert_eq!(
            parse_command("drive", br#"{"linear":1,"angular":-1}"#),
            Ok(Command::Drive { linear: 1.0, angular: -1.0, ms: 500 })
        );
        for bad in [
            r#"{"linear":1.01,"angular":0}"#,
            r#"{"linear":"0.5","angular":0}"#,
            r#"{"linear":0.5}"#,
            r#"{"linear":0,"angular":0,"ms":0}"#,
            r#"{"linear":0,"angular":0,"ms":1001}"#,
            r#"{"linear":0,"angular":0,"ms":1.5}"#,
            r#"{"linear":1e400,"angular":0}"#,
            r#"{"linear":NaN,"angular":0}"#,
            r#"[0.5,0]"#,
            "",
        ] {
            let e = parse_command("drive", bad.as_bytes()).unwrap_err();
            assert!(matches!(e, CommandError::Invalid(_)), "{bad}: {e:?}");
            assert_eq!(e.response()["reason"], "invalid_request");
        }
        assert_eq!(parse_command("dance", b"{}"), Err(CommandError::UnknownCommand));
        assert_eq!(parse_command("video", br#"{"kbps":800}"#), Ok(Command::Video(VideoChange::Bitrate(800))));
        assert_eq!(
            parse_command("video", br#"{"width":640,"height":360,"fps":15}"#),
            Ok(Command::Video(VideoChange::Format { width: 640, height: 360, fps: 15 }))
        );
        assert!(parse_command("video", br#"{"width":640}"#).is_err());
        assert_eq!(
            parse_command("goto", br#"{"destination":"bedroom"}"#),
            Ok(Command::Goto { destination: "bedroom".into() })
        );
        assert!(parse_command("goto", br#"{"destination":""}"#).is_err());
    }

    mod fuzzlike {
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 8] = ["drive", "stop", "goto", "destinations", "video", "ping", "hangup", "dance"];

        /// JSON objects with the protocol's keys and values of every type.
        fn objectish() -> impl Strategy<Value = Vec<u8>> {
            let key = prop::sample::select(vec![
                "linear",
                "angular",
                "ms",
                "destination",
                "kbps",
                "width",
                "height",
                "fps",
                "x",
            ]);
            let value = prop_oneof![
                any::<f64>().prop_map(|f| format!("{f:e}")),
                any::<i64>().prop_map(|i| i.to_string()),
                any::<u64>().prop_map(|i| i.to_string()),
                (-2.0f64..2.0).prop_map(|f| f.to_string()),
                prop::sample::select(vec!["NaN", "1e400", "-0", "null", "true", "[]", "{}", "\"\"", "1.0e-320"])
                    .prop_map(String::from),
                "\"[a-z ]{0,70}\"",
            ];
            prop::collection::vec((key, value), 0..6).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(",")).into_bytes()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            /// Every command name, arbitrary bytes or near-valid JSON: never a
            /// panic, and what is accepted is within the protocol's ranges.
            #[test]
            fn parse_command_never_panics(
                name in prop::sample::select(NAMES.to_vec()),
                payload in prop_oneof![objectish(), prop::collection::vec(any::<u8>(), 0..100)],
            ) {
                match parse_command(name, &payload) {
                    Ok(Command::Drive { linear, angular, ms }) => {
                        prop_assert!(linear.is_finite() && (-1.0..=1.0).contains(&linear));
                        prop_assert!(angular.is_finite() && (-1.0..=1.0).contains(&angular));
                        prop_assert!((1..=1000).contains(&ms));
                    }
                    Ok(Command::Video(VideoChange::Format { width, height, fps })) => {
                        prop_assert!(width % 2 == 0 && height % 2 == 0);
                        prop_assert!((MIN_WIDTH..=MAX_WIDTH).contains(&width) && (MIN_HEIGHT..=MAX_HEIGHT).contains(&height));
                        prop_assert!((1..=MAX_FPS).contains(&fps));
                    }
                    Ok(Command::Goto { destination }) => prop_assert!((1..=64).contains(&destination.len())),
                    Ok(_) => {}
                    Err(e) => {
                        let _ = e.response();
                    }
                }
                if name == "dance" {
                    prop_assert_eq!(parse_command(name, &payload), Err(CommandError::UnknownCommand));
                }
            }

            /// Invites: arbitrary bytes and mutations of the protocol's example.
            #[test]
            fn invite_parse_never_panics(
                payload in prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..200),
                    (0..INVITE.len(), any::<String>()).prop_map(|(i, ins)| {
                        let i = (0..=i).rev().find(|&i| INVITE.is_char_boundary(i)).unwrap_or(0);
                        format!("{}{}{}", &INVITE[..i], ins, &INVITE[i..]).into_bytes()
                    }),
                ],
            ) {
                if let Ok(inv) = Invite::parse(&payload) {
                    let p = inv.negotiate(VideoParams { width: 1280, height: 720, fps: 30, kbps: 2000 });
                    prop_assert!(p.width <= inv.video.max_width && p.height <= inv.video.max_height);
                    prop_assert!(p.fps <= inv.video.max_fps && p.kbps <= inv.video.max_kbps);
                }
            }
        }
    }
}
