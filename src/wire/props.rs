//! The authentication user properties (`from`, `seq`, `ts`, `mac`) and
//! correlation data carried by every message after pairing.
//!
//! Both directions have one shape each: a received message is checked as a
//! [`SignedMessage`] (built from its [`AuthFields`]), and every outgoing MAC'd
//! message, robot or phone, is made by a [`Signer`].

use std::fmt;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

use crate::wire::mac::{self, MacInput};

/// The authentication fields of a received message, as found (unchecked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthFields {
    pub from: Option<String>,
    pub seq: Option<u64>,
    pub ts_ms: Option<u64>,
    pub mac: Option<String>,
    pub correlation: Option<Bytes>,
}

/// Why a message's authentication fields could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldError {
    /// A field is missing, repeated, or not a decimal u64.
    Malformed,
}

impl AuthFields {
    /// Pull the fields out of a message's properties. Repeated keys make the
    /// field unusable (`None`) rather than picking one: an attacker must not be
    /// able to choose which copy is checked and which is used.
    pub fn from_properties(props: Option<&PublishProperties>) -> Self {
        let mut out = AuthFields::default();
        let Some(p) = props else { return out };
        let mut seen = [0u8; 4];
        for (k, v) in &p.user_properties {
            let i = match k.as_str() {
                "from" => 0,
                "seq" => 1,
                "ts" => 2,
                "mac" => 3,
                _ => continue,
            };
            // Saturating: 256 copies of a key must not wrap back to "seen once".
            seen[i] = seen[i].saturating_add(1);
            match i {
                0 => out.from = Some(v.clone()),
                1 => out.seq = parse_decimal(v),
                2 => out.ts_ms = parse_decimal(v),
                _ => out.mac = Some(v.clone()),
            }
        }
        if seen[0] > 1 {
            out.from = None;
        }
        if seen[1] > 1 {
            out.seq = None;
        }
        if seen[2] > 1 {
            out.ts_ms = None;
        }
        if seen[3] > 1 {
            out.mac = None;
        }
        out.correlation = p.correlation_data.clone();
        out
    }

    /// The (from, seq, ts, mac) quadruple, if all are present and well-formed.
    pub fn complete(&self) -> Result<(&str, u64, u64, &str), FieldError> {
        match (&self.from, self.seq, self.ts_ms, &self.mac) {
            (Some(f), Some(s), Some(t), Some(m)) => Ok((f, s, t, m)),
            _ => Err(FieldError::Malformed),
        }
    }
}

/// Strict canonical decimal u64: digits only, no sign, no leading zeros
/// (the MAC covers the canonical form, so `007` could never verify anyway).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// A received message as its receiver checks it: the topic and payload
/// exactly as they came (the MAC covers both) and the authentication user
/// properties found, unchecked (`None` when absent, repeated or not canonical
/// decimal, see [`AuthFields::from_properties`]).
///
/// The one shape of an incoming signed message: the robot's pairing window
/// reads it inside [`crate::wire::pairing::PairRequest`], the phone checks the
/// robot's pairing answer with it, and [`verify`] uses it for invites and
/// session messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedMessage<'a> {
    /// The topic exactly as received.
    pub topic: &'a str,
    /// The payload bytes exactly as received.
    pub payload: &'a [u8],
    /// The `from` user property.
    pub from: Option<&'a str>,
    /// The `seq` user property.
    pub seq: Option<u64>,
    /// The `ts` user property (unix ms).
    pub ts_ms: Option<u64>,
    /// The `mac` user property (absent on unauthenticated messages).
    pub mac: Option<&'a str>,
}

impl<'a> SignedMessage<'a> {
    /// The message on `topic` with `payload` and the fields found in its properties.
    pub fn new(topic: &'a str, payload: &'a [u8], auth: &'a AuthFields) -> Self {
        SignedMessage {
            topic,
            payload,
            from: auth.from.as_deref(),
            seq: auth.seq,
            ts_ms: auth.ts_ms,
            mac: auth.mac.as_deref(),
        }
    }

    /// What the MAC covers and the `mac` carried, when `from`, `seq`, `ts`
    /// and `mac` are all present.
    pub fn mac_input(&self) -> Option<(MacInput<'a>, &'a str)> {
        let (Some(from), Some(seq), Some(ts_ms), Some(mac_hex)) = (self.from, self.seq, self.ts_ms, self.mac) else {
            return None;
        };
        Some((MacInput { topic: self.topic, from, seq, ts_ms, payload: self.payload }, mac_hex))
    }

    /// The checked `(from, seq, ts_ms)` when the MAC is valid under `key`.
    pub fn verify(&self, key: &[u8]) -> Option<(&'a str, u64, u64)> {
        let (input, mac_hex) = self.mac_input()?;
        mac::verify(key, &input, mac_hex).then_some((input.from, input.seq, input.ts_ms))
    }
}

/// Makes every outgoing authenticated message, for the robot and the phone
/// alike: MACs `topic`, `from`, `seq`, `ts` and the payload under `key` and
/// carries them as the user properties `from`, `seq`, `ts`, `mac` (in that
/// order), plus correlation data when answering a request that had some.
///
/// `key` is the pairing secret `S` (the phone's pairing request), the owner
/// key `K` (pairing answer, invites) or the session key `Ks` (in a call).
/// `Debug` leaves the key out.
#[derive(Clone, Copy)]
pub struct Signer<'k> {
    key: &'k [u8],
    from: &'k str,
}

impl fmt::Debug for Signer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("from", &self.from).finish_non_exhaustive()
    }
}

impl<'k> Signer<'k> {
    /// A signer sending as `from` (the sender's client ID) under `key`.
    pub fn new(key: &'k [u8], from: &'k str) -> Self {
        Signer { key, from }
    }

    /// The properties that sign `payload` on `topic` as message `seq` at
    /// `ts_ms` (unix ms).
    pub fn sign(
        &self,
        topic: &str,
        seq: u64,
        ts_ms: u64,
        payload: &[u8],
        correlation: Option<Bytes>,
    ) -> PublishProperties {
        let from = self.from;
        let m = mac::compute(self.key, &MacInput { topic, from, seq, ts_ms, payload });
        PublishProperties {
            user_properties: vec![
                ("from".into(), from.into()),
                ("seq".into(), seq.to_string()),
                ("ts".into(), ts_ms.to_string()),
                ("mac".into(), m),
            ],
            correlation_data: correlation,
            ..Default::default()
        }
    }

    /// The whole message, ready to publish: [`Signer::sign`] kept together
    /// with the topic and payload it covers.
    pub fn message(&self, topic: String, payload: Vec<u8>, seq: u64, ts_ms: u64, correlation: Option<Bytes>) -> Signed {
        let props = self.sign(&topic, seq, ts_ms, &payload, correlation);
        Signed { topic, payload, props }
    }
}

/// An outgoing message and the properties that sign it ([`Signer::message`]).
/// Publish it as is: changing the topic or payload breaks the MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// Where it goes.
    pub topic: String,
    /// Its bytes, as MAC'd.
    pub payload: Vec<u8>,
    /// `from`, `seq`, `ts`, `mac` and any correlation data.
    pub props: PublishProperties,
}

/// Properties for an outgoing authenticated message; the same as
/// `Signer::new(key, from).sign(topic, seq, ts_ms, payload, correlation)`.
pub fn signed(
    key: &[u8],
    topic: &str,
    from: &str,
    seq: u64,
    ts_ms: u64,
    payload: &[u8],
    correlation: Option<Bytes>,
) -> PublishProperties {
    Signer::new(key, from).sign(topic, seq, ts_ms, payload, correlation)
}

/// Properties for an unauthenticated message (pairing rejections), carrying
/// only `from`, `seq` and `ts`.
pub fn unsigned(from: &str, seq: u64, ts_ms: u64) -> PublishProperties {
    PublishProperties {
        user_properties: vec![
            ("from".into(), from.into()),
            ("seq".into(), seq.to_string()),
            ("ts".into(), ts_ms.to_string()),
        ],
        ..Default::default()
    }
}

/// Verify a received message's MAC under `key`; returns the checked fields
/// ([`SignedMessage::verify`]).
pub fn verify<'a>(key: &[u8], topic: &str, payload: &[u8], f: &'a AuthFields) -> Option<(&'a str, u64, u64)> {
    let (_, seq, ts_ms) = SignedMessage::new(topic, payload, f).verify(key)?;
    // `from` again from `f`, so the result borrows only `f`.
    Some((f.from.as_deref()?, seq, ts_ms))
}

/// Unix time in milliseconds from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_roundtrip_and_tamper() {
        let key = [3u8; 32];
        let p = signed(&key, "t/x", "36940d0ece18aebf69d0ef6825534e24", 9, 1000, b"{}", Some(Bytes::from_static(b"c")));
        let f = AuthFields::from_properties(Some(&p));
        assert_eq!(f.correlation.as_deref(), Some(&b"c"[..]));
        assert_eq!(verify(&key, "t/x", b"{}", &f), Some(("36940d0ece18aebf69d0ef6825534e24", 9, 1000)));
        assert_eq!(verify(&key, "t/y", b"{}", &f), None);
        assert_eq!(verify(&key, "t/x", b"{ }", &f), None);
    }

    #[test]
    fn the_signer_writes_the_protocol_properties() {
        let key = [7u8; 32];
        let from = "36940d0ece18aebf69d0ef6825534e24";
        let s = Signer::new(&key, from).message("t/x".into(), b"{}".to_vec(), 3, 1000, None);
        let mac = mac::compute(&key, &MacInput { topic: "t/x", from, seq: 3, ts_ms: 1000, payload: b"{}" });
        let want: Vec<(String, String)> = [("from", from), ("seq", "3"), ("ts", "1000"), ("mac", &mac)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(s.props.user_properties, want);
        assert_eq!(s.props.correlation_data, None);
        assert_eq!(s.props, signed(&key, "t/x", from, 3, 1000, b"{}", None));
        assert!(!format!("{:?}", Signer::new(&key, from)).contains("7, 7"));
    }

    #[test]
    fn a_signed_message_needs_all_four_fields() {
        let key = [3u8; 32];
        let p = Signer::new(&key, "a").sign("t", 1, 2, b"x", None);
        let f = AuthFields::from_properties(Some(&p));
        let m = SignedMessage::new("t", b"x", &f);
        assert_eq!(m.verify(&key), Some(("a", 1, 2)));
        for strip in ["from", "seq", "ts", "mac"] {
            let mut p = p.clone();
            p.user_properties.retain(|(k, _)| k != strip);
            let f = AuthFields::from_properties(Some(&p));
            let m = SignedMessage::new("t", b"x", &f);
            assert!(m.mac_input().is_none() && m.verify(&key).is_none(), "without {strip}");
        }
    }

    #[test]
    fn duplicate_or_malformed_fields_are_unusable() {
        let mut p = signed(&[1; 32], "t", "a", 1, 2, b"", None);
        p.user_properties.push(("seq".into(), "3".into()));
        assert_eq!(AuthFields::from_properties(Some(&p)).seq, None);
        for bad in ["", "-1", "+1", "1.0", "0x10", "99999999999999999999999", " 1", "007", "00"] {
            assert_eq!(parse_decimal(bad), None, "{bad}");
        }
        assert_eq!(parse_decimal("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal("0"), Some(0));
        assert!(AuthFields::from_properties(None).complete().is_err());
    }

    #[test]
    fn hundreds_of_copies_of_a_field_are_still_repeats() {
        // A u8 counter once wrapped: 256 copies read as none (a panic in debug
        // builds), 257 as exactly one, so the last copy was used.
        for n in [255, 256, 257, 513] {
            let mut p = signed(&[1; 32], "t", "a", 1, 2, b"", None);
            p.user_properties.extend(std::iter::repeat_n(("mac".to_string(), "0".repeat(64)), n));
            let f = AuthFields::from_properties(Some(&p));
            assert_eq!(f.mac, None, "{n} extra copies");
            assert!(f.complete().is_err());
        }
    }

    mod fuzzlike {
        use super::*;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => prop::sample::select(vec!["from", "seq", "ts", "mac"]).prop_map(String::from),
                1 => any::<String>(),
            ]
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9]{0,22}", any::<String>()]
        }

        /// Ordinary lists, and floods: one key repeated up to 600 times among
        /// others (a counter of repeats must not wrap).
        fn props() -> impl Strategy<Value = Vec<(String, String)>> {
            prop_oneof![
                prop::collection::vec((key(), value()), 0..12),
                (prop::collection::vec((key(), value()), 0..6), key(), value(), 0usize..600).prop_map(
                    |(mut v, k, val, n)| {
                        v.extend(std::iter::repeat_n((k, val), n));
                        v
                    }
                ),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]
            /// A field is usable only when its key appears exactly once, and
            /// numbers only in canonical decimal; never a panic.
            #[test]
            fn fields_used_only_when_given_exactly_once(user_properties in props()) {
                let p = PublishProperties { user_properties, ..Default::default() };
                let f = AuthFields::from_properties(Some(&p));
                let only = |key: &str| {
                    let mut it = p.user_properties.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone());
                    match (it.next(), it.next()) {
                        (Some(v), None) => Some(v),
                        _ => None,
                    }
                };
                let canonical = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok().filter(|n| n.to_string() == s));
                prop_assert_eq!(&f.from, &only("from"));
                prop_assert_eq!(&f.mac, &only("mac"));
                prop_assert_eq!(f.seq, canonical(only("seq")));
                prop_assert_eq!(f.ts_ms, canonical(only("ts")));
                prop_assert_eq!(f.complete().is_ok(), f.from.is_some() && f.seq.is_some() && f.ts_ms.is_some() && f.mac.is_some());
                prop_assert_eq!(verify(&[0; 32], "t", b"", &f), None);
            }
        }
    }
}
