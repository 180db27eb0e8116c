//! robotd: the robot side of "call your robot from your phone".
//!
//! A phone calls the robot over MQTT 5, sees through its camera and drives it.
//! This crate is the daemon (`robotd`) and the reference phone-side client
//! (`robotctl`); both binaries are thin shells over this library so that the
//! integration tests exercise exactly the code that ships.
//!
//! # Layout
//! Protocol and policy know nothing about pins or sockets; hardware knows
//! nothing about MQTT.
//!
//! - [`config`]: the TOML configuration, loaded and validated; errors name the key.
//! - [`identity`]: client IDs (random robot ID, md5 of E.164 phone numbers, keyed variant).
//! - [`fsutil`]: durable state files (temp file, fsync, rename, fsync dir).
//! - [`protocol`]: topic builders/parsers and payload types; nothing else formats topics.
//! - [`auth`]: message MACs, HKDF key derivation, freshness and replay windows, the owners store.
//! - [`pairing`]: pairing windows (pure state machine), the pairing URI and its QR code.
//! - [`call`]: the call state machine (no I/O): session keys, replay window, idle timeout.
//! - [`link`]: the one task that owns the MQTT event loop; presence, reconnects, routing.
//! - [`control`]: the local admin socket used by `robotd pair`, `robotd owners`, `robotd status`.
//! - [`phone`]: the phone side (pairing, calls, commands) used by `robotctl` and the tests.
//! - [`hal`]: pin traits and their backends (rppal on a Pi, a simulated robot elsewhere).
//! - [`media`]: starts and stops the call's GStreamer senders off the main loop.
//! - [`motion`]: motor drivers, differential drive math and the deadman.
//! - [`nav`]: the map of named places, route planning, the goto executor (odometry,
//!   obstacles, status stream) and the current place.
//! - [`video`]: camera discovery (v4l), the GStreamer sending pipeline (H.264/Opus over
//!   SRTP) with its supervision, and the receiving pipeline `robotctl` uses.
//! - [`shutdown`]: the shutdown signal every loop selects on.
//! - [`service`]: the protocol brain: authentication gate, pairing, owners, admin requests.
//! - [`app`]: wires the tasks together and owns the ordered shutdown.
//! - [`logging`]: journal under systemd, stderr otherwise.

pub mod app;
pub mod auth;
pub mod call;
pub mod config;
pub mod control;
pub mod fsutil;
pub mod hal;
pub mod identity;
pub mod link;
pub mod logging;
pub mod media;
pub mod motion;
pub mod nav;
pub mod pairing;
pub mod phone;
pub mod protocol;
pub mod service;
pub mod shutdown;
pub mod video;
