//! The receiving pipeline (the phone's side): UDP -> SRTP -> RTP -> H.264 -> frames.
//!
//! ```text
//! udpsrc (SRTP caps with SSRC and key) -> srtpdec -> rtpjitterbuffer
//!   -> rtph264depay -> h264parse -> [tee -> queue -> h264parse -> matroskamux -> filesink]
//!   -> queue -> avdec_h264 | openh264dec -> videoconvert -> appsink (counts frames)
//! ```
//!
//! `robotctl call` uses it to show that a call works (frame counts), to record
//! (`--record out.mkv`) and to save a snapshot; the tests use it to check the
//! robot's stream end to end. The snapshot is written with the `png` crate from an
//! RGB frame, which avoids a second branch with its own encoder in the pipeline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::watch;

use super::supervise::Supervised;
use super::{SrtpKey, VideoError, build, element, link_chain};

/// What a [`Receiver`] needs to start.
#[derive(Debug, Clone)]
pub struct ReceiverParams {
    /// Address to listen on. Port 0 picks a free port; read it with
    /// [`Receiver::port`].
    pub bind: SocketAddr,
    /// The video SSRC from the accept; packets from any other SSRC are dropped.
    pub ssrc: u32,
    /// SRTP master key || salt for video.
    pub srtp_key: SrtpKey,
    /// Jitter buffer latency in milliseconds; 0 leaves the jitter buffer out.
    pub jitter_ms: u32,
    /// Record the received H.264 (no re-encode) to this Matroska file.
    pub record: Option<PathBuf>,
    /// Stop recording this long after the first recorded packet (the file is
    /// finished then, while the call and the decoding go on); None records
    /// until [`Receiver::stop`].
    pub record_for: Option<Duration>,
    /// Save the first decoded frame to this PNG file (again on
    /// [`Receiver::retake_snapshot`]).
    pub snapshot: Option<PathBuf>,
}

impl ReceiverParams {
    /// Listen on `bind` for `ssrc` with `key`, with a 100 ms jitter buffer, no
    /// recording and no snapshot.
    pub fn new(bind: SocketAddr, ssrc: u32, srtp_key: SrtpKey) -> Self {
        ReceiverParams { bind, ssrc, srtp_key, jitter_ms: 100, record: None, record_for: None, snapshot: None }
    }
}

#[derive(Debug, Default)]
struct FrameState {
    frames: u64,
    size: Option<(u32, u32)>,
    snapshot: Option<Result<(), String>>,
    /// The next decoded frame is saved as the snapshot.
    snapshot_pending: bool,
}

#[derive(Default)]
struct Frames {
    state: Mutex<FrameState>,
    cond: Condvar,
}

impl Frames {
    fn lock(&self) -> std::sync::MutexGuard<'_, FrameState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&FrameState) -> bool) -> bool {
        let st = self.lock();
        let (st, _) = self.cond.wait_timeout_while(st, timeout, |s| !done(s)).unwrap_or_else(|e| e.into_inner());
        done(&st)
    }
}

/// A running receiver.
pub struct Receiver {
    run: Supervised,
    frames: Arc<Frames>,
    port: u16,
    recording: bool,
    snapshot: Option<PathBuf>,
}

impl Receiver {
    /// Build and start the pipeline, bound to `params.bind`.
    ///
    /// Blocks briefly (plugin loading, state change); from async code call it
    /// inside `spawn_blocking`, as [`Receiver::stop`].
    pub fn start(params: ReceiverParams) -> Result<Self, VideoError> {
        super::ensure_init()?;
        let decoder =
            ["avdec_h264", "openh264dec"].into_iter().find(|d| super::has_element(d)).ok_or(VideoError::NoDecoder)?;

        let p = super::unique_prefix("vr");
        let n = |s: &str| format!("{p}-{s}");
        let (udpsrc, srtpdec) = srtp_source(&p, params.bind, srtp_caps(Media::Video, params.ssrc, &params.srtp_key))?;
        let mut front = vec![udpsrc.clone(), srtpdec];
        if params.jitter_ms > 0 {
            front.push(build(
                "rtpjitterbuffer",
                element("rtpjitterbuffer", &n("jb"))?.property("latency", params.jitter_ms),
            )?);
        }
        front.push(build("rtph264depay", element("rtph264depay", &n("depay"))?)?);
        front.push(build("h264parse", element("h264parse", &n("parse"))?)?);

        let frames = Arc::new(Frames::default());
        let sink_caps = if params.snapshot.is_some() {
            gst::Caps::builder("video/x-raw").field("format", "RGB").build()
        } else {
            gst::Caps::builder("video/x-raw").build()
        };
        let appsink = gst_app::AppSink::builder()
            .name(n("sink"))
            .caps(&sink_caps)
            .sync(false)
            .max_buffers(2)
            .drop(true)
            .callbacks(frame_counter(frames.clone(), params.snapshot.clone()))
            .build();
        let back = [
            build("queue", element("queue", &n("dq"))?)?,
            build(decoder, element(decoder, &n("dec"))?)?,
            build("videoconvert", element("videoconvert", &n("conv"))?)?,
            appsink.upcast::<gst::Element>(),
        ];

        let pipeline = gst::Pipeline::with_name(&p);
        let add_err = |e: gst::glib::BoolError| VideoError::Start { pipeline: "receiver", detail: e.to_string() };
        pipeline.add_many(front.iter().chain(back.iter())).map_err(add_err)?;
        let front_refs: Vec<&gst::Element> = front.iter().collect();
        let back_refs: Vec<&gst::Element> = back.iter().collect();
        link_chain(&front_refs)?;
        let parse = front.last().expect("front chain is never empty");
        if let Some(path) = &params.record {
            let tee = build("tee", element("tee", &n("tee"))?)?;
            let rec = [
                build("queue", element("queue", &n("rq"))?)?,
                build("h264parse", element("h264parse", &n("rparse"))?)?,
                build("matroskamux", element("matroskamux", &n("mux"))?)?,
                build(
                    "filesink",
                    element("filesink", &n("file"))?
                        .property("location", path.to_string_lossy().into_owned())
                        .property("async", false),
                )?,
            ];
            pipeline.add(&tee).map_err(add_err)?;
            pipeline.add_many(rec.iter()).map_err(add_err)?;
            link_chain(&[parse, &tee, back_refs[0]])?;
            link_chain(&[&tee, &rec[0]])?;
            link_chain(&rec.iter().collect::<Vec<_>>())?;
            if let Some(limit) = params.record_for {
                limit_recording(&rec[0], limit);
            }
        } else {
            link_chain(&[parse, back_refs[0]])?;
        }
        link_chain(&back_refs)?;

        let run = Supervised::start("receiver", format!("{p}-bus"), pipeline)?;
        // udpsrc binds when it goes to READY and writes the bound port back.
        let port = u16::try_from(udpsrc.property::<i32>("port")).unwrap_or(0);
        tracing::info!(bind = %params.bind, port, ssrc = params.ssrc, decoder, "receiver started");
        Ok(Receiver { run, frames, port, recording: params.record.is_some(), snapshot: params.snapshot })
    }

    /// The UDP port the receiver is bound to (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Frames decoded so far.
    pub fn frames(&self) -> u64 {
        self.frames.lock().frames
    }

    /// Wait until at least `n` frames have been decoded; `false` on timeout.
    pub fn wait_frames(&self, n: u64, timeout: Duration) -> bool {
        self.frames.wait_until(timeout, |s| s.frames >= n)
    }

    /// Size of the last decoded frame.
    pub fn frame_size(&self) -> Option<(u32, u32)> {
        self.frames.lock().size
    }

    /// Wait until a frame of `width`x`height` has been decoded; `false` on timeout.
    pub fn wait_frame_size(&self, width: u32, height: u32, timeout: Duration) -> bool {
        self.frames.wait_until(timeout, |s| s.size == Some((width, height)))
    }

    /// Save the next decoded frame as the snapshot again, replacing the file
    /// (e.g. the picture when the robot stopped at a door rather than the
    /// first one); [`Receiver::wait_snapshot`] then waits for that frame.
    pub fn retake_snapshot(&self) {
        if self.snapshot.is_some() {
            let mut st = self.frames.lock();
            st.snapshot = None;
            st.snapshot_pending = true;
        }
    }

    /// Wait until the snapshot (if asked for) has been written.
    pub fn wait_snapshot(&self, timeout: Duration) -> Result<bool, VideoError> {
        self.frames.wait_until(timeout, |s| s.snapshot.is_some());
        match self.frames.lock().snapshot.clone() {
            None => Ok(false),
            Some(Ok(())) => Ok(true),
            Some(Err(detail)) => Err(VideoError::Snapshot { path: self.snapshot.clone().unwrap_or_default(), detail }),
        }
    }

    /// A receiver that turns `Some(reason)` when the pipeline fails.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.run.failed()
    }

    /// Stop receiving. A recording is finished first (end-of-stream through the
    /// muxer) so the file is complete and seekable.
    pub fn stop(mut self) -> Result<(), VideoError> {
        if self.recording && !self.run.drain(super::STOP_TIMEOUT) {
            tracing::warn!("recording may be incomplete: end of stream did not reach the file in time");
        }
        self.run.shutdown(super::STOP_TIMEOUT)
    }

    #[cfg(test)]
    pub(crate) fn pipeline_weak(&self) -> gst::glib::WeakRef<gst::Pipeline> {
        self.run.pipeline().downgrade()
    }

    #[cfg(test)]
    pub(crate) fn name_prefix(&self) -> String {
        self.run.pipeline().name().to_string()
    }
}

#[derive(Clone, Copy)]
enum Media {
    Video,
    Audio,
}

/// The caps that tell `srtpdec` how to decrypt our stream and the depayloader
/// what it carries.
fn srtp_caps(media: Media, ssrc: u32, key: &SrtpKey) -> gst::Caps {
    let b = gst::Caps::builder("application/x-srtp");
    let b = match media {
        Media::Video => b
            .field("media", "video")
            .field("payload", i32::from(super::VIDEO_PAYLOAD_TYPE))
            .field("clock-rate", super::VIDEO_CLOCK_RATE as i32)
            .field("encoding-name", "H264")
            .field("packetization-mode", "1"),
        Media::Audio => b
            .field("media", "audio")
            .field("payload", i32::from(super::AUDIO_PAYLOAD_TYPE))
            .field("clock-rate", super::AUDIO_CLOCK_RATE as i32)
            .field("encoding-name", "OPUS"),
    };
    b.field("ssrc", ssrc)
        .field("srtp-key", super::srtp_key_buffer(key))
        .field("srtp-cipher", "aes-128-icm")
        .field("srtp-auth", "hmac-sha1-80")
        .field("srtcp-cipher", "aes-128-icm")
        .field("srtcp-auth", "hmac-sha1-80")
        .field("roc", 0u32)
        .build()
}

/// End the recording branch that starts at `queue` `limit` after its first
/// buffer: end-of-stream into the rest of the branch (the muxer finishes the
/// file), and every later buffer and event dropped as it leaves the queue. The queue
/// itself never sees the end of stream, so the tee keeps feeding the decoder
/// (an ended branch would answer EOS and stop the tee).
fn limit_recording(queue: &gst::Element, limit: Duration) {
    let Some(src) = queue.static_pad("src") else { return };
    // (first buffer seen at, ended); the probe runs on the queue's thread.
    let state: Mutex<(Option<std::time::Instant>, bool)> = Mutex::new((None, false));
    let mask = gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST | gst::PadProbeType::EVENT_DOWNSTREAM;
    src.add_probe(mask, move |pad, info| {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        if st.1 {
            // Events too: a sticky event pushed into the ended branch gets EOS back.
            return consume(info);
        }
        if matches!(info.data, Some(gst::PadProbeData::Event(_))) {
            return gst::PadProbeReturn::Ok;
        }
        let start = *st.0.get_or_insert_with(std::time::Instant::now);
        if start.elapsed() < limit {
            return gst::PadProbeReturn::Ok;
        }
        st.1 = true;
        drop(st);
        tracing::debug!(secs = limit.as_secs_f64(), "recording limit reached; finishing the file");
        if let Some(next) = pad.peer() {
            next.send_event(gst::event::Eos::new());
        }
        consume(info)
    });
}

/// Drop a probe's buffer or event: taken and `Handled` rather than `Drop`,
/// because with the Rust bindings and GStreamer 1.22 `Drop` has the core unref
/// a pointer the bindings already cleared (a GStreamer-CRITICAL per buffer).
fn consume(info: &mut gst::PadProbeInfo) -> gst::PadProbeReturn {
    drop(info.data.take());
    gst::PadProbeReturn::Handled
}

/// `udpsrc` bound to `bind` with the SRTP caps, and an `srtpdec` that knows the key.
fn srtp_source(
    prefix: &str,
    bind: SocketAddr,
    key_caps: gst::Caps,
) -> Result<(gst::Element, gst::Element), VideoError> {
    let udpsrc = build(
        "udpsrc",
        element("udpsrc", &format!("{prefix}-udp"))?
            .property("address", bind.ip().to_string())
            .property("port", i32::from(bind.port()))
            // Never share a port with another listener: packets would go astray.
            .property("reuse", false)
            .property("caps", &key_caps),
    )?;
    let srtpdec = build("srtpdec", element("srtpdec", &format!("{prefix}-srtp"))?)?;
    // Packets from an SSRC not in the caps make srtpdec ask for a key: give it
    // ours for our SSRC, and nothing (drop) for any other.
    let want_ssrc: u32 = key_caps.structure(0).and_then(|s| s.get::<u32>("ssrc").ok()).unwrap_or_default();
    srtpdec.connect("request-key", false, move |args| {
        let ssrc = args.get(1).and_then(|v| v.get::<u32>().ok());
        let caps = (ssrc == Some(want_ssrc)).then(|| key_caps.clone());
        Some(caps.to_value())
    });
    Ok((udpsrc, srtpdec))
}

/// Parameters of an [`AudioReceiver`].
#[derive(Debug, Clone)]
pub struct AudioReceiverParams {
    /// Address to listen on (port 0 picks a free one).
    pub bind: SocketAddr,
    /// The audio SSRC from the accept.
    pub ssrc: u32,
    /// SRTP master key || salt for audio.
    pub srtp_key: SrtpKey,
}

/// Receives the robot's Opus audio and counts decoded packets (`robotctl`, tests).
/// Playing the sound is left to the caller's application.
pub struct AudioReceiver {
    run: Supervised,
    frames: Arc<Frames>,
    port: u16,
}

impl AudioReceiver {
    /// Build and start `udpsrc -> srtpdec -> rtpjitterbuffer -> rtpopusdepay ->
    /// opusdec -> appsink`.
    pub fn start(params: AudioReceiverParams) -> Result<Self, VideoError> {
        super::ensure_init()?;
        let p = super::unique_prefix("ar");
        let n = |s: &str| format!("{p}-{s}");
        let (udpsrc, srtpdec) = srtp_source(&p, params.bind, srtp_caps(Media::Audio, params.ssrc, &params.srtp_key))?;
        let frames = Arc::new(Frames::default());
        let appsink = gst_app::AppSink::builder()
            .name(n("sink"))
            .sync(false)
            .callbacks(frame_counter(frames.clone(), None))
            .build();
        let chain = [
            udpsrc.clone(),
            srtpdec,
            build("rtpjitterbuffer", element("rtpjitterbuffer", &n("jb"))?.property("latency", 60u32))?,
            build("rtpopusdepay", element("rtpopusdepay", &n("depay"))?)?,
            build("opusdec", element("opusdec", &n("dec"))?)?,
            appsink.upcast::<gst::Element>(),
        ];
        let pipeline = gst::Pipeline::with_name(&p);
        pipeline
            .add_many(chain.iter())
            .map_err(|e| VideoError::Start { pipeline: "audio receiver", detail: e.to_string() })?;
        link_chain(&chain.iter().collect::<Vec<_>>())?;
        let run = Supervised::start("audio receiver", format!("{p}-bus"), pipeline)?;
        let port = u16::try_from(udpsrc.property::<i32>("port")).unwrap_or(0);
        Ok(AudioReceiver { run, frames, port })
    }

    /// The UDP port the receiver is bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Decoded audio buffers so far (one per Opus packet, normally 20 ms).
    pub fn packets(&self) -> u64 {
        self.frames.lock().frames
    }

    /// Wait until at least `n` buffers have been decoded; `false` on timeout.
    pub fn wait_packets(&self, n: u64, timeout: Duration) -> bool {
        self.frames.wait_until(timeout, |s| s.frames >= n)
    }

    /// A receiver that turns `Some(reason)` when the pipeline fails.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.run.failed()
    }

    /// Stop receiving, within [`super::STOP_TIMEOUT`].
    pub fn stop(mut self) -> Result<(), VideoError> {
        self.run.shutdown(super::STOP_TIMEOUT)
    }
}

fn frame_counter(frames: Arc<Frames>, snapshot: Option<PathBuf>) -> gst_app::AppSinkCallbacks {
    frames.lock().snapshot_pending = snapshot.is_some();
    gst_app::AppSinkCallbacks::builder()
        .new_sample(move |sink| {
            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
            let size = sample
                .caps()
                .and_then(|c| c.structure(0))
                .and_then(|s| Some((s.get::<i32>("width").ok()? as u32, s.get::<i32>("height").ok()? as u32)));
            let pending = std::mem::take(&mut frames.lock().snapshot_pending);
            let snap = snapshot.as_ref().filter(|_| pending).map(|path| save_png(path, &sample, size));
            let mut st = frames.lock();
            st.frames += 1;
            st.size = size;
            if let Some(r) = snap {
                st.snapshot = Some(r);
            }
            drop(st);
            frames.cond.notify_all();
            Ok(gst::FlowSuccess::Ok)
        })
        .build()
}

/// Write an RGB sample as PNG. GStreamer pads RGB rows to 4 bytes.
fn save_png(path: &std::path::Path, sample: &gst::Sample, size: Option<(u32, u32)>) -> Result<(), String> {
    let (w, h) = size.ok_or("decoded frame without a size")?;
    let buffer = sample.buffer().ok_or("sample without a buffer")?;
    let map = buffer.map_readable().map_err(|e| e.to_string())?;
    let data = map.as_slice();
    let row = w as usize * 3;
    let stride = if data.len() == row * h as usize { row } else { (row + 3) & !3 };
    if data.len() < stride * h as usize {
        return Err(format!("frame has {} bytes, expected {} for {w}x{h} RGB", data.len(), stride * h as usize));
    }
    let mut pixels = Vec::with_capacity(row * h as usize);
    for y in 0..h as usize {
        pixels.extend_from_slice(&data[y * stride..y * stride + row]);
    }
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&pixels).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(())
}
