//! `[webrtc]`: the STUN and TURN servers of version 2 calls, and the TURN
//! credentials robotd hands the media helper.
//!
//! No server is configured by default: robotd never contacts a public STUN
//! or TURN server unless the owner names one. The long-term TURN secret (or
//! password) stays in the main process; the media helper only ever receives
//! the URLs [`WebRtcConfig::ice_servers`] makes, with short-lived
//! credentials in the coturn REST scheme when `turn_secret_file` is used.

use std::path::PathBuf;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

/// `[webrtc]` as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebRtcConfig {
    /// `stun:host[:port]` (RFC 7064), for the robot's server-reflexive
    /// candidates; also published to phones in the profile.
    pub stun: Option<String>,
    /// `turn:host[:port][?transport=udp|tcp]` or `turns:...` (RFC 7065).
    /// GStreamer 1.22 speaks `turns:` as TURN over plain TCP (no TLS).
    pub turn: Vec<String>,
    /// Static TURN user name (with `turn_password_file`).
    pub turn_username: Option<String>,
    /// File holding the static TURN password.
    pub turn_password_file: Option<PathBuf>,
    /// File holding coturn's `static-auth-secret` (`use-auth-secret`): robotd
    /// then makes time-limited credentials per call.
    pub turn_secret_file: Option<PathBuf>,
    /// Lifetime of the credentials made from `turn_secret_file`, seconds.
    pub turn_ttl_s: u32,
    /// Use relayed candidates only (the robot's addresses never reach the phone).
    pub relay_only: bool,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        WebRtcConfig {
            stun: None,
            turn: Vec::new(),
            turn_username: None,
            turn_password_file: None,
            turn_secret_file: None,
            turn_ttl_s: DEFAULT_TURN_TTL_S,
            relay_only: false,
        }
    }
}

/// Default lifetime of time-limited TURN credentials: a day, as coturn's
/// documentation suggests; a call longer than that loses its relay.
pub const DEFAULT_TURN_TTL_S: u32 = 86_400;

/// One parsed `stun:`/`turn:`/`turns:` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceUrl {
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
    pub transport: Option<&'static str>,
}

/// What the media helper gets: webrtcbin's `stun-server` and
/// `add-turn-server` URLs (credentials inside) and the relay policy.
#[derive(Clone, PartialEq, Eq)]
pub struct IceServers {
    pub stun: Option<String>,
    pub turn: Vec<String>,
    pub relay_only: bool,
}

impl std::fmt::Debug for IceServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServers")
            .field("stun", &self.stun)
            .field("turn", &format_args!("[{} server(s), credentials redacted]", self.turn.len()))
            .field("relay_only", &self.relay_only)
            .finish()
    }
}

/// Why [`WebRtcConfig::ice_servers`] could not make the TURN credentials.
#[derive(Debug, thiserror::Error)]
pub enum TurnCredentialError {
    #[error("cannot read {key} {path}: {cause}; check the file and that the robotd user may read it")]
    Read { key: &'static str, path: PathBuf, cause: std::io::Error },
    #[error("{key} {path} is empty; put the secret on its first line")]
    Empty { key: &'static str, path: PathBuf },
}

/// Parse `stun:host[:port]`, `turn:host[:port][?transport=udp|tcp]`, `turns:...`.
pub fn parse_ice_url(s: &str) -> Result<IceUrl, String> {
    let (scheme, rest, default_port) = if let Some(r) = s.strip_prefix("stun:") {
        ("stun", r, 3478)
    } else if let Some(r) = s.strip_prefix("turns:") {
        ("turns", r, 5349)
    } else if let Some(r) = s.strip_prefix("turn:") {
        ("turn", r, 3478)
    } else {
        return Err(format!("{s:?} must start with stun:, turn: or turns:"));
    };
    let rest = rest.trim_start_matches("//");
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let transport = match query {
        "" => None,
        "transport=udp" if scheme == "turn" => Some("udp"),
        "transport=tcp" if scheme != "stun" => Some("tcp"),
        q => return Err(format!("{s:?}: unsupported {q:?} (only ?transport=udp or tcp on turn:, tcp on turns:)")),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| format!("{s:?}: bad port {p:?}"))?)
        }
        _ => (hostport, default_port),
    };
    let plain = host.trim_start_matches('[').trim_end_matches(']');
    let host_ok = !plain.is_empty()
        && !host.contains('@')
        && (plain.parse::<std::net::IpAddr>().is_ok()
            || plain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !host_ok {
        return Err(format!("{s:?}: bad host {host:?} (credentials go in turn_username/turn_*_file, not the URL)"));
    }
    Ok(IceUrl { scheme, host: host.to_owned(), port, transport })
}

impl WebRtcConfig {
    /// Check the section; the error names the key (under `webrtc.`) and the fix.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((format!("webrtc.{k}"), m));
        if let Some(stun) = &self.stun {
            match parse_ice_url(stun) {
                Ok(u) if u.scheme == "stun" => {}
                Ok(_) => return err("stun", format!("{stun:?} is not a stun: URL (TURN servers go in webrtc.turn)")),
                Err(m) => return err("stun", m),
            }
        }
        for t in &self.turn {
            match parse_ice_url(t) {
                Ok(u) if u.scheme != "stun" => {}
                Ok(_) => return err("turn", format!("{t:?} is a stun: URL; put it in webrtc.stun")),
                Err(m) => return err("turn", m),
            }
        }
        let static_creds = self.turn_username.is_some() || self.turn_password_file.is_some();
        if static_creds && self.turn_secret_file.is_some() {
            return err("turn_secret_file", "set either turn_secret_file or turn_username + turn_password_file".into());
        }
        if static_creds && (self.turn_username.is_none() || self.turn_password_file.is_none()) {
            return err("turn_username", "turn_username and turn_password_file go together".into());
        }
        if !self.turn.is_empty() && !static_creds && self.turn_secret_file.is_none() {
            return err(
                "turn",
                "TURN servers need credentials: turn_secret_file, or turn_username + turn_password_file".into(),
            );
        }
        if self.relay_only && self.turn.is_empty() {
            return err("relay_only", "relay_only needs at least one webrtc.turn server".into());
        }
        if self.turn_secret_file.is_some() && !(60..=7 * 86_400).contains(&self.turn_ttl_s) {
            return err("turn_ttl_s", format!("{} is outside 60..=604800 seconds", self.turn_ttl_s));
        }
        Ok(())
    }

    /// The servers for one call of `robot` at `now_unix_s`: the long-term
    /// secret or password is read now (so it may be rotated without a
    /// restart) and only the derived URLs leave this function.
    pub fn ice_servers(&self, robot: &str, now_unix_s: u64) -> Result<IceServers, TurnCredentialError> {
        let stun =
            self.stun.as_deref().and_then(|s| parse_ice_url(s).ok()).map(|u| format!("stun://{}:{}", u.host, u.port));
        let creds = match (&self.turn_secret_file, &self.turn_username, &self.turn_password_file) {
            _ if self.turn.is_empty() => None,
            (Some(file), _, _) => {
                let secret = read_secret("webrtc.turn_secret_file", file)?;
                Some(turn_rest_credentials(&secret, robot, now_unix_s + u64::from(self.turn_ttl_s)))
            }
            (None, Some(user), Some(file)) => Some((user.clone(), read_secret("webrtc.turn_password_file", file)?)),
            _ => None,
        };
        let turn = match creds {
            None => Vec::new(),
            Some((user, pass)) => {
                self.turn.iter().filter_map(|t| parse_ice_url(t).ok()).map(|u| turn_url(&u, &user, &pass)).collect()
            }
        };
        Ok(IceServers { stun, turn, relay_only: self.relay_only })
    }
}

/// coturn's REST scheme (`use-auth-secret`): user name `"{expiry}:{robot}"`,
/// password base64(HMAC-SHA1(secret, user name)).
pub fn turn_rest_credentials(secret: &str, robot: &str, expiry_unix_s: u64) -> (String, String) {
    let user = format!("{expiry_unix_s}:{robot}");
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(user.as_bytes());
    let pass = data_encoding::BASE64.encode(&mac.finalize().into_bytes());
    (user, pass)
}

/// `turn://user:pass@host:port?transport=...` with user and password
/// percent-encoded, as webrtcbin's `add-turn-server` takes it.
fn turn_url(u: &IceUrl, user: &str, pass: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20");
    let q = u.transport.map(|t| format!("?transport={t}")).unwrap_or_default();
    format!("{}://{}:{}@{}:{}{q}", u.scheme, enc(user), enc(pass), u.host, u.port)
}

fn read_secret(key: &'static str, path: &std::path::Path) -> Result<String, TurnCredentialError> {
    let text = std::fs::read_to_string(path).map_err(|cause| TurnCredentialError::Read {
        key,
        path: path.to_path_buf(),
        cause,
    })?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r').to_owned();
    if line.is_empty() {
        return Err(TurnCredentialError::Empty { key, path: path.to_path_buf() });
    }
    Ok(line)
}

#[cfg(test)]
mod tests;
