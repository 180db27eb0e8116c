//! The core's vocabulary: what goes in (the time, link events, media
//! reports) and what comes out (effects for the shell to carry out).

use core::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

use crate::wire::identity::ClientId;
use crate::wire::keys::{Key32, SrtpKey};
use crate::wire::payloads::{VideoChange, VideoParams};
use crate::wire::replies::EndReason;
use crate::wire::topics::Topic;
use crate::wire::webrtc::Candidate;

/// The time of an input: the monotonic clock for every duration and the
/// wall clock (unix ms) for `ts` fields and what people read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub wall_ms: u64,
}

/// A message received from the broker whose topic passed the grammar check.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: Topic,
    pub topic_str: String,
    pub payload: Bytes,
    pub props: Option<PublishProperties>,
}

/// What the link tells the core.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// CONNACK received; subscriptions and presence have been re-sent.
    Connected,
    /// The connection was lost (the core stops the motors).
    Disconnected,
    /// A message on one of our subscriptions.
    Message(Box<Inbound>),
}

/// What the link needs to recognise the current call's genuine requests:
/// they skip the general queue (which a flood of forged messages can fill)
/// and go to a priority queue of their own. The core still checks every
/// request itself (replay window, payload); this only decides the queue.
#[derive(Clone)]
pub struct SessionGate {
    pub session: ClientId,
    pub caller: ClientId,
    pub key: Key32,
}

/// Where and how to send a call's media. `Debug` leaves the keys out.
#[derive(Clone)]
pub struct MediaRequest {
    pub session: ClientId,
    pub host: IpAddr,
    pub video_port: u16,
    pub video_ssrc: u32,
    pub video_key: SrtpKey,
    pub video: VideoParams,
    /// Audio port, SSRC and key, when audio was negotiated.
    pub audio: Option<(u16, u32, SrtpKey)>,
}

impl std::fmt::Debug for MediaRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaRequest")
            .field("session", &self.session)
            .field("host", &self.host)
            .field("video_port", &self.video_port)
            .field("video_ssrc", &self.video_ssrc)
            .field("video", &self.video)
            .field("audio", &self.audio.as_ref().map(|(port, ssrc, _)| (port, ssrc)))
            .finish_non_exhaustive()
    }
}

/// A version 2 call's media: the phone's offer, the fingerprint its DTLS
/// certificate must have, and the video agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebRtcRequest {
    pub session: ClientId,
    pub offer_sdp: String,
    /// `AB:CD:...`, from the offer's `a=fingerprint:sha-256`.
    pub fingerprint: String,
    pub video: VideoParams,
}

/// The request a deferred answer belongs to: its command, `re` and
/// correlation data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub command: String,
    pub re: u64,
    pub correlation: Option<Bytes>,
}

/// Why a `video` change did not take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoAdjustError {
    /// No sender runs for that call (yet).
    Unavailable,
    /// The sender refused the values.
    Invalid(String),
}

/// What the media side reports.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaReport {
    /// The senders of `session` run.
    Started { session: ClientId },
    /// The media of `session` failed (start error, camera unplugged, EOS).
    Failed { session: ClientId, detail: String },
    /// A [`Effect::AdjustVideo`] was carried out (or not).
    VideoAdjusted { session: ClientId, result: Result<VideoParams, VideoAdjustError>, answer: Answer },
    /// Version 2: the media helper's SDP answer to the phone's offer.
    Answer { session: ClientId, sdp: String },
    /// Version 2: local ICE candidates (`end`: gathering is complete).
    LocalCandidates { session: ClientId, candidates: Vec<Candidate>, end: bool },
    /// Version 2: the call's media ended for `reason` (ICE failed, wrong
    /// fingerprint, the helper died); `detail` for the log and the phone.
    Ended { session: ClientId, reason: EndReason, detail: String },
}

/// What the shell must do, in order.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Publish QoS 1, not retained; `props` carries `from`/`seq`/`ts` (and
    /// `mac` on authenticated messages) already computed.
    Publish { topic: String, payload: Vec<u8>, props: PublishProperties },
    /// Subscribe QoS 1, now and after every reconnect.
    Subscribe(String),
    /// Unsubscribe and forget the filter.
    Unsubscribe(String),
    /// Set or clear the call whose requests take the priority queue.
    SessionGate(Option<SessionGate>),
    /// Start the call's senders; a [`MediaReport`] follows.
    StartMedia(MediaRequest),
    /// Start a version 2 call's media helper; [`MediaReport::Answer`] follows.
    StartWebRtc(WebRtcRequest),
    /// Version 2: the phone's trickled candidates, checked, for the helper.
    RemoteCandidates { session: ClientId, candidates: Vec<Candidate>, end: bool },
    /// Stop whatever media runs.
    StopMedia,
    /// Change the running video; a [`MediaReport::VideoAdjusted`] follows.
    AdjustVideo { session: ClientId, change: VideoChange, answer: Answer },
}

impl std::fmt::Debug for SessionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGate").field("session", &self.session).field("caller", &self.caller).finish()
    }
}
