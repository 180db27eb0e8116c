//! Raspberry Pi pins through the `rppal` crate.
//!
//! This compiles on any target; off a Pi it fails at run time with
//! [`HalError::NotAPi`]. Outputs are opened low and left driven low when
//! dropped (rppal would otherwise return them to inputs, leaving the motor
//! board's inputs floating). Hardware PWM goes through the kernel's PWM sysfs
//! interface, which keeps running after the process dies: that is why
//! [`safe_stop`] exists.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::rppal::gpio::{self, Gpio, Trigger};
use ::rppal::pwm::{self, Channel, Polarity};
use ::rppal::system::{DeviceInfo, Model};

use super::config::{HardwareConfig, Pull, UltrasonicConfig, pwm_channel};
use super::ultrasonic::{self, Clock, Echo, Readings, Ultrasonic};
use super::{EncoderCounter, HalError, PWM_MAX_DUTY};

fn gpio_err(pin: u8, e: gpio::Error) -> HalError {
    match e {
        gpio::Error::PermissionDenied(path) => HalError::PermissionDenied { pin, path },
        gpio::Error::UnknownModel => HalError::NotAPi { pin },
        gpio::Error::PinNotAvailable(p) => HalError::PinNotAvailable { pin: p },
        gpio::Error::PinUsed(p) => HalError::PinUsed { pin: p },
        source => HalError::Gpio { pin, source },
    }
}

/// `dtoverlay=pwm-2chan` arguments that route a channel to `pin`.
fn overlay_args(pin: u8) -> &'static str {
    match pin {
        12 => "pin=12,func=4",
        13 => "pin2=13,func2=4",
        18 => "pin=18,func=2",
        _ => "pin2=19,func2=2",
    }
}

fn pwm_err(pin: u8, channel: u8, e: pwm::Error) -> HalError {
    match e {
        pwm::Error::UnknownModel => HalError::NotAPi { pin },
        pwm::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            HalError::PwmNotEnabled { pin, channel, overlay: overlay_args(pin) }
        }
        pwm::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            HalError::PwmPermission { pin, channel }
        }
        source => HalError::Pwm { pin, source },
    }
}

fn is_pi5() -> bool {
    DeviceInfo::new().is_ok_and(|d| {
        matches!(
            d.model(),
            Model::RaspberryPi5
                | Model::RaspberryPi500
                | Model::RaspberryPiComputeModule5
                | Model::RaspberryPiComputeModule5Lite
        )
    })
}

/// The PWM channel for `pin` on this model: the Pi 5 gives 18 and 19
/// channels 2 and 3; older models route 12/18 to 0 and 13/19 to 1.
fn channel_for(pin: u8, pi5: bool) -> Option<u8> {
    if pi5 {
        match pin {
            12 => Some(0),
            13 => Some(1),
            18 => Some(2),
            19 => Some(3),
            _ => None,
        }
    } else {
        pwm_channel(pin)
    }
}

/// The open GPIO peripheral.
#[derive(Debug)]
pub struct RppalBackend {
    gpio: Gpio,
    pi5: bool,
}

impl RppalBackend {
    /// Opens `/dev/gpiochip*`. Errors name the first motor pin, the first
    /// one robotd would have touched.
    pub fn open(config: &HardwareConfig) -> Result<Self, HalError> {
        let gpio = Gpio::new().map_err(|e| gpio_err(config.left.in1_pin, e))?;
        Ok(Self { gpio, pi5: is_pi5() })
    }

    /// An output, driven low, that stays driven when dropped.
    pub fn output(&mut self, pin: u8) -> Result<gpio::OutputPin, HalError> {
        let mut out = self.gpio.get(pin).map_err(|e| gpio_err(pin, e))?.into_output_low();
        out.set_reset_on_drop(false);
        Ok(out)
    }

    /// An input with the requested bias.
    pub fn input(&mut self, pin: u8, pull: Pull) -> Result<gpio::InputPin, HalError> {
        let p = self.gpio.get(pin).map_err(|e| gpio_err(pin, e))?;
        Ok(match pull {
            Pull::Up => p.into_input_pullup(),
            Pull::Down => p.into_input_pulldown(),
            Pull::None => p.into_input(),
        })
    }

    /// A hardware PWM channel routed to `pin`, enabled at duty 0.
    pub fn hard_pwm(&mut self, pin: u8, frequency_hz: f64) -> Result<HardPwm, HalError> {
        let channel = channel_for(pin, self.pi5).ok_or(HalError::SimPin { pin, what: "not a hardware PWM pin" })?;
        let ch = Channel::try_from(channel).map_err(|e| pwm_err(pin, channel, e))?;
        let pwm = pwm::Pwm::with_frequency(ch, frequency_hz, 0.0, Polarity::Normal, true)
            .map_err(|e| pwm_err(pin, channel, e))?;
        Ok(HardPwm { pwm, pin, channel })
    }

    /// Software PWM on any output, starting low.
    pub fn soft_pwm(&mut self, pin: u8, frequency_hz: f64) -> Result<SoftPwm, HalError> {
        let out = self.output(pin)?;
        Ok(SoftPwm { out, pin, frequency_hz })
    }

    /// Counts rising edges of `a` in rppal's interrupt thread. With `b`, the
    /// level of B at each A edge gives the direction (B low counts up; swap
    /// A and B if the count runs backwards).
    pub fn encoder(&mut self, a: u8, b: Option<u8>) -> Result<EncoderCounter, HalError> {
        let count = Arc::new(AtomicI64::new(0));
        let b_pin = match b {
            Some(b) => Some(Arc::new(Mutex::new(self.input(b, Pull::Up)?))),
            None => None,
        };
        let mut a_pin = self.input(a, Pull::Up)?;
        let counter = count.clone();
        let b_for_cb = b_pin.clone();
        a_pin
            .set_async_interrupt(Trigger::RisingEdge, None, move |_event| {
                let step = match &b_for_cb {
                    Some(b) => match b.lock() {
                        Ok(b) if b.is_high() => -1,
                        _ => 1,
                    },
                    None => 1,
                };
                counter.fetch_add(step, Ordering::Relaxed);
            })
            .map_err(|e| gpio_err(a, e))?;
        let keep: Arc<dyn std::any::Any + Send + Sync> = Arc::new(Mutex::new((a_pin, b_pin)));
        Ok(EncoderCounter::new(count, Some(keep)))
    }
}

/// ECHO's edges of the current ping, as the kernel timestamped them.
#[derive(Debug, Default)]
struct Edges {
    rise: Option<Duration>,
    fall: Option<Duration>,
}

/// How long after the trigger pulse the module may take to raise ECHO (it
/// sends its 8-cycle burst first; typically ~0.5 ms).
const RISE_TIMEOUT: Duration = Duration::from_millis(10);

/// The thread pinging an HC-SR04; stopped and joined when dropped.
struct SonarWorker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for SonarWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl RppalBackend {
    /// An HC-SR04 on `cfg`'s pins: a thread sends a 10 µs trigger pulse every
    /// `period_ms`, rppal's interrupt thread timestamps ECHO's rising and
    /// falling edges (kernel timestamps, so thread latency does not skew the
    /// width), and the distance goes to the sensor's [`Readings`].
    /// A ping without any rising edge is not a reading (the sensor goes
    /// stale and reports an error), one whose pulse outlasts the round trip
    /// to `max_range_m` is "nothing in range".
    pub fn ultrasonic(&mut self, cfg: &UltrasonicConfig) -> Result<Ultrasonic, HalError> {
        let mut trigger = self.output(cfg.trigger_pin)?;
        // Pulled down: an unplugged ECHO never rises, so it goes stale, not clear.
        let mut echo = self.input(cfg.echo_pin, Pull::Down)?;
        let edges = Arc::new((Mutex::new(Edges::default()), Condvar::new()));
        let for_cb = edges.clone();
        echo.set_async_interrupt(Trigger::Both, None, move |ev| {
            let (lock, cv) = &*for_cb;
            let mut e = lock.lock().unwrap_or_else(|p| p.into_inner());
            match ev.trigger {
                Trigger::RisingEdge if e.rise.is_none() => e.rise = Some(ev.timestamp),
                // A fall without a rise belongs to an earlier ping.
                Trigger::FallingEdge if e.rise.is_some() && e.fall.is_none() => {
                    e.fall = Some(ev.timestamp);
                    cv.notify_all();
                }
                _ => {}
            }
        })
        .map_err(|e| gpio_err(cfg.echo_pin, e))?;

        let readings = Arc::new(Readings::default());
        let clock = Clock::monotonic();
        let stop = Arc::new(AtomicBool::new(false));
        let (period, max_range, pins) =
            (Duration::from_millis(cfg.period_ms), cfg.max_range_m, (cfg.trigger_pin, cfg.echo_pin));
        let wait = RISE_TIMEOUT + ultrasonic::echo_timeout(max_range);
        let (r, c, flag) = (readings.clone(), clock.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("robotd-sonar".into())
            .spawn(move || {
                let (lock, cv) = &*edges;
                let mut next = Instant::now();
                let mut answering = true;
                while !flag.load(Ordering::Relaxed) {
                    *lock.lock().unwrap_or_else(|p| p.into_inner()) = Edges::default();
                    trigger.set_high();
                    std::thread::sleep(Duration::from_micros(10));
                    trigger.set_low();
                    let deadline = Instant::now() + wait;
                    let (rise, fall) = {
                        let mut e = lock.lock().unwrap_or_else(|p| p.into_inner());
                        while e.fall.is_none() {
                            let left = deadline.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            e = cv.wait_timeout(e, left).unwrap_or_else(|p| p.into_inner()).0;
                        }
                        (e.rise, e.fall)
                    };
                    let echo = ultrasonic::classify(rise, fall, max_range);
                    match echo {
                        Echo::Distance(d) => r.record(Some(d), c.now_us()),
                        Echo::NothingInRange => r.record(None, c.now_us()),
                        Echo::NoResponse => {} // not a reading: the sensor goes stale
                    }
                    let now_answering = echo != Echo::NoResponse;
                    if now_answering != answering {
                        if now_answering {
                            tracing::info!(trigger_pin = pins.0, echo_pin = pins.1, "HC-SR04 answers again");
                        } else {
                            tracing::warn!(trigger_pin = pins.0, echo_pin = pins.1, "HC-SR04 does not answer");
                        }
                        answering = now_answering;
                    }
                    next += period;
                    sleep_until(&mut next);
                }
            })
            .expect("spawning the ultrasonic thread");
        let keep: Box<dyn std::any::Any + Send> = Box::new((SonarWorker { stop, handle: Some(handle) }, echo));
        Ok(Ultrasonic::new(cfg, readings, clock, Some(keep)))
    }
}

/// Sleeps until `next`; when already late, starts the schedule over from now.
fn sleep_until(next: &mut Instant) {
    let now = Instant::now();
    if *next > now {
        std::thread::sleep(*next - now);
    } else {
        *next = now;
    }
}

/// A hardware PWM channel as an embedded-hal [`SetDutyCycle`](super::SetDutyCycle):
/// rppal's `Pwm` only implements the 0.2 `PwmPin` trait.
#[derive(Debug)]
pub struct HardPwm {
    pwm: pwm::Pwm,
    pin: u8,
    channel: u8,
}

impl HardPwm {
    /// Sets the duty as a fraction of [`PWM_MAX_DUTY`].
    pub fn set_duty_cycle(&mut self, duty: u16) -> Result<(), HalError> {
        self.pwm
            .set_duty_cycle(f64::from(duty) / f64::from(PWM_MAX_DUTY))
            .map_err(|e| pwm_err(self.pin, self.channel, e))
    }
}

impl Drop for HardPwm {
    fn drop(&mut self) {
        // rppal disables and unexports the channel after this.
        let _ = self.pwm.set_duty_cycle(0.0);
    }
}

/// Software PWM on a plain GPIO, as a [`SetDutyCycle`](super::SetDutyCycle).
///
/// Duty 0 and full duty stop the PWM thread and hold the level, so a stopped
/// motor gets no stray pulses.
#[derive(Debug)]
pub struct SoftPwm {
    out: gpio::OutputPin,
    pin: u8,
    frequency_hz: f64,
}

impl SoftPwm {
    /// Sets the duty as a fraction of [`PWM_MAX_DUTY`].
    pub fn set_duty_cycle(&mut self, duty: u16) -> Result<(), HalError> {
        let pin = self.pin;
        if duty == 0 || duty == PWM_MAX_DUTY {
            self.out.clear_pwm().map_err(|e| gpio_err(pin, e))?;
            if duty == 0 {
                self.out.set_low();
            } else {
                self.out.set_high();
            }
            return Ok(());
        }
        self.out
            .set_pwm_frequency(self.frequency_hz, f64::from(duty) / f64::from(PWM_MAX_DUTY))
            .map_err(|e| gpio_err(pin, e))
    }
}

impl Drop for SoftPwm {
    fn drop(&mut self) {
        let _ = self.out.clear_pwm();
        self.out.set_low();
    }
}

/// Drives every configured motor pin low and disables the hardware PWM
/// channels, without the daemon (for `robotd safe-stop` in `ExecStopPost=`).
///
/// Every pin is tried even when one fails; the first failure is returned
/// after all were tried. Returns the pins that were made safe.
pub fn safe_stop(config: &HardwareConfig) -> Result<Vec<u8>, HalError> {
    let gpio = Gpio::new().map_err(|e| gpio_err(config.left.in1_pin, e))?;
    let pi5 = is_pi5();
    let mut first_err: Option<HalError> = None;
    let mut done = Vec::new();
    for m in [&config.left, &config.right] {
        // Stop the PWM channels first so nothing keeps pulsing a pin.
        for (_, pin) in m.pwm_pins() {
            if !config.uses_hardware_pwm(pin) {
                continue;
            }
            let Some(channel) = channel_for(pin, pi5) else {
                continue;
            };
            let Ok(ch) = Channel::try_from(channel) else {
                continue;
            };
            match pwm::Pwm::new(ch) {
                Ok(p) => {
                    let _ = p.set_duty_cycle(0.0);
                    if let Err(e) = p.disable() {
                        tracing::error!(pin, channel, error = %e, "safe-stop: cannot disable PWM");
                        first_err.get_or_insert(pwm_err(pin, channel, e));
                    }
                }
                // A channel that is not exported is not running.
                Err(pwm::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(pin, channel, error = %e, "safe-stop: cannot open PWM");
                    first_err.get_or_insert(pwm_err(pin, channel, e));
                }
            }
        }
        // Then take every pin back as a GPIO output driven low: this also
        // detaches a pin from the PWM peripheral if disabling failed.
        for (_, pin) in m.pins() {
            if done.contains(&pin) {
                continue;
            }
            match gpio.get(pin) {
                Ok(p) => {
                    let mut out = p.into_output_low();
                    out.set_reset_on_drop(false);
                    done.push(pin);
                }
                Err(e) => {
                    tracing::error!(pin, error = %e, "safe-stop: cannot drive pin low");
                    first_err.get_or_insert(gpio_err(pin, e));
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_pin_and_fix() {
        let e = gpio_err(17, gpio::Error::PermissionDenied("/dev/gpiochip0".into()));
        let s = e.to_string();
        assert!(s.starts_with("GPIO 17: permission denied"), "{s}");
        assert!(s.contains("group `gpio`"), "{s}");

        let e = pwm_err(12, 0, pwm::Error::Io(std::io::Error::from(std::io::ErrorKind::NotFound)));
        assert!(e.to_string().contains("dtoverlay=pwm-2chan,pin=12,func=4"), "{e}");
    }

    #[test]
    fn pi5_has_four_channels() {
        assert_eq!(channel_for(18, false), Some(0));
        assert_eq!(channel_for(18, true), Some(2));
        assert_eq!(channel_for(19, true), Some(3));
        assert_eq!(channel_for(17, true), None);
    }

    #[test]
    fn off_a_pi_open_fails_with_a_hint() {
        // Only meaningful where there is no GPIO chip (CI, laptops).
        if std::path::Path::new("/dev/gpiochip0").exists() {
            return;
        }
        let e = RppalBackend::open(&HardwareConfig::default()).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("GPIO 17:"), "{s}");
    }
}
