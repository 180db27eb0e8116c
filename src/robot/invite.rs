//! Invites and the life of a call: authenticate, accept (or busy, or
//! rejected), start the media; end on hangup, presence, timeout, revocation,
//! media failure, shutdown, or the caller's new invite ([`may_replace`]).

use bytes::Bytes;
use tracing::{error, info, warn};

use super::call::{Call, Negotiated};
use super::{Core, DropReason, Effect, Inbound, MediaReport, MediaRequest, SessionGate, VideoAdjustError};
use crate::nav::CancelledBy;
use crate::wire::freshness::{SeqCheck, ts_is_fresh};
use crate::wire::identity::ClientId;
use crate::wire::keys::Key32;
use crate::wire::payloads::{Invite, InviteError};
use crate::wire::webrtc::InviteV2;

use crate::wire::props::{self, AuthFields};
use crate::wire::replies::{EndReason, RejectReason, Reply, Response};
use crate::wire::topics;

/// An invite of either protocol version.
enum AnyInvite {
    V1(Invite),
    V2(InviteV2),
}

/// How long a call outlives its caller's presence turning `false` without
/// an authenticated request from it (above robotctl's 5 s ping interval,
/// below the 15 s call timeout).
pub const OFFLINE_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

impl Core {
    /// Authenticate an invite: sender must be an owner, MAC under its key,
    /// fresh `ts`, increasing `seq`. Non-owners are dropped with no answer.
    pub(super) fn on_invite(&mut self, session: &ClientId, m: &Inbound) {
        let f = AuthFields::from_properties(m.props.as_ref());
        let Some(owner) =
            f.from.as_deref().and_then(|s| s.parse::<ClientId>().ok()).and_then(|id| self.owners.get(&id))
        else {
            return self.drop_msg(DropReason::NotOwner, &m.topic_str);
        };
        // A bad MAC proves nothing about the sender: no answer.
        let Some((_, seq, ts)) = props::verify(&owner.key, &m.topic_str, &m.payload, &f) else {
            return self.drop_msg(DropReason::BadMac, &m.topic_str);
        };
        let (owner_id, key) = (owner.id.clone(), owner.key);
        let corr = f.correlation;
        // From here the sender is a known owner: failures get a `rejected`
        // answer (bounded by the same budget as pairing rejections).
        let stale = !ts_is_fresh(ts, self.now.wall_ms)
            || match self.invite_seqs.classify_and_record(&owner_id, seq) {
                SeqCheck::New => false,
                // QoS 1 redelivery of an invite already answered.
                SeqCheck::Duplicate => return self.drop_msg(DropReason::Duplicate, &m.topic_str),
                SeqCheck::Old => true,
            };
        // Kept durably before anything is answered, so a replay after a
        // restart meets the same mark (state/replay.rs).
        if !stale {
            if let Err(e) = crate::state::replay::save(&mut *self.store, &self.invite_seqs) {
                error!(error = %e, "cannot keep the invite's seq; refusing it");
                return self.answer_invite(&key, session, Reply::rejected(RejectReason::InternalError), corr);
            }
        }
        if stale {
            self.drop_msg(DropReason::Stale, &m.topic_str);
            if self.reject_budget.take(self.now.mono) {
                self.answer_invite(&key, session, Reply::rejected(RejectReason::Stale), corr);
            }
            return;
        }
        if self.call.as_ref().is_some_and(|c| !may_replace(c, &owner_id, &m.payload)) {
            info!(session = %session, caller = %owner_id, "busy: already in a call");
            return self.answer_invite(&key, session, Reply::Busy, corr);
        }
        self.dispatch_invite(session, owner_id, &key, &m.payload, corr);
    }

    /// Parse an owner's fresh invite (either version) and accept, start or refuse it.
    fn dispatch_invite(
        &mut self,
        session: &ClientId,
        owner_id: ClientId,
        key: &Key32,
        payload: &[u8],
        corr: Option<Bytes>,
    ) {
        let parsed = if crate::wire::webrtc::is_v2(payload) {
            InviteV2::parse(payload).map(AnyInvite::V2)
        } else {
            Invite::parse(payload).map(AnyInvite::V1)
        };
        match parsed {
            Ok(_) if !self.call_setups.take(self.now.mono) => {
                let n = self.cfg.call.max_setups_per_10s;
                warn!(session = %session, caller = %owner_id, "invite rejected: too many calls set up lately");
                let detail = format!("at most {n} calls are set up in 10 s; try again in a few seconds");
                self.answer_invite(key, session, Reply::rejected_because(RejectReason::RateLimited, detail), corr);
            }
            Ok(AnyInvite::V1(invite)) => self.accept_call(session.clone(), owner_id, key, invite, corr),
            Ok(AnyInvite::V2(invite)) => {
                // Only now, with the new invite valid and within the rate
                // limit, does the caller's call in progress give way.
                if let Some(old) = self.call.as_ref().map(|c| c.session.clone()) {
                    info!(session = %session, replaced = %old, caller = %owner_id, "the caller's new invite replaces its call");
                    self.end_call_because(EndReason::Replaced, "a newer invite from the caller took this call's place");
                }
                self.start_call_v2(session, &owner_id, key, invite, corr)
            }
            Err(e) => {
                warn!(session = %session, error = ?e, "invite rejected");
                let reply = match e {
                    InviteError::Invalid(detail) => Reply::rejected_because(RejectReason::InvalidRequest, detail),
                    InviteError::NoCommonCodec => Reply::rejected(RejectReason::NoCommonCodec),
                };
                self.answer_invite(key, session, reply, corr);
            }
        }
    }

    /// Publish an answer on `invite/{robot}/{session}/response`, MACed with `K`.
    pub(super) fn answer_invite(&mut self, key: &Key32, session: &ClientId, reply: Reply, corr: Option<Bytes>) {
        let topic = topics::invite_response(&self.robot, session);
        let seq = self.seq();
        // The accept carries the call's first freshness token.
        let token = self.call.as_ref().filter(|c| &c.session == session).map(|c| c.token(self.now.mono));
        let payload = Response { body: reply.into(), token, re: None }.to_bytes();
        self.publish_signed(key, topic, payload, seq, corr);
    }

    fn accept_call(&mut self, session: ClientId, caller: ClientId, key: &Key32, invite: Invite, corr: Option<Bytes>) {
        let video = invite.negotiate(self.cfg.video.preferred);
        let video_ssrc = self.nonzero_ssrc();
        let audio_ssrc = (invite.wants_audio() && self.cfg.audio.device.is_some()).then(|| self.nonzero_ssrc());
        let agreed = Negotiated { limits: invite.video.limits(), video, video_ssrc, audio_ssrc };
        let call = self.new_call(&session, &caller, key, agreed);
        let nonce = call.robot_nonce;
        let media = MediaRequest {
            session: session.clone(),
            host: invite.media.host,
            video_port: invite.media.port,
            video_ssrc,
            video_key: call.srtp_video.clone(),
            video,
            audio: audio_ssrc.map(|s| (invite.media.audio_port.expect("wants_audio"), s, call.srtp_audio.clone())),
        };
        self.begin_call(call);
        info!(session = %session, caller = %caller, ?video, "call accepted");
        self.answer_invite(key, &session, Reply::accepted(&nonce, video_ssrc, video, audio_ssrc), corr);
        self.out.push(Effect::StartMedia(media));
    }

    /// A call with a fresh robot nonce and token key.
    pub(super) fn new_call(&mut self, session: &ClientId, caller: &ClientId, key: &Key32, agreed: Negotiated) -> Call {
        let mut nonce = [0u8; 16];
        self.rng.fill_bytes(&mut nonce);
        let mut token_key = [0u8; 32];
        self.rng.fill_bytes(&mut token_key);
        Call::new(session.clone(), caller.clone(), key, nonce, agreed, self.now.mono, token_key)
    }

    /// Make `call` the current one: its requests take the priority queue,
    /// and its requests and its caller's presence are subscribed.
    pub(super) fn begin_call(&mut self, call: Call) {
        let (session, caller) = (call.session.clone(), call.caller.clone());
        let gate = SessionGate { session: session.clone(), caller: caller.clone(), key: call.session_key };
        self.out.push(Effect::SessionGate(Some(gate)));
        self.out.push(Effect::Subscribe(topics::session_request_filter(&session)));
        self.out.push(Effect::Subscribe(topics::is_connected(&caller)));
        self.call = Some(call);
        self.media_running = false;
    }

    /// A random SSRC; 0 is avoided because some receivers treat it as unset.
    fn nonzero_ssrc(&mut self) -> u32 {
        loop {
            let s = self.rng.next_u32();
            if s != 0 {
                return s;
            }
        }
    }

    /// The caller's presence turned `false`: stop the motors at once (safe
    /// whoever published it: presence is not authenticated), and end the
    /// call unless an authenticated request follows within [`OFFLINE_GRACE`]
    /// (so a spoofed, or retained, `false` cannot end the owner's call).
    pub(super) fn on_presence(&mut self, user: &ClientId, payload: &[u8]) {
        let now = self.now.mono;
        let Some(call) = self.call.as_mut().filter(|c| &c.caller == user && payload == b"false") else { return };
        if call.offline_since.is_none() {
            call.offline_since = Some(now);
            info!(caller = %user, "the caller's presence is false: motors stopped; the call ends unless it is heard from");
        }
        self.fail_goto("caller_offline", "the caller's presence turned false");
        self.stop_motors("caller offline");
    }

    /// End the call of a caller that stayed silent since its presence turned `false`.
    pub(super) fn end_call_if_caller_gone(&mut self) {
        let gone = self.call.as_ref().and_then(|c| c.offline_since).is_some_and(|t| self.now.mono >= t + OFFLINE_GRACE);
        if gone {
            self.end_call(EndReason::CallerOffline);
        }
    }

    /// End the call: motors, video, subscriptions, then the `ended` response.
    pub(super) fn end_call(&mut self, reason: EndReason) {
        self.end_call_answering(reason, None);
    }

    /// End the call saying what happened (version 2 media endings).
    pub(super) fn end_call_because(&mut self, reason: EndReason, detail: &str) {
        self.finish_call(reason, None, Some(detail.to_owned()));
    }

    /// End the call; `answering` is the (seq, correlation) of the `hangup`
    /// request being answered, if the phone asked.
    pub(super) fn end_call_answering(&mut self, reason: EndReason, answering: Option<(u64, Option<Bytes>)>) {
        self.finish_call(reason, answering, None);
    }

    fn finish_call(&mut self, reason: EndReason, answering: Option<(u64, Option<Bytes>)>, detail: Option<String>) {
        if self.call.as_ref().and_then(|c| c.webrtc.as_ref()).is_some_and(|w| !w.answered) {
            // Not accepted yet: the phone cannot read `ended` (it has no Ks).
            return self.refuse_pending(&format!("the call ended ({}) before its media was ready", reason.as_str()));
        }
        let Some(call) = self.call.as_ref() else { return };
        let (session, caller) = (call.session.clone(), call.caller.clone());
        let by = if reason == EndReason::Shutdown { CancelledBy::Shutdown } else { CancelledBy::Hangup };
        self.cancel_goto(by);
        self.stop_motors("call ended");
        self.out.push(Effect::StopMedia);
        self.media_running = false;
        self.out.push(Effect::SessionGate(None));
        self.out.push(Effect::Unsubscribe(topics::session_request_filter(&session)));
        self.out.push(Effect::Unsubscribe(topics::is_connected(&caller)));
        info!(session = %session, reason = reason.as_str(), "call ended");
        let (re, correlation) = answering.map_or((None, None), |(s, c)| (Some(s), c));
        self.respond("hangup", Reply::Ended { reason, detail }, re, correlation);
        self.call = None;
    }

    /// React to the media side.
    pub fn on_media(&mut self, ev: MediaReport, now: super::Now) -> Vec<Effect> {
        self.now = now;
        let current = |c: &Option<Call>, s: &ClientId| c.as_ref().is_some_and(|c| &c.session == s);
        match ev {
            MediaReport::Started { session } if current(&self.call, &session) => self.media_running = true,
            MediaReport::Failed { session, detail } if current(&self.call, &session) => {
                error!(session = %session, %detail, "call media failed");
                if self.call.as_ref().is_some_and(|c| c.webrtc.is_some()) {
                    self.media_ended(EndReason::MediaFailed, &detail);
                } else {
                    self.end_call(EndReason::VideoFailed);
                }
            }
            MediaReport::Answer { session, sdp } if current(&self.call, &session) => self.on_answer(&sdp),
            MediaReport::LocalCandidates { session, candidates, end } if current(&self.call, &session) => {
                self.on_local_candidates(candidates, end)
            }
            MediaReport::Ended { session, reason, detail } if current(&self.call, &session) => {
                error!(session = %session, reason = reason.as_str(), %detail, "call media ended");
                self.media_ended(reason, &detail);
            }
            MediaReport::VideoAdjusted { session, result, answer } if current(&self.call, &session) => {
                let reply = match result {
                    Ok(video) => {
                        if let Some(c) = self.call.as_mut() {
                            c.video = video;
                        }
                        Reply::Video { video }
                    }
                    Err(VideoAdjustError::Unavailable) => video_unavailable(),
                    Err(VideoAdjustError::Invalid(d)) => Reply::rejected_because(RejectReason::InvalidRequest, d),
                };
                self.respond(&answer.command, reply, Some(answer.re), answer.correlation);
            }
            // A late report of an earlier call.
            _ => {}
        }
        self.take_effects()
    }
}

/// Whether a fresh, authenticated invite from `caller` may take the place
/// of `call` instead of being answered `busy` (docs/protocol.md 7.8): a
/// version 2 invite from the caller of a version 2 call. That is how a phone
/// whose network changed (Wi-Fi to mobile, a new address: its ICE pair is
/// gone, and webrtcbin 1.22 cannot restart ICE) gets its video back at once
/// instead of waiting for the old call to fail. Other owners, and version 1
/// calls (LAN only), still get `busy`.
fn may_replace(call: &Call, caller: &ClientId, payload: &[u8]) -> bool {
    call.webrtc.is_some() && &call.caller == caller && crate::wire::webrtc::is_v2(payload)
}

/// The answer to a `video` change before the video runs.
pub(super) fn video_unavailable() -> Reply {
    Reply::rejected_because(RejectReason::VideoUnavailable, "video is not running yet")
}
