//! Pairing: how a phone becomes one of the robot's owners.
//!
//! The robot has no phone number, so a phone cannot be "invited"; instead the
//! robot opens a short *pairing window* and shows a one-time secret `S` out of
//! band (a `robotd://pair?...` URI, printed and drawn as a QR code). A phone that
//! can read it proves so by MACing its pairing request with `S`; both sides then
//! derive the owner key `K` from `S` and a phone-chosen nonce. `S` never travels
//! on MQTT, so a subscriber on `#` learns nothing it could use.
//!
//! This module is deliberately free of I/O (apart from [`write_png`]): the
//! window is a pure state machine driven by `now_ms` (unix milliseconds), so
//! expiry and the failure limit are tested without sleeping. The MQTT task feeds
//! it requests; the owners store persists what it returns.
//!
//! It also holds the phone side ([`build_pair_request`], [`derive_owner_key`],
//! [`check_pair_response`]) so `robotctl` and the tests use the very code the
//! robot checks against.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use data_encoding::BASE32_NOPAD;
use qrcode::{Color, EcLevel, QrCode};
use serde::{Deserialize, Serialize};

use crate::state::{self, StateFileError};
use crate::wire::freshness::{SeqTracker, ts_is_fresh};
use crate::wire::identity::{ClientId, is_client_id};
use crate::wire::keys::{Key32, PairingSecret, owner_key};
use crate::wire::mac;
use crate::wire::nickname::{self, NicknameError};
use crate::wire::props::{Signed, SignedMessage, Signer};
use crate::wire::topics;

/// The longest a pairing window may stay open (protocol limit). Longer requests
/// are capped: the secret is on a screen, and every minute it stays valid is a
/// minute for someone else to photograph it.
pub const MAX_WINDOW: Duration = Duration::from_secs(600);

/// Failed attempts after which a window closes (protocol limit). Bounds online
/// guessing and flooding while leaving room for a few honest mistakes (a
/// mistyped URI, a phone with a skewed clock).
pub const DEFAULT_MAX_FAILURES: u32 = 20;

/// The only pairing URI version this code speaks. A change that old readers
/// would misread must bump it, so they refuse instead of guessing.
pub const URI_VERSION: &str = "1";

const URI_PREFIX: &str = "robotd://pair?";

/// Everything that can go wrong in this module. Pairing requests themselves
/// never produce an error (they produce a [`Reject`]); these are for the URI,
/// the QR code and the phone side.
#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    /// The text is not a robotd pairing URI at all (another scheme, or truncated
    /// before the query). Copy the whole text shown under the robot's QR code.
    #[error("not a robotd pairing URI: it must start with {URI_PREFIX:?}; copy the whole text shown by `robotd pair`")]
    NotPairingUri,
    /// The URI was made by a newer (or older) robotd speaking another pairing
    /// version. Update robotctl / the phone app to match the robot.
    #[error(
        "pairing URI version {found:?} is not supported (this build understands v={URI_VERSION}); update the phone side to match the robot"
    )]
    UnsupportedVersion {
        /// The `v` value found.
        found: String,
    },
    /// A required field is absent, usually because the URI was cut short when
    /// copied. Copy it again in full.
    #[error("pairing URI has no {field:?} field; it was probably cut short, copy it again in full")]
    MissingField {
        /// The missing field name.
        field: &'static str,
    },
    /// A field appears twice. Refused because the two readings could differ
    /// between implementations; the robot never writes such a URI.
    #[error("pairing URI has the {field:?} field twice; the robot never writes that, so the URI was altered")]
    DuplicateField {
        /// The repeated field name.
        field: &'static str,
    },
    /// A field is not valid percent-encoded UTF-8 (a stray `%`, or bytes that
    /// are not text). Copy the URI again; do not edit it by hand.
    #[error("pairing URI field {field:?} is not valid percent-encoded UTF-8")]
    BadEncoding {
        /// The field name.
        field: &'static str,
    },
    /// The robot ID is not 32 lowercase hex characters.
    #[error("pairing URI robot ID {found:?} is not a client ID (32 lowercase hex characters)")]
    BadRobotId {
        /// The value found.
        found: String,
    },
    /// The secret is not RFC 4648 base32 (upper case, no padding) of exactly
    /// 16 bytes. The value is not repeated here so the error can be logged.
    #[error("pairing URI secret is invalid ({detail}); expected 26 base32 characters (A-Z, 2-7) encoding 16 bytes")]
    BadSecret {
        /// What is wrong with it.
        detail: String,
    },
    /// The broker is not an absolute URL with a host, e.g. `mqtt://broker.local:1883`.
    #[error("pairing URI broker {found:?} is not a broker URL ({detail}); expected e.g. mqtt://broker.local:1883")]
    BadBroker {
        /// The decoded value found.
        found: String,
        /// Why it was refused.
        detail: String,
    },
    /// The nickname the phone wants to send would be refused by the robot
    /// ([`nickname::check`]): it must be 1 to 64 characters after trimming,
    /// with no control characters.
    #[error("nickname {found:?} is not allowed: {detail}")]
    BadNickname {
        /// The nickname given.
        found: String,
        /// Why it was refused.
        detail: NicknameError,
    },
    /// The data does not fit in a QR code (about 2.9 kB in byte mode). The
    /// pairing URI is ~130 bytes, so this means an absurdly long broker URL.
    #[error("cannot draw the QR code: {0}; shorten the broker URL")]
    Qr(#[from] qrcode::types::QrError),
    /// The PNG encoder failed (out of memory; should not happen otherwise).
    #[error("cannot encode the QR code as PNG: {0}")]
    Png(#[from] png::EncodingError),
    /// The PNG could not be written to the state directory.
    #[error(transparent)]
    Write(#[from] StateFileError),
    /// The robot's answer to a pairing request could not be trusted or read
    /// (wrong sender, bad MAC, not the expected JSON). Pair again; if it keeps
    /// happening, someone on the broker may be interfering.
    #[error("pairing response refused: {0}")]
    BadResponse(&'static str),
}

// ---------------------------------------------------------------------------
// The pairing URI
// ---------------------------------------------------------------------------

/// What the robot shows (as text and QR code) so that a phone can pair.
///
/// It is the only carrier of the secret `S`: treat its text like a password.
/// `Debug` redacts the secret; `Display` (the URI itself) does not.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingUri {
    /// The robot's client ID; the phone publishes to `pair/{robot}/{phone}`.
    pub robot: ClientId,
    /// The one-time pairing secret `S`.
    pub secret: PairingSecret,
    /// The broker the robot listens on, as a URL (`mqtt://host:port`), so the
    /// phone needs nothing but the QR code to reach it.
    pub broker: String,
}

impl fmt::Debug for PairingUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingUri")
            .field("robot", &self.robot)
            .field("secret", &"<redacted>")
            .field("broker", &self.broker)
            .finish()
    }
}

/// `robotd://pair?v=1&robot={robotId}&secret={BASE32(S)}&broker={percent-encoded URL}`.
///
/// The broker is percent-encoded strictly (everything except RFC 3986
/// unreserved characters `A-Z a-z 0-9 - . _ ~`), so the URI has one spelling
/// that any phone-side URL library decodes the same way, and QR scanners that
/// re-parse URIs cannot mistake `:` or `/` in the value for structure.
impl fmt::Display for PairingUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{URI_PREFIX}v={URI_VERSION}&robot={}&secret={}&broker={}",
            self.robot,
            BASE32_NOPAD.encode(&self.secret),
            percent_encode(&self.broker)
        )
    }
}

impl std::str::FromStr for PairingUri {
    type Err = PairingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl PairingUri {
    /// Read a pairing URI, as `robotctl pair` does with what the user pasted.
    ///
    /// Strict, because a half-understood URI would pair with the wrong robot or
    /// broker: only `robotd://pair?` and `v=1`; `robot`, `secret` and `broker`
    /// must each appear exactly once and be valid. Surrounding whitespace (a
    /// pasted newline) is ignored. Unknown parameters are ignored so a later
    /// robotd can add optional hints without breaking v1 phones; anything a v1
    /// phone must understand would bump `v`.
    pub fn parse(text: &str) -> Result<Self, PairingError> {
        let query = text.trim().strip_prefix(URI_PREFIX).ok_or(PairingError::NotPairingUri)?;
        let (mut v, mut robot, mut secret, mut broker) = (None, None, None, None);
        for param in query.split('&') {
            let (name, raw) = param.split_once('=').unwrap_or((param, ""));
            let (slot, field): (&mut Option<String>, &'static str) = match name {
                "v" => (&mut v, "v"),
                "robot" => (&mut robot, "robot"),
                "secret" => (&mut secret, "secret"),
                "broker" => (&mut broker, "broker"),
                _ => continue,
            };
            if slot.is_some() {
                return Err(PairingError::DuplicateField { field });
            }
            let value = percent_decode(raw).ok_or(PairingError::BadEncoding { field })?;
            *slot = Some(value);
        }

        let v = v.ok_or(PairingError::MissingField { field: "v" })?;
        if v != URI_VERSION {
            return Err(PairingError::UnsupportedVersion { found: v });
        }
        let robot = robot.ok_or(PairingError::MissingField { field: "robot" })?;
        let robot: ClientId = robot.parse().map_err(|_| PairingError::BadRobotId { found: robot })?;
        let secret = secret.ok_or(PairingError::MissingField { field: "secret" })?;
        let secret = decode_secret(&secret)?;
        let broker = broker.ok_or(PairingError::MissingField { field: "broker" })?;
        check_broker(&broker)?;
        Ok(PairingUri { robot, secret, broker })
    }
}

fn decode_secret(text: &str) -> Result<PairingSecret, PairingError> {
    let bytes = BASE32_NOPAD
        .decode(text.as_bytes())
        .map_err(|e| PairingError::BadSecret { detail: format!("not base32: {}", e.kind) })?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| PairingError::BadSecret { detail: format!("{} bytes instead of 16", b.len()) })
}

/// Only the shape is checked here; which schemes the MQTT client supports is
/// the connecting code's business, and it reports that with its own message.
fn check_broker(broker: &str) -> Result<(), PairingError> {
    let bad = |detail: String| PairingError::BadBroker { found: broker.to_owned(), detail };
    let url = url::Url::parse(broker).map_err(|e| bad(e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    Ok(())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// RFC 3986 percent-decoding (not form decoding: `+` stays `+`). `None` for a
/// malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------
// QR code rendering
// ---------------------------------------------------------------------------

/// Quiet zone around the code, in modules: the 4 the QR standard asks for.
/// Phone scanners find the code faster with it, and it costs only 2 lines.
pub const QR_QUIET_ZONE: usize = 4;

/// PNG pixels per module: large enough to scan from a screen across a room,
/// small enough (~500 px) to open anywhere.
pub const PNG_SCALE: usize = 8;

/// The modules of `data`'s QR code with the quiet zone added, row-major, `true`
/// for dark, and the side length. Level M: the code is shown on screens,
/// where 15% recovery is plenty and a lower version keeps it compact.
fn qr_modules(data: &str) -> Result<(Vec<bool>, usize), PairingError> {
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M)?;
    let w = code.width();
    let side = w + 2 * QR_QUIET_ZONE;
    let mut grid = vec![false; side * side];
    for (i, c) in code.to_colors().into_iter().enumerate() {
        let (x, y) = (i % w + QR_QUIET_ZONE, i / w + QR_QUIET_ZONE);
        grid[y * side + x] = c == Color::Dark;
    }
    Ok((grid, side))
}

/// The QR code of `data` as text for a terminal, two modules per character cell
/// (upper/lower half blocks), so a version 7 code fits in 27 lines.
///
/// Each line sets black-on-bright-white explicitly (ANSI SGR `30;107`) and resets
/// at its end, so the code reads the right way round on dark and light terminal
/// themes alike; without that, a dark theme shows an inverted code that many
/// scanners refuse. Use [`render_plain`] where escape codes would be noise.
pub fn render_terminal(data: &str) -> Result<String, PairingError> {
    render_half_blocks(data, "\x1b[30;107m", "\x1b[0m")
}

/// Like [`render_terminal`] but without escape codes (dark modules drawn as
/// blocks on the default background), for logs and the journal, which store
/// escape codes as unreadable binary. Reads correctly on light backgrounds.
pub fn render_plain(data: &str) -> Result<String, PairingError> {
    render_half_blocks(data, "", "")
}

fn render_half_blocks(data: &str, line_start: &str, line_end: &str) -> Result<String, PairingError> {
    let (grid, side) = qr_modules(data)?;
    let dark = |x: usize, y: usize| y < side && grid[y * side + x];
    let mut out = String::new();
    for y in (0..side).step_by(2) {
        out.push_str(line_start);
        for x in 0..side {
            out.push(match (dark(x, y), dark(x, y + 1)) {
                (false, false) => ' ',
                (true, false) => '\u{2580}', // upper half block
                (false, true) => '\u{2584}', // lower half block
                (true, true) => '\u{2588}',  // full block
            });
        }
        out.push_str(line_end);
        out.push('\n');
    }
    Ok(out)
}

/// The QR code of `data` as an 8-bit grayscale PNG: [`PNG_SCALE`] pixels per
/// module, [`QR_QUIET_ZONE`] modules of quiet zone.
pub fn png_bytes(data: &str) -> Result<Vec<u8>, PairingError> {
    let (grid, side) = qr_modules(data)?;
    let px = side * PNG_SCALE;
    let mut pixels = Vec::with_capacity(px * px);
    for y in 0..px {
        for x in 0..px {
            pixels.push(if grid[(y / PNG_SCALE) * side + x / PNG_SCALE] { 0 } else { 255 });
        }
    }
    let mut out = Vec::new();
    let size = u32::try_from(px).expect("a QR code is at most 177 modules");
    let mut enc = png::Encoder::new(&mut out, size, size);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

/// Write the QR code of `data` as a PNG at `path`, durably and with mode 0600:
/// the code carries the pairing secret, so only the robotd user may read it.
pub fn write_png(data: &str, path: &Path) -> Result<(), PairingError> {
    let bytes = png_bytes(data)?;
    state::write_durable(path, &bytes, 0o600)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Topics and payloads
// ---------------------------------------------------------------------------

/// The pairing request payload, in the protocol's field order.
#[derive(Serialize, Deserialize)]
struct PairPayload {
    nickname: String,
    nonce: String,
}

#[derive(Serialize)]
struct PairedReply<'a> {
    status: &'static str,
    robot: &'a str,
    nickname: &'a str,
}

#[derive(Serialize)]
struct RejectedReply {
    status: &'static str,
    reason: &'static str,
}

/// `{"status":"paired","robot":"<robotId>","nickname":"<robot nickname>"}`,
/// the robot's answer on success. The caller MACs it with the new `K` (that
/// proves to the phone the robot derived the same key).
pub fn paired_reply(robot: &ClientId, robot_nickname: &str) -> Vec<u8> {
    let reply = PairedReply { status: "paired", robot: robot.as_str(), nickname: robot_nickname };
    serde_json::to_vec(&reply).expect("strings always serialize")
}

/// `{"status":"rejected","reason":"..."}`, sent without a MAC: the robot shares
/// no key with a phone that failed to pair.
pub fn rejected_reply(reason: Reject) -> Vec<u8> {
    let reply = RejectedReply { status: "rejected", reason: reason.as_str() };
    serde_json::to_vec(&reply).expect("strings always serialize")
}

fn parse_nonce(s: &str) -> Option<[u8; 16]> {
    // Same shape as a client ID: 32 lowercase hex. Upper case is refused so the
    // nonce has one spelling.
    if !is_client_id(s) {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// The `(nickname, nonce)` of a pairing payload, or `None` if malformed: not a
/// JSON object, a field missing, duplicated or of the wrong type, a bad
/// nickname, or a nonce that is not 32 lowercase hex. Unknown fields are
/// ignored so phones can add optional ones later.
fn parse_pair_payload(payload: &[u8]) -> Option<(String, [u8; 16])> {
    // serde would also accept a JSON array for a struct; the protocol says object.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let p: PairPayload = serde_json::from_slice(payload).ok()?;
    let nickname = nickname::check(&p.nickname).ok()?;
    Some((nickname, parse_nonce(&p.nonce)?))
}

// ---------------------------------------------------------------------------
// Pairing windows (robot side)
// ---------------------------------------------------------------------------

/// Why a pairing request was refused; [`Reject::as_str`] is the protocol's
/// `reason` string sent back to the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// No window is open (never opened, expired, closed by an admin, or closed
    /// by a successful pairing).
    WindowClosed,
    /// The request is not authenticated with the window's secret: wrong secret,
    /// forged or missing MAC, missing `from`/`seq`/`ts`, or `from` not the phone
    /// in the topic.
    BadMac,
    /// Authentic but not fresh: `ts` more than 60 s from the robot's clock, or
    /// `seq` not above the last one seen from that phone (a replay).
    Stale,
    /// Authentic and fresh but the payload is not the expected JSON.
    Malformed,
    /// The window closed after too many failed attempts; open a new one.
    TooManyAttempts,
    /// The phone proved the secret, but its ID is already an owner and the
    /// window was not opened to replace that owner's key (`robotd pair
    /// --replace ID`). The window closes: it served its one pairing.
    AlreadyPaired,
}

impl Reject {
    /// The protocol's `reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::WindowClosed => "window_closed",
            Reject::BadMac => "bad_mac",
            Reject::Stale => "stale",
            Reject::Malformed => "malformed",
            Reject::TooManyAttempts => "too_many_attempts",
            Reject::AlreadyPaired => "already_paired",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pairing request as received, before any check. The message's fields are
/// `None` where the MQTT user property is absent or unparsable; the window
/// decides then (it counts as a failure, see [`Reject::BadMac`]).
#[derive(Debug, Clone, Copy)]
pub struct PairRequest<'a> {
    /// The robot's own ID (the second topic level).
    pub robot_id: &'a ClientId,
    /// The phone ID from the topic's last level.
    pub phone_id: &'a ClientId,
    /// The message exactly as received; the MAC covers its topic and payload.
    pub message: SignedMessage<'a>,
}

/// What the robot must do with a pairing request.
#[derive(Clone, PartialEq, Eq)]
pub enum PairOutcome {
    /// The phone proved it knows `S`: store it as an owner with `key` (durably,
    /// before answering), then send [`paired_reply`] MACed with `key`.
    Paired {
        /// The new owner.
        phone_id: ClientId,
        /// Its nickname, cleaned by [`nickname::check`].
        nickname: String,
        /// The owner key `K`.
        key: Key32,
    },
    /// Answer with [`rejected_reply`] (no MAC).
    Rejected(Reject),
}

impl fmt::Debug for PairOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairOutcome::Paired { phone_id, nickname, .. } => f
                .debug_struct("Paired")
                .field("phone_id", phone_id)
                .field("nickname", nickname)
                .field("key", &"<redacted>")
                .finish(),
            PairOutcome::Rejected(r) => f.debug_tuple("Rejected").field(r).finish(),
        }
    }
}

/// Why the last window is no longer open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum CloseReason {
    /// Its time ran out.
    Expired,
    /// A phone paired; a window serves one pairing so a leaked QR code cannot
    /// enrol a second, unnoticed owner.
    Paired {
        /// The phone that paired.
        phone_id: ClientId,
    },
    /// [`DEFAULT_MAX_FAILURES`] (or the configured number of) failed attempts.
    TooManyAttempts,
    /// Closed by an admin ([`PairingWindows::close`]).
    ByAdmin,
}

/// The pairing state as `robotd status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WindowStatus {
    /// No window since start.
    NeverOpened,
    /// A window is open.
    Open {
        /// When it opened (unix ms).
        opened_at_ms: u64,
        /// When it will close at the latest (unix ms).
        expires_at_ms: u64,
        /// Failed attempts so far.
        failures: u32,
        /// Failed attempts that close it.
        max_failures: u32,
    },
    /// The last window is closed.
    Closed(CloseReason),
}

impl fmt::Display for WindowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowStatus::NeverOpened => f.write_str("closed (no window opened since start)"),
            WindowStatus::Open { expires_at_ms, failures, max_failures, .. } => {
                write!(f, "open until {expires_at_ms} (unix ms), {failures}/{max_failures} failed attempts")
            }
            WindowStatus::Closed(CloseReason::Expired) => f.write_str("closed (expired)"),
            WindowStatus::Closed(CloseReason::Paired { phone_id }) => {
                write!(f, "closed (paired {phone_id})")
            }
            WindowStatus::Closed(CloseReason::TooManyAttempts) => f.write_str("closed (too many failed attempts)"),
            WindowStatus::Closed(CloseReason::ByAdmin) => f.write_str("closed (by admin)"),
        }
    }
}

struct OpenWindow {
    secret: PairingSecret,
    opened_at_ms: u64,
    expires_at_ms: u64,
    failures: u32,
}

enum State {
    NeverOpened,
    Open(OpenWindow),
    /// The secret is dropped on close: a closed window has nothing to leak.
    Closed(CloseReason),
}

/// The robot's pairing windows: at most one open at a time, each with its own
/// secret, closing on expiry, on the first success, after `max_failures`
/// failures, or when replaced by a new one (which voids the old secret).
///
/// Time is an input (`now_ms`, unix milliseconds) and the secret is passed in
/// (the caller draws it with `rand::random()`), so the machine is
/// deterministic and does no I/O.
///
/// The `seq` of authenticated requests is remembered per phone for the whole
/// life of this value (the protocol's "since start"), across windows, so a
/// request captured in one window cannot be replayed in the next within its
/// ±60 s `ts` allowance. Only requests that passed the MAC are recorded, so the
/// table grows only with phones that knew a secret.
pub struct PairingWindows {
    max_duration_ms: u64,
    max_failures: u32,
    state: State,
    seqs: SeqTracker,
}

impl Default for PairingWindows {
    /// The protocol maxima: 10 minutes, 20 failures.
    fn default() -> Self {
        Self::new(MAX_WINDOW, DEFAULT_MAX_FAILURES)
    }
}

impl fmt::Debug for PairingWindows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingWindows")
            .field("max_duration_ms", &self.max_duration_ms)
            .field("max_failures", &self.max_failures)
            .finish_non_exhaustive()
    }
}

impl PairingWindows {
    /// Windows lasting `max_duration` (capped at [`MAX_WINDOW`]) and closing
    /// after `max_failures` failures (capped at [`DEFAULT_MAX_FAILURES`], and at
    /// least 1). Caps rather than errors: config validation reports bad values;
    /// this only guarantees the protocol limits hold whatever it is given.
    pub fn new(max_duration: Duration, max_failures: u32) -> Self {
        let capped = max_duration.min(MAX_WINDOW);
        PairingWindows {
            max_duration_ms: u64::try_from(capped.as_millis()).expect("at most 600 000"),
            max_failures: max_failures.clamp(1, DEFAULT_MAX_FAILURES),
            state: State::NeverOpened,
            seqs: SeqTracker::default(),
        }
    }

    /// Open a new window with `secret` and return its expiry (unix ms). Any
    /// previous window is replaced, so its secret stops working at once: a
    /// second `robotd pair` is how an admin voids a QR code shown to the wrong
    /// person.
    pub fn open(&mut self, now_ms: u64, secret: PairingSecret) -> u64 {
        let expires_at_ms = now_ms.saturating_add(self.max_duration_ms);
        // Replay state belongs to the window's secret: a request of an
        // earlier window fails the new secret's MAC anyway, and a guest who
        // was shown one window cannot poison a phone's counter for the next.
        self.seqs = SeqTracker::default();
        self.state = State::Open(OpenWindow { secret, opened_at_ms: now_ms, expires_at_ms, failures: 0 });
        expires_at_ms
    }

    /// Close the current window, if any (admin request, or an owner appeared by
    /// other means). A window already closed keeps its original reason.
    pub fn close(&mut self) {
        if let State::Open(_) = self.state {
            self.state = State::Closed(CloseReason::ByAdmin);
        }
    }

    /// True while a window accepts requests.
    pub fn is_open(&self, now_ms: u64) -> bool {
        matches!(&self.state, State::Open(w) if now_ms < w.expires_at_ms)
    }

    /// The open window's expiry (unix ms), to schedule a wake-up that announces
    /// its end. `None` when no window is open. It may lie in the past if the
    /// window expired and no request or status call has noticed yet.
    pub fn expires_at_ms(&self) -> Option<u64> {
        match &self.state {
            State::Open(w) => Some(w.expires_at_ms),
            _ => None,
        }
    }

    /// The state for `robotd status`.
    pub fn status(&self, now_ms: u64) -> WindowStatus {
        match &self.state {
            State::NeverOpened => WindowStatus::NeverOpened,
            State::Open(w) if now_ms >= w.expires_at_ms => WindowStatus::Closed(CloseReason::Expired),
            State::Open(w) => WindowStatus::Open {
                opened_at_ms: w.opened_at_ms,
                expires_at_ms: w.expires_at_ms,
                failures: w.failures,
                max_failures: self.max_failures,
            },
            State::Closed(r) => WindowStatus::Closed(r.clone()),
        }
    }

    /// Judge a pairing request.
    ///
    /// Checks run cheapest-first and the payload is parsed only after the MAC
    /// passed, so unauthenticated junk costs one HMAC at most. Every failure
    /// while a window is open (`bad_mac`, `stale`, `malformed`) counts; the one
    /// that reaches `max_failures` closes the window and is answered
    /// `too_many_attempts`, as is every later request to that window: it tells
    /// an honest phone that retrying is pointless until someone runs
    /// `robotd pair` again, which `window_closed` would not.
    pub fn handle(&mut self, now_ms: u64, req: &PairRequest<'_>) -> PairOutcome {
        let window = match &mut self.state {
            State::Open(w) if now_ms < w.expires_at_ms => w,
            State::Open(_) => {
                self.state = State::Closed(CloseReason::Expired);
                return PairOutcome::Rejected(Reject::WindowClosed);
            }
            State::Closed(CloseReason::TooManyAttempts) => {
                return PairOutcome::Rejected(Reject::TooManyAttempts);
            }
            State::Closed(_) | State::NeverOpened => {
                return PairOutcome::Rejected(Reject::WindowClosed);
            }
        };
        match check_request(&window.secret, &mut self.seqs, now_ms, req) {
            Ok((nickname, nonce)) => {
                let key = owner_key(&window.secret, &nonce, req.robot_id.as_str(), req.phone_id.as_str());
                let phone_id = req.phone_id.clone();
                self.state = State::Closed(CloseReason::Paired { phone_id: phone_id.clone() });
                PairOutcome::Paired { phone_id, nickname, key }
            }
            Err(reason) => {
                window.failures += 1;
                if window.failures >= self.max_failures {
                    self.state = State::Closed(CloseReason::TooManyAttempts);
                    PairOutcome::Rejected(Reject::TooManyAttempts)
                } else {
                    PairOutcome::Rejected(reason)
                }
            }
        }
    }
}

/// The checks of one request against an open window's secret.
///
/// `from` must equal the phone ID in the topic, and a mismatch is `bad_mac`
/// rather than `malformed`: `K` is bound to the topic's phone ID and the answer
/// goes to that phone's topic, so a request whose `from` names someone else is
/// a sender claim that cannot be authenticated, exactly what `bad_mac` means.
/// It also keeps the reply from telling a prober which check failed, and it
/// counts as a failure like any other forgery. Missing `from`, `seq`, `ts` or
/// `mac` are `bad_mac` for the same reason: without them there is nothing the
/// MAC could have authenticated.
fn check_request(
    secret: &PairingSecret,
    seqs: &mut SeqTracker,
    now_ms: u64,
    req: &PairRequest<'_>,
) -> Result<(String, [u8; 16]), Reject> {
    // A topic that is not pair/{robot}/{phone} means the caller mixed up its
    // inputs; refuse rather than derive a key for IDs the phone did not sign.
    let msg = &req.message;
    if msg.topic != topics::pair_request(req.robot_id, req.phone_id) {
        return Err(Reject::Malformed);
    }
    let Some((input, mac_hex)) = msg.mac_input() else {
        return Err(Reject::BadMac);
    };
    if input.from != req.phone_id.as_str() {
        return Err(Reject::BadMac);
    }
    if !mac::verify(secret, &input, mac_hex) {
        return Err(Reject::BadMac);
    }
    // ts before seq: a request too old to accept must not advance the counter.
    if !ts_is_fresh(input.ts_ms, now_ms) || !seqs.check_and_record(req.phone_id, input.seq) {
        return Err(Reject::Stale);
    }
    parse_pair_payload(msg.payload).ok_or(Reject::Malformed)
}

// ---------------------------------------------------------------------------
// Phone side (robotctl)
// ---------------------------------------------------------------------------

/// The phone's pairing request for `uri`, signed with the pairing secret `S`
/// ([`Signer`]): publish it QoS 1 as is (user properties `from` = `phone_id`,
/// `seq`, `ts` = `ts_ms` and `mac`). The nickname is cleaned and checked here
/// with the robot's rule ([`nickname::check`]), so a bad one is reported to
/// the user instead of costing one of the window's 20 attempts. `nonce` must
/// be fresh randomness (`rand::random()`): it salts `K`.
pub fn build_pair_request(
    uri: &PairingUri,
    phone_id: &ClientId,
    nickname: &str,
    nonce: [u8; 16],
    seq: u64,
    ts_ms: u64,
) -> Result<Signed, PairingError> {
    let nick =
        nickname::check(nickname).map_err(|detail| PairingError::BadNickname { found: nickname.to_owned(), detail })?;
    let topic = topics::pair_request(&uri.robot, phone_id);
    let payload = serde_json::to_vec(&PairPayload { nickname: nick, nonce: hex::encode(nonce) })
        .expect("strings always serialize");
    Ok(Signer::new(&uri.secret, phone_id.as_str()).message(topic, payload, seq, ts_ms, None))
}

/// The owner key `K` as the phone derives it; equal to the robot's when it
/// answers `paired`.
pub fn derive_owner_key(uri: &PairingUri, phone_id: &ClientId, nonce: &[u8; 16]) -> Key32 {
    owner_key(&uri.secret, nonce, uri.robot.as_str(), phone_id.as_str())
}

/// The robot's answer to a pairing request, as the phone understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairResponse {
    /// Paired, and the MAC proved the robot holds the same `K`.
    Paired {
        /// The robot's nickname, to show to the user.
        robot_nickname: String,
    },
    /// Refused with this protocol reason. Unauthenticated (no key is shared
    /// yet), so it is advice to show the user, not proof.
    Rejected {
        /// The `reason` string, e.g. `bad_mac`.
        reason: String,
    },
}

#[derive(Deserialize)]
struct ResponsePayload {
    status: String,
    robot: Option<String>,
    nickname: Option<String>,
    reason: Option<String>,
}

/// Check and read the robot's answer on [`topics::pair_response`]. A `paired`
/// answer must come `from` the robot, name it, and carry a valid MAC under
/// `key` (the phone's [`derive_owner_key`]); only then may the phone store `K`.
/// Freshness is not checked: the answer is bound to this pairing by `K`, which
/// depends on the phone's fresh nonce, so it cannot be a replay.
pub fn check_pair_response(
    uri: &PairingUri,
    phone_id: &ClientId,
    key: &Key32,
    msg: &SignedMessage<'_>,
) -> Result<PairResponse, PairingError> {
    let SignedMessage { topic, payload, from, .. } = *msg;
    if topic != topics::pair_response(&uri.robot, phone_id) {
        return Err(PairingError::BadResponse("it arrived on another topic"));
    }
    let p: ResponsePayload =
        serde_json::from_slice(payload).map_err(|_| PairingError::BadResponse("payload is not the expected JSON"))?;
    match p.status.as_str() {
        "rejected" => {
            let reason = p.reason.ok_or(PairingError::BadResponse("rejected without a reason"))?;
            Ok(PairResponse::Rejected { reason })
        }
        "paired" => {
            let Some((input, mac_hex)) = msg.mac_input() else {
                return Err(PairingError::BadResponse("paired answer lacks from/seq/ts/mac"));
            };
            if from != Some(uri.robot.as_str()) || p.robot.as_deref() != Some(uri.robot.as_str()) {
                return Err(PairingError::BadResponse("paired answer names another robot"));
            }
            if !mac::verify(key, &input, mac_hex) {
                return Err(PairingError::BadResponse("paired answer has a bad MAC"));
            }
            let robot_nickname = p.nickname.ok_or(PairingError::BadResponse("paired answer lacks the nickname"))?;
            Ok(PairResponse::Paired { robot_nickname })
        }
        _ => Err(PairingError::BadResponse("unknown status")),
    }
}

#[cfg(test)]
mod tests;
