//! `goto`: plan and drive to a named place; its statuses stream on
//! `goto/response`, each with the `re` of the goto it belongs to.

use bytes::Bytes;

use super::Core;
use crate::hal::{BinarySensor, Encoder};
use crate::motion::{DriveCommand, MotionError};
use crate::nav::{self, CancelledBy, GotoState, MotorCmd, Sensors, Status};

impl Core {
    /// Start (or redirect to) a goto for the request `re`.
    pub(super) fn start_goto(&mut self, destination: &str, re: u64, correlation: Option<Bytes>) {
        let now = self.now.mono;
        let Some(nav) = self.body.nav.as_mut() else {
            let detail = "no [nav] map is configured on this robot".to_owned();
            let st = Status::new(destination, GotoState::Rejected { reason: "no_map".into(), detail });
            return self.respond("goto", st, Some(re), correlation);
        };
        match nav.goto(destination, now) {
            Ok(statuses) => {
                // A replaced goto's `cancelled` carries its own `re`.
                let old = self.goto_re.take();
                let (old_st, new_st): (Vec<_>, Vec<_>) = statuses.into_iter().partition(Status::is_final);
                self.publish_goto(old_st, old);
                self.goto_re = Some((re, correlation));
                self.publish_goto(new_st, None);
                self.next_nav_tick = Some(now);
            }
            Err(rejected) => self.respond("goto", rejected, Some(re), correlation),
        }
    }

    /// Publish goto statuses with the `re` of their goto (`re` given, or the
    /// one in progress); a final status ends that goto's stream.
    pub(super) fn publish_goto(&mut self, statuses: Vec<Status>, re: Option<(u64, Option<Bytes>)>) {
        for st in statuses {
            let is_final = st.is_final();
            if let Some((seq, corr)) = re.clone().or_else(|| self.goto_re.clone()) {
                self.respond("goto", st, Some(seq), corr);
            }
            if is_final && re.is_none() {
                self.goto_re = None;
            }
        }
    }

    /// One navigation step: read sensors, apply the motor command, publish.
    pub(super) fn nav_tick(&mut self) {
        let now = self.now.mono;
        let Some(nav) = self.body.nav.as_mut().filter(|n| n.is_navigating()) else {
            self.next_nav_tick = None;
            return;
        };
        let sensors = Sensors {
            encoders: self.body.encoders.as_ref().map(|(l, r)| [l.count(), r.count()]),
            // An unreadable sensor counts as an obstacle.
            obstacle: self.body.obstacle.as_mut().is_some_and(|o| o.is_active().unwrap_or(true)),
        };
        let tick = nav.tick(now, &sensors);
        let mut statuses = tick.statuses;
        match tick.motor {
            Some(MotorCmd::Drive { linear, angular }) => {
                if let Err(e) = self.body.motors.drive(DriveCommand { linear, angular, ms: nav::DRIVE_MS }, now) {
                    let reason = if matches!(e, MotionError::EstopLatched) { "estop" } else { "motor_error" };
                    statuses.extend(nav.fail(now, reason, &e.to_string()));
                    self.stop_motors("navigation refused by the motors");
                }
            }
            Some(MotorCmd::Stop) => self.stop_motors("navigation"),
            None => {}
        }
        self.publish_goto(statuses, None);
        let navigating = self.body.nav.as_ref().is_some_and(|n| n.is_navigating());
        self.next_nav_tick = navigating.then(|| now + nav::TICK);
    }

    /// Cancel a goto in progress (stop, call end, shutdown) and stop the motors.
    pub(super) fn cancel_goto(&mut self, by: CancelledBy) {
        let now = self.now.mono;
        let statuses = self.body.nav.as_mut().map(|n| n.cancel(now, by)).unwrap_or_default();
        self.stop_motors("goto cancelled");
        self.publish_goto(statuses, None);
        self.next_nav_tick = None;
    }

    /// End a goto in progress as `failed` (link loss); the caller stops the motors.
    pub(super) fn fail_goto(&mut self, reason: &str, detail: &str) {
        let now = self.now.mono;
        if let Some(statuses) = self.body.nav.as_mut().map(|n| n.fail(now, reason, detail)) {
            self.publish_goto(statuses, None);
        }
        self.next_nav_tick = None;
    }
}
