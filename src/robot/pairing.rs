//! Pairing: windows opened by the admin, the button or a robot without
//! owners; requests judged by [`PairingWindows`]; new owners stored before
//! the robot answers `paired`.

use tracing::{error, info, warn};

use super::{Core, DropReason, Inbound};
use crate::state::owners::Owner;
use crate::wire::identity::ClientId;
use crate::wire::pairing::{self, PairOutcome, PairRequest, PairingUri, Reject};
use crate::wire::props::{self, AuthFields};
use crate::wire::replies::{RejectReason, Reply, Response};
use crate::wire::topics;

/// File name of the pairing QR code PNG in the state directory.
pub const PAIRING_PNG: &str = "pairing-qr.png";

/// The current pairing window's public face.
pub(super) struct OpenPairing {
    pub uri: PairingUri,
    pub expires_at_ms: u64,
    /// The owner whose key this window may replace (`robotd pair --replace`).
    pub replace: Option<ClientId>,
}

impl Core {
    pub(super) fn on_pair(&mut self, phone: &ClientId, m: &Inbound) {
        let f = AuthFields::from_properties(m.props.as_ref());
        let req = PairRequest {
            robot_id: &self.robot,
            phone_id: phone,
            message: props::SignedMessage::new(&m.topic_str, &m.payload, &f),
        };
        let now_ms = self.now.wall_ms;
        let topic = topics::pair_response(&self.robot, phone);
        match self.pairing.handle(now_ms, &req) {
            PairOutcome::Paired { phone_id, .. } if !self.may_pair(&phone_id) => {
                // Someone who was shown the QR code claims an owner's ID (the
                // md5 of her number is visible on the bus): never replace her key.
                warn!(phone = %phone_id, "refused a pairing that would replace an owner's key; \
                      if that owner lost their key, run `robotd pair --replace {phone_id}`");
                self.drop_msg(DropReason::AlreadyPaired, &m.topic_str);
                self.finish_pairing();
                self.publish_unsigned(topic, pairing::rejected_reply(Reject::AlreadyPaired), f.correlation);
            }
            PairOutcome::Paired { phone_id, nickname, key } => {
                let owner = Owner { id: phone_id.clone(), nickname, key, paired_at_ms: now_ms };
                if let Err(e) = self.owners.add(owner) {
                    // Not stored: do not tell the phone it is paired.
                    error!(error = %e, phone = %phone_id, "pairing succeeded but the owner could not be stored");
                    self.finish_pairing();
                    let body = Response::plain(Reply::rejected(RejectReason::InternalError));
                    return self.publish_unsigned(topic, body.to_bytes(), f.correlation);
                }
                info!(phone = %phone_id, "paired a new owner");
                self.finish_pairing();
                let payload = pairing::paired_reply(&self.robot, &self.cfg.robot.nickname);
                let seq = self.seq();
                self.publish_signed(&key, topic, payload, seq, f.correlation);
            }
            PairOutcome::Rejected(reason) => {
                self.drop_msg(DropReason::from(reason), &m.topic_str);
                if reason != Reject::WindowClosed && !self.pairing.is_open(now_ms) {
                    self.finish_pairing();
                }
                if self.reject_budget.take(self.now.mono) {
                    self.publish_unsigned(topic, pairing::rejected_reply(reason), f.correlation);
                }
            }
        }
    }

    /// A phone that proved the window's secret may become an owner: it is
    /// not one yet, or the window was opened to replace its key.
    fn may_pair(&self, phone: &ClientId) -> bool {
        self.owners.get(phone).is_none() || self.open_pairing.as_ref().and_then(|p| p.replace.as_ref()) == Some(phone)
    }

    /// Open a new pairing window: fresh secret, URI and QR (logged, and
    /// written as a PNG in the state directory). With `replace`, the owner
    /// of that ID may pair again and get a new key.
    pub(super) fn open_pairing(&mut self, replace: Option<ClientId>) -> &OpenPairing {
        let mut secret = [0u8; 16];
        self.rng.fill_bytes(&mut secret);
        let expires_at_ms = self.pairing.open(self.now.wall_ms, secret);
        let uri = PairingUri { robot: self.robot.clone(), secret, broker: self.cfg.mqtt.url.clone() };
        let text = uri.to_string();
        let png = self.store.path(PAIRING_PNG);
        match pairing::png_bytes(&text) {
            Ok(bytes) => {
                if let Err(e) = self.store.write(PAIRING_PNG, &bytes, 0o600) {
                    warn!(error = %e, "cannot write the pairing QR PNG");
                }
            }
            Err(e) => warn!(error = %e, "cannot render the pairing QR PNG"),
        }
        let qr = pairing::render_plain(&text).unwrap_or_default();
        info!(uri = %text, png = %png.display(), window_s = self.cfg.pairing.window_s, "pairing window open; scan the QR code or enter the URI in the app\n{qr}");
        self.open_pairing.insert(OpenPairing { uri, expires_at_ms, replace })
    }

    /// Forget the shown secret and remove the QR file once a window is over.
    pub(super) fn finish_pairing(&mut self) {
        if self.open_pairing.take().is_some() {
            if let Err(e) = self.store.remove(PAIRING_PNG) {
                warn!(error = %e, "cannot remove the pairing QR PNG");
            }
            info!(status = %self.pairing.status(self.now.wall_ms), "pairing window closed");
        }
    }

    /// Announce the end of a window whose time ran out.
    pub(super) fn expire_pairing(&mut self) {
        if self.open_pairing.is_some() && !self.pairing.is_open(self.now.wall_ms) {
            self.finish_pairing();
        }
    }
}
