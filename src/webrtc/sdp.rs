//! SDP checks: the DTLS fingerprint an SDP names, the fingerprint of a PEM
//! certificate, and which H.264 format of an offer the robot sends.

use std::fmt;

use gstreamer_sdp as gst_sdp;
use sha2::{Digest, Sha256};

use super::TWCC_URI;

/// Why an SDP is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("the SDP does not parse")]
    Parse,
    #[error("the SDP has no a=fingerprint (a sha-256 DTLS certificate fingerprint is required)")]
    NoFingerprint,
    #[error("the SDP's a=fingerprint uses hash `{0}`; only sha-256 is accepted")]
    UnsupportedHash(String),
    #[error("the SDP's a=fingerprint is not 32 hex bytes separated by `:`")]
    BadFingerprint,
    #[error("the SDP names different fingerprints (session and media level disagree)")]
    ConflictingFingerprints,
    #[error("the offer has no video m-line")]
    NoVideo,
    #[error(
        "the offer's video m-line has no H.264 format with packetization-mode=1 and a constrained-baseline \
         profile-level-id (42e0xx or 42c0xx)"
    )]
    NoCommonCodec,
}

/// A SHA-256 certificate fingerprint, normalised to uppercase `AB:CD:…`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Parse the hex part of an `a=fingerprint:sha-256 …` line.
    pub fn parse_sha256(hex: &str) -> Result<Fingerprint, SdpError> {
        let parts: Vec<&str> = hex.trim().split(':').collect();
        if parts.len() != 32 || !parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(SdpError::BadFingerprint);
        }
        Ok(Fingerprint(parts.join(":").to_ascii_uppercase()))
    }

    /// The fingerprint of DER bytes.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        let digest = Sha256::digest(der);
        let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
        Fingerprint(hex.join(":"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.0)
    }
}

/// The sha-256 DTLS fingerprint an SDP (offer or answer) names, at session or
/// media level. Every `a=fingerprint` line must be sha-256 and all must agree.
pub fn offer_fingerprint(sdp: &str) -> Result<Fingerprint, SdpError> {
    let mut found: Option<Fingerprint> = None;
    for line in sdp.lines() {
        let Some(v) = line.trim_end_matches('\r').strip_prefix("a=fingerprint:") else { continue };
        let (hash, hex) = v.trim().split_once(' ').ok_or(SdpError::BadFingerprint)?;
        if !hash.eq_ignore_ascii_case("sha-256") {
            return Err(SdpError::UnsupportedHash(hash.chars().take(16).collect()));
        }
        let fp = Fingerprint::parse_sha256(hex)?;
        match &found {
            Some(f) if *f != fp => return Err(SdpError::ConflictingFingerprints),
            _ => found = Some(fp),
        }
    }
    found.ok_or(SdpError::NoFingerprint)
}

/// The SHA-256 fingerprint of a PEM certificate (of its DER body); `None`
/// when the text holds no parseable certificate.
pub fn pem_fingerprint(pem: &str) -> Option<Fingerprint> {
    let mut body = String::new();
    let mut inside = false;
    for line in pem.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN CERTIFICATE") {
            inside = true;
        } else if line.starts_with("-----END CERTIFICATE") {
            break;
        } else if inside {
            body.push_str(line);
        }
    }
    if body.is_empty() {
        return None;
    }
    let der = data_encoding::BASE64.decode(body.as_bytes()).ok()?;
    Some(Fingerprint::of_der(&der))
}

/// What the robot takes from an acceptable offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferInfo {
    /// The H.264 payload type to send (packetization-mode 1, constrained baseline).
    pub payload_type: u8,
    /// The video m-line's `a=mid`, if any.
    pub mid: Option<String>,
    /// The index of the video m-line.
    pub mline: u32,
    /// The offer's transport-cc header extension ID, if it has one.
    pub twcc_id: Option<u8>,
    /// The DTLS fingerprint the offerer's certificate must have.
    pub fingerprint: Fingerprint,
    /// The offer's first audio m-line, if it has one (not rejected with port 0).
    pub audio: Option<AudioLine>,
}

/// An audio m-line of an offer, as the robot answers it (protocol.md 7.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioLine {
    /// Its m-line index.
    pub mline: u32,
    /// The payload type of its `opus/48000/2` format, if it offers Opus.
    pub opus_pt: Option<u8>,
    /// The phone sends on it (`sendrecv` or `sendonly`; `sendrecv` when absent).
    pub phone_sends: bool,
    /// The phone receives on it (`sendrecv` or `recvonly`).
    pub phone_receives: bool,
}

impl AudioLine {
    fn of(mline: u32, media: &gst_sdp::SDPMediaRef) -> AudioLine {
        let opus_pt = media.formats().filter_map(|f| f.parse::<u8>().ok()).find(|pt| {
            let prefix = format!("{pt} ");
            media.attributes().filter(|a| a.key() == "rtpmap").any(|a| {
                a.value()
                    .and_then(|v| v.strip_prefix(&prefix))
                    .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("opus/48000"))
            })
        });
        let dir = ["sendrecv", "sendonly", "recvonly", "inactive"]
            .into_iter()
            .find(|d| media.attributes().any(|a| a.key() == *d))
            .unwrap_or("sendrecv");
        AudioLine {
            mline,
            opus_pt,
            phone_sends: matches!(dir, "sendrecv" | "sendonly"),
            phone_receives: matches!(dir, "sendrecv" | "recvonly"),
        }
    }
}

/// Check an offer: parseable, a sha-256 fingerprint, and a video m-line with
/// H.264 packetization-mode=1 constrained baseline. The first such format wins.
pub fn check_offer(sdp: &str) -> Result<OfferInfo, SdpError> {
    super::init().map_err(|_| SdpError::Parse)?;
    let msg = gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()).map_err(|_| SdpError::Parse)?;
    let fingerprint = offer_fingerprint(sdp)?;
    let (mline, video) = msg.medias().enumerate().find(|(_, m)| m.media() == Some("video")).ok_or(SdpError::NoVideo)?;
    let mut payload_type = None;
    for format in video.formats() {
        let Ok(pt) = format.parse::<u8>() else { continue };
        if h264_format_ok(video, pt) {
            payload_type = Some(pt);
            break;
        }
    }
    let payload_type = payload_type.ok_or(SdpError::NoCommonCodec)?;
    let twcc_id = video.attributes().filter(|a| a.key() == "extmap").find_map(|a| {
        let v = a.value()?;
        let (id, rest) = v.split_once(' ')?;
        let uri = rest.split_whitespace().next()?;
        (uri == TWCC_URI).then(|| id.split('/').next()?.parse::<u8>().ok()).flatten()
    });
    let audio = msg
        .medias()
        .enumerate()
        .find(|(_, m)| m.media() == Some("audio") && m.port() != 0)
        .map(|(i, m)| AudioLine::of(i as u32, m));
    Ok(OfferInfo {
        audio,
        payload_type,
        mid: video.attribute_val("mid").map(str::to_owned),
        mline: mline as u32,
        twcc_id,
        fingerprint,
    })
}

/// `a=rtpmap:<pt> H264/90000` and `a=fmtp:<pt> …packetization-mode=1…profile-level-id=42e0xx|42c0xx`.
fn h264_format_ok(media: &gst_sdp::SDPMediaRef, pt: u8) -> bool {
    let prefix = format!("{pt} ");
    let attr = |key: &str| {
        media.attributes().filter(|a| a.key() == key).find_map(|a| a.value().and_then(|v| v.strip_prefix(&prefix)))
    };
    let Some(rtpmap) = attr("rtpmap") else { return false };
    if !rtpmap.trim().eq_ignore_ascii_case("H264/90000") {
        return false;
    }
    let Some(fmtp) = attr("fmtp") else { return false };
    let mut pm1 = false;
    let mut cb = false;
    for param in fmtp.split(';') {
        let Some((k, v)) = param.trim().split_once('=') else { continue };
        match k.trim().to_ascii_lowercase().as_str() {
            "packetization-mode" => pm1 = v.trim() == "1",
            "profile-level-id" => cb = constrained_baseline(v.trim()),
            _ => {}
        }
    }
    pm1 && cb
}

/// profile_idc 0x42 (baseline) with constraint_set1 (bit 0x40) set: the
/// constrained-baseline family (42e0xx, 42c0xx).
fn constrained_baseline(profile_level_id: &str) -> bool {
    if profile_level_id.len() != 6 {
        return false;
    }
    let Ok(v) = u32::from_str_radix(profile_level_id, 16) else { return false };
    let idc = v >> 16;
    let constraints = (v >> 8) & 0xff;
    idc == 0x42 && constraints & 0x40 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = include_str!("../../docs/design/webrtc-experiments/chrome_offer.sdp");

    #[test]
    fn the_chromium_offer_gives_its_constrained_baseline_pm1_format() {
        let info = check_offer(CHROME).unwrap();
        // 102 is 42001f (baseline, not constrained), 104 and 108 are mode 0: 106 is the one.
        assert_eq!(info.payload_type, 106);
        assert_eq!(info.mid.as_deref(), Some("1"));
        assert_eq!(info.mline, 1);
        assert_eq!(info.twcc_id, Some(3));
        let audio = AudioLine { mline: 0, opus_pt: Some(111), phone_sends: true, phone_receives: true };
        assert_eq!(info.audio, Some(audio));
        assert_eq!(
            info.fingerprint.as_str(),
            "11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00"
        );
    }

    #[test]
    fn the_audio_line_says_who_sends_and_whether_opus_is_offered() {
        let recvonly = CHROME.replacen("a=sendrecv", "a=recvonly", 1);
        let a = check_offer(&recvonly).unwrap().audio.unwrap();
        assert!(!a.phone_sends && a.phone_receives);
        let no_opus = CHROME.replace("opus/48000/2", "foo/48000/2");
        assert_eq!(check_offer(&no_opus).unwrap().audio.unwrap().opus_pt, None);
        let rejected = CHROME.replace("m=audio 9 ", "m=audio 0 ");
        assert_eq!(check_offer(&rejected).unwrap().audio, None);
    }

    #[test]
    fn offers_without_a_usable_h264_format_are_refused() {
        // Only the mode-0 formats left: drop every fmtp with packetization-mode=1.
        let no_pm1: String = CHROME
            .lines()
            .filter(|l| !(l.starts_with("a=fmtp:") && l.contains("packetization-mode=1")))
            .map(|l| format!("{l}\r\n"))
            .collect();
        assert_eq!(check_offer(&no_pm1), Err(SdpError::NoCommonCodec));
        let no_video: String = CHROME.split("m=video").next().unwrap().to_owned();
        assert_eq!(check_offer(&no_video), Err(SdpError::NoVideo));
        assert!(check_offer("not an sdp").is_err());
    }

    #[test]
    fn fingerprints_must_be_sha256_and_agree() {
        assert_eq!(offer_fingerprint("v=0\r\n"), Err(SdpError::NoFingerprint));
        assert!(matches!(
            offer_fingerprint("a=fingerprint:sha-1 11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44\r\n"),
            Err(SdpError::UnsupportedHash(h)) if h == "sha-1"
        ));
        assert_eq!(offer_fingerprint("a=fingerprint:sha-256 11:22\r\n"), Err(SdpError::BadFingerprint));
        let a = "a=fingerprint:sha-256 ".to_owned() + &["ab"; 32].join(":");
        let b = "a=fingerprint:sha-256 ".to_owned() + &["cd"; 32].join(":");
        assert_eq!(offer_fingerprint(&a).unwrap().as_str(), ["AB"; 32].join(":"));
        assert_eq!(offer_fingerprint(&format!("{a}\r\n{a}\r\n")).unwrap().as_str(), ["AB"; 32].join(":"));
        assert_eq!(offer_fingerprint(&format!("{a}\r\n{b}\r\n")), Err(SdpError::ConflictingFingerprints));
    }

    #[test]
    fn pem_fingerprint_is_sha256_of_the_der() {
        let der = [0x30u8, 0x03, 0x02, 0x01, 0x05];
        let b64 = data_encoding::BASE64.encode(&der);
        let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
        assert_eq!(pem_fingerprint(&pem), Some(Fingerprint::of_der(&der)));
        let hex = Fingerprint::of_der(&der);
        assert_eq!(hex.as_str().len(), 32 * 3 - 1);
        assert_eq!(pem_fingerprint("garbage"), None);
        assert_eq!(pem_fingerprint("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----"), None);
    }

    #[test]
    fn constrained_baseline_is_42_with_constraint_set1() {
        for ok in ["42e01f", "42c01f", "42E01F", "42c00c"] {
            assert!(constrained_baseline(ok), "{ok}");
        }
        for bad in ["42001f", "4d001f", "64001f", "42e0", "zzzzzz"] {
            assert!(!constrained_baseline(bad), "{bad}");
        }
    }
}
