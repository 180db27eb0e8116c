//! The audio sender: microphone -> Opus -> RTP -> SRTP -> UDP.
//!
//! ```text
//! alsasrc | audiotestsrc -> audioconvert -> audioresample -> capsfilter (48 kHz mono)
//!   -> queue (leaky) -> opusenc -> rtpopuspay (pt 111) -> srtpenc -> udpsink
//! ```
//!
//! Audio has its own SSRC and its own SRTP key (HKDF info `robotd srtp audio v1`).

use std::net::IpAddr;

use gstreamer as gst;
use gstreamer::prelude::*;
use tokio::sync::watch;

use super::sender::{link_srtp, make_srtpenc, make_udpsink};
use super::supervise::Supervised;
use super::{SrtpKey, VideoError, build, element, link_chain};

/// Where the sound comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSource {
    /// `audiotestsrc`, a quiet sine tone (configured as `audio.device = "test"`).
    Test,
    /// An ALSA capture device, e.g. `hw:1,0` or `plughw:CARD=Device`.
    Alsa(String),
}

impl AudioSource {
    /// `"test"` is the test tone; anything else is an ALSA device name.
    pub fn from_config(device: &str) -> Self {
        if device == "test" { AudioSource::Test } else { AudioSource::Alsa(device.to_string()) }
    }
}

/// What an [`AudioSender`] needs to start.
#[derive(Debug, Clone)]
pub struct AudioParams {
    /// The caller's media host.
    pub host: IpAddr,
    /// The caller's `media.audio_port`.
    pub port: u16,
    /// The audio SSRC named in the accept.
    pub ssrc: u32,
    /// SRTP master key || salt for audio.
    pub srtp_key: SrtpKey,
    /// Opus bitrate in bit/s (4000..=650000; 32000 is plenty for speech).
    pub bitrate: u32,
    /// Microphone or test tone.
    pub source: AudioSource,
}

/// A running audio sender.
pub struct AudioSender {
    run: Supervised,
    #[cfg(test)]
    udpsink: gst::Element,
}

impl AudioSender {
    /// Build and start the pipeline.
    pub fn start(params: AudioParams) -> Result<Self, VideoError> {
        if !(4000..=650_000).contains(&params.bitrate) {
            return Err(VideoError::InvalidParams(format!(
                "audio bitrate {} must be within 4000..=650000 bit/s",
                params.bitrate
            )));
        }
        super::ensure_init()?;
        let p = super::unique_prefix("as");
        let n = |s: &str| format!("{p}-{s}");
        let src = match &params.source {
            AudioSource::Test => build(
                "audiotestsrc",
                element("audiotestsrc", &n("src"))?.property("is-live", true).property("volume", 0.1f64),
            )?,
            AudioSource::Alsa(device) => {
                build("alsasrc", element("alsasrc", &n("src"))?.property("device", device.as_str()))?
            }
        };
        let caps = gst::Caps::builder("audio/x-raw").field("rate", 48_000i32).field("channels", 1i32).build();
        let chain = [
            src,
            build("audioconvert", element("audioconvert", &n("conv"))?)?,
            build("audioresample", element("audioresample", &n("res"))?)?,
            build("capsfilter", element("capsfilter", &n("caps"))?.property("caps", caps))?,
            build(
                "queue",
                element("queue", &n("q"))?
                    .property_from_str("leaky", "downstream")
                    .property("max-size-buffers", 0u32)
                    .property("max-size-bytes", 0u32)
                    .property("max-size-time", 200_000_000u64),
            )?,
            build(
                "opusenc",
                element("opusenc", &n("enc"))?.property("bitrate", i32::try_from(params.bitrate).unwrap_or(32_000)),
            )?,
            build(
                "rtpopuspay",
                element("rtpopuspay", &n("pay"))?
                    .property("pt", u32::from(super::AUDIO_PAYLOAD_TYPE))
                    .property("ssrc", params.ssrc),
            )?,
        ];
        let srtpenc = make_srtpenc(&n("srtp"), &params.srtp_key)?;
        let udpsink = make_udpsink(&n("udp"), params.host, params.port)?;
        let pipeline = gst::Pipeline::with_name(&p);
        pipeline
            .add_many(chain.iter())
            .and_then(|_| pipeline.add_many([&srtpenc, &udpsink]))
            .map_err(|e| VideoError::Start { pipeline: "audio sender", detail: e.to_string() })?;
        let refs: Vec<&gst::Element> = chain.iter().collect();
        link_chain(&refs)?;
        link_srtp(&chain[chain.len() - 1], &srtpenc, &udpsink)?;
        let run = Supervised::start("audio sender", format!("{p}-bus"), pipeline)?;
        tracing::info!(host = %params.host, port = params.port, ssrc = params.ssrc, "audio sender started");
        Ok(AudioSender {
            run,
            #[cfg(test)]
            udpsink,
        })
    }

    /// A receiver that turns `Some(reason)` when the pipeline fails.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.run.failed()
    }

    /// Stop the pipeline within [`super::STOP_TIMEOUT`].
    pub fn stop(mut self) -> Result<(), VideoError> {
        self.run.shutdown(super::STOP_TIMEOUT)
    }

    /// Also send to `host:port` (tests: one stream to two receivers).
    #[cfg(test)]
    pub(crate) fn add_destination(&self, host: &str, port: u16) {
        self.udpsink.emit_by_name::<()>("add", &[&host, &i32::from(port)]);
    }
}
