//! The pairing URI: `PairingUri::parse` on arbitrary text, and Display ->
//! parse on arbitrary broker strings.
//!
//! Invariants: an accepted URI round-trips through Display to an equal value
//! and Display is canonical (parse . display . parse = parse); any broker
//! string survives percent-encoding exactly, or is refused as a broker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use robotd::wire::identity::ClientId;
use robotd::wire::pairing::{PairingError, PairingUri};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };

    match PairingUri::parse(text) {
        Ok(uri) => {
            let shown = uri.to_string();
            assert!(shown.starts_with("robotd://pair?v=1&robot="), "{shown}");
            let back = PairingUri::parse(&shown).unwrap_or_else(|e| panic!("{shown:?} does not parse: {e}"));
            assert_eq!(back, uri);
            assert_eq!(back.to_string(), shown);
            // Debug never shows the secret.
            let secret = shown.split("&secret=").nth(1).and_then(|r| r.split('&').next()).unwrap();
            assert_eq!(secret.len(), 26);
            // (A broker string may itself contain the same 26 characters.)
            if !uri.broker.contains(secret) {
                assert!(!format!("{uri:?}").contains(secret));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // The same text as a broker URL inside a URI robotd writes.
    let uri = PairingUri { robot: ClientId::from_bytes([7; 16]), secret: [9; 16], broker: text.to_owned() };
    let shown = uri.to_string();
    match PairingUri::parse(&shown) {
        Ok(back) => assert_eq!(back, uri, "{shown}"),
        Err(PairingError::BadBroker { found, .. }) => assert_eq!(found, text),
        // Surrounding whitespace is trimmed from the whole URI, but the broker
        // is percent-encoded, so nothing else may fail.
        Err(e) => panic!("{shown:?}: {e}"),
    }
});
