//! In-call request payloads: `parse_command` for every command name.
//!
//! Input: one byte choosing the command name, then the payload. Invariants:
//! unknown names are refused from the name alone; an accepted request has
//! every value inside the protocol's ranges (a parsed `drive` is finite,
//! within -1..=1 and accepted by the motion layer without error).
#![no_main]

use libfuzzer_sys::fuzz_target;
use robotd::motion::{DriveCommand, MAX_DRIVE_MS};
use robotd::wire::payloads::{self as pl, Command, CommandError, VideoChange};

/// `dance` passes topic hygiene but is not a command.
const NAMES: [&str; 9] = ["drive", "stop", "goto", "destinations", "video", "ping", "hangup", "ice", "dance"];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, payload)) = data.split_first() else { return };
    let name = NAMES[usize::from(sel) % NAMES.len()];
    let res = pl::parse_command(name, payload);
    match &res {
        Err(e) => {
            let r = e.response();
            assert_eq!(r["status"], "rejected");
            if name == "dance" {
                assert_eq!(*e, CommandError::UnknownCommand);
            } else {
                assert!(matches!(e, CommandError::Invalid(_)), "{name}: {e:?}");
            }
            return;
        }
        Ok(_) => assert_ne!(name, "dance"),
    }
    // Only JSON objects are accepted.
    assert_eq!(payload.iter().find(|b| !b.is_ascii_whitespace()), Some(&b'{'));
    match res.unwrap() {
        Command::Drive { linear, angular, ms } => {
            assert_eq!(name, "drive");
            for v in [linear, angular] {
                assert!(v.is_finite() && (-1.0..=1.0).contains(&v), "{v}");
            }
            assert!((1..=MAX_DRIVE_MS).contains(&ms));
            // What the protocol accepts, the motion layer must accept too.
            let (l, r) = DriveCommand { linear, angular, ms }.validate().expect("parsed drive rejected by motion");
            for w in [l, r] {
                assert!(w.is_finite() && (-1.0..=1.0).contains(&w), "wheel {w}");
            }
        }
        Command::Goto { destination } => {
            assert_eq!(name, "goto");
            assert!((1..=64).contains(&destination.len()));
        }
        Command::Video(VideoChange::Bitrate(k)) => {
            assert_eq!(name, "video");
            assert!((pl::MIN_KBPS..=pl::MAX_KBPS).contains(&k));
        }
        Command::Video(VideoChange::Format { width, height, fps }) => {
            assert_eq!(name, "video");
            assert!(width % 2 == 0 && height % 2 == 0);
            assert!((pl::MIN_WIDTH..=pl::MAX_WIDTH).contains(&width), "{width}");
            assert!((pl::MIN_HEIGHT..=pl::MAX_HEIGHT).contains(&height), "{height}");
            assert!((1..=pl::MAX_FPS).contains(&fps));
        }
        Command::Stop => assert_eq!(name, "stop"),
        Command::Destinations => assert_eq!(name, "destinations"),
        Command::Ping => assert_eq!(name, "ping"),
        Command::Hangup => assert_eq!(name, "hangup"),
        Command::Ice(c) => {
            assert_eq!(name, "ice");
            // Every candidate passed on is one the robot would send to.
            assert!(c.candidates.len() <= robotd::wire::webrtc::MAX_CANDIDATES);
            for cand in &c.candidates {
                assert_eq!(robotd::wire::webrtc::check_candidate(cand), Ok(()));
                assert!(cand.candidate.len() <= robotd::wire::webrtc::MAX_CANDIDATE_LEN);
            }
        }
    }
});
