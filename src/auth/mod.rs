//! Message authentication: MACs, key derivation, freshness, owners.
//!
//! Topics are public (anyone on the broker can publish anywhere), so every
//! message after pairing carries `from`, `seq`, `ts` and `mac` user properties
//! and is checked here before any handler sees it.

pub mod freshness;
pub mod keys;
pub mod mac;
pub mod owners;
