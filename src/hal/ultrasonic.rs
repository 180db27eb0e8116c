//! An HC-SR04 ultrasonic range finder as an obstacle [`BinarySensor`].
//!
//! Something measures the distance ahead every `period_ms` and stores it in
//! a [`Readings`] cell: a thread pinging the module on the Pi
//! ([`super::rppal::RppalBackend::ultrasonic`]), the physics step in the
//! simulator. [`Ultrasonic::is_active`] only reads that cell, so the
//! navigator's tick never waits for an echo.
//!
//! A reading older than three periods (or none yet) is an error, which the
//! navigator treats as an obstacle: an unplugged echo wire or a dead thread
//! stops the robot instead of letting it drive blind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::config::UltrasonicConfig;
use super::{BinarySensor, HalError};

/// Speed of sound in air at about 20 °C (metres per second).
pub const SPEED_OF_SOUND_MPS: f64 = 343.0;

/// Distance to the reflecting surface for an echo pulse of `width`: the
/// pulse lasts the sound's round trip.
pub fn echo_to_distance_m(width: Duration) -> f64 {
    width.as_secs_f64() * SPEED_OF_SOUND_MPS / 2.0
}

/// The longest echo pulse worth waiting for: the round trip to `max_range_m`.
pub fn echo_timeout(max_range_m: f64) -> Duration {
    Duration::from_secs_f64(2.0 * max_range_m / SPEED_OF_SOUND_MPS)
}

/// What one ping gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Echo {
    /// Something at this many metres.
    Distance(f64),
    /// The module answered, but nothing is within `max_range_m`.
    NothingInRange,
    /// The module did not answer at all (no rising edge on ECHO): not a reading.
    NoResponse,
}

/// Classifies one ping from the kernel timestamps of ECHO's rising and
/// falling edges. A pulse that rose but did not fall in time (the module
/// holds ECHO high for ~38 ms when it hears nothing), or that is longer than
/// the round trip to `max_range_m`, means nothing in range.
pub fn classify(rise: Option<Duration>, fall: Option<Duration>, max_range_m: f64) -> Echo {
    match (rise, fall) {
        (None, _) => Echo::NoResponse,
        (Some(r), Some(f)) if f >= r => {
            let d = echo_to_distance_m(f - r);
            if d <= max_range_m { Echo::Distance(d) } else { Echo::NothingInRange }
        }
        (Some(_), _) => Echo::NothingInRange,
    }
}

/// Where time comes from: the monotonic clock on the Pi, simulated time in
/// the simulator, a hand-set clock in tests.
#[derive(Debug, Clone)]
pub enum Clock {
    /// Microseconds since this instant.
    Monotonic(Instant),
    /// Microseconds held in the cell (the simulator's time, or a test's).
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A monotonic clock starting now.
    pub fn monotonic() -> Self {
        Clock::Monotonic(Instant::now())
    }

    /// Microseconds since the clock's zero.
    pub fn now_us(&self) -> u64 {
        match self {
            Clock::Monotonic(epoch) => u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX),
            Clock::Manual(us) => us.load(Ordering::Acquire),
        }
    }
}

const NOTHING_MM: u32 = u32::MAX;
const NEVER: u64 = u64::MAX;

/// The latest measurement, shared between whatever measures and the sensor.
#[derive(Debug)]
pub struct Readings {
    distance_mm: AtomicU32,
    at_us: AtomicU64,
}

impl Default for Readings {
    fn default() -> Self {
        Self { distance_mm: AtomicU32::new(NOTHING_MM), at_us: AtomicU64::new(NEVER) }
    }
}

impl Readings {
    /// Stores a measurement taken at `at_us` (on the sensor's [`Clock`]):
    /// `Some(metres)`, or `None` for nothing in range.
    pub fn record(&self, distance_m: Option<f64>, at_us: u64) {
        let mm = distance_m.map_or(NOTHING_MM, |d| (d * 1000.0).round().clamp(0.0, f64::from(NOTHING_MM - 1)) as u32);
        self.distance_mm.store(mm, Ordering::Relaxed);
        self.at_us.store(at_us, Ordering::Release);
    }

    /// The latest measurement and when it was taken, if any.
    fn latest(&self) -> Option<(Option<f64>, u64)> {
        let at = self.at_us.load(Ordering::Acquire);
        if at == NEVER {
            return None;
        }
        let mm = self.distance_mm.load(Ordering::Relaxed);
        Some(((mm != NOTHING_MM).then(|| f64::from(mm) / 1000.0), at))
    }
}

/// An HC-SR04 seen as "obstacle ahead or not".
///
/// `keep` holds whatever feeds the readings (the measuring thread and its
/// pins on the Pi) for as long as the sensor lives.
pub struct Ultrasonic {
    readings: Arc<Readings>,
    clock: Clock,
    threshold_m: f64,
    stale_after: Duration,
    pins: (u8, u8),
    _keep: Option<Box<dyn std::any::Any + Send>>,
}

impl std::fmt::Debug for Ultrasonic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ultrasonic")
            .field("trigger_pin", &self.pins.0)
            .field("echo_pin", &self.pins.1)
            .field("threshold_m", &self.threshold_m)
            .finish_non_exhaustive()
    }
}

impl Ultrasonic {
    /// A sensor reading `readings`, judged by `cfg`'s threshold and period on `clock`.
    pub fn new(
        cfg: &UltrasonicConfig,
        readings: Arc<Readings>,
        clock: Clock,
        keep: Option<Box<dyn std::any::Any + Send>>,
    ) -> Self {
        Self {
            readings,
            clock,
            threshold_m: cfg.threshold_m,
            stale_after: cfg.stale_after(),
            pins: (cfg.trigger_pin, cfg.echo_pin),
            _keep: keep,
        }
    }

    /// The latest distance: `Some(metres)`, `None` when nothing is in range;
    /// an error when there is no reading younger than three periods.
    pub fn distance_m(&self) -> Result<Option<f64>, HalError> {
        let now = self.clock.now_us();
        let stale = |age_ms| HalError::NoEcho { trigger_pin: self.pins.0, echo_pin: self.pins.1, age_ms };
        let Some((d, at)) = self.readings.latest() else {
            return Err(stale(None));
        };
        let age = Duration::from_micros(now.saturating_sub(at));
        if age > self.stale_after {
            return Err(stale(Some(u64::try_from(age.as_millis()).unwrap_or(u64::MAX))));
        }
        Ok(d)
    }
}

impl BinarySensor for Ultrasonic {
    type Error = HalError;
    /// True while the latest distance is below `threshold_m`.
    fn is_active(&mut self) -> Result<bool, HalError> {
        Ok(self.distance_m()?.is_some_and(|d| d < self.threshold_m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_width_to_distance() {
        // 343 m/s: 1 ms of echo is 17.15 cm out and back.
        assert!((echo_to_distance_m(Duration::from_millis(1)) - 0.1715).abs() < 1e-9);
        assert!((echo_to_distance_m(Duration::from_micros(5831)) - 1.0).abs() < 1e-3);
        assert_eq!(echo_to_distance_m(Duration::ZERO), 0.0);
        // 2 m and back takes 11.66 ms.
        assert!((echo_timeout(2.0).as_secs_f64() - 0.011_66).abs() < 1e-5);
    }

    #[test]
    fn classify_edges() {
        let t = Duration::from_micros;
        match classify(Some(t(1000)), Some(t(2000)), 2.0) {
            Echo::Distance(d) => assert!((d - 0.1715).abs() < 1e-9),
            e => panic!("{e:?}"),
        }
        assert_eq!(classify(None, None, 2.0), Echo::NoResponse);
        assert_eq!(classify(None, Some(t(5)), 2.0), Echo::NoResponse, "a fall alone is a stray edge");
        assert_eq!(classify(Some(t(0)), None, 2.0), Echo::NothingInRange, "still high at the timeout");
        // 38 ms: the module's own "heard nothing" pulse.
        assert_eq!(classify(Some(t(0)), Some(t(38_000)), 2.0), Echo::NothingInRange);
        assert_eq!(classify(Some(t(10)), Some(t(5)), 2.0), Echo::NothingInRange, "fall before rise");
    }

    fn sensor(now: &Arc<AtomicU64>) -> (Ultrasonic, Arc<Readings>) {
        let readings = Arc::new(Readings::default());
        let cfg = UltrasonicConfig { threshold_m: 0.3, ..UltrasonicConfig::new(20, 21) };
        (Ultrasonic::new(&cfg, readings.clone(), Clock::Manual(now.clone()), None), readings)
    }

    #[test]
    fn threshold_decides_on_the_latest_reading() {
        let now = Arc::new(AtomicU64::new(1_000_000));
        let (mut s, r) = sensor(&now);
        r.record(Some(1.2), 1_000_000);
        assert!(!s.is_active().unwrap());
        assert_eq!(s.distance_m().unwrap(), Some(1.2));
        r.record(Some(0.31), 1_000_000);
        assert!(!s.is_active().unwrap());
        r.record(Some(0.299), 1_000_000);
        assert!(s.is_active().unwrap());
        assert_eq!(s.distance_m().unwrap(), Some(0.299));
        r.record(None, 1_000_000);
        assert!(!s.is_active().unwrap(), "nothing in range is clear");
        assert_eq!(s.distance_m().unwrap(), None);
        r.record(Some(0.0), 1_000_000);
        assert!(s.is_active().unwrap(), "touching");
    }

    #[test]
    fn stale_or_missing_readings_are_errors() {
        let now = Arc::new(AtomicU64::new(0));
        let (mut s, r) = sensor(&now);
        let e = s.is_active().unwrap_err();
        assert!(matches!(e, HalError::NoEcho { trigger_pin: 20, echo_pin: 21, age_ms: None }), "{e:?}");
        assert!(e.to_string().contains("voltage divider"), "{e}");

        r.record(Some(1.0), 0);
        // Three periods (180 ms) is still fresh; a microsecond more is not.
        now.store(180_000, Ordering::Release);
        assert!(!s.is_active().unwrap());
        now.store(180_001, Ordering::Release);
        let e = s.is_active().unwrap_err();
        assert!(matches!(e, HalError::NoEcho { age_ms: Some(180), .. }), "{e:?}");
        // The navigator's reading of an error: an obstacle.
        assert!(s.is_active().unwrap_or(true));
        // A new reading clears it.
        r.record(Some(1.0), 200_000);
        assert!(!s.is_active().unwrap());
    }

    #[test]
    fn monotonic_clock_runs() {
        let c = Clock::monotonic();
        let a = c.now_us();
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.now_us() >= a + 2000);
    }
}
