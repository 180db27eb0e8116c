//! Wake-ups: the deadman, the call's idle timeout, navigation ticks, the
//! e-stop and pairing-button polls, and the end of a pairing window.
//!
//! The shell sleeps until [`Core::next_wakeup`] and then calls
//! [`Core::on_timer`]; waking early is harmless, as every rule compares
//! against `now` itself.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{Core, Effect, Now};
use crate::hal::BinarySensor;
use crate::motion::StopReason;
use crate::wire::replies::EndReason;

/// How often the pairing button is polled. A press counts once it has read
/// active on two polls [`crate::hal::Debounced::SETTLE`] apart, so a hold of
/// twice this (2 s, what docs/protocol.md 6.1 asks of the user: "press and
/// hold", as on a router's WPS button) always counts and a brush against the
/// button never does. At 50 ms this poll alone was most of an idle robot's
/// wake-ups (benches/system.rs `idle`: each costs ~6 context switches).
pub const BUTTON_POLL: Duration = Duration::from_secs(1);

/// How often the e-stop input is polled while the motors are driven (a drive
/// in force or a goto running): a press stops them within this.
pub const ESTOP_POLL: Duration = Duration::from_millis(20);

/// How often it is polled at rest, only to latch and report it: nothing is
/// moving for it to stop, and every drive reads the switch itself before the
/// motors turn ([`crate::motion::MotorController::drive`] refuses it while
/// pressed), so a press at rest can never let a motor start.
pub const ESTOP_REST_POLL: Duration = Duration::from_secs(1);

impl Core {
    /// The next instant [`Core::on_timer`] must run, seen from `now`.
    pub fn next_wakeup(&self, now: Now) -> Option<Instant> {
        let mut t = self.body.motors.deadline();
        let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        if let Some(c) = &self.call {
            min(c.deadline(self.call_timeout()));
            if let Some(t) = c.offline_since {
                min(t + super::invite::OFFLINE_GRACE);
            }
        }
        if let Some(t) = self.webrtc_deadline() {
            min(t);
        }
        if self.body.hw.config().estop.is_some() {
            let moving = self.body.motors.deadline().is_some() || self.next_nav_tick.is_some();
            min(self.polled_at + if moving { ESTOP_POLL } else { ESTOP_REST_POLL });
        }
        if self.body.button.is_some() {
            min(self.polled_at + BUTTON_POLL);
        }
        if let Some(t) = self.next_nav_tick {
            min(t);
        }
        if let Some(p) = &self.open_pairing {
            min(now.mono + Duration::from_millis(p.expires_at_ms.saturating_sub(now.wall_ms)));
        }
        t
    }

    fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.call.timeout_s)
    }

    /// Run what is due at `now`.
    pub fn on_timer(&mut self, now: Now) -> Vec<Effect> {
        self.now = now;
        if self.next_nav_tick.is_some_and(|t| now.mono >= t) {
            self.nav_tick();
        }
        self.polled_at = now.mono;
        match self.body.motors.poll(now.mono) {
            Ok(Some(StopReason::Deadman)) => info!("deadman: drive expired, motors stopped"),
            Ok(Some(StopReason::Estop)) => warn!("e-stop pressed: motors stopped and latched"),
            Ok(None) => {}
            Err(e) => error!(error = %e, "motor poll failed"),
        }
        if self.call.as_ref().is_some_and(|c| c.timed_out(now.mono, self.call_timeout())) {
            self.end_call(EndReason::Timeout);
        }
        self.end_call_if_caller_gone();
        self.expire_webrtc();
        if self.button_pressed() {
            info!("pairing button pressed");
            self.open_pairing(None);
        }
        self.expire_pairing();
        self.take_effects()
    }

    fn button_pressed(&mut self) -> bool {
        let now = self.now.mono;
        let Some((sensor, debounce)) = self.body.button.as_mut() else { return false };
        match sensor.is_active() {
            Ok(active) => debounce.update(active, now),
            Err(e) => {
                warn!(error = %e, "cannot read the pairing button");
                false
            }
        }
    }
}
