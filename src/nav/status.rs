//! The `goto` status stream, as the protocol spells it.
//!
//! Each status serialises to `{"destination":"bedroom","status":...}` plus
//! the fields of that status. Extra fields beyond the protocol's are
//! optional and documented on each variant.

use serde::Serialize;

/// One message of a `goto` stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The place the goto is for.
    pub destination: String,
    /// What happened.
    #[serde(flatten)]
    pub state: GotoState,
}

/// Who cancelled a goto (the `by` field of `cancelled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelledBy {
    /// A `stop` request.
    Stop,
    /// A `drive` request took over the motors.
    Drive,
    /// A new `goto` replaced this one.
    Goto,
    /// The call ended (hangup, caller offline, timeout).
    Hangup,
    /// The daemon is shutting down.
    Shutdown,
}

/// The `status` of a goto message and its fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum GotoState {
    /// The goto was accepted; `route` lists the places on the way (extra field),
    /// `remaining_m` the metres to drive.
    Accepted {
        /// Places on the way, start and destination included.
        route: Vec<String>,
        /// Metres to drive.
        remaining_m: f64,
    },
    /// On the way (sent at least every second).
    Moving {
        /// 0..1, never decreasing; 1 only right before `arrived`.
        progress: f64,
        /// Metres still to drive (turns excluded).
        remaining_m: f64,
        /// Extra field, present while the robot stands still waiting: `"obstacle"`.
        #[serde(skip_serializing_if = "Option::is_none")]
        waiting: Option<&'static str>,
    },
    /// At the destination, stopped.
    Arrived,
    /// An obstacle did not clear within `nav.obstacle_clear_s`; the robot is stopped.
    Blocked {
        /// Extra field: a sentence for people saying where (between which
        /// places, how far before the next) and for how long, e.g.
        /// "something between hall and bedroom did not clear within 5 s; the
        /// robot stopped 0.4 m before bedroom".
        detail: String,
    },
    /// Ended on request; `by` (extra field) says which.
    Cancelled {
        /// What cancelled it.
        by: CancelledBy,
    },
    /// Could not finish.
    Failed {
        /// `stalled` or `timeout` (from the navigator), `estop` or
        /// `motor_error` (the motors refused a drive), `link_lost` (the robot
        /// lost its broker connection).
        reason: String,
        /// A sentence for people.
        detail: String,
    },
    /// Not started.
    Rejected {
        /// `unknown_destination`, `position_unknown` or `internal_error`
        /// (from the navigator), `stale` or `no_map` (from the robot core).
        reason: String,
        /// A sentence for people.
        detail: String,
    },
}

impl Status {
    /// A status for `destination`.
    pub fn new(destination: &str, state: GotoState) -> Self {
        Self { destination: destination.to_owned(), state }
    }

    /// The JSON payload (without `re`, which the daemon adds).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("statuses serialise")
    }

    /// Whether this status ends the stream.
    pub fn is_final(&self) -> bool {
        !matches!(self.state, GotoState::Accepted { .. } | GotoState::Moving { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_look_like_the_protocol() {
        let s = |state| Status::new("bedroom", state).to_json();
        assert_eq!(
            s(GotoState::Blocked { detail: "d".into() }),
            json!({"destination":"bedroom","status":"blocked","detail":"d"})
        );
        assert_eq!(s(GotoState::Arrived), json!({"destination":"bedroom","status":"arrived"}));
        assert_eq!(
            s(GotoState::Moving { progress: 0.25, remaining_m: 1.5, waiting: None }),
            json!({"destination":"bedroom","status":"moving","progress":0.25,"remaining_m":1.5})
        );
        assert_eq!(
            s(GotoState::Cancelled { by: CancelledBy::Stop }),
            json!({"destination":"bedroom","status":"cancelled","by":"stop"})
        );
        assert_eq!(
            s(GotoState::Failed { reason: "stalled".into(), detail: "x".into() }),
            json!({"destination":"bedroom","status":"failed","reason":"stalled","detail":"x"})
        );
        assert!(Status::new("x", GotoState::Arrived).is_final());
        assert!(!Status::new("x", GotoState::Accepted { route: vec![], remaining_m: 0.0 }).is_final());
    }
}
