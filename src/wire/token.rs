//! Freshness tokens (docs/protocol.md 5.7): how a motion request proves it
//! is fresh without trusting the broker or either side's wall clock.
//!
//! The robot hands the phone a token in every response of a call: its own
//! monotonic time since the call started, in milliseconds, and a MAC under a
//! key only the robot knows (drawn at random for each call). `drive` and
//! `goto` must echo the latest token they have; the robot refuses one whose
//! token is older than [`MAX_TOKEN_AGE_MS`] on its own monotonic clock. A
//! request held back anywhere (a broker, a healed partition, a queue on the
//! phone) ages with the robot's clock, and stepping either wall clock changes
//! nothing.
//!
//! Format: `"{ms}.{mac}"`, `ms` decimal, `mac` the first 8 bytes of
//! HMAC-SHA256(token key, "robotd token v1\n" + ms) as 16 lowercase hex. The
//! phone treats it as opaque.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::wire::keys::Key32;

/// A motion request whose token is older than this (robot's monotonic ms)
/// is refused `stale`.
pub const MAX_TOKEN_AGE_MS: u64 = 1500;

/// Why a token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No `token` field.
    Missing,
    /// Not a token this robot issued in this call.
    Forged,
    /// Issued this many ms ago: too old.
    Old(u64),
}

fn mac(key: &Key32, ms: u64) -> [u8; 8] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(format!("robotd token v1\n{ms}").as_bytes());
    m.finalize().into_bytes()[..8].try_into().expect("8 bytes")
}

/// The token for robot time `ms` (monotonic, since the call started).
pub fn issue(key: &Key32, ms: u64) -> String {
    format!("{ms}.{}", hex::encode(mac(key, ms)))
}

/// The age (ms) of `token` at robot time `now_ms`, if it is one of ours and
/// young enough.
pub fn check(key: &Key32, token: Option<&str>, now_ms: u64) -> Result<u64, TokenError> {
    let token = token.ok_or(TokenError::Missing)?;
    let (ms_text, tag) = token.split_once('.').ok_or(TokenError::Forged)?;
    let ms: u64 = ms_text.parse().map_err(|_| TokenError::Forged)?;
    let mut got = [0u8; 8];
    hex::decode_to_slice(tag, &mut got).map_err(|_| TokenError::Forged)?;
    // Canonical form only (as issued), and never from the future.
    let canonical = ms_text == ms.to_string() && tag == hex::encode(got);
    if !canonical || !bool::from(mac(key, ms).ct_eq(&got)) || ms > now_ms {
        return Err(TokenError::Forged);
    }
    let age = now_ms - ms;
    if age > MAX_TOKEN_AGE_MS { Err(TokenError::Old(age)) } else { Ok(age) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_age_on_the_robots_clock_and_cannot_be_forged() {
        let k = [7u8; 32];
        let t = issue(&k, 1000);
        assert_eq!(t, format!("1000.{}", &t[5..]));
        assert_eq!(t.len(), 5 + 16);
        assert_eq!(check(&k, Some(&t), 1000), Ok(0));
        assert_eq!(check(&k, Some(&t), 2500), Ok(1500));
        assert_eq!(check(&k, Some(&t), 2501), Err(TokenError::Old(1501)));
        assert_eq!(check(&k, None, 1000), Err(TokenError::Missing));
        assert_eq!(check(&[8u8; 32], Some(&t), 1000), Err(TokenError::Forged), "another call's key");
        let fresher = format!("5000.{}", &t[5..]);
        assert_eq!(check(&k, Some(&fresher), 5000), Err(TokenError::Forged), "a phone cannot make a fresher one");
        assert_eq!(check(&k, Some(&issue(&k, 9000)), 1000), Err(TokenError::Forged), "from the future");
        for junk in ["", ".", "1000", "1000.", "x.0011223344556677", "01000.00", &t.to_uppercase()] {
            assert_eq!(check(&k, Some(junk), 1000), Err(TokenError::Forged), "{junk:?}");
        }
    }
}
