use super::*;

const CHROME_OFFER: &str = include_str!("../../../docs/design/webrtc-experiments/chrome_offer.sdp");

fn offer(sdp: &str) -> SessionDescription {
    SessionDescription { kind: "offer".into(), sdp: sdp.into() }
}

fn invite(sdp: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "v": 2,
        "sdp": {"type": "offer", "sdp": sdp},
        "video": {"max_width": 1280, "max_height": 720, "max_fps": 30, "max_kbps": 2500}
    }))
    .unwrap()
}

fn invalid(r: Result<InviteV2, InviteError>) -> String {
    match r {
        Err(InviteError::Invalid(d)) => d,
        other => panic!("expected invalid_request, got {other:?}"),
    }
}

#[test]
fn a_chromium_offer_is_accepted_and_its_fingerprint_read() {
    assert!(is_v2(&invite(CHROME_OFFER)));
    let inv = InviteV2::parse(&invite(CHROME_OFFER)).unwrap();
    assert_eq!(
        inv.fingerprint(),
        "11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00"
    );
    let v = inv.negotiate(VideoParams { width: 1920, height: 1080, fps: 60, kbps: 4000 });
    assert_eq!(v, VideoParams { width: 1280, height: 720, fps: 30, kbps: 2500 });
}

#[test]
fn v1_invites_are_not_v2() {
    assert!(!is_v2(br#"{"media":{"host":"127.0.0.1","port":5004},"video":{}}"#));
    assert!(!is_v2(br#"{"v":1}"#));
    assert!(!is_v2(b"not json"));
}

#[test]
fn offers_without_what_the_robot_needs_are_refused_with_a_reason() {
    let no_fp = CHROME_OFFER.replace("a=fingerprint:sha-256", "a=fingerprint:sha-1");
    assert!(invalid(InviteV2::parse(&invite(&no_fp))).contains("sha-256"));
    let short_fp = CHROME_OFFER.replace(":EE:FF:00\n", ":EE:FF\n");
    assert!(invalid(InviteV2::parse(&invite(&short_fp))).contains("fingerprint"));
    let audio_only = CHROME_OFFER.replace("m=video", "m=text");
    assert!(invalid(InviteV2::parse(&invite(&audio_only))).contains("video m-line"));
    let vp8_only = CHROME_OFFER.replace("H264/90000", "VP8/90000");
    assert_eq!(InviteV2::parse(&invite(&vp8_only)), Err(InviteError::NoCommonCodec));
    let huge = format!("{CHROME_OFFER}{}", "a=x\r\n".repeat(MAX_SDP / 5));
    assert!(invalid(InviteV2::parse(&invite(&huge))).contains("12000"));
    assert!(invalid(InviteV2::parse(&invite("hello"))).contains("v=0"));
    let mut answer = serde_json::from_slice::<Value>(&invite(CHROME_OFFER)).unwrap();
    answer["sdp"]["type"] = "answer".into();
    assert!(invalid(InviteV2::parse(answer.to_string().as_bytes())).contains("offer"));
    let mut small = serde_json::from_slice::<Value>(&invite(CHROME_OFFER)).unwrap();
    small["video"]["max_kbps"] = 10.into();
    assert!(invalid(InviteV2::parse(small.to_string().as_bytes())).contains("too small"));
    assert!(check_offer(&offer(CHROME_OFFER)).is_ok());
}

#[test]
fn the_accept_carries_the_answer_and_the_video() {
    let a = accepted(&[0xab; 16], "v=0\r\n", VideoParams { width: 640, height: 480, fps: 15, kbps: 800 });
    assert_eq!(a["status"], "accepted");
    assert_eq!(a["v"], 2);
    assert_eq!(a["nonce"], "ab".repeat(16));
    assert_eq!(a["sdp"], json!({"type": "answer", "sdp": "v=0\r\n"}));
    assert_eq!(a["video"], json!({"width": 640, "height": 480, "fps": 15, "kbps": 800}));
}

fn cand(line: &str) -> Candidate {
    Candidate { mline: 0, candidate: line.into() }
}

#[test]
fn good_candidates_pass() {
    for line in [
        "candidate:1 1 udp 2122260223 192.0.2.7 54321 typ host",
        "a=candidate:1 1 UDP 2122260223 198.51.100.20 54321 typ srflx raddr 192.168.77.2 rport 40000",
        "candidate:3 1 tcp 1518280447 10.77.0.2 9 typ host tcptype active",
        "candidate:4 1 udp 41885439 198.51.100.10 50000 typ relay raddr 0.0.0.0 rport 0",
        "candidate:5 1 udp 2122262783 2001:db8::7 54321 typ host",
        "candidate:6 1 udp 2122260223 0c1b1e5a-7d7e-4e0b-9c5e-1f2a3b4c5d6e.local 54321 typ host",
        "candidate:7 1 udp 2122260223 127.0.0.1 54321 typ host",
    ] {
        assert_eq!(check_candidate(&cand(line)), Ok(()), "{line}");
    }
}

#[test]
fn bad_candidates_are_refused_saying_why() {
    for (line, why) in [
        ("candidate:1 1 udp 2122260223 224.0.0.1 54321 typ host", "multicast"),
        ("candidate:1 1 udp 2122260223 ::ffff:224.0.0.1 54321 typ host", "IPv4"),
        ("candidate:1 1 udp 2122260223 255.255.255.255 54321 typ host", "broadcast"),
        ("candidate:1 1 udp 2122260223 0.0.0.0 54321 typ host", "unspecified"),
        ("candidate:1 1 udp 2122260223 169.254.1.1 54321 typ host", "link-local"),
        ("candidate:1 1 udp 2122260223 fe80::1 54321 typ host", "link-local"),
        ("candidate:1 1 sctp 2122260223 192.0.2.7 54321 typ host", "not a candidate"),
        ("candidate:1 1 udp 2122260223 192.0.2.7 54321 typ weird", "not a candidate"),
        ("candidate:1 1 udp 2122260223 192.0.2.7 0 typ host", "not a candidate"),
        ("candidate:1 1 udp 2122260223 192.0.2.7 70000 typ host", "not a candidate"),
        ("candidate:1 1 udp 192.0.2.7 54321 typ host", "not a candidate"),
        ("hello", "not a candidate"),
        ("candidate:1 1 udp 2122260223 evil.example.com 54321 typ host", "neither"),
        ("candidate:1 1 udp 2122260223 .local 54321 typ host", "neither"),
    ] {
        let e = check_candidate(&cand(line)).unwrap_err();
        assert!(e.contains(why), "{line}: {e}");
    }
    let long = format!("candidate:1 1 udp 1 192.0.2.7 5 typ host {}", "x".repeat(MAX_CANDIDATE_LEN));
    assert!(check_candidate(&cand(&long)).unwrap_err().contains("over"));
    assert!(check_candidate(&Candidate { mline: 8, candidate: "x".into() }).unwrap_err().contains("mline"));
}

#[test]
fn candidate_messages_are_bounded() {
    let one = json!({"mline": 0, "candidate": "candidate:1 1 udp 2122260223 192.0.2.7 54321 typ host"});
    let ok = json!({"gen": 0, "candidates": [one.clone()], "end": true});
    let c = IceCandidates::parse(ok.to_string().as_bytes()).unwrap();
    assert!(c.end && c.candidates.len() == 1);
    let many = json!({"gen": 0, "candidates": vec![one; MAX_CANDIDATES + 1]});
    assert!(IceCandidates::parse(many.to_string().as_bytes()).unwrap_err().contains("at most"));
    let no_end = json!({"gen": 1, "candidates": []});
    assert!(!IceCandidates::parse(no_end.to_string().as_bytes()).unwrap().end);
    assert!(IceCandidates::parse(b"[]").is_err());
}
