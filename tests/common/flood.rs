//! A raw MQTT 5 flooder: forged QoS 0 PUBLISH packets (the caller's `from`,
//! a `seq`, a fresh `ts` and a wrong `mac`), pre-encoded in one batch and
//! written again and again as fast as the broker reads them. Shared by the
//! system benchmark (`benches/system.rs`, its `flood` mode) and
//! `tests/flood_netns.rs`, which both re-execute themselves as
//! `flood ADDR SECONDS MAX FROM TOPIC...` so the flood runs in a process of
//! its own (in its own namespace and CPU set, for the test).
//!
//! Loaded with `#[path = ".../common/flood.rs"] mod flood_kit;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use robotd::wire::props::now_ms;

fn mqtt_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![kind];
    varint(&mut p, body.len());
    p.extend_from_slice(body);
    p
}

/// A forged PUBLISH (QoS 0) with `from`, `seq`, `ts` and a wrong `mac`.
pub fn forged_publish(topic: &str, from: &str, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut props = Vec::new();
    for (k, v) in
        [("from", from.to_owned()), ("seq", seq.to_string()), ("ts", now_ms().to_string()), ("mac", "ab".repeat(32))]
    {
        props.push(0x26);
        mqtt_str(&mut props, k);
        mqtt_str(&mut props, &v);
    }
    let mut body = Vec::new();
    mqtt_str(&mut body, topic);
    varint(&mut body, props.len());
    body.extend_from_slice(&props);
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// Packets per batch (one `write_all`); the count bound is rounded up to it.
pub const BATCH: u64 = 64;

/// `flood ADDR SECONDS MAX FROM TOPIC...`: connect to the broker at ADDR
/// (`host:port`, MQTT 5, clean start) and write forged PUBLISH packets on the
/// TOPICs in turn, as fast as it reads them, until SECONDS have passed or MAX
/// packets are written. Prints progress lines `packets seconds` on stdout
/// (line-buffered, so a killed flooder's last line is still there) and a
/// last one when it stops. Exits early, after that line, if the broker
/// closes the connection.
pub fn flood(args: &[String]) {
    let [addr, secs, max, from, ..] = args else {
        panic!("usage: flood ADDR SECONDS MAX FROM TOPIC... (got {args:?})");
    };
    let topics = &args[4..];
    assert!(!topics.is_empty(), "flood: no topics given");
    let secs: u64 = secs.parse().expect("flood: SECONDS");
    let max: u64 = max.parse().expect("flood: MAX");
    let mut s = TcpStream::connect(addr.as_str()).unwrap_or_else(|e| panic!("flood: connect {addr}: {e}"));
    s.set_nodelay(true).unwrap();
    let mut connect = Vec::new();
    mqtt_str(&mut connect, "MQTT");
    connect.extend_from_slice(&[5, 0x02, 0, 60, 0]);
    mqtt_str(&mut connect, &format!("flood-{}", rand::random::<u32>()));
    s.write_all(&packet(0x10, &connect)).unwrap();
    let mut ack = [0u8; 64];
    let _ = s.read(&mut ack).unwrap();
    // One batch of packets over the topics, written again and again.
    let payload = br#"{"linear":1.0,"angular":0.0,"ms":1000}"#;
    let mut batch = Vec::new();
    for i in 0..BATCH {
        batch.extend_from_slice(&forged_publish(&topics[i as usize % topics.len()], from, 1_000_000 + i, payload));
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut sent = 0u64;
    let mut report = start;
    while Instant::now() < end && sent < max {
        if s.write_all(&batch).is_err() {
            break;
        }
        sent += BATCH;
        if report.elapsed() >= Duration::from_millis(250) {
            report = Instant::now();
            println!("{sent} {:.3}", start.elapsed().as_secs_f64());
        }
    }
    println!("{sent} {:.3}", start.elapsed().as_secs_f64());
}

/// The last progress line of a flooder's stdout: (packets written, seconds).
pub fn last_report(stdout: &str) -> (u64, f64) {
    let last: Vec<f64> =
        stdout.lines().last().unwrap_or("0 1").split_whitespace().filter_map(|x| x.parse().ok()).collect();
    (last.first().copied().unwrap_or(0.0) as u64, last.get(1).copied().unwrap_or(1.0))
}
