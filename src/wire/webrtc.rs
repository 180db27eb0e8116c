//! Protocol v2 calls (WebRTC, docs/protocol.md 7.8): the invite that carries
//! the phone's SDP offer, the accept that carries the robot's answer, and
//! the trickled ICE candidates of `session/{sid}/ice/...`.
//!
//! Only what the main process must judge is checked here, in plain Rust and
//! without a full SDP parser: sizes, the offer's `a=fingerprint:sha-256` (it
//! binds the DTLS certificate to the authenticated invite), an H.264 video
//! m-line, and each candidate's shape and address. The media helper parses
//! the SDP fully (GStreamer) in its own sandboxed process.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::payloads::{InviteError, MIN_HEIGHT, MIN_KBPS, MIN_WIDTH};
use super::payloads::{VideoParams, media_host_problem};

/// Largest SDP text accepted in an invite or a `media` request (the whole
/// payload stays within [`super::MAX_PAYLOAD`]).
pub const MAX_SDP: usize = 12_000;
/// Most candidates the robot takes per offer/answer generation.
pub const MAX_CANDIDATES: usize = 32;
/// Longest candidate line accepted.
pub const MAX_CANDIDATE_LEN: usize = 512;
/// Highest m-line index accepted (an offer has video and maybe audio).
pub const MAX_MLINE: u32 = 7;

/// `{"type":"offer"|"answer","sdp":"v=0\r\n..."}`, as browsers write it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SessionDescription {
    #[serde(rename = "type")]
    pub kind: String,
    pub sdp: String,
}

/// The video limits of a v2 invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct VideoLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_fps: u32,
    pub max_kbps: u32,
}

/// `invite/{robotId}/{sessionId}` payload of version 2.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct InviteV2 {
    pub v: u32,
    pub sdp: SessionDescription,
    pub video: VideoLimits,
}

/// Whether an invite payload is of version 2 (it has `"v": 2`).
pub fn is_v2(payload: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Version {
        v: Option<u64>,
    }
    serde_json::from_slice::<Version>(payload).is_ok_and(|p| p.v == Some(2))
}

impl InviteV2 {
    /// Parse and check a v2 invite.
    pub fn parse(payload: &[u8]) -> Result<InviteV2, InviteError> {
        let inv: InviteV2 = serde_json::from_slice(payload).map_err(|e| InviteError::Invalid(e.to_string()))?;
        if inv.v != 2 {
            return Err(InviteError::Invalid(format!("v {} is not 2", inv.v)));
        }
        check_offer(&inv.sdp)?;
        let v = &inv.video;
        if v.max_width < MIN_WIDTH || v.max_height < MIN_HEIGHT || v.max_fps == 0 || v.max_kbps < MIN_KBPS {
            return Err(InviteError::Invalid(format!(
                "video limits too small (at least {MIN_WIDTH}x{MIN_HEIGHT}, 1 fps, {MIN_KBPS} kbps)"
            )));
        }
        Ok(inv)
    }

    /// The robot's preference capped by the phone's limits (as in v1).
    pub fn negotiate(&self, preferred: VideoParams) -> VideoParams {
        super::payloads::negotiate_video(self.video, preferred)
    }

    /// The offer's DTLS certificate fingerprint, `AB:CD:...` (checked by `parse`).
    pub fn fingerprint(&self) -> String {
        sdp_fingerprint(&self.sdp.sdp).expect("checked by parse")
    }
}

/// An offer the robot can answer: size, type, a SHA-256 fingerprint and an
/// H.264 video m-line.
pub fn check_offer(d: &SessionDescription) -> Result<(), InviteError> {
    let bad = |s: &str| Err(InviteError::Invalid(s.into()));
    if d.kind != "offer" {
        return bad("sdp.type must be \"offer\"");
    }
    if d.sdp.len() > MAX_SDP {
        return Err(InviteError::Invalid(format!("sdp.sdp is over {MAX_SDP} bytes; prune the codecs")));
    }
    if !d.sdp.starts_with("v=0") {
        return bad("sdp.sdp is not an SDP (it must start with v=0)");
    }
    if sdp_fingerprint(&d.sdp).is_none() {
        return bad("the offer has no a=fingerprint:sha-256 (other hashes are not accepted)");
    }
    if !d.sdp.lines().any(|l| l.starts_with("m=video ")) {
        return bad("the offer has no video m-line");
    }
    let h264 = d.sdp.lines().any(|l| {
        l.strip_prefix("a=rtpmap:")
            .and_then(|r| r.split_once(' '))
            .is_some_and(|(_, c)| c.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("H264/")))
    });
    if !h264 {
        return Err(InviteError::NoCommonCodec);
    }
    Ok(())
}

/// The first `a=fingerprint:sha-256 XX:..` of an SDP, upper-cased; `None`
/// when there is none or it is not 32 hex bytes.
pub fn sdp_fingerprint(sdp: &str) -> Option<String> {
    let line = sdp.lines().find_map(|l| l.trim_end().strip_prefix("a=fingerprint:"))?;
    let (hash, value) = line.split_once(' ')?;
    let fp = value.trim().to_ascii_uppercase();
    let parts: Vec<&str> = fp.split(':').collect();
    let ok = hash.eq_ignore_ascii_case("sha-256")
        && parts.len() == 32
        && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then_some(fp)
}

/// The accept of a v2 call.
pub fn accepted(robot_nonce: &[u8; 16], answer_sdp: &str, video: VideoParams) -> Value {
    json!({
        "status": "accepted",
        "v": 2,
        "nonce": hex::encode(robot_nonce),
        "sdp": { "type": "answer", "sdp": answer_sdp },
        "video": { "width": video.width, "height": video.height, "fps": video.fps, "kbps": video.kbps },
    })
}

/// One trickled candidate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Candidate {
    pub mline: u32,
    pub candidate: String,
}

/// `session/{sid}/ice/request` (phone → robot) and the robot's unsolicited
/// `session/{sid}/ice/response`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct IceCandidates {
    /// The offer/answer generation these belong to (0: the invite's).
    #[serde(rename = "gen")]
    pub generation: u32,
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub end: bool,
}

impl IceCandidates {
    /// Parse a phone's candidates: at most [`MAX_CANDIDATES`], each well
    /// formed ([`check_candidate`]).
    pub fn parse(payload: &[u8]) -> Result<IceCandidates, String> {
        let c: IceCandidates = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        if c.candidates.len() > MAX_CANDIDATES {
            return Err(format!("at most {MAX_CANDIDATES} candidates per message"));
        }
        for cand in &c.candidates {
            check_candidate(cand)?;
        }
        Ok(c)
    }
}

/// A candidate line the robot passes on: `candidate:F C udp|tcp PRIO ADDR
/// PORT typ host|srflx|prflx|relay ...`, with an address the robot would
/// send to (as for v1 media hosts: no unspecified, multicast, broadcast or
/// link-local address, also not IPv4-mapped) or an mDNS `.local` name.
pub fn check_candidate(c: &Candidate) -> Result<(), String> {
    if c.mline > MAX_MLINE {
        return Err(format!("mline {} is above {MAX_MLINE}", c.mline));
    }
    if c.candidate.len() > MAX_CANDIDATE_LEN || !c.candidate.is_ascii() {
        return Err(format!("a candidate is over {MAX_CANDIDATE_LEN} bytes or not ASCII"));
    }
    let line = c.candidate.strip_prefix("a=").unwrap_or(&c.candidate);
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    let shape = f.len() >= 8
        && f[0].starts_with("candidate:")
        && f[1].parse::<u8>().is_ok()
        && (f[2].eq_ignore_ascii_case("udp") || f[2].eq_ignore_ascii_case("tcp"))
        && f[3].parse::<u32>().is_ok()
        && f[5].parse::<u16>().is_ok_and(|p| p != 0 || f[2].eq_ignore_ascii_case("tcp"))
        && f[6] == "typ"
        && matches!(f[7], "host" | "srflx" | "prflx" | "relay");
    if !shape {
        return Err(format!("not a candidate line: {:?}", c.candidate));
    }
    match f[4].parse::<IpAddr>() {
        Ok(ip) => match media_host_problem(ip) {
            Some(why) => Err(format!("candidate address {ip} is {why}")),
            None => Ok(()),
        },
        Err(_) if is_mdns_name(f[4]) => Ok(()),
        Err(_) => Err(format!("candidate address {:?} is neither an IP address nor a .local name", f[4])),
    }
}

fn is_mdns_name(s: &str) -> bool {
    s.strip_suffix(".local")
        .is_some_and(|h| !h.is_empty() && h.len() <= 63 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

#[cfg(test)]
mod tests;
