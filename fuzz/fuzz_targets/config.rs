//! The config loader: `Config::from_toml` on arbitrary text.
//!
//! Invariants: errors format; an accepted config's derived values never
//! panic (`broker()` expects a validated URL), and `to_toml` (what
//! `robotd check-config` prints) loads again to the same text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use robotd::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/etc/robotd/robotd.toml");
    let cfg = match Config::from_toml(text, path) {
        Ok(c) => c,
        Err(e) => {
            assert!(e.to_string().contains("/etc/robotd/robotd.toml"));
            return;
        }
    };
    let _ = cfg.broker();
    let _ = cfg.keep_alive();
    let _ = cfg.video.encoder_preference();
    cfg.hardware.validate().expect("validated at load");
    if let Some(nav) = &cfg.nav {
        nav.validate().expect("validated at load");
    }
    let shown = cfg.to_toml();
    let again =
        Config::from_toml(&shown, path).unwrap_or_else(|e| panic!("check-config output does not load: {e}\n{shown}"));
    assert_eq!(again.to_toml(), shown);
});
