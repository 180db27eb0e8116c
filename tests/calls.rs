//! Calls end to end (docs/protocol.md sections 7 and 8): a real Mosquitto, the
//! real robotd binary with GStreamer's test source, and the phone side of the
//! library receiving and decrypting the SRTP stream with a real pipeline.
//!
//! Media always goes to 127.0.0.1 on a free UDP port.

#[path = "common/calls.rs"]
mod calls_kit;
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use calls_kit::*;
use common::*;
use robotd::phone::{InviteOutcome, Offer, PairedRobot, Phone};
use robotd::wire::identity::ClientId;
use robotd::wire::props::{self, now_ms};
use robotd::wire::topics;
use serde_json::json;

fn is_hex32(v: &serde_json::Value) -> bool {
    v.as_str().is_some_and(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_calls_and_receives_video() {
    let Owned { broker: _broker, robot, mut phone, paired } = robot_with_owner("").await;
    let pid = robot.pid();
    let threads_before = thread_count(pid);
    assert_eq!(udp_socket_count(pid), 0, "an idle robot sends no media");

    let port = free_udp_port();
    // Smaller than the robot's preference (320x240@30, 600 kbps) in fps and kbps.
    let offer = Offer { max_width: 640, max_height: 480, max_fps: 20, max_kbps: 400, ..Offer::new(LOCALHOST, port) };
    let mut c = call_with(&mut phone, &paired, &offer).await;

    // The accept, field by field (7.2).
    let a = &c.accept;
    assert_eq!(a["status"], "accepted", "{a}");
    assert!(is_hex32(&a["nonce"]), "nonce must be 32 lowercase hex: {a}");
    let v = &a["video"];
    assert_eq!(v["codec"], "H264", "{a}");
    assert_eq!(v["payload_type"], 96, "{a}");
    assert_eq!(v["clock_rate"], 90000, "{a}");
    let ssrc = v["ssrc"].as_u64().expect("ssrc is a number");
    assert!(ssrc > 0 && ssrc <= u64::from(u32::MAX), "ssrc must be a non-zero u32: {a}");
    assert_eq!(ssrc, u64::from(c.video_ssrc));
    let (w, h) = (v["width"].as_u64().unwrap(), v["height"].as_u64().unwrap());
    let (fps, kbps) = (v["fps"].as_u64().unwrap(), v["kbps"].as_u64().unwrap());
    assert!((1..=640).contains(&w) && (1..=480).contains(&h), "size within the offer: {a}");
    assert!((1..=20).contains(&fps), "fps within the offer (robot prefers 30): {a}");
    assert!((1..=400).contains(&kbps), "kbps within the offer (robot prefers 600): {a}");
    assert_eq!(a["srtp"]["profile"], "AES_CM_128_HMAC_SHA1_80", "{a}");
    assert!(a.get("audio").is_none(), "no audio asked for, none granted: {a}");

    let rx = receiver(port, c.video_ssrc, c.srtp_video.clone()).await;
    let got = frames_with_pings(&mut phone, &mut c, &rx, 60, Duration::from_secs(40)).await;
    assert!(got, "only {} of 60 frames decoded through SRTP", rx.frames());
    assert_eq!(rx.frame_size(), Some((w as u32, h as u32)), "decoded size is the accepted size");
    let threads_in_call = thread_count(pid);
    assert!(udp_socket_count(pid) >= 1, "the robot sends from a UDP socket during the call");
    let st = status(&robot);
    assert_eq!(st["call"]["session"], c.session.as_str(), "{st}");

    let seq = phone.send(&mut c, "hangup", &json!({})).await;
    let bye = ended(&mut phone, &c, SOON).await;
    assert_eq!(bye, json!({"status":"ended","reason":"hangup","re":seq}));
    assert!(status(&robot)["call"].is_null(), "no call after hangup");

    // The pipeline is gone: the frame count settles and stays put...
    let mut last = (rx.frames(), Instant::now());
    let settled = wait_until(SOON, || {
        let f = rx.frames();
        if f != last.0 {
            last = (f, Instant::now());
        }
        last.1.elapsed() >= Duration::from_millis(1500)
    });
    assert!(settled, "frames kept arriving after hangup ({} so far)", rx.frames());
    let after = rx.frames();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.frames(), after, "a frame arrived after the stream had stopped");
    stop_receiver(rx).await;
    // ...the sending socket is closed and the pipeline's threads are gone
    // (GLib and tokio keep a few idle pool threads for a while: allow slack).
    assert!(wait_until(SOON, || udp_socket_count(pid) == 0), "the robot still holds a UDP socket after hangup");
    let slack = 4;
    let back = wait_until(Duration::from_secs(40), || thread_count(pid) <= threads_before + slack);
    eprintln!("threads: before {threads_before}, in call {threads_in_call}, after {}", thread_count(pid));
    assert!(
        back,
        "robotd threads: {threads_before} before the call, {threads_in_call} in it, {} after (slack {slack})",
        thread_count(pid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_receiver_decodes_nothing() {
    let Owned { broker: _broker, robot, mut phone, paired } = robot_with_owner("").await;
    let port = free_udp_port();
    let mut c = call(&mut phone, &paired, port).await;
    let mut wrong_key = c.srtp_video.clone();
    wrong_key.0[0] ^= 0x01;
    let wrong = receiver(port, c.video_ssrc, wrong_key).await;
    // Two keyframe intervals and more, with the call demonstrably up.
    sleep_pinging(&mut phone, &mut c, Duration::from_secs(5)).await;
    assert_eq!(ping(&mut phone, &mut c).await["status"], "ok");
    assert!(udp_socket_count(robot.pid()) >= 1, "the robot is sending");
    assert_eq!(wrong.frames(), 0, "a receiver with the wrong SRTP key decoded frames");
    stop_receiver(wrong).await;
    // Positive control: the same stream, same port, the right key.
    let right = receiver(port, c.video_ssrc, c.srtp_video.clone()).await;
    assert!(
        frames_with_pings(&mut phone, &mut c, &right, 10, Duration::from_secs(30)).await,
        "the right key decoded only {} frames",
        right.frames()
    );
    stop_receiver(right).await;
}

/// Version 1 with the robot's microphone (`[audio] device = "test"`, a test
/// tone): an offer with an audio port is accepted with `audio` (Opus, 111,
/// 48 kHz, an SSRC of its own), the helper sends SRTP Opus to that port
/// under the call's audio key (docs/protocol.md 7.3), which a receiver
/// decrypts (a second of sound and more) while the video decodes; the
/// video key does not decrypt the audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_call_with_the_robots_microphone_sends_srtp_opus_under_the_audio_key() {
    use robotd::video::{AudioReceiver, AudioReceiverParams};
    let Owned { broker: _broker, robot, mut phone, paired } = robot_with_owner("[audio]\ndevice = \"test\"\n").await;
    let (video_port, audio_port) = (free_udp_port(), free_udp_port());
    let offer = Offer { audio_port: Some(audio_port), ..Offer::new(LOCALHOST, video_port) };
    let mut c = call_with(&mut phone, &paired, &offer).await;
    let a = &c.accept["audio"];
    assert_eq!(
        (a["codec"].as_str(), a["payload_type"].as_u64(), a["clock_rate"].as_u64()),
        (Some("OPUS"), Some(111), Some(48000)),
        "{}",
        c.accept
    );
    let ssrc = a["ssrc"].as_u64().expect("an audio ssrc") as u32;
    assert!(ssrc != 0 && ssrc != c.video_ssrc, "{}", c.accept);
    let start = |key: robotd::video::SrtpKey| {
        let params =
            AudioReceiverParams { bind: std::net::SocketAddr::new(LOCALHOST, audio_port), ssrc, srtp_key: key };
        tokio::task::spawn_blocking(move || AudioReceiver::start(params))
    };
    // The video key on the audio port first: nothing decrypts.
    let wrong = start(c.srtp_video.clone()).await.unwrap().expect("receiver starts");
    sleep_pinging(&mut phone, &mut c, Duration::from_secs(3)).await;
    assert_eq!(wrong.packets(), 0, "the video key decrypted audio");
    tokio::task::spawn_blocking(move || wrong.stop()).await.unwrap().unwrap();
    let rx = start(c.srtp_audio.clone()).await.unwrap().expect("receiver starts");
    let video = receiver(video_port, c.video_ssrc, c.srtp_video.clone()).await;
    assert!(
        frames_with_pings(&mut phone, &mut c, &video, 30, Duration::from_secs(40)).await,
        "{} frames",
        video.frames()
    );
    let rx = std::sync::Arc::new(rx);
    let r = rx.clone();
    let heard = tokio::task::spawn_blocking(move || r.wait_packets(60, Duration::from_secs(30))).await.unwrap();
    assert!(heard, "only {} Opus packets decrypted (20 ms each)\n{}", rx.packets(), robot.log());
    stop_receiver(video).await;
    let rx = std::sync::Arc::try_unwrap(rx).unwrap_or_else(|_| panic!("shared"));
    tokio::task::spawn_blocking(move || rx.stop()).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_invite_gets_busy() {
    let Owned { broker, robot, mut phone, paired } = robot_with_owner("").await;
    let (mut other, other_paired) = pair_phone(&broker, &robot, "Bob").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;

    let busy_port = UdpSink::bind();
    for (who, p, k) in [("another owner", &mut other, &other_paired), ("the caller itself", &mut phone, &paired)] {
        match p.invite(k, &Offer::new(LOCALHOST, busy_port.port), SOON).await.expect("an answer") {
            InviteOutcome::Refused(v) => assert_eq!(v["status"], "busy", "invite from {who}: {v}"),
            InviteOutcome::Accepted(a) => panic!("invite from {who} accepted during a call: {:?}", a.accept),
        }
    }
    // The first call is untouched and nothing is sent to the refused caller.
    assert_eq!(ping(&mut phone, &mut c).await["status"], "ok");
    assert_eq!(status(&robot)["call"]["session"], c.session.as_str());
    assert!(!busy_port.receives_within(Duration::from_secs(1)), "media went to a refused caller");

    // Once the call is over, the other owner gets through.
    request(&mut phone, &mut c, "hangup", json!({})).await;
    let c2 = call(&mut other, &other_paired, busy_port.port).await;
    assert_eq!(status(&robot)["call"]["session"], c2.session.as_str());
    assert!(busy_port.receives_within(SOON), "no media for the second call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_ends_when_caller_goes_offline() {
    let Owned { broker: _broker, robot, mut phone, paired } = robot_with_owner("").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    let deadman_before = deadman_count(&robot);
    drive(&mut phone, &mut c, 0.5, 1000).await;
    let drove_at = Instant::now();
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "driving");

    // The phone's presence turns false (as its will would).
    phone.publish_raw(topics::is_connected(&phone.id), b"false".to_vec(), true, None).await;
    let bye = ended(&mut phone, &c, SOON).await;
    assert_eq!(bye, json!({"status":"ended","reason":"caller_offline"}), "no `re`: no request is answered");
    let st = status(&robot);
    assert!(st["call"].is_null(), "{st}");
    assert_eq!(st["motion"], "idle", "{st}");
    // The motors were stopped by the call's end, not by the drive's deadman.
    tokio::time::sleep((drove_at + Duration::from_millis(1500)).saturating_duration_since(Instant::now())).await;
    assert_eq!(deadman_count(&robot), deadman_before, "the call end left the drive to the deadman");
    // The robot no longer listens to the session.
    let seq = phone.send(&mut c, "ping", &json!({})).await;
    assert!(phone.response(&c, Duration::from_secs(2), |_, v| v["re"] == seq).await.is_none(), "answered after end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_times_out() {
    let Owned { broker: _broker, robot, mut phone, paired } = robot_with_owner("[call]\ntimeout_s = 3\n").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    // Pings keep it alive well past the timeout...
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert_eq!(ping(&mut phone, &mut c).await["status"], "ok", "call ended although pinged");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let last_ping = Instant::now();
    assert_eq!(ping(&mut phone, &mut c).await["status"], "ok");
    assert_eq!(status(&robot)["call"]["session"], c.session.as_str());
    // ...and without them the call ends.
    let bye = ended(&mut phone, &c, SOON).await;
    let idle = last_ping.elapsed();
    assert_eq!(bye, json!({"status":"ended","reason":"timeout"}));
    assert!(idle >= Duration::from_millis(2950), "ended after only {idle:?} without requests (timeout_s = 3)");
    let st = status(&robot);
    assert!(st["call"].is_null() && st["motion"] == "idle", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_ends_on_shutdown() {
    let Owned { broker: _broker, mut robot, mut phone, paired } = robot_with_owner("").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;
    drive(&mut phone, &mut c, 0.5, 1000).await;
    let exit = blocking(|| robot.stop());
    assert!(exit.success(), "robotd exit status {exit:?}");
    assert_eq!(ended(&mut phone, &c, SOON).await, json!({"status":"ended","reason":"shutdown"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_owner_invite_changes_nothing() {
    let Owned { broker, robot, mut phone, paired } = robot_with_owner("").await;
    let mut probe = Probe::connect(&broker, &[&format!("invite/{}/+/response", robot.id)]).await;
    let sink = UdpSink::bind();
    let before = status(&robot);

    // A stranger who knows the robot's ID and makes up a key.
    let mut stranger = Phone::connect(&broker.url(), ClientId::random()).await.unwrap();
    let fake = PairedRobot { key: rand::random(), ..paired.clone() };
    let r = stranger.invite(&fake, &Offer::new(LOCALHOST, sink.port), Duration::from_secs(3)).await;
    assert!(r.is_err(), "a non-owner got an answer: {r:?}");
    assert!(probe.collect_for(Duration::from_millis(500)).await.is_empty(), "a non-owner got an answer");
    assert!(!sink.receives_within(Duration::from_secs(1)), "media was sent for a non-owner's invite");
    let after = status(&robot);
    assert!(after["call"].is_null(), "{after}");
    assert_eq!(after["owners"], before["owners"]);
    assert_eq!(after["pairing"], before["pairing"]);
    assert!(after["dropped"]["auth"]["not_owner"].as_u64().unwrap_or(0) >= 1, "the invite was not seen: {after}");

    // Positive control: the owner's invite to the same address is answered and streamed.
    let c = call(&mut phone, &paired, sink.port).await;
    probe.expect("the owner's accept", SOON, |m| m.topic.ends_with(&format!("{}/response", c.session))).await;
    assert!(sink.receives_within(SOON), "no media for the owner's call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command_and_invalid_request() {
    let Owned { broker: _broker, robot: _robot, mut phone, paired } = robot_with_owner("").await;
    let sink = UdpSink::bind();
    let mut c = call(&mut phone, &paired, sink.port).await;

    // Unknown command, with correlation data that must come back.
    let seq = c.next_seq();
    let topic = topics::session_request(&c.session, "dance");
    let corr = Bytes::from_static(b"corr-42");
    let p = props::signed(&c.session_key, &topic, phone.id.as_str(), seq, now_ms(), b"{}", Some(corr.clone()));
    phone.publish_raw(topic, b"{}".to_vec(), false, Some(p)).await;
    let resp = format!("session/{}/dance/response", c.session);
    let m = phone.recv_until(SOON, |m| m.topic == resp).await.expect("an answer to an unknown command");
    assert!(props::verify(&c.session_key, &m.topic, &m.payload, &m.auth()).is_some(), "answer MACed with Ks");
    assert_eq!(untokened(m.json()), json!({"status":"rejected","reason":"unknown_command","re":seq}));
    assert_eq!(m.props.and_then(|p| p.correlation_data), Some(corr), "correlation data echoed");

    // Invalid requests: values out of range, missing fields, bad JSON, NaN, infinity.
    let bad: &[(&str, &[u8])] = &[
        ("drive", br#"{"linear":1.5,"angular":0.0,"ms":500}"#),
        ("drive", br#"{"linear":0.5,"angular":-1.01,"ms":500}"#),
        ("drive", br#"{"linear":0.5,"angular":0.0,"ms":0}"#),
        ("drive", br#"{"linear":0.5,"angular":0.0,"ms":1001}"#),
        ("drive", br#"{"angular":0.0,"ms":500}"#),
        ("drive", br#"{"linear":"fast","angular":0.0}"#),
        ("drive", br#"{"linear":NaN,"angular":0.0}"#),
        ("drive", br#"{"linear":1e999,"angular":0.0}"#),
        ("drive", b"{not json"),
        ("drive", b"[0.5,0.0]"),
        ("video", br#"{"kbps":-1}"#),
        ("video", br#"{"width":640}"#),
    ];
    for (cmd, payload) in bad {
        let seq = c.next_seq();
        let topic = topics::session_request(&c.session, cmd);
        phone.publish_signed(&c.session_key, topic, payload.to_vec(), seq, now_ms()).await;
        let text = String::from_utf8_lossy(payload);
        let (_, v) = phone
            .response(&c, SOON, |k, v| k == *cmd && v["re"] == seq)
            .await
            .unwrap_or_else(|| panic!("no answer to {cmd} {text}"));
        assert_eq!(v["status"], "rejected", "{cmd} {text}: {v}");
        assert_eq!(v["reason"], "invalid_request", "{cmd} {text}: {v}");
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{cmd} {text}: detail missing: {v}");
    }
    // None of them moved the motors; a valid drive does (positive control).
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "idle");
    drive(&mut phone, &mut c, 0.2, 1000).await;
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "driving");
    assert_eq!(request(&mut phone, &mut c, "stop", json!({})).await["status"], "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_command_changes_bitrate() {
    let Owned { broker: _broker, robot, mut phone, paired } = robot_with_owner("").await;
    let port = free_udp_port();
    let mut c = call(&mut phone, &paired, port).await;
    let a = c.accept["video"].clone();
    let rx = receiver(port, c.video_ssrc, c.srtp_video.clone()).await;
    assert!(frames_with_pings(&mut phone, &mut c, &rx, 10, Duration::from_secs(30)).await, "no frames");

    // Section 8: the response's video holds the four values now in force.
    let seq = phone.send(&mut c, "video", &json!({"kbps": 300})).await;
    let (_, v) = phone.response(&c, SOON, |k, v| k == "video" && v["re"] == seq).await.expect("video answered");
    let want = json!({"width": a["width"], "height": a["height"], "fps": a["fps"], "kbps": 300});
    assert_eq!(untokened(v), json!({"status":"ok","video":want,"re":seq}));
    assert_eq!(status(&robot)["call"]["video"]["kbps"], 300);
    // The stream goes on without a restart.
    let f = rx.frames();
    assert!(
        frames_with_pings(&mut phone, &mut c, &rx, f + 30, Duration::from_secs(30)).await,
        "frames stopped after the bitrate change ({} then {})",
        f,
        rx.frames()
    );

    // Beyond the robot's limits (7.1) or the invite's max_*: refused, nothing changes.
    let v = request(&mut phone, &mut c, "video", json!({"kbps": 20001})).await;
    assert_eq!(v["status"], "rejected", "{v}");
    assert_eq!(v["reason"], "invalid_request", "{v}");
    let v = request(&mut phone, &mut c, "video", json!({"kbps": 3000})).await;
    assert_eq!(v["reason"], "invalid_request", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("max_kbps 2500"), "{v}");
    let v = request(&mut phone, &mut c, "video", json!({"width": 1920, "height": 1080, "fps": 15})).await;
    assert_eq!(v["reason"], "invalid_request", "{v}");
    assert_eq!(status(&robot)["call"]["video"]["kbps"], 300);

    // A size and rate change renegotiates: the phone decodes the new size.
    let v = request(&mut phone, &mut c, "video", json!({"width": 160, "height": 120, "fps": 15})).await;
    assert_eq!(v["video"], json!({"width":160,"height":120,"fps":15,"kbps":300}), "{v}");
    let resized = {
        let rx = rx.clone();
        tokio::task::spawn_blocking(move || rx.wait_frame_size(160, 120, Duration::from_secs(30))).await.unwrap()
    };
    assert!(resized, "no 160x120 frame decoded; last size {:?}", rx.frame_size());
    let f = rx.frames();
    assert!(frames_with_pings(&mut phone, &mut c, &rx, f + 10, Duration::from_secs(30)).await, "frames stopped");
    stop_receiver(rx).await;
}
