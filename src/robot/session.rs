//! Requests in a call: authenticated with `Ks`, checked against the replay
//! window and (for motion) the freshness token, then dispatched by command.

use bytes::Bytes;

use super::invite::video_unavailable;
use super::{Answer, Core, DropReason, Effect, Inbound};
use crate::motion::{DriveCommand, MotionError};
use crate::nav::{CancelledBy, GotoState, Status as GotoStatus};
use crate::wire::freshness::ReplayError;
use crate::wire::identity::ClientId;
use crate::wire::payloads::{self, Command, CommandError, VideoChange};
use crate::wire::props::{self, AuthFields};
use crate::wire::replies::{EndReason, RejectReason, Reply};
use crate::wire::token::{MAX_TOKEN_AGE_MS, TokenError};

impl Core {
    /// A request in the call: sender, MAC under `Ks` and the replay window
    /// first; only then is the payload parsed.
    pub(super) fn on_session_request(&mut self, session: &ClientId, command: &str, m: &Inbound) {
        let now = self.now;
        let Some(call) = self.call.as_mut().filter(|c| &c.session == session) else {
            return self.drop_msg(DropReason::NoSuchCall, &m.topic_str);
        };
        let f = AuthFields::from_properties(m.props.as_ref());
        if f.from.as_deref() != Some(call.caller.as_str()) {
            return self.drop_msg(DropReason::NotCaller, &m.topic_str);
        }
        let Some((_, seq, _ts)) = props::verify(&call.session_key, &m.topic_str, &m.payload, &f) else {
            return self.drop_msg(DropReason::BadMac, &m.topic_str);
        };
        match call.accept_request(seq, now.mono) {
            Ok(()) => {}
            // QoS 1 redelivery: already handled, drop silently.
            Err(ReplayError::Duplicate) => return,
            Err(ReplayError::TooOld) => {
                self.drop_msg(DropReason::Stale, &m.topic_str);
                if self.reject_budget.take(now.mono) {
                    self.respond(command, Reply::rejected(RejectReason::Stale), Some(seq), f.correlation);
                }
                return;
            }
        }
        // A motion request must echo a fresh token (5.7): one that waited
        // somewhere must not move the robot now. Anything else late is
        // harmless and handled as usual.
        let parsed = payloads::parse_command(command, &m.payload);
        if parsed.as_ref().is_ok_and(|c| matches!(c, Command::Drive { .. } | Command::Goto { .. })) {
            if let Err(e) = call.check_token(echoed_token(&m.payload).as_deref(), now.mono) {
                self.drop_msg(DropReason::Late, &m.topic_str);
                return self.refuse_late(command, &parsed, e, seq, f.correlation);
            }
        }
        let correlation = f.correlation;
        let reply = match parsed {
            Err(e) => command_error(e),
            Ok(Command::Hangup) => return self.end_call_answering(EndReason::Hangup, Some((seq, correlation))),
            Ok(Command::Goto { destination }) => return self.start_goto(&destination, seq, correlation),
            Ok(Command::Video(change)) => return self.change_video(session, change, command, seq, correlation),
            Ok(Command::Drive { linear, angular, ms }) => self.drive(DriveCommand { linear, angular, ms }),
            Ok(Command::Stop) => {
                self.cancel_goto(CancelledBy::Stop);
                Reply::Stopped
            }
            Ok(Command::Ping) => Reply::Pong { motion: self.motion(), at: self.at().to_owned() },
            Ok(Command::Ice(c)) => self.on_ice(session, c),
            Ok(Command::Destinations) => {
                let destinations = self.body.nav.as_ref().map(|n| n.destinations().to_vec()).unwrap_or_default();
                Reply::Destinations { destinations, at: self.at().to_owned() }
            }
        };
        self.respond(command, reply, Some(seq), correlation);
    }

    /// Answer a motion request whose token is missing or too old: `stale`, and for a
    /// goto as a goto status (they lead with their destination, section 8).
    fn refuse_late(
        &mut self,
        command: &str,
        parsed: &Result<Command, CommandError>,
        why: TokenError,
        re: u64,
        correlation: Option<Bytes>,
    ) {
        let detail = match why {
            TokenError::Old(age) => format!(
                "its token is {age} ms old; motion requests must echo a token at most {MAX_TOKEN_AGE_MS} ms old (the one in this answer is fresh)"
            ),
            TokenError::Missing => {
                "motion requests must echo the latest token (the one in this answer is fresh)".into()
            }
            TokenError::Forged => "its token was not issued in this call (use the one in this answer)".into(),
        };
        match parsed {
            Ok(Command::Goto { destination }) => {
                let st = GotoStatus::new(destination, GotoState::Rejected { reason: "stale".into(), detail });
                self.respond(command, st, Some(re), correlation)
            }
            _ => self.respond(command, Reply::rejected_because(RejectReason::Stale, detail), Some(re), correlation),
        }
    }

    /// A `drive`: takes the motors over from a goto; any motion loses the place.
    fn drive(&mut self, cmd: DriveCommand) -> Reply {
        let now = self.now.mono;
        let moving = cmd.linear != 0.0 || cmd.angular != 0.0;
        let statuses = match self.body.nav.as_mut() {
            Some(n) if moving => n.manual_drive(now),
            Some(n) => n.cancel(now, CancelledBy::Drive),
            None => Vec::new(),
        };
        self.publish_goto(statuses, None);
        match self.body.motors.drive(cmd, now) {
            Ok(()) => Reply::Ok,
            Err(MotionError::EstopLatched) => Reply::rejected_because(
                RejectReason::Estop,
                "the e-stop is latched; release it, then run `robotd estop clear`",
            ),
            Err(e) => Reply::rejected_because(RejectReason::InvalidRequest, e.to_string()),
        }
    }

    /// A `video` change: never more than the phone said it can receive (its
    /// invite's `max_*`); the media side applies it and answers.
    fn change_video(
        &mut self,
        session: &ClientId,
        change: VideoChange,
        command: &str,
        re: u64,
        correlation: Option<Bytes>,
    ) {
        let offer = self.call.as_ref().map(|c| c.limits);
        let over = offer.and_then(|o| match change {
            VideoChange::Bitrate(k) if k > o.max_kbps => {
                Some(format!("kbps {k} is above the invite's max_kbps {}", o.max_kbps))
            }
            VideoChange::Format { width, height, fps }
                if width > o.max_width || height > o.max_height || fps > o.max_fps =>
            {
                Some(format!(
                    "{width}x{height}@{fps} is above the invite's {}x{}@{}",
                    o.max_width, o.max_height, o.max_fps
                ))
            }
            _ => None,
        });
        if let Some(detail) = over {
            return self.respond(
                command,
                Reply::rejected_because(RejectReason::InvalidRequest, detail),
                Some(re),
                correlation,
            );
        }
        if !self.media_running {
            return self.respond(command, video_unavailable(), Some(re), correlation);
        }
        let answer = Answer { command: command.to_owned(), re, correlation };
        self.out.push(Effect::AdjustVideo { session: session.clone(), change, answer });
    }

    /// `idle`, `driving` or `navigating`.
    pub(super) fn motion(&self) -> &'static str {
        if self.body.nav.as_ref().is_some_and(crate::nav::Navigator::is_navigating) {
            "navigating"
        } else {
            self.body.motors.state().as_str()
        }
    }

    /// Where the robot is: a place name, or "unknown" (no map, or lost after
    /// an interrupted move until an admin sets it with `robotd at PLACE`).
    pub(super) fn at(&self) -> &str {
        self.body.nav.as_ref().map_or("unknown", crate::nav::Navigator::at_or_unknown)
    }
}

/// The `token` a request echoes, if its payload is an object with one.
fn echoed_token(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Echo {
        token: Option<String>,
    }
    serde_json::from_slice::<Echo>(payload).ok()?.token
}

/// The `rejected` answer to a request that does not parse.
fn command_error(e: CommandError) -> Reply {
    match e {
        CommandError::UnknownCommand => Reply::rejected(RejectReason::UnknownCommand),
        CommandError::Invalid(d) => Reply::rejected_because(RejectReason::InvalidRequest, d),
    }
}
