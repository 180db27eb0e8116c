use super::*;

fn cfg(toml_text: &str) -> WebRtcConfig {
    toml::from_str(toml_text).unwrap()
}

fn key_of(c: &WebRtcConfig) -> String {
    c.validate().unwrap_err().0
}

#[test]
fn urls_parse_with_default_ports_and_transports() {
    let u = parse_ice_url("stun:turn.example.net").unwrap();
    assert_eq!((u.scheme, u.host.as_str(), u.port, u.transport), ("stun", "turn.example.net", 3478, None));
    let u = parse_ice_url("turn:198.51.100.10:3479?transport=tcp").unwrap();
    assert_eq!((u.scheme, u.host.as_str(), u.port, u.transport), ("turn", "198.51.100.10", 3479, Some("tcp")));
    let u = parse_ice_url("turns:turn.example.net?transport=tcp").unwrap();
    assert_eq!((u.scheme, u.port), ("turns", 5349));
    let u = parse_ice_url("turn:[2001:db8::1]:3478").unwrap();
    assert_eq!(u.host, "[2001:db8::1]");
    for bad in [
        "http://x",
        "turn:",
        "turn:user:pw@host",
        "turn:host:0",
        "turn:host:99999",
        "turn:host?transport=sctp",
        "stun:host?transport=tcp",
        "turns:host?transport=udp",
        "turn:ho st",
    ] {
        assert!(parse_ice_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn nothing_is_configured_by_default() {
    let c = WebRtcConfig::default();
    assert_eq!(c.validate(), Ok(()));
    let s = c.ice_servers("0123456789abcdef0123456789abcdef", 0).unwrap();
    assert_eq!(s, IceServers { stun: None, turn: vec![], relay_only: false });
}

#[test]
fn errors_name_the_key() {
    assert_eq!(key_of(&cfg("stun = \"turn:x\"")), "webrtc.stun");
    assert_eq!(key_of(&cfg("stun = \"stun:x:0\"")), "webrtc.stun");
    assert_eq!(key_of(&cfg("turn = [\"stun:x\"]\nturn_secret_file = \"/s\"")), "webrtc.turn");
    assert_eq!(key_of(&cfg("turn = [\"turn:x\"]")), "webrtc.turn");
    assert_eq!(key_of(&cfg("turn = [\"turn:x\"]\nturn_username = \"u\"")), "webrtc.turn_username");
    let both = "turn = [\"turn:x\"]\nturn_username = \"u\"\nturn_password_file = \"/p\"\nturn_secret_file = \"/s\"";
    assert_eq!(key_of(&cfg(both)), "webrtc.turn_secret_file");
    assert_eq!(key_of(&cfg("relay_only = true")), "webrtc.relay_only");
    assert_eq!(key_of(&cfg("turn = [\"turn:x\"]\nturn_secret_file = \"/s\"\nturn_ttl_s = 5")), "webrtc.turn_ttl_s");
    assert!(toml::from_str::<WebRtcConfig>("stunn = \"stun:x\"").is_err(), "unknown keys are refused");
}

#[test]
fn coturn_rest_credentials_follow_its_scheme() {
    // python3: base64(hmac.new(b"north", b"1764158400:0123...", sha1).digest())
    let (user, pass) = turn_rest_credentials("north", "0123456789abcdef0123456789abcdef", 1_764_158_400);
    assert_eq!(user, "1764158400:0123456789abcdef0123456789abcdef");
    assert_eq!(pass, "hAj/Wfzftu565qn0B893OnMB5ww=");
}

#[test]
fn ice_servers_carry_derived_credentials_only_and_read_the_secret_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("turn-secret");
    std::fs::write(&secret, "north\n").unwrap();
    let c = cfg(&format!(
        "stun = \"stun:198.51.100.10\"\nturn = [\"turn:198.51.100.10?transport=udp\", \"turns:198.51.100.10:443?transport=tcp\"]\nturn_secret_file = \"{}\"\nturn_ttl_s = 3600\nrelay_only = true",
        secret.display()
    ));
    c.validate().unwrap();
    let s = c.ice_servers("0123456789abcdef0123456789abcdef", 1_764_154_800).unwrap();
    assert_eq!(s.stun.as_deref(), Some("stun://198.51.100.10:3478"));
    assert_eq!(
        s.turn,
        [
            "turn://1764158400%3A0123456789abcdef0123456789abcdef:hAj%2FWfzftu565qn0B893OnMB5ww%3D@198.51.100.10:3478?transport=udp",
            "turns://1764158400%3A0123456789abcdef0123456789abcdef:hAj%2FWfzftu565qn0B893OnMB5ww%3D@198.51.100.10:443?transport=tcp",
        ]
    );
    assert!(s.relay_only);
    assert!(!s.turn.iter().any(|u| u.contains("north")), "the long-term secret left the main process");
    assert!(!format!("{s:?}").contains("hAj"), "Debug shows credentials: {s:?}");
    // Rotated on disk: the next call uses the new one.
    std::fs::write(&secret, "south\n").unwrap();
    assert_ne!(c.ice_servers("0123456789abcdef0123456789abcdef", 1_764_154_800).unwrap().turn, s.turn);
    std::fs::write(&secret, "\n").unwrap();
    let e = c.ice_servers("0123456789abcdef0123456789abcdef", 0).unwrap_err().to_string();
    assert!(e.contains("webrtc.turn_secret_file") && e.contains("empty"), "{e}");
    std::fs::remove_file(&secret).unwrap();
    let e = c.ice_servers("0123456789abcdef0123456789abcdef", 0).unwrap_err().to_string();
    assert!(e.contains("cannot read webrtc.turn_secret_file"), "{e}");
}

#[test]
fn static_turn_credentials_are_used_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("turn-password");
    std::fs::write(&pw, "p@ss word\n").unwrap();
    let c = cfg(&format!(
        "turn = [\"turn:turn.example.net\"]\nturn_username = \"robot\"\nturn_password_file = \"{}\"",
        pw.display()
    ));
    c.validate().unwrap();
    let s = c.ice_servers("0123456789abcdef0123456789abcdef", 0).unwrap();
    assert_eq!(s.turn, ["turn://robot:p%40ss%20word@turn.example.net:3478"]);
}
