//! The motor-side deadman: motors stop when a drive runs out, even if the
//! main loop that should stop them is stalled.
//!
//! [`MotorController`](super::MotorController) enforces a drive's `ms` from
//! the daemon's main loop (`poll` at its `deadline`). If that loop stalls (a
//! bug, a deadlock, a blocking call) the motors would keep the last command
//! until systemd's watchdog kills the process, up to `WatchdogSec` later. So
//! the daemon's motors are [`GuardedMotor`]s: both real motors sit behind one
//! mutex shared with a dedicated thread that owns each motor's deadline and
//! stops the motor itself when it passes. The thread sleeps on a condition
//! variable (never holding the lock while it waits), depends on nothing
//! async, and is stopped and joined when the last handle is dropped.
//!
//! The deadline is taken on this thread's own clock when the drive is
//! armed ([`Motor::stop_unless_renewed_within`]), plus [`GRACE`], so in the
//! normal case the main loop stops the motors first and the thread only
//! acts when the loop is late.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{MAX_DRIVE_MS, MotionError, Motor};
use crate::hal::config::StopMode;

/// How much later than the drive's own deadline the thread steps in: long
/// enough that the main loop, when healthy, always stops the motors first
/// (no warning in the log for a normal deadman stop), short enough to keep
/// "motors off within the deadline + 20 ms" with a stalled loop.
pub const GRACE: Duration = Duration::from_millis(10);

struct State<M> {
    motors: [M; 2],
    /// When each motor must stop unless renewed; `None`: stopped.
    deadlines: [Option<Instant>; 2],
    stop_mode: StopMode,
    quit: bool,
}

struct Shared<M> {
    state: Mutex<State<M>>,
    wake: Condvar,
    /// How often the thread had to stop the motors itself.
    stops: AtomicU64,
}

impl<M> Shared<M> {
    fn lock(&self) -> MutexGuard<'_, State<M>> {
        // A panic elsewhere must not keep the motors from being stopped.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stops the thread and joins it when the last [`GuardedMotor`] goes.
struct Worker<M> {
    shared: Arc<Shared<M>>,
    thread: Option<JoinHandle<()>>,
}

impl<M> Drop for Worker<M> {
    fn drop(&mut self) {
        self.shared.lock().quit = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One of the two motors of a [`guard`]ed pair. Drive it like the motor
/// inside; it stops by itself when [`Motor::stop_unless_renewed_within`]'s
/// time runs out, and a speed set without that runs at most
/// [`MAX_DRIVE_MS`].
pub struct GuardedMotor<M: Motor + Send + 'static> {
    side: usize,
    shared: Arc<Shared<M>>,
    _worker: Arc<Worker<M>>,
}

impl<M: Motor + Send + 'static> std::fmt::Debug for GuardedMotor<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedMotor").field("side", &self.side).finish_non_exhaustive()
    }
}

/// Puts `left` and `right` behind one deadline thread (named `motor-deadman`)
/// and returns their handles. Fails only if the thread cannot be started.
pub fn guard<M: Motor + Send + 'static>(
    left: M,
    right: M,
    stop_mode: StopMode,
) -> Result<(GuardedMotor<M>, GuardedMotor<M>), MotionError> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { motors: [left, right], deadlines: [None; 2], stop_mode, quit: false }),
        wake: Condvar::new(),
        stops: AtomicU64::new(0),
    });
    let theirs = shared.clone();
    let thread = std::thread::Builder::new()
        .name("motor-deadman".into())
        .spawn(move || run(&theirs))
        .map_err(|cause| MotionError::DeadmanThread { cause })?;
    let worker = Arc::new(Worker { shared: shared.clone(), thread: Some(thread) });
    let left = GuardedMotor { side: 0, shared: shared.clone(), _worker: worker.clone() };
    let right = GuardedMotor { side: 1, shared, _worker: worker };
    Ok((left, right))
}

/// The thread: sleep until the earliest deadline (or a change), stop every
/// motor whose deadline has passed.
fn run<M: Motor>(shared: &Shared<M>) {
    let mut st = shared.lock();
    while !st.quit {
        let now = Instant::now();
        st = match st.deadlines.iter().flatten().min().copied() {
            None => shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner),
            Some(d) if now < d => shared.wake.wait_timeout(st, d - now).unwrap_or_else(PoisonError::into_inner).0,
            Some(_) => {
                let stops = shared.stops.fetch_add(1, Ordering::Relaxed) + 1;
                let mode = st.stop_mode;
                // Both together: the two were armed microseconds apart, and
                // neither is stopped before the drive's own deadline (the
                // grace is on top of it).
                for side in 0..2 {
                    if st.deadlines[side].is_some_and(|d| d <= now + GRACE) {
                        st.deadlines[side] = None;
                        if let Err(e) = st.motors[side].stop(mode) {
                            tracing::error!(error = %e, side, "motor-side deadman cannot stop the motor");
                        }
                    }
                }
                tracing::warn!(
                    stops,
                    "motor-side deadman: a drive ran out and the main loop had not stopped the motors; stopped them"
                );
                st
            }
        };
    }
}

impl<M: Motor + Send + 'static> GuardedMotor<M> {
    /// How often the thread has had to stop the motors itself (the main
    /// loop was late by more than [`GRACE`]).
    pub fn deadman_stops(&self) -> u64 {
        self.shared.stops.load(Ordering::Relaxed)
    }

    fn arm(&self, st: &mut State<M>, within: Duration) {
        st.deadlines[self.side] = Some(Instant::now() + within + GRACE);
        self.shared.wake.notify_all();
    }
}

impl<M: Motor + Send + 'static> Motor for GuardedMotor<M> {
    fn set_speed(&mut self, speed: f64) -> Result<(), MotionError> {
        let mut st = self.shared.lock();
        if st.deadlines[self.side].is_none() {
            // Never a speed without a deadline.
            self.arm(&mut st, Duration::from_millis(u64::from(MAX_DRIVE_MS)));
        }
        st.motors[self.side].set_speed(speed)
    }

    fn brake(&mut self) -> Result<(), MotionError> {
        let mut st = self.shared.lock();
        st.deadlines[self.side] = None;
        st.motors[self.side].brake()
    }

    fn coast(&mut self) -> Result<(), MotionError> {
        let mut st = self.shared.lock();
        st.deadlines[self.side] = None;
        st.motors[self.side].coast()
    }

    fn stop_unless_renewed_within(&mut self, within: Duration) {
        let mut st = self.shared.lock();
        self.arm(&mut st, within);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Reports every call with the time it happened.
    struct Spy(mpsc::Sender<(&'static str, Instant)>);

    impl Motor for Spy {
        fn set_speed(&mut self, _: f64) -> Result<(), MotionError> {
            let _ = self.0.send(("speed", Instant::now()));
            Ok(())
        }
        fn brake(&mut self) -> Result<(), MotionError> {
            let _ = self.0.send(("brake", Instant::now()));
            Ok(())
        }
        fn coast(&mut self) -> Result<(), MotionError> {
            let _ = self.0.send(("coast", Instant::now()));
            Ok(())
        }
    }

    fn pair() -> (GuardedMotor<Spy>, GuardedMotor<Spy>, mpsc::Receiver<(&'static str, Instant)>) {
        let (tx, rx) = mpsc::channel();
        let (l, r) = guard(Spy(tx.clone()), Spy(tx), StopMode::Brake).unwrap();
        (l, r, rx)
    }

    #[test]
    fn a_drive_nobody_stops_is_stopped_by_the_thread_after_its_time() {
        let (mut l, mut r, rx) = pair();
        let t0 = Instant::now();
        l.stop_unless_renewed_within(Duration::from_millis(50));
        r.stop_unless_renewed_within(Duration::from_millis(50));
        l.set_speed(0.5).unwrap();
        r.set_speed(0.5).unwrap();
        let calls: Vec<_> = (0..4).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        assert_eq!(calls.iter().map(|c| c.0).collect::<Vec<_>>(), ["speed", "speed", "brake", "brake"]);
        // Never before the drive's own time.
        assert!(calls[2].1 >= t0 + Duration::from_millis(50), "stopped early");
        assert!(l.deadman_stops() >= 1);
    }

    #[test]
    fn renewals_keep_it_running_and_a_stop_disarms_it() {
        let (mut l, _r, rx) = pair();
        for _ in 0..5 {
            l.stop_unless_renewed_within(Duration::from_secs(2));
            l.set_speed(0.5).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        l.brake().unwrap();
        let calls: Vec<_> = rx.try_iter().map(|c| c.0).collect();
        assert_eq!(calls, ["speed"; 5].into_iter().chain(["brake"]).collect::<Vec<_>>());
        // Disarmed: nothing more happens, and the thread had nothing to do.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        assert_eq!(l.deadman_stops(), 0);
    }

    #[test]
    fn a_speed_without_a_deadline_runs_at_most_max_drive_ms() {
        let (mut l, _r, rx) = pair();
        let t0 = Instant::now();
        l.set_speed(1.0).unwrap();
        assert_eq!(rx.recv().unwrap().0, "speed");
        let (what, at) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(what, "brake");
        assert!(at >= t0 + Duration::from_millis(u64::from(MAX_DRIVE_MS)));
    }

    #[test]
    fn dropping_both_handles_joins_the_thread_and_drops_the_motors() {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Motor for Flag {
            fn set_speed(&mut self, _: f64) -> Result<(), MotionError> {
                Ok(())
            }
            fn brake(&mut self) -> Result<(), MotionError> {
                Ok(())
            }
            fn coast(&mut self) -> Result<(), MotionError> {
                Ok(())
            }
        }
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (mut l, r) = guard(Flag(dropped.clone()), Flag(dropped.clone()), StopMode::Coast).unwrap();
        l.stop_unless_renewed_within(Duration::from_secs(3600));
        drop(l);
        assert!(!dropped.load(Ordering::SeqCst), "one handle still holds the pair");
        drop(r);
        assert!(dropped.load(Ordering::SeqCst), "the motors outlived both handles");
    }
}
