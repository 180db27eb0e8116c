//! The e-stop latch: pressing it stops and latches the motors, drives are
//! refused naming the fix, `status` shows it, and `robotd estop clear`
//! re-arms only once the switch is released.

use super::*;
use crate::hal::config::{InputConfig, Level, Pull};
use crate::robot::admin::{EstopCleared, EstopStatus};

const DRIVE: &str = r#"{"linear":0.5,"angular":0.0,"ms":500}"#;
const ESTOP_PIN: u8 = 25;

/// The demo flat with an active-low e-stop on GPIO 25.
fn flat_with_estop() -> Config {
    let mut cfg = flat();
    cfg.hardware.estop = Some(InputConfig { pin: ESTOP_PIN, active: Level::Low, pull: Pull::Up });
    cfg
}

fn press(r: &Rig, pressed: bool) {
    // Active low: pressed pulls the pin low; released leaves it to the pull-up.
    r.core.body().hw.sim().unwrap().set_input(ESTOP_PIN, pressed.then_some(false));
}

fn estop_status(r: &mut Rig) -> Option<EstopStatus> {
    match r.admin(Request::Status).unwrap() {
        AdminReply::Status(s) => s.estop,
        other => panic!("not a status: {other:?}"),
    }
}

#[test]
fn the_estop_latch_refuses_drives_until_released_and_cleared_by_the_admin() {
    let mut r = Rig::with(flat_with_estop());
    let (phone, mut c) = r.call();
    assert_eq!(estop_status(&mut r), Some(EstopStatus { configured: true, latched: false }));
    assert_eq!(r.request(&mut c, &phone, "drive", DRIVE)[0]["status"], "ok");
    press(&r, true);
    r.advance(20);
    assert_eq!(r.motion(), MotionState::Idle, "the e-stop stops the motors");
    assert_eq!(r.motor_command(), [0.0, 0.0]);
    assert_eq!(estop_status(&mut r), Some(EstopStatus { configured: true, latched: true }));
    // Refused, telling the user how to get out of it.
    let v = r.request(&mut c, &phone, "drive", DRIVE);
    assert_eq!(v[0]["reason"], "estop", "{v:?}");
    assert_eq!(v[0]["detail"], "the e-stop is latched; release it, then run `robotd estop clear`", "{v:?}");
    // Still pressed: clearing is refused and the latch stays.
    let e = r.admin(Request::EstopClear).unwrap_err();
    assert!(e.contains("still pressed") && e.contains("release it"), "{e}");
    assert_eq!(estop_status(&mut r), Some(EstopStatus { configured: true, latched: true }));
    // Released but not cleared: still latched.
    press(&r, false);
    r.advance(20);
    assert_eq!(r.request(&mut c, &phone, "drive", DRIVE)[0]["reason"], "estop");
    assert_eq!(r.motion(), MotionState::Idle);
    // Cleared: drives move again.
    let cleared = r.admin(Request::EstopClear).unwrap();
    assert_eq!(cleared, AdminReply::EstopCleared(EstopCleared { was_latched: true }));
    assert_eq!(estop_status(&mut r), Some(EstopStatus { configured: true, latched: false }));
    assert_eq!(r.request(&mut c, &phone, "drive", DRIVE)[0]["status"], "ok");
    assert_eq!(r.motion(), MotionState::Driving);
    // Clearing again is harmless and says it was not latched.
    assert_eq!(r.admin(Request::EstopClear).unwrap(), AdminReply::EstopCleared(EstopCleared { was_latched: false }));
}

#[test]
fn without_an_estop_status_shows_null_and_clearing_is_refused() {
    let mut r = Rig::new();
    assert_eq!(estop_status(&mut r), None);
    let e = r.admin(Request::EstopClear).unwrap_err();
    assert!(e.contains("[hardware.estop]"), "{e}");
}
