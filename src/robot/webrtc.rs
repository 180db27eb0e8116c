//! Version 2 calls (WebRTC, docs/protocol.md 7.8): the invite's offer goes
//! to the media helper; its answer goes back in the accept; candidates
//! trickle both ways over `session/{sid}/ice/...`, each side's checked.
//!
//! Until the helper has answered, the call is *pending*: a second invite is
//! `busy`, and if the helper fails or takes longer than [`ANSWER_TIMEOUT`]
//! the invite is refused `media_unavailable` (the phone has no `Ks` yet, so
//! it could not read an `ended`).

use std::time::Duration;

use bytes::Bytes;
use tracing::{info, warn};

use super::call::{MAX_HELD_CANDIDATES, Negotiated, WebRtcCall};
use super::{Core, Effect, WebRtcRequest};
use crate::wire::identity::ClientId;
use crate::wire::keys::Key32;
use crate::wire::replies::{Body, EndReason, RejectReason, Reply};
use crate::wire::webrtc::{Candidate, IceCandidates, InviteV2, SessionDescription};

/// How long the media helper may take to answer an offer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long after the accept the media must be connected (ICE and DTLS
/// done, the phone's certificate checked), else the call ends `ice_failed`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

impl Core {
    /// An authenticated, parsed v2 invite: make the call pending and hand
    /// the offer to the media helper.
    pub(super) fn start_call_v2(
        &mut self,
        session: &ClientId,
        caller: &ClientId,
        key: &Key32,
        invite: InviteV2,
        corr: Option<Bytes>,
    ) {
        let video = invite.negotiate(self.cfg.video.preferred);
        let agreed = Negotiated { limits: invite.video, video, video_ssrc: 0, audio_ssrc: None };
        let mut call = self.new_call(session, caller, key, agreed);
        call.webrtc = Some(WebRtcCall {
            owner_key: *key,
            correlation: corr,
            answered: false,
            answered_at: None,
            held: Vec::new(),
            held_end: false,
        });
        let req = WebRtcRequest {
            session: session.clone(),
            fingerprint: invite.fingerprint(),
            offer_sdp: invite.sdp.sdp,
            video,
        };
        self.begin_call(call);
        info!(session = %session, caller = %caller, ?video, "v2 call: waiting for the media helper's answer");
        self.out.push(Effect::StartWebRtc(req));
    }

    /// When a v2 call must next have progressed: the helper's answer (while
    /// pending), then the media connection (once accepted).
    pub(super) fn webrtc_deadline(&self) -> Option<std::time::Instant> {
        let c = self.call.as_ref()?;
        let w = c.webrtc.as_ref()?;
        match w.answered_at {
            None => Some(c.started() + ANSWER_TIMEOUT),
            Some(_) if self.media_running => None,
            Some(t) => Some(t + CONNECT_TIMEOUT),
        }
    }

    /// Refuse a call whose answer is overdue; end one that did not connect.
    pub(super) fn expire_webrtc(&mut self) {
        if self.webrtc_deadline().is_none_or(|t| self.now.mono < t) {
            return;
        }
        if self.call.as_ref().and_then(|c| c.webrtc.as_ref()).is_some_and(|w| w.answered) {
            let s = CONNECT_TIMEOUT.as_secs();
            let detail = format!(
                "no media connection within {s} s of the answer (no ICE path between phone and robot; a TURN server may be needed)"
            );
            self.end_call_because(EndReason::IceFailed, &detail);
        } else {
            let s = ANSWER_TIMEOUT.as_secs();
            self.refuse_pending(&format!("the media helper did not answer the offer within {s} s"));
        }
    }

    /// The helper answered: accept the call with the SDP answer, then send
    /// the candidates held meanwhile.
    pub(super) fn on_answer(&mut self, sdp: &str) {
        let Some(call) = self.call.as_mut() else { return };
        let (nonce, video, session) = (call.robot_nonce, call.video, call.session.clone());
        let Some(w) = call.webrtc.as_mut().filter(|w| !w.answered) else { return };
        w.answered = true;
        w.answered_at = Some(self.now.mono);
        let (key, corr) = (w.owner_key, w.correlation.take());
        let (held, end) = (std::mem::take(&mut w.held), w.held_end);
        let sdp = SessionDescription { kind: "answer".into(), sdp: sdp.to_owned() };
        info!(session = %session, "v2 call accepted");
        self.answer_invite(&key, &session, Reply::AcceptedV2 { v: 2, nonce: hex::encode(nonce), sdp, video }, corr);
        if !held.is_empty() || end {
            self.send_candidates(held, end);
        }
    }

    /// Local candidates: sent at once in an accepted call, held before.
    pub(super) fn on_local_candidates(&mut self, candidates: Vec<Candidate>, end: bool) {
        let Some(w) = self.call.as_mut().and_then(|c| c.webrtc.as_mut()) else { return };
        if w.answered {
            return self.send_candidates(candidates, end);
        }
        let room = MAX_HELD_CANDIDATES.saturating_sub(w.held.len());
        if candidates.len() > room {
            warn!(dropped = candidates.len() - room, "too many local candidates before the accept");
        }
        w.held.extend(candidates.into_iter().take(room));
        w.held_end |= end;
    }

    /// `session/{sid}/ice/response`, unsolicited, MAC'd with `Ks`.
    fn send_candidates(&mut self, candidates: Vec<Candidate>, end: bool) {
        let body = Body::Candidates(IceCandidates { generation: 0, candidates, end });
        self.respond("ice", body, None, None);
    }

    /// The phone's `ice` request, already authenticated: checked candidates
    /// go to the helper.
    pub(super) fn on_ice(&mut self, session: &ClientId, c: IceCandidates) -> Reply {
        let Some(call) = self.call.as_ref() else { return Reply::rejected(RejectReason::InternalError) };
        if call.webrtc.is_none() {
            return Reply::rejected_because(RejectReason::InvalidRequest, "ice is for version 2 calls only");
        }
        if c.generation != 0 {
            let detail = format!("gen {} is not this call's offer/answer generation 0", c.generation);
            return Reply::rejected_because(RejectReason::InvalidRequest, detail);
        }
        let (candidates, end) = (c.candidates, c.end);
        self.out.push(Effect::RemoteCandidates { session: session.clone(), candidates, end });
        Reply::Ok
    }

    /// The media of a v2 call ended (helper, ICE or DTLS): end the call, or
    /// refuse it if it was not accepted yet.
    pub(super) fn media_ended(&mut self, reason: EndReason, detail: &str) {
        if self.call.as_ref().and_then(|c| c.webrtc.as_ref()).is_some_and(|w| !w.answered) {
            return self.refuse_pending(detail);
        }
        if reason == EndReason::IceFailed {
            // A path that worked and then went away is not a set-up problem:
            // the phone's network changed or stayed cut (7.8).
            let hint = if self.media_running {
                "the media path was lost after it worked: the phone's network changed or was cut; the phone may call again"
            } else {
                "no ICE path between phone and robot; a TURN server may be needed"
            };
            return self.end_call_because(reason, &format!("{detail} ({hint})"));
        }
        self.end_call_because(reason, detail);
    }

    /// Give up a pending call: tear it down as `end_call` does, and answer
    /// the invite `rejected` `media_unavailable` with `detail`.
    pub(super) fn refuse_pending(&mut self, detail: &str) {
        let Some(call) = self.call.take() else { return };
        let Some(w) = call.webrtc.as_ref() else {
            self.call = Some(call);
            return;
        };
        warn!(session = %call.session, %detail, "v2 call refused: media unavailable");
        self.stop_motors("call refused");
        self.out.push(Effect::StopMedia);
        self.media_running = false;
        self.out.push(Effect::SessionGate(None));
        self.out.push(Effect::Unsubscribe(crate::wire::topics::session_request_filter(&call.session)));
        self.out.push(Effect::Unsubscribe(crate::wire::topics::is_connected(&call.caller)));
        let reply = Reply::rejected_because(RejectReason::MediaUnavailable, detail);
        let (key, corr) = (w.owner_key, w.correlation.clone());
        self.answer_invite(&key, &call.session, reply, corr);
    }
}
