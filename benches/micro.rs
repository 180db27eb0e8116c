//! Per-message costs on the robot's inbound path (criterion):
//! - `mac_verify`: `auth::mac::verify` of a `drive` request (valid MAC, and a
//!   forged one, which is what a flood costs the robot per message);
//! - `auth_fields`: pulling from/seq/ts/mac out of the MQTT user properties;
//! - `parse_drive` / `parse_invite`: payload parsing once the MAC has passed.
//!
//! Floor: `sha256_64b` hashes the same number of bytes with plain SHA-256,
//! so the MAC figures can be read as a ratio against it (HMAC = 2 extra
//! compression blocks plus hex). Run: `cargo bench --bench micro`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use robotd::wire::mac::{self, MacInput};
use robotd::wire::payloads::{Invite, parse_command};
use robotd::wire::props::{self, AuthFields};
use sha2::{Digest, Sha256};

const TOPIC: &str = "session/0123456789abcdef0123456789abcdef/drive/request";
const FROM: &str = "36940d0ece18aebf69d0ef6825534e24";
const DRIVE: &[u8] = br#"{"linear":0.5,"angular":0.0,"ms":1000}"#;
const INVITE: &[u8] = br#"{"media":{"host":"192.0.2.10","port":5004},"video":{"codecs":["H264"],"max_width":1280,"max_height":720,"max_fps":30,"max_kbps":2500}}"#;

fn benches(c: &mut Criterion) {
    let key = [7u8; 32];
    let input = MacInput { topic: TOPIC, from: FROM, seq: 42, ts_ms: 1_764_072_000_000, payload: DRIVE };
    let good = mac::compute(&key, &input);
    let forged = "0".repeat(64);
    // The bytes the MAC covers, for the SHA-256 floor.
    let covered = [mac::MAC_DOMAIN, TOPIC.as_bytes(), b"\n", FROM.as_bytes(), b"\n42\n1764072000000\n", DRIVE].concat();

    c.bench_function("sha256_covered_bytes (floor)", |b| b.iter(|| Sha256::digest(black_box(&covered))));
    c.bench_function("mac_verify_valid", |b| b.iter(|| mac::verify(black_box(&key), black_box(&input), &good)));
    c.bench_function("mac_verify_forged", |b| b.iter(|| mac::verify(black_box(&key), black_box(&input), &forged)));
    let p = props::signed(&key, TOPIC, FROM, 42, 1_764_072_000_000, DRIVE, None);
    c.bench_function("auth_fields_from_properties", |b| b.iter(|| AuthFields::from_properties(black_box(Some(&p)))));
    c.bench_function("parse_drive", |b| b.iter(|| parse_command(black_box("drive"), black_box(DRIVE))));
    c.bench_function("parse_invite", |b| b.iter(|| Invite::parse(black_box(INVITE))));
}

criterion_group!(micro, benches);
criterion_main!(micro);
