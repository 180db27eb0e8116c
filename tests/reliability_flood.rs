//! Floods and sizes (docs/reliability.md): oversized and deeply nested
//! payloads, many topics, non-owner invites and forged session requests at
//! a high rate during a call. The owner's commands must all be answered,
//! robotd's memory and CPU per message stay bounded. Figures are printed
//! with `--nocapture` and reported in docs/reliability.md.

#[path = "common/calls.rs"]
mod calls_kit;
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use calls_kit::*;
use common::*;
use robotd::phone::{InviteOutcome, Offer};
use robotd::wire::identity::ClientId;
use robotd::wire::props::{self, now_ms};
use robotd::wire::topics;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;

/// Oversized payloads (16 KiB + 1, 1 MB), the exact limit, and deeply nested
/// JSON from the owner: each is dropped or refused at the cheapest point, the
/// link is not disturbed, and the owner is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_deeply_nested_payloads_are_refused_cheaply() {
    let Owned { broker, robot, mut phone, paired } = robot_with_owner(SMALL_VIDEO).await;
    let pid = robot.pid();
    let sink = UdpSink::bind();
    let robot_id: ClientId = robot.id.parse().unwrap();

    // Deep JSON in an authenticated invite (outside a call, so it is parsed): refused, not a crash.
    let deep = format!("{}{}", "[".repeat(8000), "]".repeat(8000));
    let session = ClientId::random();
    let topic = topics::invite(&robot_id, &session);
    phone.subscribe(&topics::invite_response(&robot_id, &session)).await.unwrap();
    let seq = phone.next_seq();
    phone.publish_signed(&paired.key, topic, deep.clone().into_bytes(), seq, seq).await;
    let resp = topics::invite_response(&robot_id, &session);
    let m = phone.recv_until(SOON, |m| m.topic == resp).await.expect("an answer to the deep invite");
    assert_eq!(m.json()["reason"], "invalid_request", "{}", m.json());

    let mut c = call(&mut phone, &paired, sink.port).await;
    let rss0 = rss_kib(pid);
    let before = status(&robot);
    let d0 = drop_counts(&before);
    let req = topics::session_request(&c.session, "drive");
    // A probe on the same topic that accepts 1 MiB packets: proves the broker forwards
    // the 1 MB message to clients that accept it.
    let mut flooder = Probe::connect(&broker, &[&req]).await;

    // 16 KiB + 1 (robotd's payload limit; under its 32 KiB packet limit, so delivered and dropped by size).
    flooder.publish(&req, &vec![b' '; 16 * 1024 + 1], false, None).await;
    // 1 MB: over the Maximum Packet Size robotd announced; the broker must not send it to robotd at all.
    flooder.publish(&req, &vec![b'x'; 1_000_000], false, None).await;
    // Exactly 16 KiB passes the size check and reaches authentication (no `from`: not_caller).
    flooder.publish(&req, &vec![b' '; 16 * 1024], false, None).await;
    flooder.expect("the 1 MB message at a client that accepts it", SOON, |m| m.payload.len() == 1_000_000).await;

    // Deep JSON from the owner in the call, MACed: parsed, refused as invalid_request.
    let objs = format!("{}1{}", "{\"a\":".repeat(2500), "}".repeat(2500));
    for (cmd, payload) in [("drive", deep.as_str()), ("video", objs.as_str())] {
        assert!(payload.len() <= 16 * 1024);
        let seq = c.next_seq();
        phone
            .publish_signed(&c.session_key, topics::session_request(&c.session, cmd), payload.into(), seq, now_ms())
            .await;
        let (_, v) = phone.response(&c, SOON, |k, v| k == cmd && v["re"] == seq).await.expect("deep JSON answered");
        assert_eq!(v["reason"], "invalid_request", "{cmd}: {v}");
    }
    // The owner is answered, on the same connection (no reconnect after the 1 MB message).
    assert_eq!(ping(&mut phone, &mut c).await["motion"], "idle");
    let after = status(&robot);
    let d1 = drop_counts(&after);
    assert_eq!(after["broker"]["connects"], before["broker"]["connects"], "the link was re-established: {after}");
    assert_eq!(
        delta(&d1, &d0, "size"),
        1,
        "only the 16 KiB + 1 payload reaches robotd and is dropped by size: {d0:?} -> {d1:?}"
    );
    assert_eq!(delta(&d1, &d0, "auth.not_caller"), 1, "the exact-limit payload reaches authentication: {d1:?}");
    assert!(robot.log().contains("connected to broker"), "{}", robot.log());
    let rss1 = rss_kib(pid);
    eprintln!("FIGURE sizes: RSS {rss0} KiB -> {rss1} KiB; drops {d0:?} -> {d1:?}");
    assert!(rss1 < rss0 + 16 * 1024, "RSS grew from {rss0} to {rss1} KiB");
}

/// What a flooder sends, in turn.
fn flood_message(
    i: u64,
    robot: &ClientId,
    session: &ClientId,
    caller: &ClientId,
) -> (String, Vec<u8>, Option<rumqttc::v5::mqttbytes::v5::PublishProperties>) {
    let junk_key: [u8; 32] = rand::random();
    let stranger = ClientId::random();
    let ts = now_ms();
    match i % 7 {
        // An invite from a non-owner (a new session, so a new topic, every time).
        0 => {
            let topic = topics::invite(robot, &ClientId::random());
            let payload = Offer::new(LOCALHOST, 5004).payload();
            let p = props::signed(&junk_key, &topic, stranger.as_str(), ts, ts, &payload, None);
            (topic, payload, Some(p))
        }
        // A forged drive in the call: the caller's `from`, a MAC under a made-up key.
        1 => {
            let topic = topics::session_request(session, "drive");
            let payload = br#"{"linear":1.0,"angular":0.0,"ms":1000}"#.to_vec();
            let p = props::signed(&junk_key, &topic, caller.as_str(), i, ts, &payload, None);
            (topic, payload, Some(p))
        }
        // A request in the call from someone else, on many command topics.
        2 => {
            let topic = topics::session_request(session, &format!("cmd{}", i % 1000));
            let p = props::signed(&junk_key, &topic, stranger.as_str(), i, ts, b"{}", None);
            (topic, b"{}".to_vec(), Some(p))
        }
        // A pairing request while no window is open (answers are budgeted).
        3 => {
            let topic = format!("pair/{robot}/{stranger}");
            let payload = br#"{"nickname":"x","nonce":"00000000000000000000000000000000"}"#.to_vec();
            let p = props::signed(&junk_key, &topic, stranger.as_str(), ts, ts, &payload, None);
            (topic, payload, Some(p))
        }
        // A topic outside the grammar.
        4 => (format!("invite/{robot}/NOT-A-SESSION-{i}"), b"{}".to_vec(), None),
        // A payload over 16 KiB.
        5 => (topics::invite(robot, &ClientId::random()), vec![b' '; 17 * 1024], None),
        // A session that does not exist.
        _ => {
            let topic = topics::session_request(&ClientId::random(), "ping");
            let p = props::signed(&junk_key, &topic, caller.as_str(), i, ts, b"{}", None);
            (topic, b"{}".to_vec(), Some(p))
        }
    }
}

/// During a call, two clients flood the robot's topics (non-owner invites,
/// forged and misaddressed session requests, pairing attempts, bad topics,
/// oversized payloads: ~2000 messages/s for 10 s) while the owner sends
/// 300 requests at 50 Hz (drives and pings). Every one of the owner's
/// requests is answered; RSS and CPU per flood message stay bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_during_a_call_owner_still_answered_memory_and_cpu_bounded() {
    let Owned { broker, robot, mut phone, paired } = robot_with_owner(SMALL_VIDEO).await;
    let pid = robot.pid();
    let sink = UdpSink::bind();
    let robot_id: ClientId = robot.id.parse().unwrap();
    let mut c = call(&mut phone, &paired, sink.port).await;
    sleep_pinging(&mut phone, &mut c, Duration::from_secs(2)).await;

    // Baseline: the call alone (video encoding) for 3 s.
    let quiet_rate = quiet_cpu_rate(&mut phone, &mut c, pid).await;
    let rss0 = rss_kib(pid);
    let d0 = drop_counts(&status(&robot));

    // The flood: 2 clients, 10 messages every 10 ms each, QoS 0.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    let mut tasks = Vec::new();
    for f in 0..2u64 {
        let probe = Probe::connect(&broker, &[]).await;
        let client = probe.client.clone();
        flooders.push(probe);
        let (stop, sent, robot_id, session, caller) =
            (stop.clone(), sent.clone(), robot_id.clone(), c.session.clone(), phone.id.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = f;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..10 {
                    let (topic, payload, p) = flood_message(i, &robot_id, &session, &caller);
                    let r = match p {
                        Some(p) => client.publish_with_properties(topic, QoS::AtMostOnce, false, payload, p).await,
                        None => client.publish(topic, QoS::AtMostOnce, false, payload).await,
                    };
                    r.unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 2;
                }
            }
        }));
    }
    let (c0, t0) = (cpu_time(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The owner: 300 requests at 50 Hz, alternately drive and ping.
    let owner = owner_series(&mut phone, &mut c, 300, Duration::from_millis(20)).await;
    let flood_s = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let cpu = cpu_time(pid) - c0;
    let rss1 = rss_kib(pid);
    let d1 = drop_counts(&status(&robot));
    let sent = sent.load(Ordering::Relaxed);
    let handled: u64 = d1.keys().map(|k| delta(&d1, &d0, k)).sum();

    let extra_cpu = cpu.as_secs_f64() - quiet_rate * flood_s;
    let per_msg_us = extra_cpu.max(0.0) * 1e6 / handled.max(1) as f64;
    let diff: BTreeMap<&String, u64> = d1.keys().map(|k| (k, delta(&d1, &d0, k))).filter(|(_, v)| *v > 0).collect();
    eprintln!(
        "FIGURE flood: {sent} messages in {flood_s:.1} s ({:.0}/s) from 2 clients; robotd counted {handled} drops {diff:?}; \
         owner: {}/300 answered ok, latency p50 {:?} p99 {:?} max {:?}; \
         CPU {:.2} s during the flood vs {:.3} s/s for the call alone -> {per_msg_us:.1} us per flood message; \
         RSS {rss0} KiB -> {rss1} KiB",
        sent as f64 / flood_s,
        owner.ok,
        owner.pct(0.5),
        owner.pct(0.99),
        owner.pct(1.0),
        cpu.as_secs_f64(),
        quiet_rate,
    );
    assert!(owner.refused.is_empty(), "owner requests refused during the flood: {:?}", owner.refused);
    assert_eq!(owner.ok, 300, "owner requests unanswered during the flood: {:?}", owner.lost);
    assert!(sent >= 10_000, "the flood was too small to mean anything: {sent}");
    assert!(handled >= sent / 2, "robotd saw only {handled} of {sent} flood messages: {diff:?}");
    assert!(rss1 < rss0 + 32 * 1024, "RSS grew from {rss0} KiB to {rss1} KiB");
    assert!(per_msg_us < 500.0, "{per_msg_us:.1} us of CPU per flood message");
    // Nothing the flood sent moved the robot or ended the call: the owner's last drive is the one in force.
    assert_eq!(request(&mut phone, &mut c, "stop", json!({})).await["status"], "stopped");
    assert_eq!(status(&robot)["call"]["session"], c.session.as_str());
    // Non-owners' invites were never answered, and no second call started.
    match phone.invite(&paired, &Offer::new(LOCALHOST, sink.port), SOON).await.expect("an answer") {
        InviteOutcome::Refused(v) => assert_eq!(v["status"], "busy", "{v}"),
        InviteOutcome::Accepted(_) => panic!("accepted during a call"),
    }
    drop(flooders);
}
