//! The wire protocol: topics, MQTT properties and payload types.
//!
//! Handlers never format topic strings by hand; everything that goes on the
//! wire is built here, so `docs/protocol.md` has one place to check against.

pub mod freshness;
pub mod identity;
pub mod keys;
pub mod mac;
pub mod nickname;
pub mod pairing;
pub mod payloads;
pub mod props;
pub mod replies;
pub mod token;
pub mod topics;
pub mod webrtc;

/// Largest payload robotd reads; anything larger is dropped before parsing.
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// Largest MQTT packet robotd accepts. Sent as the CONNECT's Maximum Packet
/// Size so the broker itself discards larger messages instead of sending them
/// (an oversized packet would otherwise cost the robot its connection).
pub const MAX_PACKET: u32 = 32 * 1024;

/// The software string published in the profile.
pub const SOFTWARE: &str = concat!("robotd ", env!("CARGO_PKG_VERSION"));

/// The robot's retained profile, `user/{robotId}/profile`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    pub nickname: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub photo: Option<String>,
    pub model: String,
    pub software: String,
}

impl Profile {
    /// The robot's profile with the protocol's field order.
    pub fn robot(nickname: &str, photo: Option<&str>, model: &str) -> Self {
        Profile {
            nickname: nickname.into(),
            kind: "robot".into(),
            photo: photo.map(Into::into),
            model: model.into(),
            software: SOFTWARE.into(),
        }
    }

    /// JSON bytes as published.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("profile serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_bytes_follow_the_protocol_order() {
        let p = Profile::robot("Rover", None, "sim");
        assert_eq!(
            String::from_utf8(p.to_json()).unwrap(),
            format!(r#"{{"nickname":"Rover","kind":"robot","model":"sim","software":"{SOFTWARE}"}}"#)
        );
        let p = Profile::robot("Rover", Some("https://x/p.jpg"), "sim");
        assert!(
            String::from_utf8(p.to_json()).unwrap().contains(r#""kind":"robot","photo":"https://x/p.jpg","model""#)
        );
    }
}
