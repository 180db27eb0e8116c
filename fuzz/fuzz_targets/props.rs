//! Authentication user properties: `AuthFields::from_properties` with
//! arbitrary property lists (any keys, repeated keys, any values).
//!
//! Invariants: a field is `Some` only if its key appears exactly once (a
//! repeated key must never let the sender pick the copy), numbers only in
//! canonical decimal, `complete()` iff all four are usable; and what
//! `signed` produces always verifies.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use robotd::wire::props::{self, AuthFields};
use rumqttc::v5::mqttbytes::v5::PublishProperties;

#[derive(Arbitrary, Debug)]
enum Key {
    From,
    Seq,
    Ts,
    Mac,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    present: bool,
    props: Vec<(Key, String)>,
    correlation: Option<Vec<u8>>,
    // For the sign/verify round trip.
    key: [u8; 32],
    topic: String,
    from: String,
    seq: u64,
    ts: u64,
    payload: Vec<u8>,
}

fuzz_target!(|inp: Input| {
    let user_properties: Vec<(String, String)> = inp
        .props
        .into_iter()
        .map(|(k, v)| {
            let k = match k {
                Key::From => "from".to_owned(),
                Key::Seq => "seq".to_owned(),
                Key::Ts => "ts".to_owned(),
                Key::Mac => "mac".to_owned(),
                Key::Other(s) => s,
            };
            (k, v)
        })
        .collect();
    let p =
        PublishProperties { user_properties, correlation_data: inp.correlation.map(Bytes::from), ..Default::default() };
    let f = AuthFields::from_properties(inp.present.then_some(&p));
    if !inp.present {
        assert_eq!(f, AuthFields::default());
    } else {
        let only = |key: &str| {
            let mut it = p.user_properties.iter().filter(|(k, _)| k == key).map(|(_, v)| v);
            match (it.next(), it.next()) {
                (Some(v), None) => Some(v.clone()),
                _ => None,
            }
        };
        let canonical = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok().filter(|n| n.to_string() == s));
        assert_eq!(f.from, only("from"));
        assert_eq!(f.mac, only("mac"));
        assert_eq!(f.seq, canonical(only("seq")));
        assert_eq!(f.ts_ms, canonical(only("ts")));
        assert_eq!(f.correlation, p.correlation_data);
    }
    let all = f.from.is_some() && f.seq.is_some() && f.ts_ms.is_some() && f.mac.is_some();
    assert_eq!(f.complete().is_ok(), all);
    // Arbitrary fields never verify under a key nobody used (a 2^-256 event otherwise).
    let _ = props::verify(&inp.key, &inp.topic, &inp.payload, &f);

    // Round trip: what robotd signs, robotd verifies, and nothing else about it changes.
    let s = props::signed(&inp.key, &inp.topic, &inp.from, inp.seq, inp.ts, &inp.payload, None);
    let g = AuthFields::from_properties(Some(&s));
    assert_eq!(props::verify(&inp.key, &inp.topic, &inp.payload, &g), Some((inp.from.as_str(), inp.seq, inp.ts)));
    let mut other = inp.payload.clone();
    other.push(0);
    assert_eq!(props::verify(&inp.key, &inp.topic, &other, &g), None);
});
