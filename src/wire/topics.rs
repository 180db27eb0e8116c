//! Topic builders and the parser for everything the robot receives.
//!
//! IDs must match `^[0-9a-f]{32}$` and command names `^[a-z][a-z0-9_]{0,31}$`;
//! anything else is rejected here, before a payload is looked at.

use crate::wire::identity::{ClientId, is_client_id};

/// `user/{id}/isConnected` (retained presence).
pub fn is_connected(id: &ClientId) -> String {
    format!("user/{id}/isConnected")
}

/// `user/{id}/instance`: robotd's retained instance marker, read only by
/// robotd itself to notice a twin on a copy of its state (protocol 2.3).
pub fn instance_marker(id: &ClientId) -> String {
    format!("user/{id}/instance")
}

/// `user/{id}/profile` (retained profile).
pub fn profile(id: &ClientId) -> String {
    format!("user/{id}/profile")
}

/// `pair/{robotId}/{phoneId}`: a pairing request.
pub fn pair_request(robot: &ClientId, phone: &ClientId) -> String {
    format!("pair/{robot}/{phone}")
}

/// `pair/{robotId}/{phoneId}/response`.
pub fn pair_response(robot: &ClientId, phone: &ClientId) -> String {
    format!("pair/{robot}/{phone}/response")
}

/// `pair/{robotId}/+`: the robot's pairing subscription.
pub fn pair_filter(robot: &ClientId) -> String {
    format!("pair/{robot}/+")
}

/// `invite/{robotId}/{sessionId}`: a call invite.
pub fn invite(robot: &ClientId, session: &ClientId) -> String {
    format!("invite/{robot}/{session}")
}

/// `invite/{robotId}/{sessionId}/response`.
pub fn invite_response(robot: &ClientId, session: &ClientId) -> String {
    format!("invite/{robot}/{session}/response")
}

/// `invite/{robotId}/+`: the robot's invite subscription.
pub fn invite_filter(robot: &ClientId) -> String {
    format!("invite/{robot}/+")
}

/// `session/{sessionId}/{command}/request`.
pub fn session_request(session: &ClientId, command: &str) -> String {
    format!("session/{session}/{command}/request")
}

/// `session/{sessionId}/{command}/response`.
pub fn session_response(session: &ClientId, command: &str) -> String {
    format!("session/{session}/{command}/response")
}

/// `session/{sessionId}/+/request`: the robot's subscription during a call.
pub fn session_request_filter(session: &ClientId) -> String {
    format!("session/{session}/+/request")
}

/// `session/{sessionId}/+/response`: the phone's subscription during a call.
pub fn session_response_filter(session: &ClientId) -> String {
    format!("session/{session}/+/response")
}

/// True when `s` is a valid command name.
pub fn is_command_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// A topic the robot (or, for responses, a phone) receives, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `pair/{robot}/{phone}`
    PairRequest { robot: ClientId, phone: ClientId },
    /// `pair/{robot}/{phone}/response`
    PairResponse { robot: ClientId, phone: ClientId },
    /// `invite/{robot}/{session}`
    Invite { robot: ClientId, session: ClientId },
    /// `invite/{robot}/{session}/response`
    InviteResponse { robot: ClientId, session: ClientId },
    /// `session/{session}/{command}/request`
    SessionRequest { session: ClientId, command: String },
    /// `session/{session}/{command}/response`
    SessionResponse { session: ClientId, command: String },
    /// `user/{id}/isConnected`
    IsConnected { user: ClientId },
    /// `user/{id}/profile`
    Profile { user: ClientId },
}

fn id(s: &str) -> Option<ClientId> {
    if is_client_id(s) { s.parse().ok() } else { None }
}

/// Parse a topic; `None` for anything not in the protocol (dropped unread).
pub fn parse(topic: &str) -> Option<Topic> {
    if topic.len() > 128 {
        return None;
    }
    let parts: Vec<&str> = topic.split('/').collect();
    Some(match parts.as_slice() {
        ["pair", r, p] => Topic::PairRequest { robot: id(r)?, phone: id(p)? },
        ["pair", r, p, "response"] => Topic::PairResponse { robot: id(r)?, phone: id(p)? },
        ["invite", r, s] => Topic::Invite { robot: id(r)?, session: id(s)? },
        ["invite", r, s, "response"] => Topic::InviteResponse { robot: id(r)?, session: id(s)? },
        ["session", s, c, "request"] if is_command_name(c) => {
            Topic::SessionRequest { session: id(s)?, command: (*c).to_owned() }
        }
        ["session", s, c, "response"] if is_command_name(c) => {
            Topic::SessionResponse { session: id(s)?, command: (*c).to_owned() }
        }
        ["user", u, "isConnected"] => Topic::IsConnected { user: id(u)? },
        ["user", u, "profile"] => Topic::Profile { user: id(u)? },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "0123456789abcdef0123456789abcdef";
    const P: &str = "36940d0ece18aebf69d0ef6825534e24";

    fn cid(s: &str) -> ClientId {
        s.parse().unwrap()
    }

    #[test]
    fn builders_and_parser_agree() {
        let (r, p) = (cid(R), cid(P));
        assert_eq!(parse(&pair_request(&r, &p)), Some(Topic::PairRequest { robot: r.clone(), phone: p.clone() }));
        assert_eq!(parse(&pair_response(&r, &p)), Some(Topic::PairResponse { robot: r.clone(), phone: p.clone() }));
        assert_eq!(parse(&invite(&r, &p)), Some(Topic::Invite { robot: r.clone(), session: p.clone() }));
        assert_eq!(
            parse(&session_request(&p, "drive")),
            Some(Topic::SessionRequest { session: p.clone(), command: "drive".into() })
        );
        assert_eq!(parse(&is_connected(&p)), Some(Topic::IsConnected { user: p.clone() }));
        assert_eq!(is_connected(&r), format!("user/{R}/isConnected"));
        assert_eq!(session_request_filter(&p), format!("session/{P}/+/request"));
    }

    #[test]
    fn rejects_everything_outside_the_grammar() {
        for t in [
            "",
            "pair",
            &format!("pair/{R}"),
            &format!("pair/{R}/{P}/extra"),
            &format!("pair/{}/{P}", R.to_uppercase()),
            &format!("invite/{R}/{P}x"),
            &format!("session/{P}/Drive/request"),
            &format!("session/{P}/1drive/request"),
            &format!("session/{P}/{}/request", "a".repeat(33)),
            &format!("session/{P}/drive/requests"),
            &format!("session/{P}//request"),
            &format!("user/{P}/isconnected"),
            &format!("/pair/{R}/{P}"),
        ] {
            assert_eq!(parse(t), None, "{t}");
        }
        assert!(is_command_name(&"a".repeat(32)));
        assert!(is_command_name("go_to2"));
    }

    mod fuzzlike {
        use super::*;
        use proptest::prelude::*;

        /// Strings made of the grammar's own pieces, so many of them parse.
        fn topicish() -> impl Strategy<Value = String> {
            let level = prop_oneof![
                Just(R.to_string()),
                Just(P.to_string()),
                "[0-9a-f]{30,34}",
                "[a-zA-Z0-9_]{0,34}",
                prop::sample::select(vec![
                    "pair",
                    "invite",
                    "session",
                    "user",
                    "request",
                    "response",
                    "isConnected",
                    "profile",
                    "+",
                    "#",
                    ""
                ])
                .prop_map(String::from),
                any::<String>(),
            ];
            prop::collection::vec(level, 0..6).prop_map(|v| v.join("/"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            /// Never panics; whatever parses rebuilds to the very same string.
            #[test]
            fn parse_never_panics_and_round_trips(t in prop_oneof![topicish(), any::<String>()]) {
                if let Some(p) = parse(&t) {
                    let rebuilt = match &p {
                        Topic::PairRequest { robot, phone } => pair_request(robot, phone),
                        Topic::PairResponse { robot, phone } => pair_response(robot, phone),
                        Topic::Invite { robot, session } => invite(robot, session),
                        Topic::InviteResponse { robot, session } => invite_response(robot, session),
                        Topic::SessionRequest { session, command } => session_request(session, command),
                        Topic::SessionResponse { session, command } => session_response(session, command),
                        Topic::IsConnected { user } => is_connected(user),
                        Topic::Profile { user } => profile(user),
                    };
                    prop_assert_eq!(rebuilt, t);
                }
            }

            #[test]
            fn parse_never_panics_on_bytes(b in prop::collection::vec(any::<u8>(), 0..200)) {
                let _ = parse(&String::from_utf8_lossy(&b));
            }
        }
    }
}
