//! Client identities.
//!
//! Every participant is a 32-hex-character client ID, public: it appears in
//! topics. Its MQTT client identifier is another, private value
//! ([`MqttClientId`], protocol 1.1), so that knowing someone's ID is not
//! enough to make the broker drop their connection. A human's ID is `md5(E.164 number)` (the protocol's
//! default; see the keyed variant for deployments that want the ID not to be
//! reversible to the phone number). The robot has no phone number, so its ID is
//! 16 random bytes made on first start and kept in the state directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::state::{self, StateFileError};

/// A validated client ID: exactly 32 lowercase hex characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientId(String);

/// A string that is not a client ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a client ID: expected 32 lowercase hex characters")]
pub struct InvalidClientId(pub String);

impl ClientId {
    /// The ID as the 32-character string used in topics.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Make an ID from 16 raw bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        ClientId(hex::encode(bytes))
    }

    /// A fresh random ID (for the robot, and for session IDs).
    pub fn random() -> Self {
        Self::from_bytes(rand::random())
    }

    /// The 16 bytes behind the hex string.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        hex::decode_to_slice(&self.0, &mut out).expect("validated at construction");
        out
    }
}

/// True when `s` matches `^[0-9a-f]{32}$`.
pub fn is_client_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl FromStr for ClientId {
    type Err = InvalidClientId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_client_id(s) { Ok(ClientId(s.to_owned())) } else { Err(InvalidClientId(s.to_owned())) }
    }
}

impl TryFrom<String> for ClientId {
    type Error = InvalidClientId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if is_client_id(&s) { Ok(ClientId(s)) } else { Err(InvalidClientId(s)) }
    }
}

impl From<ClientId> for String {
    fn from(id: ClientId) -> String {
        id.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", self.0)
    }
}

/// A phone number that could not be read as a valid E.164 number.
#[derive(Debug, thiserror::Error)]
pub enum PhoneNumberError {
    /// The text is not a phone number at all, or lacks a country code.
    #[error("{input:?} is not a phone number: {reason}; write it with its country code, e.g. +48 555 555 555")]
    Unparsable { input: String, reason: String },
    /// The number parses but no such number can exist in its country's plan.
    #[error("{input:?} is not a valid number in its country's numbering plan")]
    Invalid { input: String },
}

/// Normalise a phone number as typed by a person (`+48 555 555 555`,
/// `+48-555-555-555`, `0048 555...`) to E.164 (`+48555555555`).
///
/// Uses libphonenumber's metadata (the `phonenumber` crate) rather than a
/// regex, so national prefixes and per-country lengths are handled. Numbers
/// without a country code are rejected: the robot has no home region to guess.
pub fn normalize_e164(input: &str) -> Result<String, PhoneNumberError> {
    let parsed = phonenumber::parse(None, input)
        .map_err(|e| PhoneNumberError::Unparsable { input: input.to_owned(), reason: e.to_string() })?;
    if !phonenumber::is_valid(&parsed) {
        return Err(PhoneNumberError::Invalid { input: input.to_owned() });
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

/// The protocol's default human ID: `md5(E.164)` as lowercase hex.
///
/// Unkeyed MD5 of a phone number is reversible in seconds on one GPU (the
/// space of valid numbers is small); see [`keyed_human_id`].
pub fn human_id(e164: &str) -> ClientId {
    ClientId::from_bytes(Md5::digest(e164.as_bytes()).into())
}

/// Optional keyed human ID: `HMAC-SHA256(deployment secret, E.164)` truncated
/// to 16 bytes (32 hex). Not reversible without the deployment secret.
pub fn keyed_human_id(secret: &[u8], e164: &str) -> ClientId {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(e164.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    ClientId::from_bytes(out)
}

/// Name of the robot ID file inside the state directory.
pub const ROBOT_ID_FILE: &str = "robot-id";

/// Path of the robot ID file for a state directory.
pub fn robot_id_path(state_dir: &Path) -> PathBuf {
    state_dir.join(ROBOT_ID_FILE)
}

/// Read the robot ID from the state directory, without creating one.
pub fn read_robot_id(state_dir: &Path) -> Result<Option<ClientId>, StateFileError> {
    let path = robot_id_path(state_dir);
    let Some(bytes) = state::read_optional(&path)? else { return Ok(None) };
    let text = String::from_utf8_lossy(&bytes);
    text.trim().parse().map(Some).map_err(|e: InvalidClientId| StateFileError::Corrupt { path, detail: e.to_string() })
}

/// The robot ID, made (16 random bytes) and stored durably on first start.
///
/// Safe against a race on a fresh state directory (the daemon and `robotd id`
/// started together): the file is created only if absent
/// ([`state::create_durable_new`]), and whoever loses the race reads the
/// winner's ID, so two processes can never come away with different IDs.
pub fn load_or_create_robot_id(state_dir: &Path) -> Result<ClientId, StateFileError> {
    if let Some(id) = read_robot_id(state_dir)? {
        return Ok(id);
    }
    let path = robot_id_path(state_dir);
    let id = ClientId::random();
    if state::create_durable_new(&path, format!("{id}\n").as_bytes(), 0o644)? {
        return Ok(id);
    }
    read_robot_id(state_dir)?.ok_or_else(|| StateFileError::Corrupt {
        path,
        detail: "it vanished while being read; is something else deleting the state directory?".into(),
    })
}

/// A private MQTT client identifier: 32 random lowercase hex characters,
/// never derived from a public ID (protocol 2.1, version 1.1). Whoever knows
/// it can make the broker drop its owner's connection (MQTT "session taken
/// over"), so it is kept private: its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MqttClientId(String);

impl MqttClientId {
    /// A fresh random identifier (16 bytes from the OS's secure generator).
    pub fn random() -> Self {
        MqttClientId(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// The identifier as sent in CONNECT.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MqttClientId {
    type Error = InvalidClientId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if is_client_id(&s) { Ok(MqttClientId(s)) } else { Err(InvalidClientId(s)) }
    }
}

impl From<MqttClientId> for String {
    fn from(id: MqttClientId) -> String {
        id.0
    }
}

impl fmt::Debug for MqttClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MqttClientId(..)")
    }
}

/// Name of the robot's private MQTT client identifier file in the state directory.
pub const MQTT_CLIENT_ID_FILE: &str = "mqtt-client-id";

/// Path of the MQTT client identifier file for a state directory.
pub fn mqtt_client_id_path(state_dir: &Path) -> PathBuf {
    state_dir.join(MQTT_CLIENT_ID_FILE)
}

/// Read a 32-hex value and a newline from `path`, without creating it.
fn read_hex_file(path: &Path) -> Result<Option<String>, StateFileError> {
    let Some(bytes) = state::read_optional(path)? else { return Ok(None) };
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    if is_client_id(&text) {
        Ok(Some(text))
    } else {
        let detail = "expected 32 lowercase hex characters".to_owned();
        Err(StateFileError::Corrupt { path: path.to_path_buf(), detail })
    }
}

/// The robot's private MQTT client identifier, made (16 random bytes) and
/// stored durably, mode 0600, on first start; race-free like
/// [`load_or_create_robot_id`]. A state directory from before protocol 1.1
/// (only `robot-id`) gets one on its next start.
pub fn load_or_create_mqtt_client_id(state_dir: &Path) -> Result<MqttClientId, StateFileError> {
    let path = mqtt_client_id_path(state_dir);
    if let Some(id) = read_hex_file(&path)? {
        return Ok(MqttClientId(id));
    }
    let id = MqttClientId::random();
    if state::create_durable_new(&path, format!("{}\n", id.as_str()).as_bytes(), 0o600)? {
        return Ok(id);
    }
    read_hex_file(&path)?.map(MqttClientId).ok_or_else(|| StateFileError::Corrupt {
        path,
        detail: "it vanished while being read; is something else deleting the state directory?".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_vector_md5_of_e164() {
        assert_eq!(human_id("+48555555555").as_str(), "36940d0ece18aebf69d0ef6825534e24");
    }

    #[test]
    fn normalises_spaced_and_international_prefix_forms() {
        for input in ["+48 555 555 555", "+48-555-555-555", "+48555555555", "+48 (555) 555 555"] {
            assert_eq!(normalize_e164(input).unwrap(), "+48555555555", "{input}");
        }
        assert_eq!(normalize_e164("+1 (650) 253-0000").unwrap(), "+16502530000");
    }

    #[test]
    fn rejects_numbers_without_country_code_or_invalid() {
        assert!(normalize_e164("555 555 555").is_err());
        assert!(normalize_e164("hello").is_err());
        assert!(normalize_e164("+48 1").is_err());
    }

    #[test]
    fn keyed_variant_is_32_hex_and_depends_on_secret() {
        let a = keyed_human_id(b"deployment-a", "+48555555555");
        let b = keyed_human_id(b"deployment-b", "+48555555555");
        assert!(is_client_id(a.as_str()));
        assert_ne!(a, b);
        assert_ne!(a, human_id("+48555555555"));
        // HMAC-SHA256(key="key", "+48555555555"), first 16 bytes; computed with Python's hmac module.
        assert_eq!(keyed_human_id(b"key", "+48555555555").as_str(), KEYED_VECTOR);
    }
    const KEYED_VECTOR: &str = "b3a048ad65831b3989e834911c23e155";

    #[test]
    fn client_id_validation() {
        assert!("0123456789abcdef0123456789abcdef".parse::<ClientId>().is_ok());
        for bad in ["0123456789ABCDEF0123456789abcdef", "0123", "0123456789abcdef0123456789abcdeg", ""] {
            assert!(bad.parse::<ClientId>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&ClientId::from_bytes([0xab; 16])).unwrap();
        assert_eq!(json, "\"abababababababababababababababab\"");
        assert!(serde_json::from_str::<ClientId>("\"zz\"").is_err());
    }

    #[test]
    fn robot_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_robot_id(dir.path()).unwrap();
        let b = load_or_create_robot_id(dir.path()).unwrap();
        assert_eq!(a, b);
        std::fs::write(robot_id_path(dir.path()), "garbage").unwrap();
        let e = load_or_create_robot_id(dir.path()).unwrap_err().to_string();
        assert!(e.contains("robot-id") && e.contains("corrupt"), "{e}");
    }

    /// Racing creators on a fresh state directory (the daemon and `robotd
    /// id` started together) all come away with the one ID that is on disk.
    #[test]
    fn racing_creators_on_a_fresh_dir_all_get_the_same_id() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let barrier = std::sync::Barrier::new(6);
            let ids: Vec<ClientId> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..6)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            load_or_create_robot_id(dir.path()).unwrap()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let on_disk = read_robot_id(dir.path()).unwrap().unwrap();
            assert!(ids.iter().all(|id| *id == on_disk), "on disk {on_disk}, returned {ids:?}");
        }
    }

    #[test]
    fn mqtt_client_id_is_private_kept_and_not_the_robot_id() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let robot = load_or_create_robot_id(dir.path()).unwrap();
        let a = load_or_create_mqtt_client_id(dir.path()).unwrap();
        let b = load_or_create_mqtt_client_id(dir.path()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.as_str(), robot.as_str());
        assert!(is_client_id(a.as_str()));
        let path = mqtt_client_id_path(dir.path());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!format!("{a:?}").contains(a.as_str()), "Debug must not show the identifier");
        std::fs::write(&path, "garbage").unwrap();
        let e = load_or_create_mqtt_client_id(dir.path()).unwrap_err().to_string();
        assert!(e.contains("mqtt-client-id") && e.contains("corrupt"), "{e}");
    }
}
