//! The robot's answers, as typed values (PROTOCOL: Calls; Commands).
//!
//! Every body the robot publishes is one of these; serialising them gives
//! the exact bytes docs/protocol.md shows (field order included: `status`
//! first, `re` last). Nothing else in the robot builds a reply by hand.

use serde::Serialize;

use crate::nav::Status as GotoStatus;
use crate::wire::payloads::VideoParams;

/// Why a request, invite or pairing was refused: the protocol's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Bad JSON or a value out of range (with a `detail`).
    InvalidRequest,
    /// A command the robot does not know.
    UnknownCommand,
    /// Too old: `ts` or `seq` failed, or a motion request arrived late.
    Stale,
    /// The invite offers no codec the robot can send.
    NoCommonCodec,
    /// The e-stop is latched.
    Estop,
    /// A `video` change before the video runs.
    VideoUnavailable,
    /// A `goto` on a robot without a `[nav]` map.
    NoMap,
    /// The robot could not do what it should have (e.g. store a new owner).
    InternalError,
    /// Too many calls were set up lately (`call.max_setups_per_10s`); try again in a few seconds.
    RateLimited,
    /// A version 2 call could not get its media going (no answer from the
    /// media helper within 5 s, or it failed; the `detail` says why).
    MediaUnavailable,
}

/// Why a call ended (the `reason` of `ended`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Hangup,
    CallerOffline,
    Timeout,
    Shutdown,
    VideoFailed,
    /// The caller was removed from the owners (robotd decision, documented).
    Revoked,
    /// Version 2: no ICE connection came up (or it failed for good).
    IceFailed,
    /// Version 2: the media helper died, hung or failed.
    MediaFailed,
    /// Version 2: the peer's DTLS certificate is not the one in its authenticated SDP.
    FingerprintMismatch,
    /// Version 2: the caller placed a new invite (its network changed), and
    /// the new call took this one's place (docs/protocol.md 7.8).
    Replaced,
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
            EndReason::IceFailed => "ice_failed",
            EndReason::MediaFailed => "media_failed",
            EndReason::FingerprintMismatch => "fingerprint_mismatch",
            EndReason::Replaced => "replaced",
        }
    }
}

/// `video` of the accept message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AcceptedVideo {
    pub codec: &'static str,
    pub payload_type: u8,
    pub clock_rate: u32,
    pub ssrc: u32,
    #[serde(flatten)]
    pub params: VideoParams,
}

/// `audio` of the accept message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AcceptedAudio {
    pub codec: &'static str,
    pub payload_type: u8,
    pub clock_rate: u32,
    pub ssrc: u32,
}

/// `srtp` of the accept message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SrtpProfile {
    pub profile: &'static str,
}

/// The body of every answer on `invite/.../response` and
/// `session/.../response` (goto statuses have their own type, [`GotoStatus`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// `drive`: `{"status":"ok"}`.
    Ok,
    /// `ping`: `{"status":"ok","motion":...,"at":...}`.
    #[serde(rename = "ok")]
    Pong { motion: &'static str, at: String },
    /// `destinations`.
    #[serde(rename = "ok")]
    Destinations { destinations: Vec<String>, at: String },
    /// `video`: the parameters now in force.
    #[serde(rename = "ok")]
    Video { video: VideoParams },
    /// `stop`.
    Stopped,
    /// The call is over; version 2 media endings say what happened in `detail`.
    Ended {
        reason: EndReason,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// An invite while another call runs.
    Busy,
    /// An invite accepted.
    Accepted {
        /// The robot's nonce (32 hex).
        nonce: String,
        video: AcceptedVideo,
        srtp: SrtpProfile,
        #[serde(skip_serializing_if = "Option::is_none")]
        audio: Option<AcceptedAudio>,
    },
    /// A version 2 invite accepted: the robot's SDP answer.
    #[serde(rename = "accepted")]
    AcceptedV2 {
        v: u32,
        /// The robot's nonce (32 hex).
        nonce: String,
        sdp: crate::wire::webrtc::SessionDescription,
        video: VideoParams,
    },
    /// Refused.
    Rejected {
        reason: RejectReason,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

impl Reply {
    /// `rejected` with this reason and no detail.
    pub fn rejected(reason: RejectReason) -> Reply {
        Reply::Rejected { reason, detail: None }
    }

    /// `rejected` with a detail for the person reading it.
    pub fn rejected_because(reason: RejectReason, detail: impl Into<String>) -> Reply {
        Reply::Rejected { reason, detail: Some(detail.into()) }
    }

    /// The accept message of a v1 call.
    pub fn accepted(robot_nonce: &[u8; 16], ssrc: u32, params: VideoParams, audio_ssrc: Option<u32>) -> Reply {
        Reply::Accepted {
            nonce: hex::encode(robot_nonce),
            video: AcceptedVideo { codec: "H264", payload_type: 96, clock_rate: 90_000, ssrc, params },
            srtp: SrtpProfile { profile: "AES_CM_128_HMAC_SHA1_80" },
            audio: audio_ssrc.map(|ssrc| AcceptedAudio { codec: "OPUS", payload_type: 111, clock_rate: 48_000, ssrc }),
        }
    }
}

/// A body on a response topic: a [`Reply`] or a goto status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Body {
    Reply(Reply),
    Goto(GotoStatus),
    /// The robot's trickled ICE candidates (`session/{sid}/ice/response`).
    Candidates(crate::wire::webrtc::IceCandidates),
}

impl From<Reply> for Body {
    fn from(r: Reply) -> Body {
        Body::Reply(r)
    }
}

impl From<GotoStatus> for Body {
    fn from(s: GotoStatus) -> Body {
        Body::Goto(s)
    }
}

/// A body with the call's latest freshness token (docs/protocol.md 5.7) and
/// the `re` of the request it answers (absent on answers to nothing, such
/// as an `ended` the robot decided on its own).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Response {
    #[serde(flatten)]
    pub body: Body,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub re: Option<u64>,
}

impl Response {
    /// A body outside a call: no token, no `re`.
    pub fn plain(body: impl Into<Body>) -> Response {
        Response { body: body.into(), token: None, re: None }
    }
}

impl Response {
    /// The JSON bytes as published.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("replies always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nav::GotoState;

    fn bytes(body: impl Into<Body>, re: Option<u64>) -> String {
        String::from_utf8(Response { body: body.into(), token: None, re }.to_bytes()).unwrap()
    }

    #[test]
    fn replies_are_the_protocol_bytes() {
        assert_eq!(bytes(Reply::Ok, Some(7)), r#"{"status":"ok","re":7}"#);
        assert_eq!(bytes(Reply::Stopped, Some(1)), r#"{"status":"stopped","re":1}"#);
        assert_eq!(bytes(Reply::Busy, None), r#"{"status":"busy"}"#);
        assert_eq!(
            bytes(Reply::Pong { motion: "idle", at: "hall".into() }, Some(3)),
            r#"{"status":"ok","motion":"idle","at":"hall","re":3}"#
        );
        assert_eq!(
            bytes(Reply::Ended { reason: EndReason::CallerOffline, detail: None }, None),
            r#"{"status":"ended","reason":"caller_offline"}"#
        );
        assert_eq!(
            bytes(Reply::rejected_because(RejectReason::InvalidRequest, "linear must be within -1..1"), Some(2)),
            r#"{"status":"rejected","reason":"invalid_request","detail":"linear must be within -1..1","re":2}"#
        );
        assert_eq!(
            bytes(Reply::rejected(RejectReason::UnknownCommand), Some(2)),
            r#"{"status":"rejected","reason":"unknown_command","re":2}"#
        );
        let v = VideoParams { width: 640, height: 480, fps: 30, kbps: 1000 };
        assert_eq!(
            bytes(Reply::Video { video: v }, Some(9)),
            r#"{"status":"ok","video":{"width":640,"height":480,"fps":30,"kbps":1000},"re":9}"#
        );
        assert_eq!(
            bytes(Reply::accepted(&[0xab; 16], 12345, v, Some(23456)), None),
            concat!(
                r#"{"status":"accepted","nonce":"abababababababababababababababab","#,
                r#""video":{"codec":"H264","payload_type":96,"clock_rate":90000,"ssrc":12345,"width":640,"height":480,"fps":30,"kbps":1000},"#,
                r#""srtp":{"profile":"AES_CM_128_HMAC_SHA1_80"},"#,
                r#""audio":{"codec":"OPUS","payload_type":111,"clock_rate":48000,"ssrc":23456}}"#
            )
        );
        assert_eq!(
            bytes(GotoStatus::new("bedroom", GotoState::Blocked { detail: "something".into() }), Some(4)),
            r#"{"destination":"bedroom","status":"blocked","detail":"something","re":4}"#
        );
        assert_eq!(EndReason::Revoked.as_str(), "revoked");
        let r = Response { body: Reply::Ok.into(), token: Some("12.00112233445566ff".into()), re: Some(5) };
        assert_eq!(String::from_utf8(r.to_bytes()).unwrap(), r#"{"status":"ok","token":"12.00112233445566ff","re":5}"#);
    }
}
