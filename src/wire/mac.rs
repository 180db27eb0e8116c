//! The message MAC.
//!
//! `mac = hex(HMAC-SHA256(key, "robotd/1\n" + topic + "\n" + from + "\n" + seq + "\n" + ts + "\n" + payload))`
//!
//! The topic is inside the MAC so a valid message cannot be replayed onto
//! another topic (e.g. a `stop` request re-sent as a `drive`), and `from` so a
//! message cannot be re-attributed to another sender.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation prefix; bump on any incompatible change of the MAC input.
pub const MAC_DOMAIN: &[u8] = b"robotd/1\n";

/// The fields of a message that the MAC covers.
#[derive(Debug, Clone, Copy)]
pub struct MacInput<'a> {
    pub topic: &'a str,
    pub from: &'a str,
    pub seq: u64,
    pub ts_ms: u64,
    pub payload: &'a [u8],
}

fn hmac_of(key: &[u8], m: &MacInput<'_>) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(MAC_DOMAIN);
    mac.update(m.topic.as_bytes());
    mac.update(b"\n");
    mac.update(m.from.as_bytes());
    mac.update(b"\n");
    mac.update(m.seq.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(m.ts_ms.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(m.payload);
    mac
}

/// The MAC as the 64-character lowercase hex string carried in the `mac` property.
pub fn compute(key: &[u8], m: &MacInput<'_>) -> String {
    hex::encode(hmac_of(key, m).finalize().into_bytes())
}

/// Check a received `mac` property in constant time. Anything that is not
/// 64 hex characters fails (uppercase hex is accepted, as hex decoding is).
pub fn verify(key: &[u8], m: &MacInput<'_>, mac_hex: &str) -> bool {
    let mut got = [0u8; 32];
    if mac_hex.len() != 64 || hex::decode_to_slice(mac_hex, &mut got).is_err() {
        return false;
    }
    // `verify_slice` compares in constant time (subtle::ConstantTimeEq).
    hmac_of(key, m).verify_slice(&got).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHONE: &str = "36940d0ece18aebf69d0ef6825534e24";

    #[test]
    fn protocol_vector_pairing_request() {
        let s: Vec<u8> = (0u8..16).collect();
        let m = MacInput {
            topic: "pair/0123456789abcdef0123456789abcdef/36940d0ece18aebf69d0ef6825534e24",
            from: PHONE,
            seq: 1764072000000,
            ts_ms: 1764072000000,
            payload: br#"{"nickname":"Alice","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}"#,
        };
        let want = "ee1e50b7af85f38e6850f1163f0dce2142c56230324a2f851184846a601679c7";
        assert_eq!(compute(&s, &m), want);
        assert!(verify(&s, &m, want));
        assert!(verify(&s, &m, &want.to_uppercase()));
    }

    #[test]
    fn protocol_vector_drive_request() {
        let ks = hex::decode("61edd9aca22ea26a0234b90e26ea7a69e592d8b50fa7b4d1ddbe38c2d10458b8").unwrap();
        let m = MacInput {
            topic: "session/00112233445566778899aabbccddeeff/drive/request",
            from: PHONE,
            seq: 7,
            ts_ms: 1764072000000,
            payload: br#"{"linear":0.5,"angular":0.0,"ms":500}"#,
        };
        assert_eq!(compute(&ks, &m), "6c4e45b5753e8d2b326c896b062a445d9b68d75b6dc26fbfdfd76340db3d414a");
    }

    /// Additional vectors of docs/protocol.md (robot replies and an invite),
    /// first computed by docs/vectors.py with Python's standard library.
    #[test]
    fn docs_additional_vectors() {
        const ROBOT: &str = "0123456789abcdef0123456789abcdef";
        let k = hex::decode("a0369cd9bece6225fa9218e192b9d2f976f5e830a3dc8d76060f9ba004da8f0f").unwrap();
        let ks = hex::decode("61edd9aca22ea26a0234b90e26ea7a69e592d8b50fa7b4d1ddbe38c2d10458b8").unwrap();
        let paired = MacInput {
            topic: "pair/0123456789abcdef0123456789abcdef/36940d0ece18aebf69d0ef6825534e24/response",
            from: ROBOT,
            seq: 1764071000001,
            ts_ms: 1764072000250,
            payload: br#"{"status":"paired","robot":"0123456789abcdef0123456789abcdef","nickname":"Rover"}"#,
        };
        assert_eq!(compute(&k, &paired), "abcdef71301d44390f34dbfab4ac98573e3764ccfcbabc2f588e78f99e44e346");
        let invite = MacInput {
            topic: "invite/0123456789abcdef0123456789abcdef/00112233445566778899aabbccddeeff",
            from: PHONE,
            seq: 1764072000001,
            ts_ms: 1764072060000,
            payload: concat!(
                r#"{"media":{"host":"192.0.2.10","port":5004},"video":{"codecs":["H264"],"#,
                r#""max_width":1280,"max_height":720,"max_fps":30,"max_kbps":2500}}"#
            )
            .as_bytes(),
        };
        assert_eq!(compute(&k, &invite), "082b3d01598475437d177512a46501e17cacefd0b77667958727778ce16c9178");
        let drive_response = MacInput {
            topic: "session/00112233445566778899aabbccddeeff/drive/response",
            from: ROBOT,
            seq: 1,
            ts_ms: 1764072000040,
            payload: br#"{"status":"ok","re":7}"#,
        };
        assert_eq!(compute(&ks, &drive_response), "eddb626413bb9401cf4c95da135bf06f6716dc3d2fe5b49ca84ba535484aae68");
    }

    #[test]
    fn any_changed_field_or_bad_mac_fails() {
        let key = [7u8; 32];
        let m = MacInput { topic: "session/x/stop/request", from: PHONE, seq: 1, ts_ms: 2, payload: b"{}" };
        let good = compute(&key, &m);
        assert!(verify(&key, &m, &good));
        assert!(!verify(&key, &MacInput { topic: "session/x/drive/request", ..m }, &good));
        assert!(!verify(&key, &MacInput { from: "00000000000000000000000000000000", ..m }, &good));
        assert!(!verify(&key, &MacInput { seq: 2, ..m }, &good));
        assert!(!verify(&key, &MacInput { ts_ms: 3, ..m }, &good));
        assert!(!verify(&key, &MacInput { payload: b"{ }", ..m }, &good));
        assert!(!verify(&[8u8; 32], &m, &good));
        assert!(!verify(&key, &m, &good[..63]));
        assert!(!verify(&key, &m, ""));
        assert!(!verify(&key, &m, &"zz".repeat(32)));
    }
}
