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

/// How often the pairing button is polled.
const BUTTON_POLL: Duration = Duration::from_millis(50);

/// How often the e-stop input is polled when one is configured.
const ESTOP_POLL: Duration = Duration::from_millis(20);

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
            min(now.mono + ESTOP_POLL);
        }
        if self.body.button.is_some() {
            min(now.mono + BUTTON_POLL);
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
