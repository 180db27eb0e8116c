//! Configuration: `/etc/robotd/robotd.toml` by default.
//!
//! Every field has a default, so an empty file is a working configuration for
//! the simulated robot on a local broker. Unknown keys are errors (a typo must
//! not silently fall back to a default on a machine that drives motors), and
//! every error names the key and what is allowed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod webrtc;

use crate::wire::nickname;
use crate::wire::payloads::VideoParams;

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/robotd/robotd.toml";

/// A configuration problem, naming the file and key with the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}: {cause}; pass another file with --config")]
    Read { path: PathBuf, cause: std::io::Error },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A key has the wrong type or is not a known key.
    #[error("config file {path}: key `{key}`: {message}")]
    Parse { path: PathBuf, key: String, message: String },
    /// A value is well-formed but not allowed.
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub robot: RobotConfig,
    pub mqtt: MqttConfig,
    pub pairing: PairingConfig,
    pub call: CallConfig,
    pub control: ControlConfig,
    pub hardware: crate::hal::HardwareConfig,
    pub video: VideoConfig,
    pub audio: AudioConfig,
    /// `[nav]`: the map of named places for `goto`; without it the robot has no map.
    pub nav: Option<crate::nav::NavConfig>,
    /// `[webrtc]`: STUN/TURN servers of version 2 calls (none by default).
    pub webrtc: webrtc::WebRtcConfig,
}

/// `[video]`: the camera stream of a call.
///
/// In the file the preferred shape is four flat keys (`width`, `height`,
/// `fps`, `kbps`) beside `device` and `encoder`; in code it is one
/// [`VideoParams`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "VideoToml", into = "VideoToml")]
pub struct VideoConfig {
    /// `"auto"` (the first V4L2 camera with a usable format; with
    /// `hardware.backend = "sim"` it means `"sim"`), a device such as
    /// `"/dev/video0"`, `"test"` for GStreamer's test pattern (no camera), or `"sim"`
    /// (with `hardware.backend = "sim"`): the simulated robot's view, rendered by
    /// [`crate::video::simview`].
    pub device: String,
    /// `"auto"` (v4l2h264enc, else x264enc, else openh264enc) or one of those names.
    pub encoder: String,
    /// Preferred size, frame rate and bitrate; each call gets these capped by
    /// what the phone's invite allows.
    pub preferred: VideoParams,
    /// Keep one media helper started ahead of the next call (GStreamer loaded,
    /// its DTLS certificate made): the call's answer does not wait for them.
    pub prestart_helper: bool,
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig {
            device: "auto".into(),
            encoder: "auto".into(),
            preferred: VideoParams { width: 1280, height: 720, fps: 30, kbps: 2000 },
            prestart_helper: true,
        }
    }
}

/// `[video]` as written in the file. serde's `flatten` cannot be combined
/// with `deny_unknown_fields`, so the flat keys go through this twin.
#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct VideoToml {
    device: String,
    encoder: String,
    width: u32,
    height: u32,
    fps: u32,
    kbps: u32,
    prestart_helper: bool,
}

impl Default for VideoToml {
    fn default() -> Self {
        VideoConfig::default().into()
    }
}

impl From<VideoToml> for VideoConfig {
    fn from(t: VideoToml) -> Self {
        let preferred = VideoParams { width: t.width, height: t.height, fps: t.fps, kbps: t.kbps };
        VideoConfig { device: t.device, encoder: t.encoder, preferred, prestart_helper: t.prestart_helper }
    }
}

impl From<VideoConfig> for VideoToml {
    fn from(c: VideoConfig) -> Self {
        let VideoParams { width, height, fps, kbps } = c.preferred;
        VideoToml { device: c.device, encoder: c.encoder, width, height, fps, kbps, prestart_helper: c.prestart_helper }
    }
}

impl VideoConfig {
    /// The encoder preference (validated at load).
    pub fn encoder_preference(&self) -> crate::video::EncoderPreference {
        use crate::video::{Encoder, EncoderPreference};
        match self.encoder.as_str() {
            "v4l2h264enc" => EncoderPreference::Force(Encoder::V4l2),
            "x264enc" => EncoderPreference::Force(Encoder::X264),
            "openh264enc" => EncoderPreference::Force(Encoder::OpenH264),
            _ => EncoderPreference::Auto,
        }
    }
}

/// `[audio]`: the optional microphone and speaker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioConfig {
    /// An ALSA capture device (e.g. `"plughw:1,0"`), `"test"` for a test
    /// tone, or unset for no microphone (calls then carry no audio).
    pub device: Option<String>,
    /// An ALSA playback device (e.g. `"plughw:0,0"`, `"default"`) that plays
    /// the phone's microphone in version 2 calls, `"test"` to only measure
    /// its level (`robotd status`, `media.speaker_level_db`), or unset: the
    /// robot declines the phone's audio.
    pub speaker: Option<String>,
}

/// `[robot]`: who the robot is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RobotConfig {
    /// Name shown to phones in the profile and the pairing reply; kept as
    /// [`nickname::check`] cleans it (trimmed, bidi controls removed).
    pub nickname: String,
    /// Optional URL of a photo for the profile.
    pub photo: Option<String>,
    /// Model string for the profile.
    pub model: String,
    /// Where the robot ID, owners and last place are kept.
    pub state_dir: PathBuf,
}

impl Default for RobotConfig {
    fn default() -> Self {
        RobotConfig {
            nickname: "Rover".into(),
            photo: None,
            model: "robotd sim".into(),
            state_dir: "/var/lib/robotd".into(),
        }
    }
}

/// `[mqtt]`: the broker connection.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (plain, default port 1883) or `mqtts://host[:port]` (TLS, 8883).
    pub url: String,
    /// PEM file of CA certificates to trust for `mqtts://`; the system's
    /// roots (webpki-roots are not bundled) are not used when this is empty,
    /// so set it for TLS.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key for `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Broker user name.
    pub username: Option<String>,
    /// File holding the broker password (kept out of the config so the config can be world-readable).
    pub password_file: Option<PathBuf>,
    /// MQTT keep-alive in seconds (5..=600; rumqttc does not allow less); the
    /// broker fires the will after 1.5x this without traffic.
    pub keep_alive_s: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            username: None,
            password_file: None,
            keep_alive_s: 5,
        }
    }
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key.as_ref().map(|_| "<redacted path>"))
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("keep_alive_s", &self.keep_alive_s)
            .finish()
    }
}

/// Transport of a broker URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
}

/// A parsed broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
}

/// Parse `mqtt://host[:port]` or `mqtts://host[:port]`.
pub fn parse_broker_url(url: &str) -> Result<BrokerAddr, String> {
    let u = url::Url::parse(url)
        .map_err(|e| format!("{url:?} is not a URL ({e}); use mqtt://host:1883 or mqtts://host:8883"))?;
    let (transport, default_port) = match u.scheme() {
        "mqtt" | "tcp" => (Transport::Tcp, 1883),
        "mqtts" | "ssl" => (Transport::Tls, 8883),
        other => return Err(format!("scheme {other:?} is not supported; use mqtt:// or mqtts://")),
    };
    let host = match u.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => h.to_string(),
        None => return Err(format!("{url:?} has no host; use e.g. mqtt://127.0.0.1:1883")),
    };
    if !(u.path().is_empty() || u.path() == "/") || u.query().is_some() || !u.username().is_empty() {
        return Err(format!(
            "{url:?} may hold only scheme, host and port; put credentials in mqtt.username and mqtt.password_file"
        ));
    }
    Ok(BrokerAddr { transport, host, port: u.port().unwrap_or(default_port) })
}

/// `[pairing]`: how phones pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairingConfig {
    /// How long a pairing window stays open, in seconds (1..=600).
    pub window_s: u64,
    /// Open a window at start when there is no owner yet.
    pub open_when_unowned: bool,
    /// Optional pairing push button: `{ pin = 26, active = "low", pull = "up" }`
    /// (BCM number; a button to ground with the pull-up reads low when pressed).
    pub button: Option<crate::hal::InputConfig>,
}

impl Default for PairingConfig {
    fn default() -> Self {
        PairingConfig { window_s: 600, open_when_unowned: true, button: None }
    }
}

/// `[call]`: call behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallConfig {
    /// A call ends when no request arrived for this many seconds (phones send `ping`).
    pub timeout_s: u64,
    /// At most this many calls are accepted in any 10 s (a token bucket: a
    /// burst of this many, refilled at this many per 10 s); more invites are
    /// rejected `rate_limited`. Each call starts the camera pipeline.
    pub max_setups_per_10s: u32,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig { timeout_s: 15, max_setups_per_10s: 4 }
    }
}

/// `[control]`: the local admin socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Path of the Unix socket used by `robotd pair`, `robotd owners`, `robotd status`.
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { socket: "/run/robotd/control.sock".into() }
    }
}

impl Config {
    /// Load and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.to_path_buf(), cause })?;
        Self::from_toml(&text, path)
    }

    /// Parse and validate configuration text; `path` is used in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| ConfigError::Syntax { path: path.to_path_buf(), message: e.to_string().trim().to_string() })?;
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            key: e.path().to_string(),
            message: e.inner().message().to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Check values that serde's types cannot express, and keep the nickname
    /// as the profile shows it ([`nickname::check`]). The error is a
    /// [`ConfigError::Invalid`] naming `path`, the key and the fix.
    fn validate(&mut self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |key: &str, message: String| ConfigError::Invalid { path: path.to_path_buf(), key: key.into(), message };
        let bad = |key: &str, message: String| Err(invalid(key, message));
        match nickname::check(&self.robot.nickname) {
            Ok(nick) => self.robot.nickname = nick,
            Err(_) => return bad("robot.nickname", "must be 1 to 64 printable characters".into()),
        }
        if !self.robot.state_dir.is_absolute() {
            return bad("robot.state_dir", format!("{:?} must be an absolute path", self.robot.state_dir));
        }
        let addr = parse_broker_url(&self.mqtt.url).map_err(|m| invalid("mqtt.url", m))?;
        // rumqttc refuses (panics on) keep-alives under 5 s.
        if !(5..=600).contains(&self.mqtt.keep_alive_s) {
            return bad("mqtt.keep_alive_s", format!("{} is outside 5..=600 seconds", self.mqtt.keep_alive_s));
        }
        if addr.transport == Transport::Tcp && (self.mqtt.ca_file.is_some() || self.mqtt.client_cert.is_some()) {
            return bad("mqtt.ca_file", "TLS files are set but mqtt.url is mqtt://; use mqtts://".into());
        }
        if addr.transport == Transport::Tls && self.mqtt.ca_file.is_none() {
            return bad(
                "mqtt.ca_file",
                "mqtts:// needs the PEM file of the CA that signed the broker's certificate".into(),
            );
        }
        if self.mqtt.client_cert.is_some() != self.mqtt.client_key.is_some() {
            return bad("mqtt.client_key", "client_cert and client_key go together; set both or neither".into());
        }
        if self.mqtt.password_file.is_some() && self.mqtt.username.is_none() {
            return bad("mqtt.username", "password_file is set without a username".into());
        }
        if !(1..=600).contains(&self.pairing.window_s) {
            return bad(
                "pairing.window_s",
                format!("{} is outside 1..=600 seconds (10 minutes at most)", self.pairing.window_s),
            );
        }
        if let Some(b) = &self.pairing.button {
            if b.pin > 27 {
                return bad("pairing.button.pin", format!("GPIO {} does not exist; use a BCM number 0..=27", b.pin));
            }
        }
        self.webrtc.validate().map_err(|(key, message)| invalid(&key, message))?;
        if !(1..=3600).contains(&self.call.timeout_s) {
            return bad("call.timeout_s", format!("{} is outside 1..=3600 seconds", self.call.timeout_s));
        }
        if !(1..=1000).contains(&self.call.max_setups_per_10s) {
            return bad("call.max_setups_per_10s", format!("{} is outside 1..=1000", self.call.max_setups_per_10s));
        }
        if !self.control.socket.is_absolute() {
            return bad("control.socket", format!("{:?} must be an absolute path", self.control.socket));
        }
        self.hardware.validate().map_err(|e| invalid(&e.key, e.message))?;
        if let Some(nav) = &self.nav {
            nav.validate().map_err(|e| invalid(&e.key, e.message))?;
        }
        let v = &self.video;
        if !matches!(v.encoder.as_str(), "auto" | "v4l2h264enc" | "x264enc" | "openh264enc") {
            return bad(
                "video.encoder",
                format!("{:?} is not one of auto, v4l2h264enc, x264enc, openh264enc", v.encoder),
            );
        }
        if v.device.is_empty() {
            return bad(
                "video.device",
                "must be \"auto\", \"test\", \"sim\" or a device path such as /dev/video0".into(),
            );
        }
        if v.device == "auto" && self.hardware.backend == crate::hal::config::Backend::Sim {
            // The simulated robot's camera is the simulated view.
            self.video.device = crate::webrtc::SIM_DEVICE.into();
        }
        let v = &self.video;
        if v.device == crate::webrtc::SIM_DEVICE && self.hardware.backend != crate::hal::config::Backend::Sim {
            return bad(
                "video.device",
                "\"sim\" shows the simulated robot's world and needs hardware.backend = \"sim\"; \
                 set video.device to \"auto\", \"test\" or a camera such as /dev/video0"
                    .into(),
            );
        }
        use crate::wire::payloads as pl;
        let v = &self.video.preferred;
        if !(pl::MIN_WIDTH..=pl::MAX_WIDTH).contains(&v.width) || v.width % 2 == 1 {
            return bad(
                "video.width",
                format!("{} must be even and within {}..={}", v.width, pl::MIN_WIDTH, pl::MAX_WIDTH),
            );
        }
        if !(pl::MIN_HEIGHT..=pl::MAX_HEIGHT).contains(&v.height) || v.height % 2 == 1 {
            return bad(
                "video.height",
                format!("{} must be even and within {}..={}", v.height, pl::MIN_HEIGHT, pl::MAX_HEIGHT),
            );
        }
        if !(1..=pl::MAX_FPS).contains(&v.fps) {
            return bad("video.fps", format!("{} is outside 1..={}", v.fps, pl::MAX_FPS));
        }
        if !(pl::MIN_KBPS..=pl::MAX_KBPS).contains(&v.kbps) {
            return bad("video.kbps", format!("{} is outside {}..={}", v.kbps, pl::MIN_KBPS, pl::MAX_KBPS));
        }
        if self.audio.device.as_deref() == Some("") {
            return bad("audio.device", "leave it unset for no microphone, or name an ALSA device or \"test\"".into());
        }
        if self.audio.speaker.as_deref() == Some("") {
            return bad(
                "audio.speaker",
                "leave it unset for no speaker, or name an ALSA playback device (\"plughw:0,0\", \"default\") or \"test\""
                    .into(),
            );
        }
        if let Some(b) = &self.pairing.button {
            if let Some((role, _)) = self.hardware.pin_roles().into_iter().find(|(_, q)| *q == b.pin) {
                return bad("pairing.button.pin", format!("GPIO {} is already used as {role}", b.pin));
            }
        }
        Ok(())
    }

    /// The parsed broker address (validated at load).
    pub fn broker(&self) -> BrokerAddr {
        parse_broker_url(&self.mqtt.url).expect("validated at load")
    }

    /// Keep-alive as a duration.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.mqtt.keep_alive_s.into())
    }

    /// The effective configuration as TOML, for `robotd check-config`.
    /// Holds no secrets: passwords live in files and only paths are printed.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_toml(s, Path::new("/etc/robotd/robotd.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.robot.nickname, "Rover");
        assert_eq!(c.broker(), BrokerAddr { transport: Transport::Tcp, host: "127.0.0.1".into(), port: 1883 });
        assert_eq!(c.keep_alive(), Duration::from_secs(5));
    }

    #[test]
    fn example_config_in_repo_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/robotd.toml");
        Config::load(&path).unwrap();
    }

    #[test]
    fn the_speaker_is_optional_and_named_as_written() {
        assert_eq!(parse("").unwrap().audio.speaker, None);
        let c = parse("[audio]\ndevice = \"test\"\nspeaker = \"plughw:0,0\"").unwrap();
        assert_eq!(c.audio.speaker.as_deref(), Some("plughw:0,0"));
    }

    #[test]
    fn example_flat_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/flat.toml");
        let c = Config::load(&path).unwrap();
        let map = c.nav.as_ref().unwrap().validate().unwrap();
        assert_eq!(map.places(), ["home", "hall", "kitchen", "bedroom"]);
        let door = crate::hal::config::Obstacle::Box { min: [3.0, -0.6], max: [3.05, 0.6] };
        assert_eq!(c.hardware.sim.obstacles.first(), Some(&door), "the shut bedroom door first, then the walls");
        assert!(c.hardware.sim.obstacles.len() > 1, "the flat has walls");
        assert_eq!(c.video.device, "sim");
        assert!(parse("").unwrap().nav.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[mqtt]\nkeep_alive_s = \"x\"", "mqtt.keep_alive_s"),
            ("[mqtt]\nkeep_alive_s = 0", "mqtt.keep_alive_s"),
            ("[mqtt]\nurl = \"http://x\"", "mqtt.url"),
            ("[mqtt]\nurl = \"mqtts://x\"", "mqtt.ca_file"),
            ("[robot]\nnickame = \"x\"", "robot.nickame"),
            ("[robot]\nstate_dir = \"rel\"", "robot.state_dir"),
            ("[pairing]\nwindow_s = 601", "pairing.window_s"),
            ("[pairing]\nbutton = { pin = 40 }", "pairing.button.pin"),
            ("[pairing]\nbutton = { pin = 26, active = \"sideways\" }", "pairing.button.active"),
            ("[wat]\n", "wat"),
            ("[hardware.left]\ndriver = \"l298n\"\nin1_pin = 17\nin2_pin = 27\npwm_pin = 40", "hardware.left.pwm_pin"),
            ("[hardware]\nbackend = \"gpio\"", "hardware.backend"),
            ("[pairing]\nbutton = { pin = 17 }", "pairing.button.pin"),
            ("[video]\nencoder = \"vp8enc\"", "video.encoder"),
            ("[hardware]\nbackend = \"rppal\"\n[video]\ndevice = \"sim\"", "video.device"),
            ("[video]\nwidth = 641", "video.width"),
            ("[video]\nkbps = 5", "video.kbps"),
            ("[audio]\nspeaker = \"\"", "audio.speaker"),
            ("[audio]\nspeakers = \"default\"", "audio.speakers"),
            (
                "[nav]\nplaces = [\"hall\"]\n[[nav.edges]]\nfrom = \"home\"\nto = \"hal\"\nsteps = [{ drive_m = 1.0 }]",
                "nav.edges[0].to",
            ),
            (
                "[nav]\nplaces = [\"hall\"]\n[[nav.edges]]\nfrom = \"home\"\nto = \"hall\"\nsteps = [{ drive = 1.0 }]",
                "nav.edges[0].steps[0].drive",
            ),
            ("[nav]\nplaces = [\"attic\"]", "nav.places[0]"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{text:?} gave {e}");
            assert!(e.contains("/etc/robotd/robotd.toml"), "{e}");
        }
    }

    #[test]
    fn video_keys_stay_flat_and_strict() {
        let c = parse("[video]\ndevice = \"test\"\nwidth = 640\nheight = 480\nfps = 15\nkbps = 800").unwrap();
        assert_eq!(c.video.preferred, VideoParams { width: 640, height: 480, fps: 15, kbps: 800 });
        assert_eq!((c.video.device.as_str(), c.video.encoder.as_str()), ("test", "auto"));
        let c = parse("[video]\nfps = 20").unwrap();
        assert_eq!(c.video.preferred, VideoParams { fps: 20, ..VideoConfig::default().preferred });
        let text = toml::to_string(&c.video).unwrap();
        // The default device "auto" means the simulated camera on the (default) sim backend.
        assert_eq!(
            text,
            "device = \"sim\"\nencoder = \"auto\"\nwidth = 1280\nheight = 720\nfps = 20\nkbps = 2000\nprestart_helper = true\n"
        );
        assert!(!parse("[video]\nprestart_helper = false").unwrap().video.prestart_helper);
        let e = parse("[video]\nprestart_helper = \"yes\"").unwrap_err().to_string();
        assert!(e.contains("`video.prestart_helper`"), "{e}");
        let e = parse("[video]\npreferred = { width = 640 }").unwrap_err().to_string();
        assert!(e.contains("unknown field `preferred`"), "{e}");
        let e = parse("[video]\nwidth = \"wide\"").unwrap_err().to_string();
        assert!(e.contains("`video.width`"), "{e}");
    }

    #[test]
    fn nickname_follows_the_one_rule() {
        assert_eq!(parse("[robot]\nnickname = \"  \\u202eRover \"").unwrap().robot.nickname, "Rover");
        // TOML escapes: U+202E RIGHT-TO-LEFT OVERRIDE above, ESC here.
        for bad in ["", "   ", "a\\u001b[2J", &"x".repeat(65)] {
            let e = parse(&format!("[robot]\nnickname = \"{bad}\"")).unwrap_err().to_string();
            assert!(e.contains("`robot.nickname`") && e.contains("1 to 64 printable characters"), "{e}");
        }
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let e = parse("[robot]\nnickname = \n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn broker_urls() {
        assert_eq!(parse_broker_url("mqtts://b.example:1234").unwrap().transport, Transport::Tls);
        assert_eq!(parse_broker_url("mqtts://b.example").unwrap().port, 8883);
        assert_eq!(parse_broker_url("mqtt://[::1]:1").unwrap().host, "::1");
        assert!(parse_broker_url("mqtt://u:p@host").is_err());
        assert!(parse_broker_url("mqtt://host/path").is_err());
    }
}
