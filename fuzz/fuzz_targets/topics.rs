//! Topic parsing: never panics, and every accepted topic is exactly what the
//! builders produce for the parsed fields (one spelling per topic).
#![no_main]

use libfuzzer_sys::fuzz_target;
use robotd::wire::topics::{self, Topic};

fuzz_target!(|data: &[u8]| {
    // The link drops non-UTF-8 topics before parsing; feed what it would pass.
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Some(t) = topics::parse(s) else { return };
    let rebuilt = match &t {
        Topic::PairRequest { robot, phone } => topics::pair_request(robot, phone),
        Topic::PairResponse { robot, phone } => topics::pair_response(robot, phone),
        Topic::Invite { robot, session } => topics::invite(robot, session),
        Topic::InviteResponse { robot, session } => topics::invite_response(robot, session),
        Topic::SessionRequest { session, command } => {
            assert!(topics::is_command_name(command));
            topics::session_request(session, command)
        }
        Topic::SessionResponse { session, command } => {
            assert!(topics::is_command_name(command));
            topics::session_response(session, command)
        }
        Topic::IsConnected { user } => topics::is_connected(user),
        Topic::Profile { user } => topics::profile(user),
    };
    assert_eq!(rebuilt, s, "parsed topic does not rebuild to the same string");
    assert!(s.len() <= 128);
    assert_eq!(topics::parse(&rebuilt), Some(t));
});
