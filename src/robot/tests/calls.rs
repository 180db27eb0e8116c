//! Calls and commands: each protocol rule on a made-up clock.

use super::*;
use crate::robot::admin::Request;
use crate::robot::{DropReason, Effect, LinkEvent, MediaReport};

const DRIVE: &str = r#"{"linear":0.5,"angular":0.0,"ms":500}"#;

#[test]
fn a_drive_whose_token_is_older_than_1_5_s_is_refused_stale_and_does_not_move() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    // On time: it moves, and its answer carries a new token.
    let v = r.request(&mut c, &phone, "drive", DRIVE);
    assert_eq!(v[0]["status"], "ok", "{v:?}");
    assert_eq!(r.motion(), MotionState::Driving);
    r.request(&mut c, &phone, "stop", "{}");
    // Held somewhere for 1.6 s (robot's monotonic clock): refused, no motion.
    let held = c.token.clone();
    r.advance(1600);
    let v = r.request(
        &mut c,
        &phone,
        "drive",
        &format!(r#"{{"linear":0.5,"angular":0.0,"ms":500,"token":{:?}}}"#, held.unwrap()),
    );
    assert_eq!((v[0]["status"].as_str(), v[0]["reason"].as_str()), (Some("rejected"), Some("stale")), "{v:?}");
    assert!(v[0]["detail"].as_str().unwrap().contains("1600 ms old"), "{v:?}");
    assert!(v[0]["token"].is_string(), "the refusal carries a fresh token: {v:?}");
    assert_eq!(v[0]["re"], c.seq);
    assert_eq!(r.motion(), MotionState::Idle);
    assert_eq!(r.motor_command(), [0.0, 0.0]);
    assert_eq!(r.core.drops().count(DropReason::Late), 1);
    // With the token of that refusal it moves.
    assert_eq!(r.request(&mut c, &phone, "drive", DRIVE)[0]["status"], "ok");
    r.request(&mut c, &phone, "stop", "{}");
    // No token, or one made up: refused too.
    for bad in [
        r#"{"linear":0.5,"angular":0.0,"token":"99999999.0011223344556677"}"#,
        r#"{"linear":0.5,"angular":0.0,"token":null}"#,
    ] {
        let v = r.request(&mut c, &phone, "drive", bad);
        assert_eq!(v[0]["reason"], "stale", "{bad}: {v:?}");
    }
    assert_eq!(r.motion(), MotionState::Idle);
    // A late goto is refused with its destination first.
    let old = r.request(&mut c, &phone, "ping", "{}")[0]["token"].as_str().unwrap().to_owned();
    r.advance(2000);
    let v = r.request(&mut c, &phone, "goto", &format!(r#"{{"destination":"kitchen","token":{old:?}}}"#));
    assert_eq!((v[0]["destination"].as_str(), v[0]["reason"].as_str()), (Some("kitchen"), Some("stale")));
    // Something harmless is answered whatever its token.
    assert_eq!(r.request(&mut c, &phone, "ping", "{}")[0]["status"], "ok");
}

#[test]
fn wall_clock_steps_on_either_side_neither_lock_out_nor_let_a_held_drive_move() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    for step in [6000, -12000, 6000] {
        // The robot's wall clock steps: fresh drives still move.
        r.step_wall(step);
        assert_eq!(r.request(&mut c, &phone, "drive", DRIVE)[0]["status"], "ok", "robot clock stepped {step} ms");
        // The phone's clock is 6 s off either way (its `ts`): still moves.
        for off in [-6000i64, 6000] {
            let ts = r.now().wall_ms.saturating_add_signed(off);
            assert_eq!(r.request_at(&mut c, &phone, "drive", DRIVE, ts)[0]["status"], "ok", "phone clock {off} ms off");
        }
        r.request(&mut c, &phone, "stop", "{}");
    }
    // A drive held 9.5 s while the robot's clock steps back 6 s: refused.
    let held = c.token.clone().unwrap();
    r.advance(9500);
    r.step_wall(-6000);
    let v = r.request(&mut c, &phone, "drive", &format!(r#"{{"linear":0.5,"angular":0.0,"token":{held:?}}}"#));
    assert_eq!(v[0]["reason"], "stale", "{v:?}");
    assert_eq!(r.motion(), MotionState::Idle);
}

#[test]
fn replays_and_duplicates_are_dropped() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    let ts = r.now().wall_ms;
    assert_eq!(r.request_seq(&mut c, &phone, "drive", DRIVE, 100, ts).len(), 1);
    assert_eq!(r.request_seq(&mut c, &phone, "stop", "{}", 101, ts)[0]["status"], "stopped");
    // The same seq again (QoS 1 redelivery or a replay): silently dropped.
    assert!(r.request_seq(&mut c, &phone, "drive", DRIVE, 100, ts).is_empty());
    assert_eq!(r.motion(), MotionState::Idle, "a replayed drive must not move");
    // Far below the window: stale, answered (the MAC verified).
    for s in 102..=170 {
        r.request_seq(&mut c, &phone, "ping", "{}", s, ts);
    }
    let v = r.request_seq(&mut c, &phone, "drive", DRIVE, 101, ts);
    assert_eq!(v[0]["reason"], "stale", "{v:?}");
    assert_eq!(r.motion(), MotionState::Idle);
    // A forged MAC: no answer at all.
    let topic = topics::session_request(&c.session, "drive");
    let p = props::signed(&[9u8; 32], &topic, phone.id.as_str(), 500, ts, DRIVE.as_bytes(), None);
    assert_eq!(publishes(&r.deliver(&topic, DRIVE.as_bytes(), Some(p))), 0);
    assert_eq!(r.core.drops().count(DropReason::BadMac), 1);
    assert_eq!(r.motion(), MotionState::Idle);
}

#[test]
fn refusals_are_answered_within_the_reply_budget() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    let ts = r.now().wall_ms;
    for s in 1000..1100 {
        r.request_seq(&mut c, &phone, "ping", "{}", s, ts);
    }
    // 200 stale requests at once: 20 answers (the burst), the rest counted.
    let answered: usize = (0..200).map(|i| r.request_seq(&mut c, &phone, "ping", "{}", 900 - i, ts).len()).sum();
    assert_eq!(answered, 20);
    assert_eq!(r.core.drops().count(DropReason::Stale), 200);
    // Refilled at 10 a second.
    r.advance(1000);
    let answered: usize = (0..50).map(|i| r.request_seq(&mut c, &phone, "ping", "{}", 600 - i, ts).len()).sum();
    assert_eq!(answered, 10);
    c.seq = 2000;
    assert_eq!(r.request(&mut c, &phone, "ping", "{}")[0]["status"], "ok", "genuine requests are always answered");
}

#[test]
fn a_second_invite_during_a_call_is_busy() {
    let mut r = Rig::new();
    let (mut phone, mut c) = r.call();
    let ts = r.now().wall_ms;
    let answer = r.invite(&mut phone, "ffeeddccbbaa99887766554433221100", ts);
    assert_eq!(answer["status"], "busy", "{answer}");
    assert_eq!(r.request(&mut c, &phone, "ping", "{}")[0]["status"], "ok", "the first call goes on");
}

#[test]
fn removing_the_caller_as_owner_ends_the_call_revoked() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    r.request(&mut c, &phone, "drive", DRIVE);
    r.admin(Request::OwnersRemove { id: phone.id.to_string() }).unwrap();
    assert_eq!(r.ended(&c), vec![serde_json::json!({"status":"ended","reason":"revoked"})]);
    assert_eq!(r.motion(), MotionState::Idle);
    assert!(r.effects.iter().any(|e| matches!(e, Effect::StopMedia)));
    assert!(r.request(&mut c, &phone, "drive", DRIVE).is_empty(), "no call any more");
    assert_eq!(r.motion(), MotionState::Idle);
}

#[test]
fn a_call_times_out_after_15_s_without_a_request() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    r.advance(10_000);
    r.request(&mut c, &phone, "ping", "{}");
    r.advance(14_900);
    assert!(r.ended(&c).is_empty(), "14.9 s after the last request the call is still on");
    let due = r.core.next_wakeup(r.now()).unwrap();
    assert_eq!(due, r.now().mono + std::time::Duration::from_millis(100), "the core wakes for the timeout");
    r.advance(100);
    assert_eq!(r.ended(&c), vec![serde_json::json!({"status":"ended","reason":"timeout"})]);
}

#[test]
fn the_caller_going_offline_stops_the_motors_at_once_and_ends_the_call_if_it_stays_silent() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    r.request(&mut c, &phone, "drive", DRIVE);
    // Someone else's presence changes nothing.
    r.deliver(&topics::is_connected(&"aa".repeat(16).parse().unwrap()), b"false", None);
    assert_eq!(r.motion(), MotionState::Driving);
    r.deliver(&topics::is_connected(&phone.id), b"false", None);
    assert_eq!(r.motion(), MotionState::Idle, "motors stop at once");
    assert_eq!(r.motor_command(), [0.0, 0.0]);
    r.advance(7900);
    assert!(r.ended(&c).is_empty(), "within the grace the call is still on");
    r.advance(100);
    assert_eq!(r.ended(&c), vec![serde_json::json!({"status":"ended","reason":"caller_offline"})]);
}

#[test]
fn a_spoofed_or_retained_presence_false_does_not_end_a_call_that_goes_on() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    r.request(&mut c, &phone, "drive", DRIVE);
    r.deliver(&topics::is_connected(&phone.id), b"false", None);
    assert_eq!(r.motion(), MotionState::Idle, "stopping is always safe");
    r.advance(3000);
    // The genuine phone is heard from: the call goes on, it can drive again.
    assert_eq!(r.request(&mut c, &phone, "ping", "{}")[0]["status"], "ok");
    r.advance(10_000);
    assert!(r.ended(&c).is_empty(), "a call whose caller is heard from is not ended: {:?}", r.ended(&c));
    r.request(&mut c, &phone, "ping", "{}"); // a fresh token
    assert_eq!(r.request(&mut c, &phone, "drive", DRIVE)[0]["status"], "ok");
    assert_eq!(r.motion(), MotionState::Driving);
}

#[test]
fn a_captured_invite_replayed_after_a_restart_starts_no_call() {
    let mut r = Rig::new();
    let mut phone = r.pair("+48555555555");
    let session = "00112233445566778899aabbccddeeff";
    let topic = topics::invite(&r.robot, &session.parse().unwrap());
    let payload = br#"{"media":{"host":"127.0.0.1","port":5004},"video":{"codecs":["H264"],"max_width":1280,"max_height":720,"max_fps":30,"max_kbps":2500}}"#;
    phone.seq += 1;
    let p = props::signed(&phone.key, &topic, phone.id.as_str(), phone.seq, r.now().wall_ms, payload, None);
    let fx = r.deliver(&topic, payload, Some(p.clone()));
    assert_eq!(json_of(&fx, &format!("{topic}/response")).unwrap()["status"], "accepted");
    // The robot restarts 9 s later; the captured invite comes again.
    r.advance(9000);
    r.restart();
    let fx = r.deliver(&topic, payload, Some(p));
    assert_eq!(publishes(&fx), 0, "no answer, no call: {fx:?}");
    assert!(!fx.iter().any(|e| matches!(e, Effect::StartMedia(_))));
    assert_eq!(r.core.drops().count(DropReason::Duplicate), 1);
    // The owner's next invite works.
    assert_eq!(r.invite(&mut phone, "ffeeddccbbaa99887766554433221100", r.now().wall_ms)["status"], "accepted");
}

#[test]
fn link_loss_stops_the_motors_at_once() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    r.request(&mut c, &phone, "drive", r#"{"linear":0.5,"angular":0.2,"ms":1000}"#);
    assert_ne!(r.motor_command(), [0.0, 0.0]);
    r.link(LinkEvent::Disconnected);
    assert_eq!(r.motor_command(), [0.0, 0.0], "no waiting for the deadman");
    assert_eq!(r.motion(), MotionState::Idle);
}

#[test]
fn the_deadman_stops_a_drive_that_is_not_renewed() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    r.request(&mut c, &phone, "drive", DRIVE);
    r.advance(499);
    assert_eq!(r.motion(), MotionState::Driving);
    assert_eq!(r.core.next_wakeup(r.now()), Some(r.now().mono + std::time::Duration::from_millis(1)));
    r.advance(1);
    assert_eq!(r.motion(), MotionState::Idle);
    assert_eq!(r.motor_command(), [0.0, 0.0]);
}

#[test]
fn goto_statuses_carry_the_re_of_their_goto() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    let first = r.request(&mut c, &phone, "goto", r#"{"destination":"kitchen"}"#);
    let re1 = c.seq;
    assert_eq!(first.len(), 1);
    assert_eq!((first[0]["status"].as_str(), first[0]["re"].as_u64()), (Some("accepted"), Some(re1)));
    r.advance(1000);
    // The robot drives the route; moving statuses keep the goto's re.
    let moving = jsons_of(&r.effects, &topics::session_response(&c.session, "goto"));
    assert!(moving.iter().skip(1).all(|v| v["re"] == re1 && v["status"] == "moving"), "{moving:?}");
    assert!(moving.len() > 1, "progress is reported: {moving:?}");
    // A new goto replaces it: the old one's `cancelled` has the old re.
    let second = r.request(&mut c, &phone, "goto", r#"{"destination":"bedroom"}"#);
    let re2 = c.seq;
    let by_status = |s: &str| second.iter().find(|v| v["status"] == s).cloned().unwrap_or_default();
    assert_eq!(by_status("cancelled")["re"], re1, "{second:?}");
    assert_eq!(by_status("cancelled")["destination"], "kitchen");
    assert_eq!(by_status("accepted")["re"], re2, "{second:?}");
    // stop ends it: `cancelled` with the second re, then `stopped`.
    let stopped = r.request(&mut c, &phone, "stop", "{}");
    assert_eq!(untokened(stopped), vec![serde_json::json!({"status":"stopped","re":c.seq})]);
    let last = jsons_of(&r.effects, &topics::session_response(&c.session, "goto")).pop().unwrap();
    assert_eq!((last["status"].as_str(), last["re"].as_u64()), (Some("cancelled"), Some(re2)));
    assert_eq!(r.motor_command(), [0.0, 0.0]);
}

#[test]
fn a_video_change_is_capped_by_the_invite_and_answered_by_the_media() {
    let mut r = Rig::new();
    let (phone, mut c) = r.call();
    let v = r.request(&mut c, &phone, "video", r#"{"kbps":3000}"#);
    assert_eq!(v[0]["reason"], "invalid_request", "{v:?}");
    assert!(r.request(&mut c, &phone, "video", r#"{"kbps":800}"#).is_empty(), "answered once the media applied it");
    let Some(Effect::AdjustVideo { session, answer, .. }) = r.effects.last().cloned() else { panic!("no adjust") };
    let video = crate::wire::payloads::VideoParams { width: 640, height: 480, fps: 30, kbps: 800 };
    let fx = r.media(MediaReport::VideoAdjusted { session, result: Ok(video), answer });
    let v = jsons_of(&fx, &topics::session_response(&c.session, "video"));
    assert_eq!(untokened(v), vec![serde_json::json!({"status":"ok","video":video,"re":c.seq})]);
}

#[test]
fn a_media_failure_ends_the_call_and_late_reports_of_old_calls_do_nothing() {
    let mut r = Rig::new();
    let (_phone, c) = r.call();
    let old: ClientId = "ab".repeat(16).parse().unwrap();
    assert!(r.media(MediaReport::Failed { session: old, detail: "x".into() }).is_empty());
    r.media(MediaReport::Failed { session: c.session.clone(), detail: "camera unplugged".into() });
    assert_eq!(r.ended(&c), vec![serde_json::json!({"status":"ended","reason":"video_failed"})]);
}

/// The answers without their (always different) freshness tokens.
fn untokened(mut v: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    for x in &mut v {
        assert!(x.as_object_mut().unwrap().remove("token").is_some(), "every answer in a call has a token: {x}");
    }
    v
}

#[test]
fn call_set_up_is_rate_limited_to_4_calls_in_10_s() {
    let mut r = Rig::new();
    let mut phone = r.pair("+48555555555");
    let mut n = 0u32;
    let mut call_and_hang_up = |r: &mut Rig, phone: &mut PhoneKey| {
        n += 1;
        let session = format!("{n:032x}");
        let answer = r.invite(phone, &session, r.now().wall_ms);
        if answer["status"] == "accepted" {
            let sid: ClientId = session.parse().unwrap();
            let nonce: [u8; 16] = hex::decode(answer["nonce"].as_str().unwrap()).unwrap().try_into().unwrap();
            let ks = keys::session_key(&phone.key, &sid.to_bytes(), &nonce);
            let mut c = PhoneCall { session: sid, ks, seq: 0, token: None };
            r.request(&mut c, phone, "hangup", "{}");
            assert_eq!(r.ended(&c).len(), 1, "call {n} ended");
        }
        answer
    };
    for i in 0..4 {
        let a = call_and_hang_up(&mut r, &mut phone);
        assert_eq!(a["status"], "accepted", "call {i}: {a}");
    }
    // A fifth at once: refused, and nothing starts.
    let before = r.effects.len();
    let a = call_and_hang_up(&mut r, &mut phone);
    assert_eq!((a["status"].as_str(), a["reason"].as_str()), (Some("rejected"), Some("rate_limited")), "{a}");
    assert!(a["detail"].as_str().unwrap().contains("4 calls"), "{a}");
    assert!(!r.effects[before..].iter().any(|e| matches!(e, Effect::StartMedia(_))), "no media for a refused call");
    // 2.5 s later one call's worth has come back, not two.
    r.advance(2500);
    assert_eq!(call_and_hang_up(&mut r, &mut phone)["status"], "accepted");
    assert_eq!(call_and_hang_up(&mut r, &mut phone)["reason"], "rate_limited");
    // Invalid invites do not use up the budget.
    r.advance(2500);
    let topic = topics::invite(&r.robot, &"ee".repeat(16).parse().unwrap());
    let bad = br#"{"media":{"host":"::ffff:224.0.0.1","port":5004},"video":{"codecs":["H264"],"max_width":1280,"max_height":720,"max_fps":30,"max_kbps":2500}}"#;
    phone.seq += 1;
    let p = props::signed(&phone.key, &topic, phone.id.as_str(), phone.seq, r.now().wall_ms, bad, None);
    let v = json_of(&r.deliver(&topic, bad, Some(p)), &format!("{topic}/response")).unwrap();
    assert_eq!(v["reason"], "invalid_request", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("::ffff:224.0.0.1"), "{v}");
    assert_eq!(call_and_hang_up(&mut r, &mut phone)["status"], "accepted");
}
