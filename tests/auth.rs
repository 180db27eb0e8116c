//! Authenticated invites against a real broker and the real daemon. Only
//! owners get answers. An invite whose sender, MAC or freshness fails never
//! starts anything and is counted in `robotd status` under its reason; it gets
//! no answer, except that an owner whose MAC verified but whose invite is
//! stale (old `ts`, or a `seq` below its last one) is told `rejected`/`stale`,
//! MACed with its key. Exact `seq` repeats are QoS 1 redeliveries: silent.
//!
//! "No answer" is never waited for with a sleep: after the bad invites the
//! test sends an honest invite over the same MQTT connection, and the robot
//! (which handles and answers messages in order) must answer the honest one
//! while nothing arrived for the bad ones.

mod auth_support;
mod common;

use auth_support::*;
use common::*;
use robotd::phone::{PairedRobot, Phone};
use robotd::wire::identity::ClientId;
use robotd::wire::props::{self, AuthFields, now_ms};
use serde_json::Value;

/// A robot with one owner, and a probe on every invite answer of that robot.
struct Setup {
    robot: Robot,
    owner: Phone,
    paired: PairedRobot,
    /// Subscribed to `invite/{robot}/+/response`; also used to publish, so
    /// everything the test sends travels over one connection, in order.
    probe: Probe,
    _sink: std::net::UdpSocket,
    port: u16,
    // Last, so the robot is killed before its broker.
    broker: Broker,
}

async fn setup() -> Setup {
    let broker = Broker::start();
    let robot = start_robot(&broker, "").await;
    let (owner, paired) = paired_phone(&broker, &robot, "Alice").await;
    let probe = Probe::connect(&broker, &[&format!("invite/{}/+/response", robot.id)]).await;
    let (sink, port) = media_sink();
    Setup { robot, owner, paired, probe, _sink: sink, port, broker }
}

impl Setup {
    async fn send(&self, inv: &RawInvite) {
        self.probe.publish(&inv.topic, &inv.payload, false, Some(inv.props.clone())).await;
    }

    fn honest(&mut self) -> RawInvite {
        honest_invite(&mut self.owner, &self.paired, self.port)
    }

    /// Send an honest invite from the owner and return its verified answer.
    async fn control(&mut self, key: [u8; 32]) -> Value {
        let inv = self.honest();
        self.send(&inv).await;
        let topic = inv.response_topic(&self.paired.robot);
        let m = self.probe.expect("the answer to an honest invite", SOON, |m| m.topic == topic).await;
        let f = AuthFields::from_properties(m.props.as_ref());
        assert_eq!(f.from.as_deref(), Some(self.robot.id.as_str()), "answer not from the robot");
        assert!(props::verify(&key, &m.topic, &m.payload, &f).is_some(), "answer not MACed with K: {m:?}");
        serde_json::from_slice(&m.payload).unwrap()
    }

    /// Messages the probe has seen on `topic` so far.
    fn seen_on(&self, topic: &str) -> Vec<String> {
        self.probe.seen.iter().filter(|m| m.topic == topic).map(|m| m.text()).collect()
    }

    /// Send `bad`, then an honest invite that must be answered; by then
    /// (the robot answers in order) each of `bad` must have got exactly
    /// `answer`: nothing, or one `rejected` with that reason, MACed with K.
    /// The drops must have grown by exactly `bad.len()` under `reason` and by
    /// nothing else.
    async fn assert_dropped(&mut self, bad: &[RawInvite], reason: &str, answer: Option<&str>) -> Value {
        let before = all_drops(&self.robot);
        let robot = self.paired.robot.clone();
        let earlier: Vec<usize> = bad.iter().map(|b| self.seen_on(&b.response_topic(&robot)).len()).collect();
        for b in bad {
            self.send(b).await;
        }
        let key = self.paired.key;
        let control = self.control(key).await;
        assert!(control["status"] == "accepted" || control["status"] == "busy", "control invite: {control}");
        for (b, n) in bad.iter().zip(earlier) {
            let topic = b.response_topic(&robot);
            let got: Vec<&Seen> = self.probe.seen.iter().filter(|m| m.topic == topic).skip(n).collect();
            match answer {
                None => assert!(got.is_empty(), "a dropped invite was answered: {got:?}"),
                Some(r) => {
                    assert_eq!(got.len(), 1, "want one rejection: {got:?}");
                    let f = AuthFields::from_properties(got[0].props.as_ref());
                    assert_eq!(f.from.as_deref(), Some(self.robot.id.as_str()));
                    assert!(props::verify(&key, &topic, &got[0].payload, &f).is_some(), "rejection not MACed with K");
                    let v: Value = serde_json::from_slice(&got[0].payload).unwrap();
                    assert_eq!(v, serde_json::json!({"status":"rejected","reason":r}));
                }
            }
        }
        let after = all_drops(&self.robot);
        let count = |v: &Value, r: &str| v.get(r).and_then(Value::as_u64).unwrap_or(0);
        assert_eq!(count(&after, reason), count(&before, reason) + bad.len() as u64, "{before} -> {after}");
        let others = |v: &Value| {
            let mut m = v.as_object().cloned().unwrap_or_default();
            m.remove(reason);
            m
        };
        assert_eq!(others(&after), others(&before), "drops counted under another reason");
        control
    }

    /// [`Setup::assert_dropped`] with no answer at all.
    async fn assert_ignored(&mut self, bad: &[RawInvite], reason: &str) -> Value {
        self.assert_dropped(bad, reason, None).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_mac_invite_is_ignored() {
    let mut s = setup().await;
    let id = s.owner.id.to_string();
    let robot = s.paired.robot.clone();
    // A forger who knows the owner's ID but not its key.
    let seq = s.owner.next_seq();
    let wrong_key = raw_invite(&robot, &id, &id, &rand::random::<[u8; 32]>(), seq, now_ms(), s.port);
    // A genuine invite whose payload was changed in transit (media redirected).
    let mut tampered = s.honest();
    tampered.payload = offer(s.port.wrapping_add(1).max(1)).payload();
    // The same with a MAC that is almost right (last hex digit changed).
    let mut one_digit = s.honest();
    for (k, v) in one_digit.props.user_properties.iter_mut() {
        if k == "mac" {
            let last = v.pop().unwrap();
            v.push(if last == '0' { '1' } else { '0' });
        }
    }
    let answer = s.assert_ignored(&[wrong_key, tampered, one_digit], "bad_mac").await;
    assert_eq!(answer["status"], "accepted", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_from_invite_is_ignored() {
    let mut s = setup().await;
    let robot = s.paired.robot.clone();
    let key = s.paired.key;
    let stranger = ClientId::random().to_string();
    // Even with the owner's key, a `from` that is not an owner gets nothing.
    let seq = s.owner.next_seq();
    let claims_stranger = raw_invite(&robot, &stranger, &stranger, &key, seq, now_ms(), s.port);
    // `from` must be exactly the owner's ID (no upper case spelling of it).
    let upper = s.owner.id.to_string().to_uppercase();
    let seq = s.owner.next_seq();
    let upper_case = raw_invite(&robot, &upper, &upper, &key, seq, now_ms(), s.port);
    // No `from` at all.
    let mut no_from = s.honest();
    no_from.props.user_properties.retain(|(k, _)| k != "from");
    s.assert_ignored(&[claims_stranger, upper_case, no_from], "not_owner").await;

    // The owner's ID in `from` but a MAC made over another `from`: bad_mac.
    let id = s.owner.id.to_string();
    let seq = s.owner.next_seq();
    let mac_over_other = raw_invite(&robot, &id, &stranger, &key, seq, now_ms(), s.port);
    s.assert_ignored(&[mac_over_other], "bad_mac").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_ts_invite_is_refused() {
    let mut s = setup().await;
    let robot = s.paired.robot.clone();
    let key = s.paired.key;
    let id = s.owner.id.to_string();
    let mut stale = Vec::new();
    // Outside ±60 s in both directions, correctly MACed, fresh seq.
    for ts in [now_ms() - 120_000, now_ms() + 120_000] {
        let seq = s.owner.next_seq();
        stale.push(raw_invite(&robot, &id, &id, &key, seq, ts, s.port));
    }
    // A verified owner is told why (the MAC proves who asked); nothing starts.
    let control = s.assert_dropped(&stale, "stale", Some("stale")).await;
    assert_eq!(control["status"], "accepted", "no call was started by a stale invite: {control}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_seq_invite_is_dropped() {
    let mut s = setup().await;
    let robot = s.paired.robot.clone();
    let key = s.paired.key;
    // A genuine invite, answered (the call starts).
    let first = s.honest();
    s.send(&first).await;
    let resp = first.response_topic(&robot);
    let m = s.probe.expect("answer to the genuine invite", SOON, |m| m.topic == resp).await;
    assert_eq!(serde_json::from_slice::<Value>(&m.payload).unwrap()["status"], "accepted");
    // Replayed verbatim (were it handled, it would get `busy`), and a new
    // invite reusing the same seq with a fresh ts and a valid MAC: both look
    // like QoS 1 redeliveries and are dropped silently.
    let verbatim = RawInvite {
        session: first.session.clone(),
        topic: first.topic.clone(),
        payload: first.payload.clone(),
        props: first.props.clone(),
    };
    let seq = first.props.user_properties.iter().find(|(k, _)| k == "seq").unwrap().1.parse().unwrap();
    let id = s.owner.id.to_string();
    let same_seq = raw_invite(&robot, &id, &id, &key, seq, now_ms(), s.port);
    let answer = s.assert_ignored(&[verbatim, same_seq], "duplicate").await;
    assert_eq!(answer["status"], "busy", "the call of the genuine invite is still on: {answer}");
    // The control invite moved the owner's last seq past the first one's: an
    // invite with that older seq is stale, and the owner is told so (were it
    // handled, it would get `busy`).
    let older = raw_invite(&robot, &id, &id, &key, seq, now_ms(), s.port);
    s.assert_dropped(&[older], "stale", Some("stale")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_owner_invite_gets_no_answer() {
    let mut s = setup().await;
    // A phone that never paired with this robot, with a key of its own.
    let mut stranger = phone(&s.broker).await;
    let fake = PairedRobot { key: rand::random(), nickname: "Rover".into(), ..s.paired.clone() };
    let inv = honest_invite(&mut stranger, &fake, s.port);
    let answer = s.assert_ignored(&[inv], "not_owner").await;
    assert_eq!(answer["status"], "accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_owner_is_ignored_without_restart() {
    let mut s = setup().await;
    let (bob, bob_paired) = paired_phone(&s.broker, &s.robot, "Bob").await;
    let pid = s.robot.pid();
    let alice = s.owner.id.to_string();
    let listed = admin_ok(&s.robot, &["owners"]);
    assert!(listed.contains(&alice) && listed.contains(bob.id.as_str()), "{listed}");
    let bob_id = bob.id.to_string();

    // Alice is recognised: her invite is accepted and a call starts.
    let key = s.paired.key;
    assert_eq!(s.control(key).await["status"], "accepted");

    let out = admin_ok(&s.robot, &["owners", "remove", &alice]);
    assert!(out.contains(&alice), "{out}");
    let listed = admin_ok(&s.robot, &["owners"]);
    assert!(!listed.contains(&alice) && listed.contains(&bob_id), "{listed}");
    let file = std::fs::read_to_string(s.robot.state_dir().join("owners.json")).unwrap();
    assert!(!file.contains(&alice) && file.contains(&bob_id), "{file}");

    // Her invites are now dropped like a stranger's; Bob (as the control)
    // gets an answer from the same, never restarted, process.
    let alice_invite = s.honest();
    let _alice = std::mem::replace(&mut s.owner, bob);
    s.paired = bob_paired;
    let bob_key = s.paired.key;
    let before = drops(&s.robot, "not_owner");
    s.send(&alice_invite).await;
    let answer = s.control(bob_key).await;
    // Removing Alice ended her call, so Bob's invite is accepted, not busy.
    assert_eq!(answer["status"], "accepted", "{answer}");
    assert!(s.seen_on(&alice_invite.response_topic(&s.paired.robot)).is_empty(), "removed owner was answered");
    assert_eq!(drops(&s.robot, "not_owner"), before + 1);
    assert_eq!(s.robot.pid(), pid);
    assert!(status(&s.robot)["uptime_s"].is_u64());
}
