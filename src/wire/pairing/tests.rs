use super::*;
use crate::wire::mac::MacInput;
use crate::wire::props::AuthFields;

const ROBOT: &str = "0123456789abcdef0123456789abcdef";
const PHONE: &str = "36940d0ece18aebf69d0ef6825534e24";
const OTHER_PHONE: &str = "00000000000000000000000000000001";
const BROKER: &str = "mqtt://broker.local:1883";
const T0: u64 = 1_764_072_000_000;
const VECTOR_URI: &str = "robotd://pair?v=1&robot=0123456789abcdef0123456789abcdef\
    &secret=AAAQEAYEAUDAOCAJBIFQYDIOB4&broker=mqtt%3A%2F%2Fbroker.local%3A1883";

fn id(s: &str) -> ClientId {
    s.parse().unwrap()
}

fn vector_secret() -> PairingSecret {
    std::array::from_fn(|i| i as u8)
}

fn vector_nonce() -> [u8; 16] {
    std::array::from_fn(|i| 0xa0 + i as u8)
}

fn uri_with(secret: PairingSecret) -> PairingUri {
    PairingUri { robot: id(ROBOT), secret, broker: BROKER.into() }
}

/// A received message, owning what a [`PairRequest`] borrows.
struct Msg {
    robot: ClientId,
    phone: ClientId,
    topic: String,
    from: Option<String>,
    seq: Option<u64>,
    ts_ms: Option<u64>,
    mac: Option<String>,
    payload: Vec<u8>,
}

impl Msg {
    fn req(&self) -> PairRequest<'_> {
        PairRequest {
            robot_id: &self.robot,
            phone_id: &self.phone,
            message: SignedMessage {
                topic: &self.topic,
                payload: &self.payload,
                from: self.from.as_deref(),
                seq: self.seq,
                ts_ms: self.ts_ms,
                mac: self.mac.as_deref(),
            },
        }
    }
}

/// A request from `phone` as the phone side builds it.
fn request(secret: PairingSecret, phone: &str, seq: u64, ts_ms: u64) -> Msg {
    let phone = id(phone);
    let Signed { topic, payload, props } =
        build_pair_request(&uri_with(secret), &phone, "Alice", vector_nonce(), seq, ts_ms).unwrap();
    let mac = AuthFields::from_properties(Some(&props)).mac.unwrap();
    Msg {
        robot: id(ROBOT),
        from: Some(phone.to_string()),
        phone,
        topic,
        seq: Some(seq),
        ts_ms: Some(ts_ms),
        mac: Some(mac),
        payload,
    }
}

/// An authentic request (valid MAC under `secret`) with an arbitrary payload.
fn signed(secret: PairingSecret, payload: &[u8], seq: u64, ts_ms: u64) -> Msg {
    let mut m = request(secret, PHONE, seq, ts_ms);
    m.payload = payload.to_vec();
    m.mac = Some(mac::compute(&secret, &MacInput { topic: &m.topic, from: PHONE, seq, ts_ms, payload }));
    m
}

fn opened(now_ms: u64) -> PairingWindows {
    let mut w = PairingWindows::default();
    w.open(now_ms, vector_secret());
    w
}

fn rejected(r: Reject) -> PairOutcome {
    PairOutcome::Rejected(r)
}

// --- URI --------------------------------------------------------------------

#[test]
fn uri_matches_the_fixed_expected_string_and_protocol_base32_vector() {
    let uri = uri_with(vector_secret());
    assert_eq!(uri.to_string(), VECTOR_URI);
    assert!(uri.to_string().contains("&secret=AAAQEAYEAUDAOCAJBIFQYDIOB4&"));
    assert_eq!(PairingUri::parse(VECTOR_URI).unwrap(), uri);
}

#[test]
fn uri_roundtrips_awkward_brokers_and_random_secrets() {
    for broker in ["mqtts://[::1]:8883", "mqtt://b.example/~x?a=b&c=d#f", "mqtt://hôte.example:1", "mqtt://a+b.example"]
    {
        let uri = PairingUri { robot: ClientId::random(), secret: rand::random(), broker: broker.into() };
        let text = uri.to_string();
        let query = text.strip_prefix(URI_PREFIX).unwrap();
        assert_eq!(query.matches('&').count(), 3, "{text}");
        assert_eq!(PairingUri::parse(&text).unwrap(), uri, "{text}");
    }
}

#[test]
fn uri_parse_tolerates_surrounding_whitespace_and_unknown_parameters() {
    let uri = PairingUri::parse(&format!("  {VECTOR_URI}&hint=x\n")).unwrap();
    assert_eq!(uri, uri_with(vector_secret()));
}

#[test]
fn uri_parse_rejects_with_a_reason() {
    let good_secret = "AAAQEAYEAUDAOCAJBIFQYDIOB4";
    let b = "mqtt%3A%2F%2Fbroker.local%3A1883";
    let cases: &[(String, &str)] = &[
        (format!("https://pair?v=1&robot={ROBOT}&secret={good_secret}&broker={b}"), "must start with"),
        (format!("robotd://other?v=1&robot={ROBOT}&secret={good_secret}&broker={b}"), "must start with"),
        (format!("robotd://pair?v=2&robot={ROBOT}&secret={good_secret}&broker={b}"), "version \"2\""),
        (format!("robotd://pair?robot={ROBOT}&secret={good_secret}&broker={b}"), "no \"v\""),
        (format!("robotd://pair?v=1&secret={good_secret}&broker={b}"), "no \"robot\""),
        (format!("robotd://pair?v=1&robot={ROBOT}&broker={b}"), "no \"secret\""),
        (format!("robotd://pair?v=1&robot={ROBOT}&secret={good_secret}"), "no \"broker\""),
        (format!("robotd://pair?v=1&v=1&robot={ROBOT}&secret={good_secret}&broker={b}"), "\"v\" field twice"),
        (
            format!("robotd://pair?v=1&robot={}&secret={good_secret}&broker={b}", ROBOT.to_uppercase()),
            "not a client ID",
        ),
        (format!("robotd://pair?v=1&robot=0123&secret={good_secret}&broker={b}"), "not a client ID"),
        (format!("robotd://pair?v=1&robot={ROBOT}&secret={}&broker={b}", good_secret.to_lowercase()), "not base32"),
        (format!("robotd://pair?v=1&robot={ROBOT}&secret=AAAQEAYEAUDAOCAJBIFQYDIOB4======&broker={b}"), "not base32"),
        (format!("robotd://pair?v=1&robot={ROBOT}&secret=AAAQEAYEAUDAOCAJBIFQYDIO&broker={b}"), "15 bytes"),
        (format!("robotd://pair?v=1&robot={ROBOT}&secret=AAAQEAYEAUDAOCAJBIFQYDIOB4AA&broker={b}"), "17 bytes"),
        (format!("robotd://pair?v=1&robot={ROBOT}&secret={good_secret}&broker=mqtt%3"), "percent-encoded"),
        (format!("robotd://pair?v=1&robot={ROBOT}&secret={good_secret}&broker=%ZZ"), "percent-encoded"),
        (format!("robotd://pair?v=1&robot={ROBOT}&secret={good_secret}&broker=%FF"), "percent-encoded"),
        (format!("robotd://pair?v=1&robot={ROBOT}&secret={good_secret}&broker=broker.local"), "not a broker URL"),
        (format!("robotd://pair?v=1&robot={ROBOT}&secret={good_secret}&broker=mqtt%3Ax"), "no host"),
    ];
    for (text, want) in cases {
        let e = PairingUri::parse(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
        assert!(!e.contains("AAAQEAYEAUDAOCAJBIFQYDIO"), "error leaks the secret: {e}");
    }
}

#[test]
fn uri_debug_redacts_the_secret() {
    let dbg = format!("{:?}", uri_with(vector_secret()));
    assert!(dbg.contains("redacted") && !dbg.contains("AAAQ") && !dbg.contains("[0, 1, 2"), "{dbg}");
}

// --- QR ---------------------------------------------------------------------

fn qr_width(data: &str) -> usize {
    QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M).unwrap().width()
}

#[test]
fn terminal_rendering_has_two_modules_per_line_and_a_quiet_zone() {
    let data = VECTOR_URI;
    let side = qr_width(data) + 2 * QR_QUIET_ZONE;
    assert_eq!(side, 45 + 8, "vector URI is a version 7 code");

    let plain = render_plain(data).unwrap();
    let lines: Vec<&str> = plain.lines().collect();
    assert_eq!(lines.len(), side.div_ceil(2));
    assert!(lines.iter().all(|l| l.chars().count() == side));
    // Quiet zone: first two lines blank, each line starts with 4 light columns.
    assert!(lines[..2].iter().all(|l| l.trim().is_empty()));
    assert!(lines.iter().all(|l| l.starts_with("    ") && l.ends_with("    ")));
    // Top-left finder pattern: its dark top row (row 4) over the row with the
    // light ring (row 5) shows as a full block, upper halves, a full block.
    let finder: String = lines[2].chars().skip(4).take(7).collect();
    assert_eq!(finder, "\u{2588}\u{2580}\u{2580}\u{2580}\u{2580}\u{2580}\u{2588}");

    let ansi = render_terminal(data).unwrap();
    let ansi_lines: Vec<&str> = ansi.lines().collect();
    assert_eq!(ansi_lines.len(), lines.len());
    for (a, p) in ansi_lines.iter().zip(&lines) {
        assert_eq!(*a, format!("\x1b[30;107m{p}\x1b[0m"));
    }
}

#[test]
fn png_decodes_with_expected_size_and_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairing-qr.png");
    write_png(VECTOR_URI, &path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = (qr_width(VECTOR_URI) + 2 * QR_QUIET_ZONE) * PNG_SCALE;
    assert_eq!((info.width as usize, info.height as usize), (px, px));
    assert_eq!(px, 53 * 8);
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Grayscale, png::BitDepth::Eight));
    let at = |x: usize, y: usize| buf[y * info.line_size + x];
    assert_eq!(at(0, 0), 255, "quiet zone is light");
    assert_eq!(at(QR_QUIET_ZONE * PNG_SCALE - 1, QR_QUIET_ZONE * PNG_SCALE - 1), 255);
    assert_eq!(at(QR_QUIET_ZONE * PNG_SCALE, QR_QUIET_ZONE * PNG_SCALE), 0, "finder corner is dark");
    assert_eq!(at(px - 1, px - 1), 255);
}

#[test]
fn oversized_data_is_a_qr_error_not_a_panic() {
    let e = render_terminal(&"x".repeat(5000)).unwrap_err();
    assert!(matches!(e, PairingError::Qr(_)), "{e}");
}

// --- protocol vectors, phone and robot agree --------------------------------

#[test]
fn phone_request_matches_protocol_vector_and_robot_derives_the_same_key() {
    let uri = PairingUri::parse(VECTOR_URI).unwrap();
    let phone = id(PHONE);
    let Signed { topic, payload, props } = build_pair_request(&uri, &phone, "Alice", vector_nonce(), T0, T0).unwrap();
    assert_eq!(topic, format!("pair/{ROBOT}/{PHONE}"));
    assert_eq!(payload, br#"{"nickname":"Alice","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}"#);
    let user = |k: &str| props.user_properties.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(user("mac"), Some("ee1e50b7af85f38e6850f1163f0dce2142c56230324a2f851184846a601679c7"));
    assert_eq!((user("from"), user("seq"), user("ts")), (Some(PHONE), Some("1764072000000"), Some("1764072000000")));

    let phone_key = derive_owner_key(&uri, &phone, &vector_nonce());
    assert_eq!(hex::encode(phone_key), "a0369cd9bece6225fa9218e192b9d2f976f5e830a3dc8d76060f9ba004da8f0f");

    let mut windows = opened(T0 - 1000);
    let m = request(vector_secret(), PHONE, T0, T0);
    match windows.handle(T0, &m.req()) {
        PairOutcome::Paired { phone_id, nickname, key } => {
            assert_eq!(phone_id, phone);
            assert_eq!(nickname, "Alice");
            assert_eq!(key, phone_key);
        }
        other => panic!("{other:?}"),
    }
    assert!(!windows.is_open(T0));
    assert_eq!(windows.status(T0), WindowStatus::Closed(CloseReason::Paired { phone_id: phone }));
}

#[test]
fn phone_accepts_the_robots_maced_reply_and_refuses_a_forged_one() {
    let uri = uri_with(vector_secret());
    let phone = id(PHONE);
    let key = derive_owner_key(&uri, &phone, &vector_nonce());
    let topic = topics::pair_response(&uri.robot, &phone);
    let payload = paired_reply(&uri.robot, "Rover");
    let mac_hex = mac::compute(&key, &MacInput { topic: &topic, from: ROBOT, seq: 5, ts_ms: T0, payload: &payload });
    fn msg<'a>(
        topic: &'a str,
        from: Option<&'a str>,
        mac_hex: Option<&'a str>,
        payload: &'a [u8],
    ) -> SignedMessage<'a> {
        SignedMessage { topic, payload, from, seq: Some(5), ts_ms: Some(T0), mac: mac_hex }
    }
    let check = |key: &Key32, from: &str, mac_hex: &str| {
        check_pair_response(&uri, &phone, key, &msg(&topic, Some(from), Some(mac_hex), &payload))
    };
    assert_eq!(check(&key, ROBOT, &mac_hex).unwrap(), PairResponse::Paired { robot_nickname: "Rover".into() });
    let e = check(&[0; 32], ROBOT, &mac_hex).unwrap_err().to_string();
    assert!(e.contains("bad MAC"), "{e}");
    let e = check(&key, PHONE, &mac_hex).unwrap_err().to_string();
    assert!(e.contains("another robot"), "{e}");

    let rej = rejected_reply(Reject::BadMac);
    assert_eq!(
        check_pair_response(&uri, &phone, &key, &msg(&topic, None, None, &rej)).unwrap(),
        PairResponse::Rejected { reason: "bad_mac".into() }
    );
    // A "paired" answer without a MAC is refused.
    assert!(check_pair_response(&uri, &phone, &key, &msg(&topic, None, None, &payload)).is_err());
    // So is one on another phone's topic.
    let other = SignedMessage { topic: "pair/x/y/response", ..msg(&topic, Some(ROBOT), Some(&mac_hex), &payload) };
    assert!(check_pair_response(&uri, &phone, &key, &other).is_err());
}

#[test]
fn replies_have_the_protocol_bytes() {
    assert_eq!(
        paired_reply(&id(ROBOT), "Rover"),
        br#"{"status":"paired","robot":"0123456789abcdef0123456789abcdef","nickname":"Rover"}"#
    );
    assert_eq!(rejected_reply(Reject::Stale), br#"{"status":"rejected","reason":"stale"}"#);
    let all = [
        (Reject::WindowClosed, "window_closed"),
        (Reject::BadMac, "bad_mac"),
        (Reject::Stale, "stale"),
        (Reject::Malformed, "malformed"),
        (Reject::TooManyAttempts, "too_many_attempts"),
    ];
    for (r, s) in all {
        assert_eq!(r.as_str(), s);
        assert_eq!(r.to_string(), s);
    }
}

#[test]
fn phone_side_refuses_nicknames_the_robot_would_refuse_and_trims() {
    let uri = uri_with(vector_secret());
    for bad in ["", "   ", "a\u{1b}[2J", &"x".repeat(65)] {
        let e = build_pair_request(&uri, &id(PHONE), bad, [0; 16], 1, T0).unwrap_err();
        assert!(matches!(e, PairingError::BadNickname { .. }), "{bad:?}: {e}");
    }
    let Signed { payload, .. } = build_pair_request(&uri, &id(PHONE), "  Zoë  ", [0; 16], 1, T0).unwrap();
    assert!(payload.starts_with(br#"{"nickname":"Zo"#) && !payload.starts_with(br#"{"nickname":" "#));
    assert!(build_pair_request(&uri, &id(PHONE), &"é".repeat(64), [0; 16], 1, T0).is_ok());
}

// --- window rules -----------------------------------------------------------

#[test]
fn no_window_means_window_closed_and_costs_nothing() {
    let mut w = PairingWindows::default();
    assert_eq!(w.status(T0), WindowStatus::NeverOpened);
    assert_eq!(w.expires_at_ms(), None);
    let m = request(vector_secret(), PHONE, T0, T0);
    assert_eq!(w.handle(T0, &m.req()), rejected(Reject::WindowClosed));
}

#[test]
fn window_expires_after_its_duration_and_duration_is_capped_at_ten_minutes() {
    let mut w = PairingWindows::new(Duration::from_secs(30), DEFAULT_MAX_FAILURES);
    assert_eq!(w.open(T0, vector_secret()), T0 + 30_000);
    assert_eq!(w.expires_at_ms(), Some(T0 + 30_000));
    assert!(w.is_open(T0 + 29_999));
    assert!(!w.is_open(T0 + 30_000));
    assert_eq!(w.status(T0 + 30_000), WindowStatus::Closed(CloseReason::Expired));
    let late = request(vector_secret(), PHONE, T0 + 30_000, T0 + 30_000);
    assert_eq!(w.handle(T0 + 30_000, &late.req()), rejected(Reject::WindowClosed));
    assert_eq!(w.expires_at_ms(), None);

    let mut w = PairingWindows::new(Duration::from_secs(3600), DEFAULT_MAX_FAILURES);
    assert_eq!(w.open(T0, vector_secret()), T0 + 600_000);
    let m = request(vector_secret(), PHONE, T0 + 599_999, T0 + 599_999);
    assert!(matches!(w.handle(T0 + 599_999, &m.req()), PairOutcome::Paired { .. }));
}

#[test]
fn wrong_secret_is_bad_mac() {
    let mut w = opened(T0);
    let m = request([0xee; 16], PHONE, T0, T0);
    assert_eq!(w.handle(T0, &m.req()), rejected(Reject::BadMac));
    assert!(matches!(w.status(T0), WindowStatus::Open { failures: 1, .. }));
}

#[test]
fn twenty_failures_close_the_window_with_too_many_attempts_until_a_new_one() {
    let mut w = opened(T0);
    for i in 0..19 {
        let m = request([0xee; 16], PHONE, T0 + i, T0);
        assert_eq!(w.handle(T0, &m.req()), rejected(Reject::BadMac), "attempt {}", i + 1);
    }
    assert!(matches!(w.status(T0), WindowStatus::Open { failures: 19, max_failures: 20, .. }));
    let twentieth = signed(vector_secret(), b"not json", T0 + 100, T0);
    assert_eq!(w.handle(T0, &twentieth.req()), rejected(Reject::TooManyAttempts));
    assert!(!w.is_open(T0));
    assert_eq!(w.status(T0), WindowStatus::Closed(CloseReason::TooManyAttempts));
    // Even a perfect request now gets too_many_attempts, not window_closed.
    let good = request(vector_secret(), PHONE, T0 + 200, T0);
    assert_eq!(w.handle(T0, &good.req()), rejected(Reject::TooManyAttempts));
    // A new window starts afresh.
    w.open(T0, [0x42; 16]);
    let good = request([0x42; 16], PHONE, T0 + 300, T0);
    assert!(matches!(w.handle(T0, &good.req()), PairOutcome::Paired { .. }));
}

#[test]
fn every_failure_kind_counts_but_window_closed_does_not() {
    let mut w = PairingWindows::new(MAX_WINDOW, 3);
    let mut closed = PairingWindows::default();
    let m = request(vector_secret(), PHONE, T0, T0);
    for _ in 0..5 {
        assert_eq!(closed.handle(T0, &m.req()), rejected(Reject::WindowClosed));
    }
    w.open(T0, vector_secret());
    assert_eq!(w.handle(T0, &request([1; 16], PHONE, T0, T0).req()), rejected(Reject::BadMac));
    assert_eq!(w.handle(T0, &request(vector_secret(), PHONE, T0, T0 + 61_000).req()), rejected(Reject::Stale));
    assert_eq!(w.handle(T0, &signed(vector_secret(), b"[]", T0 + 1, T0).req()), rejected(Reject::TooManyAttempts));
}

#[test]
fn a_new_window_voids_the_old_secret() {
    let mut w = opened(T0);
    w.open(T0 + 1000, [0x42; 16]);
    let old = request(vector_secret(), PHONE, T0, T0);
    assert_eq!(w.handle(T0 + 1000, &old.req()), rejected(Reject::BadMac));
    let new = request([0x42; 16], PHONE, T0 + 1, T0);
    assert!(matches!(w.handle(T0 + 1000, &new.req()), PairOutcome::Paired { .. }));
}

#[test]
fn second_pairing_with_a_used_secret_fails() {
    let mut w = opened(T0);
    let first = request(vector_secret(), PHONE, T0, T0);
    assert!(matches!(w.handle(T0, &first.req()), PairOutcome::Paired { .. }));
    let second = request(vector_secret(), OTHER_PHONE, T0 + 1, T0 + 1);
    assert_eq!(w.handle(T0 + 1, &second.req()), rejected(Reject::WindowClosed));
    // Nor does a QoS 1 redelivery of the successful request pair again.
    assert_eq!(w.handle(T0 + 2, &first.req()), rejected(Reject::WindowClosed));
}

#[test]
fn close_by_admin_closes_and_keeps_earlier_reasons() {
    let mut w = opened(T0);
    w.close();
    assert_eq!(w.status(T0), WindowStatus::Closed(CloseReason::ByAdmin));
    assert_eq!(w.handle(T0, &request(vector_secret(), PHONE, T0, T0).req()), rejected(Reject::WindowClosed));
    let mut w = PairingWindows::new(MAX_WINDOW, 1);
    w.open(T0, vector_secret());
    assert_eq!(w.handle(T0, &request([1; 16], PHONE, T0, T0).req()), rejected(Reject::TooManyAttempts));
    w.close();
    assert_eq!(w.status(T0), WindowStatus::Closed(CloseReason::TooManyAttempts));
}

#[test]
fn stale_timestamps_in_both_directions() {
    for (ts, ok) in [(T0 - 60_001, false), (T0 + 60_001, false), (T0 - 60_000, true), (T0 + 60_000, true)] {
        let mut w = opened(T0);
        let m = request(vector_secret(), PHONE, T0, ts);
        let out = w.handle(T0, &m.req());
        if ok {
            assert!(matches!(out, PairOutcome::Paired { .. }), "ts {ts}: {out:?}");
        } else {
            assert_eq!(out, rejected(Reject::Stale), "ts {ts}");
        }
    }
}

#[test]
fn replayed_or_lower_seq_is_stale_within_a_window_and_fails_the_mac_in_the_next() {
    let mut w = opened(T0);
    // Authentic but malformed: its seq is recorded all the same.
    let first = signed(vector_secret(), b"{}", 10, T0);
    assert_eq!(w.handle(T0, &first.req()), rejected(Reject::Malformed));
    assert_eq!(w.handle(T0, &first.req()), rejected(Reject::Stale));
    assert_eq!(w.handle(T0, &request(vector_secret(), PHONE, 9, T0).req()), rejected(Reject::Stale));
    // Replayed into the next window: the new secret's MAC refuses it (and the
    // seq memory starts afresh, so no one can poison a phone's counter).
    w.open(T0, [0x42; 16]);
    assert_eq!(w.handle(T0, &first.req()), rejected(Reject::BadMac));
    assert!(matches!(w.handle(T0, &request([0x42; 16], PHONE, 5, T0).req()), PairOutcome::Paired { .. }));
    // Within one window the seq memory refuses a replay.
    let captured = request([0x43; 16], PHONE, 20, T0);
    w.open(T0, [0x43; 16]);
    assert_eq!(w.handle(T0, &signed([0x43; 16], b"{}", 20, T0).req()), rejected(Reject::Malformed));
    assert_eq!(w.handle(T0, &captured.req()), rejected(Reject::Stale));
    // Another phone has its own counter.
    assert!(matches!(w.handle(T0, &request([0x43; 16], OTHER_PHONE, 1, T0).req()), PairOutcome::Paired { .. }));
}

#[test]
fn forged_requests_do_not_advance_the_seq() {
    let mut w = opened(T0);
    let forged = request([0xee; 16], PHONE, u64::MAX, T0);
    assert_eq!(w.handle(T0, &forged.req()), rejected(Reject::BadMac));
    let stale_ts = request(vector_secret(), PHONE, 1000, T0 - 120_000);
    assert_eq!(w.handle(T0, &stale_ts.req()), rejected(Reject::Stale));
    assert!(matches!(w.handle(T0, &request(vector_secret(), PHONE, 5, T0).req()), PairOutcome::Paired { .. }));
}

#[test]
fn malformed_payloads() {
    let long_nick = format!(r#"{{"nickname":"{}","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}}"#, "x".repeat(65));
    let huge_nick = format!(r#"{{"nickname":"{}","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}}"#, "x".repeat(16_000));
    let cases: Vec<&[u8]> = vec![
        b"not json",
        b"",
        b"[\"Alice\",\"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf\"]",
        b"\"Alice\"",
        br#"{"nickname":"Alice"}"#,
        br#"{"nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}"#,
        br#"{"nickname":"Alice","nonce":"A0A1A2A3A4A5A6A7A8A9AAABACADAEAF"}"#,
        br#"{"nickname":"Alice","nonce":"a0a1a2a3"}"#,
        br#"{"nickname":"Alice","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeafa0"}"#,
        br#"{"nickname":"Alice","nonce":"g0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}"#,
        br#"{"nickname":"Alice","nonce":16}"#,
        br#"{"nickname":42,"nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}"#,
        br#"{"nickname":"   ","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}"#,
        br#"{"nickname":"A\u001b[2J","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}"#,
        br#"{"nickname":"Alice","nickname":"Eve","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}"#,
        br#"{"nickname":"Alice","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"} x"#,
        long_nick.as_bytes(),
        huge_nick.as_bytes(),
    ];
    for (i, payload) in cases.iter().enumerate() {
        let mut w = opened(T0);
        let m = signed(vector_secret(), payload, 1, T0);
        assert_eq!(
            w.handle(T0, &m.req()),
            rejected(Reject::Malformed),
            "case {i}: {}",
            String::from_utf8_lossy(payload)
        );
    }
}

#[test]
fn acceptable_payload_variants() {
    let ok: [&[u8]; 3] = [
        br#" {"nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf","nickname":"  Alice "} "#,
        br#"{"nickname":"Alice","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf","photo":"x"}"#,
        br#"{"nickname":"Alice","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}"#,
    ];
    for payload in ok {
        let mut w = opened(T0);
        match w.handle(T0, &signed(vector_secret(), payload, 1, T0).req()) {
            PairOutcome::Paired { nickname, .. } => assert_eq!(nickname, "Alice"),
            other => panic!("{}: {other:?}", String::from_utf8_lossy(payload)),
        }
    }
}

#[test]
fn from_must_be_the_phone_in_the_topic() {
    let mut w = opened(T0);
    // Correctly MACed by someone who knows S, but claiming another sender.
    let mut m = request(vector_secret(), PHONE, T0, T0);
    m.from = Some(OTHER_PHONE.into());
    m.mac = Some(mac::compute(
        &vector_secret(),
        &MacInput { topic: &m.topic, from: OTHER_PHONE, seq: T0, ts_ms: T0, payload: &m.payload },
    ));
    assert_eq!(w.handle(T0, &m.req()), rejected(Reject::BadMac));
    m.from = None;
    assert_eq!(w.handle(T0, &m.req()), rejected(Reject::BadMac));
}

#[test]
fn missing_authentication_properties_are_bad_mac() {
    let good = request(vector_secret(), PHONE, T0, T0);
    let strip: [fn(&mut Msg); 3] = [|m| m.mac = None, |m| m.seq = None, |m| m.ts_ms = None];
    for f in strip {
        let mut w = opened(T0);
        let mut m = request(vector_secret(), PHONE, T0, T0);
        f(&mut m);
        assert_eq!(w.handle(T0, &m.req()), rejected(Reject::BadMac));
        assert!(matches!(w.handle(T0, &good.req()), PairOutcome::Paired { .. }));
    }
}

#[test]
fn a_topic_that_does_not_match_the_ids_is_refused() {
    let mut w = opened(T0);
    let mut m = request(vector_secret(), PHONE, T0, T0);
    m.phone = id(OTHER_PHONE);
    assert_eq!(w.handle(T0, &m.req()), rejected(Reject::Malformed));
}

#[test]
fn status_reports_the_open_window_and_secrets_stay_out_of_debug() {
    let mut w = opened(T0);
    let s = w.status(T0 + 5);
    assert_eq!(s, WindowStatus::Open { opened_at_ms: T0, expires_at_ms: T0 + 600_000, failures: 0, max_failures: 20 });
    assert!(s.to_string().contains("0/20"), "{s}");
    assert_eq!(
        serde_json::to_string(&WindowStatus::Closed(CloseReason::Paired { phone_id: id(PHONE) })).unwrap(),
        format!(r#"{{"state":"closed","reason":"paired","phone_id":"{PHONE}"}}"#)
    );
    let out = w.handle(T0, &request(vector_secret(), PHONE, T0, T0).req());
    let dbg = format!("{out:?} {w:?}");
    assert!(dbg.contains("redacted") && !dbg.contains("160"), "{dbg}");
}

mod fuzzlike {
    use super::*;
    use proptest::prelude::*;

    /// Text near the URI grammar: the vector URI with an arbitrary insertion,
    /// or the prefix followed by parameters built from the grammar's pieces.
    fn uriish() -> impl Strategy<Value = String> {
        let param = prop_oneof![
            Just("v=1".to_string()),
            Just(format!("robot={ROBOT}")),
            Just("secret=AAAQEAYEAUDAOCAJBIFQYDIOB4".to_string()),
            Just("broker=mqtt%3A%2F%2Fbroker.local%3A1883".to_string()),
            "[a-z]{1,6}=[A-Za-z0-9%+&=]{0,30}",
            "broker=(%[0-9A-Fa-f]{0,2}|[a-z:/.\\[\\]]){0,20}",
            any::<String>(),
        ];
        prop_oneof![
            (0..VECTOR_URI.len(), any::<String>()).prop_map(|(i, ins)| {
                let i = (0..=i).rev().find(|&i| VECTOR_URI.is_char_boundary(i)).unwrap_or(0);
                format!("{}{}{}", &VECTOR_URI[..i], ins, &VECTOR_URI[i..])
            }),
            prop::collection::vec(param, 0..7).prop_map(|p| format!("{URI_PREFIX}{}", p.join("&"))),
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Never panics; an accepted URI round-trips through Display.
        #[test]
        fn uri_parse_never_panics_and_round_trips(text in uriish()) {
            if let Ok(uri) = PairingUri::parse(&text) {
                let shown = uri.to_string();
                prop_assert_eq!(PairingUri::parse(&shown).unwrap(), uri);
            }
        }

        /// Any broker text survives Display -> parse exactly, or is refused as a broker.
        #[test]
        fn any_broker_text_round_trips_or_is_refused(broker in any::<String>()) {
            let uri = PairingUri { robot: id(ROBOT), secret: vector_secret(), broker: broker.clone() };
            match PairingUri::parse(&uri.to_string()) {
                Ok(back) => prop_assert_eq!(back, uri),
                Err(PairingError::BadBroker { found, .. }) => prop_assert_eq!(found, broker),
                Err(e) => prop_assert!(false, "{}", e),
            }
        }

        /// A pairing request with arbitrary fields never pairs without the
        /// window's secret, and the window never counts more than its limit.
        #[test]
        fn handle_with_arbitrary_fields_never_pairs_without_the_secret(
            from in proptest::option::of(prop_oneof![Just(PHONE.to_string()), any::<String>()]),
            seq in proptest::option::of(any::<u64>()),
            ts in proptest::option::of(prop_oneof![Just(T0), any::<u64>()]),
            mac in proptest::option::of(prop_oneof!["[0-9a-f]{64}", any::<String>()]),
            payload in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut w = opened(T0);
            let m = Msg { robot: id(ROBOT), phone: id(PHONE), topic: topics::pair_request(&id(ROBOT), &id(PHONE)), from, seq, ts_ms: ts, mac, payload };
            for _ in 0..(DEFAULT_MAX_FAILURES + 1) {
                let out = w.handle(T0, &m.req());
                prop_assert!(matches!(out, PairOutcome::Rejected(_)), "{:?}", out);
                if let WindowStatus::Open { failures, max_failures, .. } = w.status(T0) {
                    prop_assert!(failures < max_failures);
                }
            }
            prop_assert_eq!(w.status(T0), WindowStatus::Closed(CloseReason::TooManyAttempts));
        }
    }
}
