//! Telling a session takeover from any other lost connection.
//!
//! Two robotd started from copies of one state directory (a cloned SD card)
//! share the private MQTT client identifier, and the broker drops the older
//! connection each time the other connects. Brokers that say so send
//! DISCONNECT 0x8E (Session taken over); Mosquitto 2.0 queues that packet
//! but closes the socket first, so robotd sees a bare EOF, exactly like a
//! broker restart. Timing cannot tell them apart (a restarted Mosquitto is
//! up before robotd's first 100 ms retry), so the twins tell each other:
//!
//! - each robotd start increments a counter in the state directory
//!   (`instance-generation`) and picks a random 16-byte nonce;
//! - after each CONNACK robotd subscribes to `user/{robotId}/instance` and
//!   then publishes its *marker* there (retained): generation and nonce,
//!   MAC'd with a key derived from the private client identifier, so that
//!   only a holder of the identifier can make one. The broker handles the
//!   SUBSCRIBE first, so a twin's retained marker reaches robotd before its
//!   own replaces it (twins are never connected at the same time, so the
//!   retained marker is the only way they meet);
//! - a foreign marker that orders above ours (generation, then nonce) is
//!   *evidence of a twin*: robotd stops publishing its own, and the next time
//!   the broker closes its connection it takes that for a session takeover:
//!   one error in the log, `broker.taken_over` in `robotd status`, and 30 s
//!   away from the broker (doubling while it repeats, at most 5 min);
//! - a connection that then lasts 10 s means the twin is gone (twins throw
//!   each other off within a second): the evidence is cleared and robotd
//!   publishes its marker again.
//!
//! So of two twins exactly one yields (the one ordering lower, usually the
//! one started earlier); the other keeps working. A restart of the same
//! robotd increments the generation, so its own earlier marker never counts
//! as a twin.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::state::{self, StateFileError};
use crate::wire::identity::MqttClientId;

/// A connection that lasts this long with twin evidence means the twin is
/// gone.
pub const TWIN_GONE_AFTER: Duration = Duration::from_secs(10);
/// Away from the broker after the first takeover of a streak.
pub const TAKEOVER_BACKOFF: Duration = Duration::from_secs(30);
pub const TAKEOVER_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A connection that lasted this long ends a streak of takeovers.
pub const TAKEOVER_STREAK_RESET: Duration = Duration::from_secs(600);

/// The file that counts robotd starts on this state directory.
pub fn generation_path(state_dir: &Path) -> PathBuf {
    state_dir.join("instance-generation")
}

/// Read, increment and durably write the start counter; call once per
/// start, under the state directory's instance lock. A missing file counts
/// as 0; a corrupt one is an error naming it.
pub fn next_generation(state_dir: &Path) -> Result<u64, StateFileError> {
    let path = generation_path(state_dir);
    let last = match state::read_optional(&path)? {
        None => 0,
        Some(bytes) => {
            std::str::from_utf8(&bytes).ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
                StateFileError::Corrupt { path: path.clone(), detail: "expected one decimal number".into() }
            })?
        }
    };
    let next = last.saturating_add(1);
    state::write_durable(&path, format!("{next}\n").as_bytes(), 0o600)?;
    Ok(next)
}

/// How the link learnt that its session was taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// The broker said so (DISCONNECT 0x8E).
    Reported,
    /// The broker closed the connection while a twin's marker was the latest.
    Twin,
}

#[derive(Serialize, Deserialize)]
struct MarkerJson {
    #[serde(rename = "gen")]
    generation: u64,
    nonce: String,
    mac: String,
}

/// This robotd's marker and what it has seen of others.
#[derive(Debug)]
pub struct TwinWatch {
    key: [u8; 32],
    generation: u64,
    nonce: [u8; 16],
    /// When the current connection got its CONNACK.
    connected_at: Option<Instant>,
    /// When a higher foreign marker was last seen.
    evidence: Option<Instant>,
    /// Takeovers in a row (for the back-off).
    streak: u32,
}

impl TwinWatch {
    pub fn new(client_id: &MqttClientId, generation: u64, nonce: [u8; 16]) -> TwinWatch {
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(None, client_id.as_str().as_bytes())
            .expand(b"robotd instance marker v1", &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        TwinWatch { key, generation, nonce, connected_at: None, evidence: None, streak: 0 }
    }

    fn mac(&self, generation: u64, nonce_hex: &str) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(format!("{generation}:{nonce_hex}").as_bytes());
        m
    }

    /// Our marker as published.
    pub fn marker(&self) -> Vec<u8> {
        let nonce = hex::encode(self.nonce);
        let mac = hex::encode(self.mac(self.generation, &nonce).finalize().into_bytes());
        serde_json::to_vec(&MarkerJson { generation: self.generation, nonce, mac }).expect("marker serialises")
    }

    /// Whether a twin's marker is the latest one seen.
    pub fn has_evidence(&self) -> bool {
        self.evidence.is_some()
    }

    /// A CONNACK at `now`: our marker, to publish after the subscription,
    /// unless a twin's marker is the latest seen.
    pub fn connected(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.connected_at = Some(now);
        self.evidence.is_none().then(|| self.marker())
    }

    /// A message on the marker topic. Forged, malformed and our own markers
    /// change nothing; one that orders above ours is evidence of a twin.
    pub fn on_marker(&mut self, payload: &[u8], now: Instant) {
        let Ok(m) = serde_json::from_slice::<MarkerJson>(payload) else { return };
        let (Ok(nonce), Ok(mac)) = (hex::decode(&m.nonce), hex::decode(&m.mac)) else { return };
        if nonce.len() != 16 || self.mac(m.generation, &m.nonce).verify_slice(&mac).is_err() {
            return;
        }
        if (m.generation, nonce.as_slice()) > (self.generation, self.nonce.as_slice()) {
            self.evidence = Some(now);
        }
    }

    /// When [`TwinWatch::due`] next has something to do: when the current
    /// connection will have outlasted a twin's marker by [`TWIN_GONE_AFTER`].
    pub fn next_deadline(&self) -> Option<Instant> {
        Some(self.evidence?.max(self.connected_at?) + TWIN_GONE_AFTER)
    }

    /// At `now`: our marker once a twin has stayed away [`TWIN_GONE_AFTER`]
    /// (the evidence is then cleared).
    pub fn due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if now < self.next_deadline()? {
            return None;
        }
        self.evidence = None;
        Some(self.marker())
    }

    /// The connection ended with `e` at `now`: `Some` when it was a takeover.
    pub fn observe(&mut self, e: &rumqttc::v5::ConnectionError, was_connected: bool, now: Instant) -> Option<Takeover> {
        let lasted = self.connected_at.take().map(|t| now.saturating_duration_since(t));
        if lasted.is_some_and(|d| d >= TAKEOVER_STREAK_RESET) {
            self.streak = 0;
        }
        if is_session_taken_over(e) {
            return Some(Takeover::Reported);
        }
        (was_connected && self.evidence.is_some() && is_closed_by_peer(e)).then_some(Takeover::Twin)
    }

    /// How long to stay away after a takeover: 30 s, doubling per takeover
    /// in a row, at most 5 min.
    pub fn backoff(&mut self) -> Duration {
        let d = TAKEOVER_BACKOFF.saturating_mul(1 << self.streak.min(4)).min(TAKEOVER_BACKOFF_MAX);
        self.streak = self.streak.saturating_add(1);
        d
    }
}

/// Whether the broker closed the connection without a word (EOF or reset).
fn is_closed_by_peer(e: &rumqttc::v5::ConnectionError) -> bool {
    use rumqttc::v5::{ConnectionError, StateError};
    use std::io::ErrorKind;
    let io_closed = |k: ErrorKind| matches!(k, ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset);
    match e {
        ConnectionError::MqttState(StateError::ConnectionAborted) => true,
        ConnectionError::MqttState(StateError::Io(io)) | ConnectionError::Io(io) => io_closed(io.kind()),
        _ => false,
    }
}

/// Whether the broker closed the connection because another client
/// connected with the same client identifier (MQTT 5 DISCONNECT reason code
/// 0x8E, Session taken over). rumqttc reports the broker's DISCONNECT as
/// this error of `poll()`.
fn is_session_taken_over(e: &rumqttc::v5::ConnectionError) -> bool {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
    use rumqttc::v5::{ConnectionError, StateError};
    matches!(
        e,
        ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
            ..
        })
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
    use rumqttc::v5::{ConnectionError, StateError};

    fn eof() -> ConnectionError {
        ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
    }
    fn id() -> MqttClientId {
        MqttClientId::try_from("00112233445566778899aabbccddeeff".to_owned()).unwrap()
    }
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn protocol_vector_12_6() {
        let w = TwinWatch::new(&id(), 7, hex::decode("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf").unwrap().try_into().unwrap());
        assert_eq!(hex::encode(w.key), "6feadf68de763fdeddc254b6202b838a6122b3878d9351f2993dc4372ebfe823");
        let m: serde_json::Value = serde_json::from_slice(&w.marker()).unwrap();
        assert_eq!(
            m,
            serde_json::json!({
                "gen": 7,
                "nonce": "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
                "mac": "93297fe916b6c973f82e54523229a6f9dd7d7858c2d9cb3156a51012ab66f508"
            })
        );
    }

    #[test]
    fn a_reported_takeover_counts_without_any_marker() {
        let mut w = TwinWatch::new(&id(), 1, [1; 16]);
        let t = Instant::now();
        w.connected(t);
        let e = ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
            reason_string: None,
        });
        assert_eq!(w.observe(&e, true, t + ms(50)), Some(Takeover::Reported));
    }

    #[test]
    fn broker_restarts_without_a_twin_are_never_a_takeover() {
        let mut w = TwinWatch::new(&id(), 1, [1; 16]);
        let mut t = Instant::now();
        for _ in 0..50 {
            w.connected(t);
            t += ms(150);
            assert_eq!(w.observe(&eof(), true, t), None);
            t += ms(100);
        }
    }

    #[test]
    fn of_two_twins_exactly_one_yields() {
        let t = Instant::now();
        let mut a = TwinWatch::new(&id(), 5, [1; 16]);
        let mut b = TwinWatch::new(&id(), 5, [2; 16]);
        a.connected(t);
        b.connected(t);
        a.on_marker(&b.marker(), t);
        b.on_marker(&a.marker(), t);
        assert!(a.has_evidence() && !b.has_evidence());
        assert_eq!(a.observe(&eof(), true, t + ms(100)), Some(Takeover::Twin));
        assert_eq!(b.observe(&eof(), true, t + ms(100)), None);
        // A later start (higher generation) wins whatever the nonces.
        let mut c = TwinWatch::new(&id(), 6, [0; 16]);
        c.on_marker(&b.marker(), t);
        b.on_marker(&c.marker(), t);
        assert!(!c.has_evidence() && b.has_evidence());
    }

    #[test]
    fn own_earlier_forged_and_malformed_markers_are_not_evidence() {
        let t = Instant::now();
        let mut w = TwinWatch::new(&id(), 7, [1; 16]);
        w.connected(t);
        // This robotd before its restart: lower generation.
        w.on_marker(&TwinWatch::new(&id(), 6, [9; 16]).marker(), t);
        w.on_marker(&w.marker(), t);
        // A marker made without the identifier.
        let other = MqttClientId::try_from("ffeeddccbbaa99887766554433221100".to_owned()).unwrap();
        w.on_marker(&TwinWatch::new(&other, 99, [9; 16]).marker(), t);
        // A valid higher marker with its generation changed.
        let twin = String::from_utf8(TwinWatch::new(&id(), 8, [9; 16]).marker()).unwrap();
        w.on_marker(twin.replace("\"gen\":8", "\"gen\":80").as_bytes(), t);
        for junk in [&b""[..], b"{}", b"null", b"{\"gen\":9,\"nonce\":\"zz\",\"mac\":\"\"}", &[0xff; 64]] {
            w.on_marker(junk, t);
        }
        assert!(!w.has_evidence());
        assert_eq!(w.observe(&eof(), true, t + ms(100)), None);
    }

    #[test]
    fn the_marker_is_published_on_each_connack_unless_a_twin_holds_it_back() {
        let t = Instant::now();
        let mut w = TwinWatch::new(&id(), 1, [1; 16]);
        assert_eq!(w.next_deadline(), None, "nothing before a CONNACK");
        assert_eq!(w.connected(t), Some(w.marker()));
        assert_eq!(w.next_deadline(), None, "nothing more without a twin");

        // A twin's marker arrives: ours is held back on later connections...
        let twin = TwinWatch::new(&id(), 2, [1; 16]);
        w.on_marker(&twin.marker(), t + ms(10));
        assert_eq!(w.observe(&eof(), true, t + ms(100)), Some(Takeover::Twin));
        let t = t + ms(30_000);
        assert_eq!(w.connected(t), None);
        // ...until a connection has lasted 10 s: the twin is gone.
        assert_eq!(w.due(t + ms(9_999)), None);
        assert_eq!(w.due(t + TWIN_GONE_AFTER), Some(w.marker()));
        assert!(!w.has_evidence());
        assert_eq!(w.observe(&eof(), true, t + TWIN_GONE_AFTER * 2), None);
        assert_eq!(w.connected(t + TWIN_GONE_AFTER * 3), Some(w.marker()));
    }

    #[test]
    fn twins_fighting_settle_with_the_lower_one_giving_way() {
        // Both connect in turn, each throwing the other off; the broker keeps
        // the last retained marker. Whoever orders lower must give way within
        // a few rounds, the other never.
        let t0 = Instant::now();
        let mut twins = [TwinWatch::new(&id(), 3, [1; 16]), TwinWatch::new(&id(), 4, [1; 16])];
        let mut retained: Option<Vec<u8>> = Some(twins[0].marker());
        let mut yielded = [0; 2];
        for round in 0..10u64 {
            let t = t0 + ms(150 * round);
            let (on, off) = ((round % 2) as usize, ((round + 1) % 2) as usize);
            if round > 0 && twins[off].observe(&eof(), true, t).is_some() {
                yielded[off] += 1;
            }
            if let Some(m) = retained.clone() {
                twins[on].on_marker(&m, t);
            }
            if let Some(mine) = twins[on].connected(t) {
                retained = Some(mine);
            }
        }
        assert!(yielded[0] >= 1 && yielded[1] == 0, "{yielded:?}");
    }

    #[test]
    fn the_backoff_doubles_to_five_minutes_and_a_long_connection_resets_it() {
        let mut w = TwinWatch::new(&id(), 1, [1; 16]);
        let got: Vec<u64> = (0..7).map(|_| w.backoff().as_secs()).collect();
        assert_eq!(got, [30, 60, 120, 240, 300, 300, 300]);
        let t = Instant::now();
        w.connected(t);
        w.observe(&eof(), true, t + TAKEOVER_STREAK_RESET);
        assert_eq!(w.backoff().as_secs(), 30);
    }

    #[test]
    fn the_generation_counts_starts_and_a_corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_generation(dir.path()).unwrap(), 1);
        assert_eq!(next_generation(dir.path()).unwrap(), 2);
        std::fs::write(generation_path(dir.path()), "two\n").unwrap();
        let e = next_generation(dir.path()).unwrap_err().to_string();
        assert!(e.contains("instance-generation") && e.contains("corrupt"), "{e}");
    }
}
