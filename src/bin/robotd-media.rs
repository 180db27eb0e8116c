//! `robotd-media`: robotd's media helper, one process per call (version 1
//! SRTP senders or a version 2 WebRTC peer), spawned by robotd from next to
//! its own binary with the control socket as fd 0 (src/webrtc/helper.rs,
//! src/daemon/helper.rs). A binary of its own so that robotd's main process
//! does not link GStreamer. Not meant to be run by hand.

fn main() {
    // Before anything else: the helper reads no configuration and gets all
    // it needs from robotd over fd 0.
    robotd::daemon::logging::init(false);
    robotd::webrtc::helper::main();
}
