//! Pairing windows and the owners store, on a made-up clock.

use super::*;
use crate::robot::DropReason;
use crate::robot::admin::Request;
use crate::robot::pairing::PAIRING_PNG;

/// A pairing request for `uri` MACed with a wrong secret.
fn forged(r: &mut Rig, uri: &PairingUri, phone: &ClientId, seq: u64) -> Vec<Value> {
    let wrong = PairingUri { secret: [0xee; 16], ..uri.clone() };
    let ts = r.now().wall_ms;
    let signed = pairing::build_pair_request(&wrong, phone, "Mallory", [1; 16], seq, ts).unwrap();
    let fx = r.deliver(&signed.topic, &signed.payload, Some(signed.props));
    jsons_of(&fx, &topics::pair_response(&r.robot, phone))
}

fn open(r: &mut Rig) -> PairingUri {
    let AdminReply::Pair(p) = r.admin(Request::Pair { replace: None }).unwrap() else { panic!("pair") };
    PairingUri::parse(&p.uri).unwrap()
}

#[test]
fn a_window_closes_after_20_failed_attempts() {
    let mut r = Rig::new();
    let uri = open(&mut r);
    let mallory = crate::wire::identity::human_id("+15550000000");
    for i in 1..20 {
        assert_eq!(forged(&mut r, &uri, &mallory, i)[0]["reason"], "bad_mac", "attempt {i}");
    }
    assert_eq!(forged(&mut r, &uri, &mallory, 20)[0]["reason"], "too_many_attempts");
    assert!(r.store.get(PAIRING_PNG).is_none(), "the QR code is removed with the window");
    // The right secret no longer helps (answered once the budget refilled).
    r.advance(1000);
    let alice = crate::wire::identity::human_id("+48555555555");
    let ts = r.now().wall_ms;
    let signed = pairing::build_pair_request(&uri, &alice, "Alice", [2; 16], ts, ts).unwrap();
    let fx = r.deliver(&signed.topic, &signed.payload, Some(signed.props));
    assert_eq!(json_of(&fx, &topics::pair_response(&r.robot, &alice)).unwrap()["reason"], "too_many_attempts");
    assert!(r.store.get("owners.json").is_none(), "nobody paired");
}

#[test]
fn a_window_closes_after_its_time() {
    let mut r = Rig::new();
    let uri = open(&mut r);
    assert!(r.store.get(PAIRING_PNG).is_some(), "the QR code PNG is written");
    // config/flat.toml keeps the default: 600 s.
    assert_eq!(r.core.next_wakeup(r.now()), Some(r.now().mono + std::time::Duration::from_secs(600)));
    r.advance(599_999);
    assert!(r.store.get(PAIRING_PNG).is_some());
    r.advance(1);
    assert!(r.store.get(PAIRING_PNG).is_none(), "removed when the window ends");
    let alice = crate::wire::identity::human_id("+48555555555");
    let ts = r.now().wall_ms;
    let signed = pairing::build_pair_request(&uri, &alice, "Alice", [2; 16], ts, ts).unwrap();
    let fx = r.deliver(&signed.topic, &signed.payload, Some(signed.props));
    assert_eq!(json_of(&fx, &topics::pair_response(&r.robot, &alice)).unwrap()["reason"], "window_closed");
}

#[test]
fn a_robot_without_owners_opens_a_window_at_start() {
    let r = Rig::new();
    assert!(r.store.get(PAIRING_PNG).is_some());
    let mut cfg = flat();
    cfg.pairing.open_when_unowned = false;
    let r = Rig::with(cfg);
    assert!(r.store.get(PAIRING_PNG).is_none());
}

#[test]
fn an_owner_that_cannot_be_stored_is_not_told_it_paired() {
    let mut r = Rig::new();
    let uri = open(&mut r);
    r.store.fail_writes(true);
    let alice = crate::wire::identity::human_id("+48555555555");
    let ts = r.now().wall_ms;
    let signed = pairing::build_pair_request(&uri, &alice, "Alice", [2; 16], ts, ts).unwrap();
    let fx = r.deliver(&signed.topic, &signed.payload, Some(signed.props));
    let answer = json_of(&fx, &topics::pair_response(&r.robot, &alice)).unwrap();
    assert_eq!(answer, serde_json::json!({"status":"rejected","reason":"internal_error"}));
    let Ok(AdminReply::Owners(list)) = r.admin(Request::Owners) else { panic!("owners") };
    assert!(list.owners.is_empty());
}

#[test]
fn paired_owners_are_stored_and_listed_without_keys() {
    let mut r = Rig::new();
    let phone = r.pair("+48555555555");
    let file = String::from_utf8(r.store.get("owners.json").unwrap()).unwrap();
    assert!(file.contains(&hex::encode(phone.key)), "the key is in the state file");
    let Ok(AdminReply::Owners(list)) = r.admin(Request::Owners) else { panic!("owners") };
    assert_eq!(list.owners.len(), 1);
    assert_eq!((list.owners[0].id.clone(), list.owners[0].nickname.as_str()), (phone.id, "Alice"));
    assert!(!serde_json::to_string(&list).unwrap().contains(&hex::encode(phone.key)));
}

/// Pair `number` (as Alice) through an open window with this nonce; the answer.
fn pair_as(r: &mut Rig, uri: &PairingUri, number: &str, nonce: [u8; 16]) -> Value {
    let id = crate::wire::identity::human_id(number);
    let ts = r.now().wall_ms;
    let seq = ts;
    let signed = pairing::build_pair_request(uri, &id, "Guest", nonce, seq, ts).unwrap();
    let fx = r.deliver(&signed.topic, &signed.payload, Some(signed.props));
    json_of(&fx, &topics::pair_response(&r.robot, &id)).unwrap_or(Value::Null)
}

#[test]
fn a_guest_cannot_replace_an_owners_key_unless_the_admin_says_so() {
    let mut r = Rig::new();
    let alice = r.pair("+48555555555");
    let before = r.store.get("owners.json").unwrap();
    // A guest shown the QR code claims Alice's (public) ID.
    let uri = open(&mut r);
    let answer = pair_as(&mut r, &uri, "+48555555555", [0x77; 16]);
    assert_eq!(answer["reason"], "already_paired", "{answer}");
    assert_eq!(r.store.get("owners.json").unwrap(), before, "Alice's key is unchanged");
    assert_eq!(r.core.drops().count(DropReason::AlreadyPaired), 1, "the admin sees the attempt");
    assert!(r.store.get(PAIRING_PNG).is_none(), "the window is closed");
    // Alice still calls with her key.
    let mut alice = alice;
    assert_eq!(r.invite(&mut alice, "00112233445566778899aabbccddeeff", r.now().wall_ms)["status"], "accepted");
    // `robotd pair --replace ID` lets that owner pair again (a lost phone).
    assert!(r.admin(Request::Pair { replace: Some("ab".repeat(16)) }).unwrap_err().contains("not an owner"));
    let AdminReply::Pair(p) = r.admin(Request::Pair { replace: Some(alice.id.to_string()) }).unwrap() else { panic!() };
    let uri = PairingUri::parse(&p.uri).unwrap();
    let answer = pair_as(&mut r, &uri, "+48555555555", [0x78; 16]);
    assert_eq!(answer["status"], "paired", "{answer}");
    assert_ne!(r.store.get("owners.json").unwrap(), before, "the key was replaced");
}

#[test]
fn a_huge_seq_in_one_window_does_not_lock_a_phone_out_of_the_next() {
    let mut r = Rig::new();
    let uri = open(&mut r);
    // A guest who knows this window's secret uses Bob's ID with seq 2^64-1
    // (and a nickname that fails, so Bob is not paired by it).
    let bob = crate::wire::identity::human_id("+15551234567");
    let ts = r.now().wall_ms;
    let mut signed = pairing::build_pair_request(&uri, &bob, "Guest", [1; 16], u64::MAX, ts).unwrap();
    signed.payload = b"{}".to_vec();
    signed.props = props::signed(&uri.secret, &signed.topic, bob.as_str(), u64::MAX, ts, b"{}", None);
    let fx = r.deliver(&signed.topic, &signed.payload, Some(signed.props));
    assert_eq!(json_of(&fx, &topics::pair_response(&r.robot, &bob)).unwrap()["reason"], "malformed");
    // In a new window Bob pairs with an ordinary seq.
    let uri = open(&mut r);
    assert_eq!(pair_as(&mut r, &uri, "+15551234567", [2; 16])["status"], "paired");
}
