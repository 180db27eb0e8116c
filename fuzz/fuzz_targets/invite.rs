//! Invite payloads: `Invite::parse` (version 1) and `InviteV2::parse`
//! (version 2), then negotiation.
//!
//! Invariants: an accepted invite has a unicast media host, non-zero ports,
//! H264 among its codecs and maxima at least the robot's minima; it
//! serialises and parses back to itself; negotiation never exceeds the
//! phone's maxima nor the robot's limits, and sizes are even.
#![no_main]

use libfuzzer_sys::fuzz_target;
use robotd::wire::payloads::{self as pl, Invite, InviteError, VideoParams};
use robotd::wire::webrtc::{self, InviteV2};

/// A v2 invite the robot takes has an offer within bounds, with a SHA-256
/// fingerprint and H264; it serialises and parses back to itself.
fn check_v2(data: &[u8]) {
    let Ok(inv) = InviteV2::parse(data) else { return };
    assert!(webrtc::is_v2(data));
    assert_eq!(inv.sdp.kind, "offer");
    assert!(inv.sdp.sdp.len() <= webrtc::MAX_SDP);
    assert_eq!(inv.fingerprint().len(), 95);
    let again = serde_json::to_vec(&inv).expect("invite serialises");
    assert_eq!(InviteV2::parse(&again).map_err(|e| e.reason()), Ok(inv.clone()));
    let p = inv.negotiate(VideoParams { width: 1280, height: 720, fps: 30, kbps: 2000 });
    assert!(p.width <= inv.video.max_width.max(pl::MIN_WIDTH) && p.kbps <= inv.video.max_kbps.max(pl::MIN_KBPS));
}

fuzz_target!(|data: &[u8]| {
    check_v2(data);
    let inv = match Invite::parse(data) {
        Ok(inv) => inv,
        Err(e) => {
            assert!(matches!(e.reason(), "invalid_request" | "no_common_codec"));
            return;
        }
    };
    assert_ne!(inv.media.port, 0);
    assert_ne!(inv.media.audio_port, Some(0));
    assert!(pl::media_host_problem(inv.media.host).is_none(), "{}", inv.media.host);
    assert!(inv.video.codecs.iter().any(|c| c.eq_ignore_ascii_case("h264")));
    let v = &inv.video;
    assert!(v.max_width >= pl::MIN_WIDTH && v.max_height >= pl::MIN_HEIGHT);
    assert!(v.max_fps >= 1 && v.max_kbps >= pl::MIN_KBPS);
    let _ = inv.wants_audio();

    let again = serde_json::to_vec(&inv).expect("invite serialises");
    assert_eq!(Invite::parse(&again).map_err(|e: InviteError| e.reason()), Ok(inv.clone()));

    // The robot's preference comes from a validated config: even sizes within the limits.
    for preferred in [
        VideoParams { width: 1280, height: 720, fps: 30, kbps: 2000 },
        VideoParams { width: pl::MAX_WIDTH, height: pl::MAX_HEIGHT, fps: pl::MAX_FPS, kbps: pl::MAX_KBPS },
        VideoParams { width: pl::MIN_WIDTH, height: pl::MIN_HEIGHT, fps: 1, kbps: pl::MIN_KBPS },
        VideoParams { width: 160, height: 1080, fps: 7, kbps: 333 },
    ] {
        let p = inv.negotiate(preferred);
        assert!(p.width % 2 == 0 && p.height % 2 == 0, "{p:?}");
        assert!((pl::MIN_WIDTH..=pl::MAX_WIDTH.min(v.max_width)).contains(&p.width), "{p:?} {v:?}");
        assert!((pl::MIN_HEIGHT..=pl::MAX_HEIGHT.min(v.max_height)).contains(&p.height), "{p:?} {v:?}");
        assert!((1..=pl::MAX_FPS.min(v.max_fps)).contains(&p.fps), "{p:?} {v:?}");
        assert!((pl::MIN_KBPS..=pl::MAX_KBPS.min(v.max_kbps)).contains(&p.kbps), "{p:?} {v:?}");
        assert!(p.width <= preferred.width && p.height <= preferred.height, "{p:?} {preferred:?}");
    }
});
