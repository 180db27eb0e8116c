//! Pairing requests through `PairingWindows::handle`, with arbitrary fields,
//! against a reference model of the window (protocol 6.1, 6.4, 6.5).
//!
//! The fuzzer drives a sequence of opens, closes, clock steps and requests.
//! A request's MAC is either computed with the open window's secret (so the
//! checks after the MAC are reached), with another key, absent, or arbitrary
//! text. Every outcome must be the model's: in particular a phone pairs only
//! with the window's secret, a fresh `ts` and a `seq` above every one that
//! passed the MAC before in this window (an earlier window's requests fail the
//! new secret's MAC), the window closes
//! on the first success and after `max_failures` failures, and the key is
//! the one the phone derives.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use robotd::wire::freshness::MAX_SKEW_MS;
use robotd::wire::keys::owner_key;
use robotd::wire::mac::{self, MacInput};
use robotd::wire::identity::ClientId;
use robotd::wire::nickname::MAX_CHARS as MAX_NICKNAME_CHARS;
use robotd::wire::pairing::{
    DEFAULT_MAX_FAILURES, MAX_WINDOW, PairOutcome, PairRequest, PairingWindows, Reject, WindowStatus,
};
use robotd::wire::props::SignedMessage;
use robotd::wire::topics;

#[derive(Arbitrary, Debug)]
enum TopicChoice {
    Right,
    OtherRobot,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum FromChoice {
    Phone,
    Missing,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum TsChoice {
    /// now + delta (ms); within ±60 s for small deltas.
    Near(i32),
    Missing,
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum MacChoice {
    WindowSecret,
    Key([u8; 16]),
    Missing,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum PayloadChoice {
    Good { nickname: String, nonce: [u8; 16] },
    Fields { nickname: String, nonce: String },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Req {
    /// One of four phones, so sequence numbers collide.
    phone: u8,
    topic: TopicChoice,
    from: FromChoice,
    seq: Option<u64>,
    ts: TsChoice,
    mac: MacChoice,
    payload: PayloadChoice,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Open {
        secret: [u8; 16],
    },
    Close,
    Advance {
        ms: u32,
    },
    Request(Req),
    /// Send the last request again, byte for byte (a replay).
    Replay,
}

#[derive(Arbitrary, Debug)]
struct Input {
    window_s: u16,
    max_failures: u8,
    start_ms: u32,
    ops: Vec<Op>,
}

/// The model of the window.
#[derive(Debug, Clone, PartialEq)]
enum State {
    NeverOpened,
    Open { secret: [u8; 16], expires: u64, failures: u32 },
    Closed { too_many: bool },
}

struct Msg {
    phone: ClientId,
    topic: String,
    from: Option<String>,
    seq: Option<u64>,
    ts: Option<u64>,
    mac: Option<String>,
    payload: Vec<u8>,
    /// The payload is one robotd must accept (Some(nickname, nonce)), must refuse (None),
    /// or the model does not know (Raw bytes).
    expect_payload: Option<Option<(String, [u8; 16])>>,
}

fn is_bidi(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// docs/protocol.md 6.3: 1 to 64 characters after trimming, no control
/// characters; bidi controls accepted but removed.
fn nickname_ok(raw: &str) -> Option<String> {
    let n = raw.trim();
    let c = n.chars().count();
    (c >= 1 && c <= MAX_NICKNAME_CHARS && !n.chars().any(char::is_control))
        .then(|| n.chars().filter(|&c| !is_bidi(c)).collect::<String>().trim().to_owned())
}

/// What a paired nickname may look like, whatever was sent.
fn nickname_is_clean(n: &str) -> bool {
    n.trim() == n && n.chars().count() <= MAX_NICKNAME_CHARS && !n.chars().any(|c| c.is_control() || is_bidi(c))
}

fn build(robot: &ClientId, state: &State, now: u64, r: Req) -> Msg {
    let phone = ClientId::from_bytes([r.phone % 4; 16]);
    let topic = match r.topic {
        TopicChoice::Right => topics::pair_request(robot, &phone),
        TopicChoice::OtherRobot => topics::pair_request(&ClientId::from_bytes([0xee; 16]), &phone),
        TopicChoice::Raw(s) => s,
    };
    let from = match r.from {
        FromChoice::Phone => Some(phone.to_string()),
        FromChoice::Missing => None,
        FromChoice::Raw(s) => Some(s),
    };
    let ts = match r.ts {
        TsChoice::Near(d) => Some(now.saturating_add_signed(i64::from(d))),
        TsChoice::Missing => None,
        TsChoice::Raw(t) => Some(t),
    };
    let (payload, expect_payload) = match r.payload {
        PayloadChoice::Good { nickname, nonce } => {
            let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
            let p = serde_json::json!({ "nickname": nickname, "nonce": hex });
            (serde_json::to_vec(&p).unwrap(), Some(nickname_ok(&nickname).map(|n| (n, nonce))))
        }
        PayloadChoice::Fields { nickname, nonce } => {
            let p = serde_json::json!({ "nickname": nickname, "nonce": nonce });
            (serde_json::to_vec(&p).unwrap(), None)
        }
        PayloadChoice::Raw(b) => (b, None),
    };
    let window_secret = match state {
        State::Open { secret, .. } => *secret,
        _ => [0; 16],
    };
    let mac = match r.mac {
        MacChoice::Missing => None,
        MacChoice::Raw(s) => Some(s),
        choice => {
            let key = if let MacChoice::Key(k) = choice { k } else { window_secret };
            let input = MacInput {
                topic: &topic,
                from: from.as_deref().unwrap_or(""),
                seq: r.seq.unwrap_or(0),
                ts_ms: ts.unwrap_or(0),
                payload: &payload,
            };
            Some(mac::compute(&key, &input))
        }
    };
    Msg { phone, topic, from, seq: r.seq, ts, mac, payload, expect_payload }
}

fuzz_target!(|inp: Input| {
    let robot = ClientId::from_bytes([0x42; 16]);
    let window = Duration::from_secs(u64::from(inp.window_s));
    let max_failures = u32::from(inp.max_failures);
    let mut w = PairingWindows::new(window, max_failures);
    let window_ms = window.min(MAX_WINDOW).as_millis() as u64;
    let max_failures = max_failures.clamp(1, DEFAULT_MAX_FAILURES);
    let mut now = 1_764_072_000_000 + u64::from(inp.start_ms);
    let mut state = State::NeverOpened;
    let mut last_seq: HashMap<ClientId, u64> = HashMap::new();
    let mut last: Option<Msg> = None;

    for op in inp.ops {
        let msg = match op {
            Op::Open { secret } => {
                let exp = w.open(now, secret);
                assert_eq!(exp, now + window_ms);
                state = State::Open { secret, expires: exp, failures: 0 };
                // The seq memory belongs to a window (protocol 5.5, version 1.1):
                // an earlier window's requests fail the new secret's MAC anyway.
                last_seq.clear();
                continue;
            }
            Op::Close => {
                w.close();
                if matches!(state, State::Open { .. }) {
                    state = State::Closed { too_many: false };
                }
                continue;
            }
            Op::Advance { ms } => {
                now += u64::from(ms);
                continue;
            }
            Op::Request(r) => build(&robot, &state, now, r),
            Op::Replay => match last.take() {
                Some(m) => m,
                None => continue,
            },
        };

        // The model's answer.
        if let State::Open { expires, .. } = state {
            if now >= expires {
                state = State::Closed { too_many: false };
            }
        }
        let expected: Result<Option<(String, [u8; 16])>, Reject> = match &mut state {
            State::NeverOpened | State::Closed { too_many: false } => Err(Reject::WindowClosed),
            State::Closed { too_many: true } => Err(Reject::TooManyAttempts),
            State::Open { secret, failures, .. } => {
                let secret = *secret;
                let checked = (|| {
                    if msg.topic != topics::pair_request(&robot, &msg.phone) {
                        return Err(Reject::Malformed);
                    }
                    let (Some(from), Some(seq), Some(ts), Some(m)) = (&msg.from, msg.seq, msg.ts, &msg.mac) else {
                        return Err(Reject::BadMac);
                    };
                    if *from != msg.phone.as_str() {
                        return Err(Reject::BadMac);
                    }
                    let input = MacInput { topic: &msg.topic, from, seq, ts_ms: ts, payload: &msg.payload };
                    if !mac::verify(&secret, &input, m) {
                        return Err(Reject::BadMac);
                    }
                    if ts.abs_diff(now) > MAX_SKEW_MS {
                        return Err(Reject::Stale);
                    }
                    if last_seq.get(&msg.phone).is_some_and(|&l| seq <= l) {
                        return Err(Reject::Stale);
                    }
                    last_seq.insert(msg.phone.clone(), seq);
                    match &msg.expect_payload {
                        Some(Some(p)) => Ok(Some(p.clone())),
                        Some(None) => Err(Reject::Malformed),
                        None => Ok(None), // paired or malformed, the model cannot tell
                    }
                })();
                match checked {
                    Ok(p) => Ok(p),
                    Err(r) => {
                        *failures += 1;
                        if *failures >= max_failures {
                            state = State::Closed { too_many: true };
                            Err(Reject::TooManyAttempts)
                        } else {
                            Err(r)
                        }
                    }
                }
            }
        };
        let req = PairRequest {
            robot_id: &robot,
            phone_id: &msg.phone,
            message: SignedMessage {
                topic: &msg.topic,
                payload: &msg.payload,
                from: msg.from.as_deref(),
                seq: msg.seq,
                ts_ms: msg.ts,
                mac: msg.mac.as_deref(),
            },
        };
        let got = w.handle(now, &req);
        match (expected, &got) {
            (Err(want), PairOutcome::Rejected(r)) => assert_eq!(want, *r, "{msg_topic}", msg_topic = msg.topic),
            (Ok(p), PairOutcome::Paired { phone_id, nickname, key }) => {
                let State::Open { secret, .. } = state else { unreachable!() };
                assert_eq!(phone_id, &msg.phone);
                assert!(nickname_is_clean(nickname), "{nickname:?}");
                let nonce = match p {
                    Some((n, nonce)) => {
                        assert_eq!(&n, nickname);
                        nonce
                    }
                    None => {
                        // Raw payload accepted: the nonce is whatever it held; the key must still be
                        // the one derived from some nonce, checked through the phone side below.
                        let v: serde_json::Value =
                            serde_json::from_slice(&msg.payload).expect("accepted payload is JSON");
                        let hex = v["nonce"].as_str().expect("accepted payload has a nonce");
                        let mut n = [0u8; 16];
                        for (i, b) in n.iter_mut().enumerate() {
                            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
                        }
                        n
                    }
                };
                assert_eq!(*key, owner_key(&secret, &nonce, robot.as_str(), msg.phone.as_str()));
                state = State::Closed { too_many: false };
            }
            (Ok(None), PairOutcome::Rejected(Reject::Malformed | Reject::TooManyAttempts)) => {
                // A raw payload the robot refused: count it as the model's failure.
                let State::Open { failures, .. } = &mut state else { unreachable!() };
                *failures += 1;
                let too_many = *failures >= max_failures;
                assert_eq!(
                    got,
                    PairOutcome::Rejected(if too_many { Reject::TooManyAttempts } else { Reject::Malformed })
                );
                if too_many {
                    state = State::Closed { too_many: true };
                }
            }
            (want, got) => panic!("model says {want:?}, robotd says {got:?} for {:?}", msg.topic),
        }

        // The status agrees with the model.
        match (&state, w.status(now)) {
            (
                State::Open { expires, failures, .. },
                WindowStatus::Open { expires_at_ms, failures: f, max_failures: m, .. },
            ) => {
                assert_eq!((*expires, *failures, max_failures), (expires_at_ms, f, m));
                assert!(f < m);
            }
            (State::Open { .. }, s) => panic!("model open, robotd {s:?}"),
            (_, WindowStatus::Open { .. }) => panic!("model closed, robotd open"),
            _ => {}
        }
        last = Some(msg);
    }
});
