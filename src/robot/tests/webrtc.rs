//! Version 2 calls in the core: the offer goes to the media helper, the
//! accept waits for its answer, candidates trickle both ways, and a helper
//! that fails or is slow gets the invite refused, never a half call.

use serde_json::{Value, json};

use super::*;
use crate::robot::{ANSWER_TIMEOUT, CONNECT_TIMEOUT, WebRtcRequest};
use crate::wire::webrtc::Candidate;

const OFFER: &str = include_str!("../../../docs/design/webrtc-experiments/chrome_offer.sdp");
const SESSION: &str = "00112233445566778899aabbccddeeff";
const HOST: &str = "candidate:1 1 udp 2122260223 192.0.2.7 54321 typ host";

impl Rig {
    /// Send a v2 invite; returns what the robot did.
    fn invite_v2(&mut self, phone: &mut PhoneKey, session: &str, sdp: &str) -> Vec<Effect> {
        let topic = topics::invite(&self.robot, &session.parse().unwrap());
        let payload = json!({
            "v": 2,
            "sdp": {"type": "offer", "sdp": sdp},
            "video": {"max_width": 640, "max_height": 480, "max_fps": 15, "max_kbps": 800}
        })
        .to_string();
        phone.seq += 1;
        let ts = self.now().wall_ms;
        let p = props::signed(&phone.key, &topic, phone.id.as_str(), phone.seq, ts, payload.as_bytes(), None);
        self.deliver(&topic, payload.as_bytes(), Some(p))
    }

    /// The helper's answer; returns the accept and the phone's view of the call.
    fn answer(&mut self, phone: &PhoneKey, session: &ClientId) -> (Value, PhoneCall) {
        let fx = self.media(MediaReport::Answer { session: session.clone(), sdp: "v=0\r\nanswer".into() });
        let accept = json_of(&fx, &format!("{}/response", topics::invite(&self.robot, session))).expect("an accept");
        let nonce: [u8; 16] = hex::decode(accept["nonce"].as_str().unwrap()).unwrap().try_into().unwrap();
        let ks = keys::session_key(&phone.key, &session.to_bytes(), &nonce);
        let token = accept["token"].as_str().map(str::to_owned);
        (accept, PhoneCall { session: session.clone(), ks, seq: 0, token })
    }
}

fn invite_answers(r: &Rig, fx: &[Effect], session: &str) -> Vec<Value> {
    jsons_of(fx, &format!("{}/response", topics::invite(&r.robot, &session.parse().unwrap())))
}

fn started(fx: &[Effect]) -> Option<WebRtcRequest> {
    fx.iter().find_map(|e| match e {
        Effect::StartWebRtc(req) => Some(req.clone()),
        _ => None,
    })
}

fn cand(n: u8) -> Candidate {
    Candidate { mline: 0, candidate: format!("candidate:{n} 1 udp 2122260223 192.0.2.{n} 5000 typ host") }
}

#[test]
fn the_accept_waits_for_the_helpers_answer_and_carries_it() {
    let mut r = Rig::new();
    let mut phone = r.pair("+48555555555");
    let fx = r.invite_v2(&mut phone, SESSION, OFFER);
    assert!(invite_answers(&r, &fx, SESSION).is_empty(), "accepted before the helper answered");
    let req = started(&fx).expect("the offer goes to the media helper");
    assert_eq!(req.offer_sdp, OFFER);
    assert_eq!(
        req.fingerprint,
        "11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00"
    );
    assert_eq!((req.video.width, req.video.height, req.video.fps), (640, 480, 15), "{:?}", req.video);
    // Meanwhile a second invite is busy.
    let mut other = r.pair("+48555555556");
    let busy = r.invite_v2(&mut other, "ffeeddccbbaa99887766554433221100", OFFER);
    assert_eq!(invite_answers(&r, &busy, "ffeeddccbbaa99887766554433221100")[0]["status"], "busy");

    let (accept, _) = r.answer(&phone, &req.session);
    assert_eq!(accept["status"], "accepted", "{accept}");
    assert_eq!(accept["v"], 2);
    assert_eq!(accept["sdp"], json!({"type": "answer", "sdp": "v=0\r\nanswer"}));
    assert_eq!(
        accept["video"],
        json!({"width": req.video.width, "height": req.video.height, "fps": 15, "kbps": req.video.kbps})
    );
    assert!(accept["token"].is_string(), "{accept}");
    assert!(accept.get("srtp").is_none(), "no pre-shared SRTP keys in v2: {accept}");
    // A second answer (a confused helper) changes nothing.
    let fx = r.media(MediaReport::Answer { session: req.session.clone(), sdp: "v=0\r\nagain".into() });
    assert_eq!(publishes(&fx), 0);
}

#[test]
fn candidates_are_held_until_the_accept_then_trickled_with_ks() {
    let mut r = Rig::new();
    let mut phone = r.pair("+48555555555");
    let req = started(&r.invite_v2(&mut phone, SESSION, OFFER)).unwrap();
    let early = r.media(MediaReport::LocalCandidates {
        session: req.session.clone(),
        candidates: vec![cand(1), cand(2)],
        end: false,
    });
    assert_eq!(publishes(&early), 0, "candidates before the accept would be unreadable");
    let (_, c) = r.answer(&phone, &req.session);
    let topic = topics::session_response(&c.session, "ice");
    let sent = jsons_of(&r.effects, &topic);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["gen"], 0);
    assert_eq!(sent[0]["candidates"][1]["candidate"], cand(2).candidate);
    assert_eq!(sent[0]["end"], false);
    // After the accept, at once; MAC'd with Ks like every response.
    let fx = r.media(MediaReport::LocalCandidates { session: c.session.clone(), candidates: vec![cand(3)], end: true });
    let (payload, props) = fx
        .iter()
        .find_map(|e| match e {
            Effect::Publish { topic: t, payload, props } if *t == topic => Some((payload.clone(), props.clone())),
            _ => None,
        })
        .unwrap();
    let f = props::AuthFields::from_properties(Some(&props));
    assert!(props::verify(&c.ks, &topic, &payload, &f).is_some(), "not MAC'd with Ks");
    assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap()["end"], true);
}

#[test]
fn the_phones_candidates_are_checked_and_passed_on() {
    let mut r = Rig::new();
    let mut phone = r.pair("+48555555555");
    let req = started(&r.invite_v2(&mut phone, SESSION, OFFER)).unwrap();
    let (_, mut c) = r.answer(&phone, &req.session);
    let ok = json!({"gen": 0, "candidates": [{"mline": 0, "candidate": HOST}], "end": true}).to_string();
    let answers = r.request(&mut c, &phone, "ice", &ok);
    assert_eq!(answers[0]["status"], "ok", "{answers:?}");
    let passed = r.effects.iter().rev().find_map(|e| match e {
        Effect::RemoteCandidates { candidates, end, .. } => Some((candidates.clone(), *end)),
        _ => None,
    });
    assert_eq!(passed, Some((vec![Candidate { mline: 0, candidate: HOST.into() }], true)));
    let before = r.effects.len();
    for (bad, why) in [
        (
            json!({"gen": 0, "candidates": [{"mline": 0, "candidate": HOST.replace("192.0.2.7", "224.0.0.1")}]}),
            "multicast",
        ),
        (json!({"gen": 1, "candidates": []}), "gen 1"),
        (json!({"gen": 0, "candidates": [{"mline": 0, "candidate": "hello"}]}), "not a candidate"),
    ] {
        let a = r.request(&mut c, &phone, "ice", &bad.to_string());
        assert_eq!(a[0]["status"], "rejected", "{bad}: {a:?}");
        assert!(a[0]["detail"].as_str().unwrap().contains(why), "{bad}: {a:?}");
    }
    let more = r.effects[before..].iter().filter(|e| matches!(e, Effect::RemoteCandidates { .. })).count();
    assert_eq!(more, 0, "a refused candidate reached the helper");
}

#[test]
fn a_v1_call_refuses_ice() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    let ok = json!({"gen": 0, "candidates": [{"mline": 0, "candidate": HOST}]}).to_string();
    let a = r.request(&mut c, &phone, "ice", &ok);
    assert_eq!(a[0]["status"], "rejected");
    assert!(a[0]["detail"].as_str().unwrap().contains("version 2"), "{a:?}");
}

#[test]
fn a_helper_that_fails_or_is_slow_gets_the_invite_refused_and_frees_the_robot() {
    let mut r = Rig::new();
    let mut phone = r.pair("+48555555555");
    let req = started(&r.invite_v2(&mut phone, SESSION, OFFER)).unwrap();
    let fx = r.media(MediaReport::Failed { session: req.session.clone(), detail: "camera busy".into() });
    let refused = invite_answers(&r, &fx, SESSION);
    assert_eq!(refused[0]["status"], "rejected");
    assert_eq!(refused[0]["reason"], "media_unavailable");
    assert_eq!(refused[0]["detail"], "camera busy");
    assert!(fx.iter().any(|e| matches!(e, Effect::StopMedia)));
    assert!(r.ended(&PhoneCall { session: req.session.clone(), ks: [0; 32], seq: 0, token: None }).is_empty());

    // The robot is free again; this time the helper never answers.
    let session2 = "ffeeddccbbaa99887766554433221100";
    let req2 = started(&r.invite_v2(&mut phone, session2, OFFER)).expect("a new call starts");
    r.advance(ANSWER_TIMEOUT.as_millis() as u64 - 1);
    assert!(invite_answers(&r, &r.effects.clone(), session2).is_empty());
    r.advance(1);
    let refused = invite_answers(&r, &r.effects.clone(), session2);
    assert_eq!(refused.last().unwrap()["reason"], "media_unavailable", "{refused:?}");
    assert!(refused.last().unwrap()["detail"].as_str().unwrap().contains("5 s"));
    // A late answer is ignored.
    let fx = r.media(MediaReport::Answer { session: req2.session, sdp: "v=0\r\n".into() });
    assert_eq!(publishes(&fx), 0);
}

#[test]
fn media_that_ends_after_the_accept_ends_the_call_with_its_reason() {
    let mut r = Rig::new();
    let mut phone = r.pair("+48555555555");
    let req = started(&r.invite_v2(&mut phone, SESSION, OFFER)).unwrap();
    let (_, c) = r.answer(&phone, &req.session);
    r.media(MediaReport::Ended {
        session: req.session.clone(),
        reason: EndReason::FingerprintMismatch,
        detail: "the phone's certificate is not the one in its offer".into(),
    });
    let ended = r.ended(&c);
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["reason"], "fingerprint_mismatch");
    assert_eq!(ended[0]["detail"], "the phone's certificate is not the one in its offer");
    // Helper death after the accept: media_failed.
    let mut phone2 = r.pair("+48555555557");
    let req = started(&r.invite_v2(&mut phone2, "ffeeddccbbaa99887766554433221100", OFFER)).unwrap();
    let (_, c) = r.answer(&phone2, &req.session);
    r.media(MediaReport::Failed { session: req.session, detail: "media helper killed by signal 9".into() });
    assert_eq!(r.ended(&c)[0]["reason"], "media_failed");
}

#[test]
fn bad_offers_are_refused_before_any_helper_starts() {
    let mut r = Rig::new();
    let mut phone = r.pair("+48555555555");
    for (sdp, reason) in [
        (OFFER.replace("a=fingerprint:sha-256", "a=fingerprint:sha-1"), "invalid_request"),
        (OFFER.replace("H264/90000", "VP8/90000"), "no_common_codec"),
    ] {
        let fx = r.invite_v2(&mut phone, SESSION, &sdp);
        assert!(started(&fx).is_none());
        assert_eq!(invite_answers(&r, &fx, SESSION)[0]["reason"], reason);
    }
}

#[test]
fn a_call_whose_media_never_connects_ends_ice_failed_and_nothing_moves() {
    let mut r = Rig::new();
    let mut phone = r.pair("+48555555555");
    let req = started(&r.invite_v2(&mut phone, SESSION, OFFER)).unwrap();
    let (_, mut c) = r.answer(&phone, &req.session);
    // The phone keeps the call alive, but no media path comes up.
    let step = 4_000;
    for _ in 0..(CONNECT_TIMEOUT.as_millis() as u64 / step - 1) {
        r.advance(step);
        assert_eq!(r.request(&mut c, &phone, "ping", "{}")[0]["status"], "ok");
    }
    assert!(r.ended(&c).is_empty());
    r.advance(step);
    let ended = r.ended(&c);
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["reason"], "ice_failed");
    assert!(ended[0]["detail"].as_str().unwrap().contains("TURN"), "{ended:?}");
    assert_eq!(r.motion(), MotionState::Idle);

    // Connected media keeps the call past that time.
    let req = started(&r.invite_v2(&mut phone, "ffeeddccbbaa99887766554433221100", OFFER)).unwrap();
    let (_, mut c) = r.answer(&phone, &req.session);
    r.media(MediaReport::Started { session: req.session.clone() });
    for _ in 0..(2 * CONNECT_TIMEOUT.as_millis() as u64 / step) {
        r.advance(step);
        assert_eq!(r.request(&mut c, &phone, "ping", "{}")[0]["status"], "ok");
    }
    assert!(r.ended(&c).is_empty(), "{:?}", r.ended(&c));
}

/// The session of the call in progress, as `robotd status` shows it.
fn current_session(r: &mut Rig) -> Option<String> {
    match r.admin(Request::Status).unwrap() {
        AdminReply::Status(s) => s.call.map(|c| c.session.to_string()),
        other => panic!("not a status: {other:?}"),
    }
}

fn effect_index(fx: &[Effect], f: impl Fn(&Effect) -> bool) -> Option<usize> {
    fx.iter().position(f)
}

const SESSION2: &str = "ffeeddccbbaa99887766554433221100";
const SESSION3: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// docs/protocol.md 7.8: a phone whose network changed places a new v2
/// invite; from the caller of the call in progress it replaces that call
/// at once (the old one `ended` `replaced`, the motors stopped, the old
/// helper stopped before the new one starts); another owner is still busy.
#[test]
fn a_v2_invite_from_the_caller_replaces_its_call_and_another_owner_stays_busy() {
    let mut r = Rig::new();
    let mut phone = r.pair("+48555555555");
    let req = started(&r.invite_v2(&mut phone, SESSION, OFFER)).unwrap();
    let (_, mut old) = r.answer(&phone, &req.session);
    r.media(MediaReport::Started { session: req.session.clone() });
    assert_eq!(r.request(&mut old, &phone, "drive", r#"{"linear":0.5,"angular":0.0,"ms":500}"#)[0]["status"], "ok");
    assert_ne!(r.motion(), MotionState::Idle);

    let mut other = r.pair("+48555555556");
    let busy = r.invite_v2(&mut other, SESSION2, OFFER);
    assert_eq!(invite_answers(&r, &busy, SESSION2)[0]["status"], "busy");
    assert!(r.ended(&old).is_empty() && started(&busy).is_none());

    let fx = r.invite_v2(&mut phone, SESSION3, OFFER);
    let ended = jsons_of(&fx, &topics::session_response(&old.session, "hangup"));
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["status"], "ended");
    assert_eq!(ended[0]["reason"], "replaced");
    assert!(ended[0]["detail"].as_str().unwrap().contains("newer invite"), "{ended:?}");
    assert_eq!(r.motion(), MotionState::Idle, "the motors run on across the switch");
    let stop = effect_index(&fx, |e| matches!(e, Effect::StopMedia)).expect("the old helper is stopped");
    let start = effect_index(&fx, |e| matches!(e, Effect::StartWebRtc(_))).expect("a new helper starts");
    assert!(stop < start, "{fx:?}");
    let new = started(&fx).unwrap();
    assert_eq!(new.session.to_string(), SESSION3);
    assert_eq!(current_session(&mut r).as_deref(), Some(SESSION3));
    let (accept, mut c) = r.answer(&phone, &new.session);
    assert_eq!(accept["status"], "accepted", "{accept}");
    assert_eq!(r.request(&mut c, &phone, "ping", "{}")[0]["status"], "ok");
    // The old call is over: its requests are not answered, its helper's
    // late reports change nothing.
    assert!(r.request(&mut old, &phone, "ping", "{}").is_empty());
    let late = r.media(MediaReport::Ended { session: req.session, reason: EndReason::IceFailed, detail: "x".into() });
    assert_eq!(publishes(&late), 0);
    assert!(r.ended(&c).is_empty());
}

/// A pending call (the helper has not answered yet) is replaced too: its
/// invite is refused (the phone has no `Ks` to read an `ended`).
#[test]
fn a_pending_call_is_replaced_by_its_callers_new_invite() {
    let mut r = Rig::new();
    let mut phone = r.pair("+48555555555");
    started(&r.invite_v2(&mut phone, SESSION, OFFER)).unwrap();
    let fx = r.invite_v2(&mut phone, SESSION2, OFFER);
    let refused = invite_answers(&r, &fx, SESSION);
    assert_eq!(refused[0]["reason"], "media_unavailable", "{refused:?}");
    assert!(refused[0]["detail"].as_str().unwrap().contains("replaced"), "{refused:?}");
    assert_eq!(started(&fx).unwrap().session.to_string(), SESSION2);
}

/// The replacement is decided only for a valid invite within the setup
/// rate limit (7.2): a bad offer or one invite too many leaves the call up;
/// and a v1 invite, or any invite during a v1 call, is still `busy`.
#[test]
fn an_invalid_or_rate_limited_or_v1_invite_does_not_replace_the_call() {
    let mut r = Rig::new();
    let mut phone = r.pair("+48555555555");
    let sessions = [SESSION, SESSION2, SESSION3, "00000000000000000000000000000004"];
    let mut calls = Vec::new();
    // The budget is 4 setups in 10 s: the first call and three replacements.
    for s in sessions {
        let req = started(&r.invite_v2(&mut phone, s, OFFER)).unwrap();
        calls.push(r.answer(&phone, &req.session).1);
    }
    let last = calls.last().unwrap();
    for (i, c) in calls.iter().enumerate().take(3) {
        assert_eq!(r.ended(c)[0]["reason"], "replaced", "call {i}");
    }
    let fx = r.invite_v2(&mut phone, "00000000000000000000000000000005", OFFER);
    let a = invite_answers(&r, &fx, "00000000000000000000000000000005");
    assert_eq!(a[0]["reason"], "rate_limited", "{a:?}");
    let fx2 = r.invite_v2(&mut phone, "00000000000000000000000000000006", &OFFER.replace("H264/90000", "VP8/90000"));
    assert!(started(&fx).is_none() && started(&fx2).is_none());
    let v1 = r.invite(&mut phone, "00000000000000000000000000000007", r.now().wall_ms);
    assert_eq!(v1["status"], "busy", "{v1}");
    assert!(r.ended(last).is_empty(), "{:?}", r.ended(last));
    assert_eq!(current_session(&mut r).as_deref(), Some(sessions[3]));

    // During a v1 call, the caller's v2 invite is busy.
    let mut r = Rig::new();
    let (mut phone, c) = r.call();
    let fx = r.invite_v2(&mut phone, SESSION2, OFFER);
    assert_eq!(invite_answers(&r, &fx, SESSION2)[0]["status"], "busy");
    assert!(r.ended(&c).is_empty());
}

/// ICE that fails after the media flowed says the path was lost (not that a
/// TURN server is missing); before, it points at TURN.
#[test]
fn ice_failing_after_the_media_flowed_says_the_path_was_lost() {
    for (flowed, says) in [(true, "lost after it worked"), (false, "TURN")] {
        let mut r = Rig::new();
        let mut phone = r.pair("+48555555555");
        let req = started(&r.invite_v2(&mut phone, SESSION, OFFER)).unwrap();
        let (_, c) = r.answer(&phone, &req.session);
        if flowed {
            r.media(MediaReport::Started { session: req.session.clone() });
        }
        r.media(MediaReport::Ended {
            session: req.session.clone(),
            reason: EndReason::IceFailed,
            detail: "ICE connection failed".into(),
        });
        let ended = r.ended(&c);
        assert_eq!(ended[0]["reason"], "ice_failed");
        let detail = ended[0]["detail"].as_str().unwrap();
        assert!(detail.contains(says), "media flowed: {flowed}: {detail}");
    }
}
