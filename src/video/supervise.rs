//! Running a pipeline: a bus thread that reports errors and end-of-stream, and a
//! stop that always returns.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use tokio::sync::watch;

use super::VideoError;

/// Name of the application message that tells the bus thread to exit.
const STOP_MESSAGE: &str = "robotd-bus-stop";

#[derive(Default)]
struct BusState {
    failure: Option<String>,
    eos: bool,
}

struct Shared {
    state: Mutex<BusState>,
    cond: Condvar,
    failed_tx: watch::Sender<Option<String>>,
}

impl Shared {
    fn report_failure(&self, why: String) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.failure.is_none() {
            st.failure = Some(why.clone());
            self.failed_tx.send_replace(Some(why));
        }
        self.cond.notify_all();
    }
}

/// A pipeline in the PLAYING state with its bus thread.
pub(crate) struct Supervised {
    what: &'static str,
    pipeline: Option<gst::Pipeline>,
    shared: Arc<Shared>,
    bus_thread: Option<JoinHandle<()>>,
    /// Whether an EOS on the bus is expected (we sent it while stopping) rather
    /// than a failure.
    eos_expected: Arc<std::sync::atomic::AtomicBool>,
}

impl Supervised {
    /// Start `pipeline` (already built and linked) and watch its bus.
    ///
    /// `thread_name` names the bus thread; `what` names the pipeline in errors.
    pub(crate) fn start(what: &'static str, thread_name: String, pipeline: gst::Pipeline) -> Result<Self, VideoError> {
        let (failed_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared { state: Mutex::new(BusState::default()), cond: Condvar::new(), failed_tx });
        let eos_expected = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let bus =
            pipeline.bus().ok_or_else(|| VideoError::Start { pipeline: what, detail: "pipeline has no bus".into() })?;
        let thread_shared = shared.clone();
        let thread_eos = eos_expected.clone();
        let bus_thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || bus_loop(bus, thread_shared, thread_eos))
            .map_err(|e| VideoError::Start { pipeline: what, detail: e.to_string() })?;
        let mut this =
            Supervised { what, pipeline: Some(pipeline), shared, bus_thread: Some(bus_thread), eos_expected };
        let result = this.pipeline().set_state(gst::State::Playing);
        if let Err(e) = result {
            // The reason is on the bus; give the bus thread a moment to pick it up.
            let detail = this.wait_failure(Duration::from_secs(2)).unwrap_or_else(|| e.to_string());
            let _ = this.shutdown(super::STOP_TIMEOUT);
            return Err(VideoError::Start { pipeline: what, detail });
        }
        Ok(this)
    }

    pub(crate) fn pipeline(&self) -> &gst::Pipeline {
        self.pipeline.as_ref().expect("pipeline present until shutdown")
    }

    /// A receiver that sees `Some(reason)` once the pipeline has failed.
    pub(crate) fn failed(&self) -> watch::Receiver<Option<String>> {
        self.shared.failed_tx.subscribe()
    }

    /// The failure reported so far, if any.
    pub(crate) fn failure(&self) -> Option<String> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).failure.clone()
    }

    fn wait_failure(&self, timeout: Duration) -> Option<String> {
        let st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let (st, _) = self
            .shared
            .cond
            .wait_timeout_while(st, timeout, |s| s.failure.is_none())
            .unwrap_or_else(|e| e.into_inner());
        st.failure.clone()
    }

    /// Send EOS into the pipeline and wait until it has reached every sink, so
    /// that muxers can finish their files. Returns whether it arrived in time.
    pub(crate) fn drain(&self, timeout: Duration) -> bool {
        self.eos_expected.store(true, std::sync::atomic::Ordering::SeqCst);
        if !self.pipeline().send_event(gst::event::Eos::new()) {
            return false;
        }
        let st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let (st, _) = self
            .shared
            .cond
            .wait_timeout_while(st, timeout, |s| !s.eos && s.failure.is_none())
            .unwrap_or_else(|e| e.into_inner());
        st.eos
    }

    /// Stop the bus thread and take the pipeline to NULL, giving up after `timeout`.
    pub(crate) fn shutdown(&mut self, timeout: Duration) -> Result<(), VideoError> {
        let Some(pipeline) = self.pipeline.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        if let Some(handle) = self.bus_thread.take() {
            let stop = gst::message::Application::new(gst::Structure::new_empty(STOP_MESSAGE));
            if let Some(bus) = pipeline.bus() {
                let _ = bus.post(stop);
            }
            // The bus thread only pops messages, so it exits promptly.
            let _ = handle.join();
        }
        // set_state(Null) can block inside a driver; do it on a helper thread so
        // the caller (the call state machine) never hangs.
        let (tx, rx) = mpsc::channel();
        let helper = std::thread::Builder::new()
            .name(format!("{}-stop", self.what.split(' ').next().unwrap_or("gst")))
            .spawn(move || {
                let r = pipeline.set_state(gst::State::Null);
                drop(pipeline);
                let _ = tx.send(r.is_ok());
            })
            .map_err(|e| VideoError::Start { pipeline: self.what, detail: e.to_string() })?;
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(_) => {
                let _ = helper.join();
                Ok(())
            }
            Err(_) => {
                tracing::warn!(pipeline = self.what, "pipeline did not stop in time; abandoning it");
                Err(VideoError::StopTimeout { pipeline: self.what, secs: timeout.as_secs() })
            }
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.shutdown(super::STOP_TIMEOUT);
    }
}

fn bus_loop(bus: gst::Bus, shared: Arc<Shared>, eos_expected: Arc<std::sync::atomic::AtomicBool>) {
    use gst::MessageView;
    loop {
        // An infinite pop only returns None when the bus is flushing (pipeline gone).
        let Some(msg) = bus.timed_pop(gst::ClockTime::NONE) else {
            return;
        };
        match msg.view() {
            MessageView::Application(app) if app.structure().is_some_and(|s| s.name() == STOP_MESSAGE) => {
                return;
            }
            MessageView::Error(err) => {
                let src = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
                let why = match err.debug() {
                    Some(dbg) => format!("{src}: {} ({dbg})", err.error()),
                    None => format!("{src}: {}", err.error()),
                };
                tracing::warn!(error = %why, "media pipeline error");
                shared.report_failure(why);
            }
            MessageView::Eos(_) => {
                let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                st.eos = true;
                drop(st);
                if eos_expected.load(std::sync::atomic::Ordering::SeqCst) {
                    shared.cond.notify_all();
                } else {
                    // A live source never ends by itself: EOS means the camera went away.
                    shared.report_failure("end of stream (source stopped)".into());
                }
            }
            MessageView::Warning(w) => {
                let src = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
                tracing::debug!(source = %src, warning = %w.error(), "media pipeline warning");
            }
            _ => {}
        }
    }
}
