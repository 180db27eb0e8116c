//! robotd: the robot side of "call your robot from your phone".
//!
//! A phone calls the robot over MQTT 5, sees through its camera and drives it.
//! This crate is the daemon (`robotd`) and the reference phone-side client
//! (`robotctl`); both binaries are thin shells over this library so that the
//! integration tests exercise exactly the code that ships.
//!
//! # Layout
//! Four layers, each in its own folder; a layer only uses the ones above it.
//!
//! - [`wire`]: everything that is a byte on the bus: client IDs, topics, MQTT
//!   user properties and the one signer, payload types, MACs and HKDF keys,
//!   freshness and replay windows, the pairing URI and its QR code.
//! - [`robot`]: the pure core that decides everything the robot does: link
//!   events, admin requests, media events and timer ticks go in with `now`
//!   and an RNG, effects (publish, subscribe, media, state files, logs) come
//!   out. No tokio, no files, no sockets, no clock of its own.
//! - [`daemon`]: the shell: the main loop that executes the core's effects,
//!   the MQTT link task, the admin socket, media supervision, durable state
//!   files, shutdown, systemd notify and logging.
//! - [`phone`]: the phone side (pairing, calls, commands) used by `robotctl`,
//!   the tests and the benchmarks.
//!
//! Beside them, behind traits the core uses: [`hal`] (pins, the simulated
//! robot, rppal), [`motion`] (motor drivers, differential drive, deadman),
//! [`nav`] (map, routes, the goto executor) and [`video`] (camera discovery
//! and the GStreamer pipelines). [`config`] is the TOML configuration, whose
//! errors name the key; [`state`] holds the durable state files (owners,
//! robot ID, place) behind the [`state::StateStore`] port the core writes through;
//! [`broker`] is the TLS and credentials robotd and the phone side both use.

pub mod broker;
pub mod config;
pub mod daemon;
pub mod hal;
pub mod motion;
pub mod nav;
pub mod phone;
pub mod robot;
pub mod state;
pub mod video;
pub mod webrtc;
pub mod wire;
