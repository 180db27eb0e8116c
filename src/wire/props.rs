//! The authentication user properties (`from`, `seq`, `ts`, `mac`) and
//! correlation data carried by every message after pairing.

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

/// Properties for an outgoing authenticated message: MACs `payload` under
/// `key` and adds `from`, `seq`, `ts`, `mac`, plus correlation data if given.
pub fn signed(
    key: &[u8],
    topic: &str,
    from: &str,
    seq: u64,
    ts_ms: u64,
    payload: &[u8],
    correlation: Option<Bytes>,
) -> PublishProperties {
    let m = mac::compute(key, &MacInput { topic, from, seq, ts_ms, payload });
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

/// Verify a received message's MAC under `key`; returns the checked fields.
pub fn verify<'a>(key: &[u8], topic: &str, payload: &[u8], f: &'a AuthFields) -> Option<(&'a str, u64, u64)> {
    let (from, seq, ts_ms, m) = f.complete().ok()?;
    mac::verify(key, &MacInput { topic, from, seq, ts_ms, payload }, m).then_some((from, seq, ts_ms))
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
