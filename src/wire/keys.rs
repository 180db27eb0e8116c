//! Key derivation (HKDF-SHA256, RFC 5869).
//!
//! - `K` (owner key) = HKDF(ikm = S, salt = pairing nonce, info = "robotd owner v1\n" + robotId + "\n" + phoneId)
//! - `Ks` (session key) = HKDF(ikm = K, salt = sessionId bytes || robotNonce, info = "robotd session v1")
//! - SRTP master key||salt = HKDF(ikm = K, same salt, info = "robotd srtp v1" / "robotd srtp audio v1")
//!
//! Binding both IDs into `K` means a key learnt for one robot/phone pair is
//! useless for any other; a fresh robot nonce per call means session and media
//! keys are never reused across calls.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;

/// A pairing secret `S` (16 random bytes, shown only in the QR code).
pub type PairingSecret = [u8; 16];
/// An owner key `K` or session key `Ks`.
pub type Key32 = [u8; 32];
/// The SRTP master key (16 bytes) followed by the master salt (14 bytes),
/// 30 bytes as the protocol derives it (HKDF info `robotd srtp v1` /
/// `robotd srtp audio v1`).
///
/// One type from the derivation to the GStreamer pipeline. `Debug` never shows
/// the bytes, so parameters and requests holding it can be logged safely.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKey(pub [u8; 30]);

impl fmt::Debug for SrtpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SrtpKey(..)")
    }
}

impl From<[u8; 30]> for SrtpKey {
    fn from(bytes: [u8; 30]) -> Self {
        SrtpKey(bytes)
    }
}

fn expand<const N: usize>(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> [u8; N] {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = [0u8; N];
    hk.expand_multi_info(info, &mut out).expect("N <= 255 * 32");
    out
}

/// The owner key `K`, derived at pairing by both sides.
pub fn owner_key(secret: &PairingSecret, nonce: &[u8; 16], robot_id: &str, phone_id: &str) -> Key32 {
    expand(secret, nonce, &[b"robotd owner v1\n", robot_id.as_bytes(), b"\n", phone_id.as_bytes()])
}

fn call_salt(session_id: &[u8; 16], robot_nonce: &[u8; 16]) -> [u8; 32] {
    let mut salt = [0u8; 32];
    salt[..16].copy_from_slice(session_id);
    salt[16..].copy_from_slice(robot_nonce);
    salt
}

/// The session key `Ks` for one call.
pub fn session_key(owner_key: &Key32, session_id: &[u8; 16], robot_nonce: &[u8; 16]) -> Key32 {
    expand(owner_key, &call_salt(session_id, robot_nonce), &[b"robotd session v1"])
}

/// The SRTP master key and salt of a call's video stream.
pub fn srtp_video_key(owner_key: &Key32, session_id: &[u8; 16], robot_nonce: &[u8; 16]) -> SrtpKey {
    SrtpKey(expand(owner_key, &call_salt(session_id, robot_nonce), &[b"robotd srtp v1"]))
}

/// The SRTP master key and salt of a call's audio stream.
pub fn srtp_audio_key(owner_key: &Key32, session_id: &[u8; 16], robot_nonce: &[u8; 16]) -> SrtpKey {
    SrtpKey(expand(owner_key, &call_salt(session_id, robot_nonce), &[b"robotd srtp audio v1"]))
}

/// Serde for a [`Key32`] as 64 hex characters (lowercase when written,
/// either case when read), for `#[serde(with = "crate::wire::keys::hex_key")]`.
///
/// Used by both sides' key files: the robot's owners file and the phone's
/// keys file. Errors never echo the value, so a corrupt file never puts key
/// material in a log.
pub mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::Key32;

    /// Write the key as 64 lowercase hex characters.
    pub fn serialize<S: Serializer>(key: &Key32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(key))
    }

    /// Read 64 hex characters; anything else is an error that does not echo the input.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Key32, D::Error> {
        let text = String::deserialize(d)?;
        let mut key = [0u8; 32];
        if text.len() != 64 || hex::decode_to_slice(&text, &mut key).is_err() {
            return Err(D::Error::custom("owner key must be 64 hex characters (32 bytes)"));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn protocol_vectors() {
        let s: [u8; 16] = std::array::from_fn(|i| i as u8);
        let nonce: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
        let k = owner_key(&s, &nonce, "0123456789abcdef0123456789abcdef", "36940d0ece18aebf69d0ef6825534e24");
        assert_eq!(hex::encode(k), "a0369cd9bece6225fa9218e192b9d2f976f5e830a3dc8d76060f9ba004da8f0f");
        let sid: [u8; 16] = h("00112233445566778899aabbccddeeff");
        let rn: [u8; 16] = h("ffeeddccbbaa99887766554433221100");
        assert_eq!(
            hex::encode(session_key(&k, &sid, &rn)),
            "61edd9aca22ea26a0234b90e26ea7a69e592d8b50fa7b4d1ddbe38c2d10458b8"
        );
        assert_eq!(
            hex::encode(srtp_video_key(&k, &sid, &rn).0),
            "149ffed491d44212d2672dae6389779a919e58f9d95716ab76edadfb00b6"
        );
        assert_eq!(
            hex::encode(srtp_audio_key(&k, &sid, &rn).0),
            "65532e412027e9558121d11c6189bd91739cfb7fe969b8e46f8c1ef78c44"
        );
    }

    #[test]
    fn keys_are_bound_to_ids_and_nonces() {
        let s = [1u8; 16];
        let n = [2u8; 16];
        let a = owner_key(&s, &n, "0123456789abcdef0123456789abcdef", "36940d0ece18aebf69d0ef6825534e24");
        let b = owner_key(&s, &n, "0123456789abcdef0123456789abcdef", "36940d0ece18aebf69d0ef6825534e25");
        assert_ne!(a, b);
        assert_ne!(session_key(&a, &[0; 16], &[1; 16]), session_key(&a, &[0; 16], &[2; 16]));
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct WithKey {
        #[serde(with = "hex_key")]
        key: Key32,
    }

    #[test]
    fn hex_key_round_trips_and_never_echoes_bad_input() {
        let text = serde_json::to_string(&WithKey { key: [0xab; 32] }).unwrap();
        assert_eq!(text, format!(r#"{{"key":"{}"}}"#, "ab".repeat(32)));
        assert_eq!(
            serde_json::from_str::<WithKey>(&text.to_uppercase().replace("KEY", "key")).unwrap().key,
            [0xab; 32]
        );
        for bad in ["cd".repeat(31), "cd".repeat(33), format!("{}zz", "cd".repeat(31))] {
            let err = serde_json::from_str::<WithKey>(&format!(r#"{{"key":"{bad}"}}"#)).unwrap_err().to_string();
            assert!(err.contains("64 hex characters"), "{err}");
            assert!(!err.contains(&bad), "the error echoes the key: {err}");
        }
    }

    #[test]
    fn srtp_key_debug_hides_the_bytes() {
        let key = SrtpKey([0x5a; 30]);
        let text = format!("{key:?} {:?}", Some(&key));
        assert_eq!(text, "SrtpKey(..) Some(SrtpKey(..))");
    }
}
