//! A flood from an attacker of its own (docs/reliability.md, section 7): the
//! broker on the namespace internet's server (tests/common/netns.rs), robotd
//! behind the home router, the owner's phone behind the carrier, and two
//! flooder processes on a public host of their own (`attacker`), pinned to
//! a CPU of their own with `taskset`. Everything else (broker, robotd and
//! its video, the phone, this process) is pinned to the other CPU, so the
//! figure measures what the flood does through the broker, not two processes
//! fighting robotd for a core.
//!
//! The flooders are this binary re-executed as `flood ADDR SECONDS MAX FROM
//! TOPIC...` (tests/common/flood.rs, shared with the system benchmark),
//! hence `harness = false`: `main` runs the one measurement (or the flooder).
//! Figures are printed as `FIGURE` lines; run with
//! `cargo test --test flood_netns -- --nocapture` (the flag is accepted and
//! ignored: the output is never captured). Skips, with a message, when not
//! root or without `ip netns`, unless `ROBOTD_NETNS_REQUIRED=1`.

#[path = "common/calls.rs"]
mod calls_kit;
mod common;
#[path = "common/flood.rs"]
mod flood_kit;
#[path = "common/netns.rs"]
mod netns;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calls_kit::*;
use common::*;
use netns::{Internet, MQTT_PORT, SERVER};
use robotd::phone::{InviteOutcome, Offer, Phone};
use robotd::wire::identity::ClientId;
use robotd::wire::topics;
use serde_json::json;

const TEST_NAME: &str = "a_flood_from_its_own_namespace_and_cpu_then_robotd_recovers_by_itself";

/// How long each flooder runs, and at most how many packets it writes.
const FLOOD_SECS: u64 = 10;
const FLOOD_MAX: u64 = 2_000_000;

/// The owner's series during the flood: 300 requests at 50 Hz (6 s, inside
/// the 10 s of flood, starting 1 s into it).
const OWNER_REQUESTS: usize = 300;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("flood") {
        return flood_kit::flood(&args[1..]);
    }
    if args.iter().any(|a| a == "--list") {
        println!("{TEST_NAME}: test");
        return;
    }
    // libtest's flags (--nocapture, --test-threads N, ...) are ignored; a
    // name filter that does not match skips, as libtest would.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-') && a.parse::<u32>().is_err()).collect();
    if args.iter().any(|a| a == "--ignored")
        || !(filters.is_empty() || filters.iter().any(|f| TEST_NAME.contains(f.as_str())))
    {
        println!("running 0 tests");
        return;
    }
    println!("running 1 test");
    a_flood_from_its_own_namespace_and_cpu_then_robotd_recovers_by_itself();
    println!("test {TEST_NAME} ... ok");
}

/// `taskset -a -p -c CPUS PID`: pin every thread of a running process.
fn pin(pid: u32, cpus: &str) {
    let out = Command::new("taskset").args(["-a", "-p", "-c", cpus, &pid.to_string()]).output().expect("run taskset");
    assert!(
        out.status.success(),
        "taskset -a -p -c {cpus} {pid}: {} (install the Debian package util-linux)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The latest value of each `$SYS/broker/publish/messages/...` counter seen.
fn sys_counters(seen: &[Seen]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in seen {
        if let Some(k) = s.topic.strip_prefix("$SYS/broker/publish/messages/") {
            if let Ok(v) = s.text().trim().parse() {
                m.insert(k.to_owned(), v);
            }
        }
    }
    m
}

/// Wait (bounded) for a flooder to end on its own; kill it if it does not.
/// Returns its last report: (packets written, seconds).
fn finish(mut child: Child) -> (u64, f64) {
    let end = Instant::now() + Duration::from_secs(FLOOD_SECS) + SOON;
    while child.try_wait().unwrap().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    flood_kit::last_report(&String::from_utf8_lossy(&out.stdout))
}

/// During a call, two flooders on a host and a CPU of their own write forged
/// messages as fast as the broker reads them for 10 s: drives and stops in
/// the call with the caller's `from` and a wrong MAC (one process), invites
/// and pairing requests from strangers (the other). Meanwhile the owner
/// sends 300 requests at 50 Hz. Asserted: the flood reached robotd; after
/// it, robotd gets its link back by itself (presence `true`, a stable
/// connection) and serves the owner again; no forged message started a
/// call; RSS bounded; no panic. Printed (not asserted, see the comment
/// below): the flood rate written and received by the broker, what reached
/// robotd, the owner's answered/lost requests and latencies, reconnects,
/// presence changes, robotd's CPU and RSS.
fn a_flood_from_its_own_namespace_and_cpu_then_robotd_recovers_by_itself() {
    let Some(mut net) = Internet::new() else { return };
    // $SYS every second: the broker's own count of the PUBLISH packets it read.
    net.start_mosquitto_with("sys_interval 1\n");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // CPU 0: broker, robotd, the phone (this process). CPU 1: the attacker.
    // On one CPU there is nothing to separate; say so in the figures.
    let (home_cpu, attacker_cpu) = if cpus >= 2 { ("0", "1") } else { ("0", "0") };
    for pid in net.public.pids() {
        pin(pid as u32, home_cpu);
    }
    let mut robot = Robot::configure_url(&net.broker_url(), &merge_toml(TEST_VIDEO, SMALL_VIDEO));
    let mut wrapper = net.robot.command("taskset");
    wrapper.args(["-c", home_cpu]);
    robot.spawn_wrapped(wrapper);

    // The phone's side runs in the `phone` namespace: the runtime is built
    // there, so its threads (and every socket they open) are in it.
    let (net, robot) = (&net, &robot);
    net.phone.run(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        pin(std::process::id(), home_cpu);
        rt.block_on(measure(net, robot, (home_cpu, attacker_cpu), cpus));
    });
}

async fn measure(net: &Internet, robot: &Robot, (home_cpu, attacker_cpu): (&str, &str), cpus: usize) {
    let pid = robot.pid();
    let robot_id: ClientId = robot.id.parse().unwrap();
    let presence = topics::is_connected(&robot_id);
    let mut watch =
        Probe::connect_to(&SERVER.to_string(), MQTT_PORT, &[&presence, "$SYS/broker/publish/messages/+"]).await;
    watch.expect_msg(&presence, "true").await;

    let uri = blocking(|| pairing_uri(robot));
    let mut phone = Phone::connect(&net.broker_url(), ClientId::random()).await.expect("phone connects");
    let paired = phone.pair(&uri, "Alice", SOON).await.expect("pairing succeeds");
    // The video goes to a sink on the robot's own loopback.
    let sink = net.robot.run(UdpSink::bind);
    let mut c = call(&mut phone, &paired, sink.port).await;
    sleep_pinging(&mut phone, &mut c, Duration::from_secs(2)).await;

    // Baseline: the call alone (video encoding) for 3 s.
    let quiet_rate = quiet_cpu_rate(&mut phone, &mut c, pid).await;
    let rss0 = rss_kib(pid);
    let before = status(robot);
    let d0 = drop_counts(&before);
    let _ = watch.collect_for(Duration::from_millis(1500)).await;
    let sys0 = sys_counters(&watch.seen);

    // The attacker: two processes on their own host and CPU.
    let exe = std::env::current_exe().unwrap();
    let broker = format!("{SERVER}:{MQTT_PORT}");
    let forged_requests = [topics::session_request(&c.session, "drive"), topics::session_request(&c.session, "stop")];
    let strangers: Vec<String> = (0..4)
        .flat_map(|_| {
            [topics::invite(&robot_id, &ClientId::random()), topics::pair_request(&robot_id, &ClientId::random())]
        })
        .collect();
    let flooders: Vec<Child> = [&forged_requests[..], &strangers[..]]
        .iter()
        .map(|topics| {
            net.attacker
                .command("taskset")
                .args(["-c", attacker_cpu])
                .arg(&exe)
                .args(["flood", &broker, &FLOOD_SECS.to_string(), &FLOOD_MAX.to_string(), phone.id.as_str()])
                .args(topics.iter())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a flooder")
        })
        .collect();
    let (c0, t0) = (cpu_time(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let owner = owner_series(&mut phone, &mut c, OWNER_REQUESTS, Duration::from_millis(20)).await;
    let owner_s = t0.elapsed().as_secs_f64();
    let reports: Vec<(u64, f64)> = blocking(|| flooders.into_iter().map(finish).collect());
    let flood_s = t0.elapsed().as_secs_f64();
    let cpu = cpu_time(pid) - c0;
    let rss1 = rss_kib(pid);
    // Two $SYS updates after the flood, so its last packets are counted.
    let _ = watch.collect_for(Duration::from_millis(2500)).await;
    let sys1 = sys_counters(&watch.seen);
    let after = status(robot);
    let d1 = drop_counts(&after);

    let sent: u64 = reports.iter().map(|r| r.0).sum();
    let flood_len = reports.iter().map(|r| r.1).fold(0.001, f64::max);
    let sent_rate: f64 = reports.iter().map(|r| r.0 as f64 / r.1.max(0.001)).sum();
    let sys = |k: &str| sys1.get(k).copied().unwrap_or(0).saturating_sub(sys0.get(k).copied().unwrap_or(0));
    let handled: u64 = d1.keys().map(|k| delta(&d1, &d0, k)).sum();
    let diff: BTreeMap<&String, u64> = d1.keys().map(|k| (k, delta(&d1, &d0, k))).filter(|(_, v)| *v > 0).collect();
    let extra_cpu = (cpu.as_secs_f64() - quiet_rate * flood_s).max(0.0);
    let presence_false = watch.seen.iter().filter(|m| m.topic == presence && m.payload != "true".as_bytes()).count();
    let broker_log = net.mosquitto_log();
    let timeouts: Vec<&str> =
        broker_log.lines().filter(|l| l.contains(robot.id.as_str()) && l.contains("exceeded timeout")).collect();
    eprintln!(
        "FIGURE flood-netns: CPUs: broker+robotd+phone {home_cpu}, attacker {attacker_cpu} ({cpus} online); \
         flooders wrote {sent} forged PUBLISH ({sent_rate:.0}/s over {flood_len:.1} s, per process {reports:?}); \
         broker received {} PUBLISH ({:.0}/s over the flood's {flood_len:.1} s), sent {}, dropped {} (all clients); \
         robotd counted {handled} drops {diff:?}",
        sys("received"),
        sys("received") as f64 / flood_len,
        sys("sent"),
        sys("dropped"),
    );
    eprintln!(
        "FIGURE flood-netns owner: {}/{} answered ok, {} refused, {} lost (series ended {owner_s:.1} s into the flood); \
         latency p50 {:?} p99 {:?} max {:?}; robotd broker.connects {} -> {}, presence false {presence_false} times, \
         broker keep-alive timeouts for robotd {}; robotd CPU {:.2} s in the {flood_s:.1} s window ({:.0}% of one core; \
         call alone {:.0}%) -> {:.1} us per message it handled; RSS {rss0} -> {rss1} KiB",
        owner.ok,
        owner.sent,
        owner.refused.len(),
        owner.lost.len(),
        owner.pct(0.5),
        owner.pct(0.99),
        owner.pct(1.0),
        before["broker"]["connects"],
        after["broker"]["connects"],
        timeouts.len(),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() / flood_s * 100.0,
        quiet_rate * 100.0,
        extra_cpu * 1e6 / handled.max(1) as f64,
    );

    // The flood was a flood, and it reached robotd.
    assert!(sent >= 20_000, "the flood was too small to mean anything: {sent} packets {reports:?}");
    assert!(handled >= 1_000, "hardly any flood message reached robotd: {diff:?}");
    // Not asserted: how many owner requests the flood cost, and whether the
    // link held. With broker and robotd on one core, PUBACKs to robotd wait
    // behind the flood in the broker's stream, rumqttc's window fills, and a
    // packet-id collision stalls robotd's publishing until it reconnects
    // (docs/reliability.md, section 7). Only the broker's limits prevent that.
    // Asserted: robotd comes back by itself once the flood is over (before
    // the fix in src/daemon/link.rs a stuck collision kept it reconnecting
    // every two keep-alives, forever), and the owner is served again.
    let presence_now =
        |w: &Probe| w.seen.iter().rev().find(|m| m.topic == presence).is_some_and(|m| m.payload == "true".as_bytes());
    let end = Instant::now() + SOON;
    while !(presence_now(&watch) && status(robot)["broker"]["connected"] == json!(true)) && Instant::now() < end {
        let _ = watch.collect_for(Duration::from_millis(500)).await;
    }
    let settled = status(robot);
    assert_eq!(settled["broker"]["connected"], json!(true), "robotd did not get its link back: {settled}");
    assert!(presence_now(&watch), "robotd's presence is not `true` after the flood: {:?}", watch.seen);
    let connects = settled["broker"]["connects"].as_u64().unwrap();
    let s1 = status(robot);
    let mut c = if s1["call"]["session"] == c.session.as_str() {
        c
    } else {
        eprintln!("FIGURE flood-netns: the call ended during the flood ({}); calling again", s1["call"]);
        call(&mut phone, &paired, sink.port).await
    };
    for _ in 0..5 {
        ping(&mut phone, &mut c).await;
    }
    drive(&mut phone, &mut c, 0.2, 300).await;
    assert_eq!(request(&mut phone, &mut c, "stop", json!({})).await["status"], "stopped");
    // Still on the same connection: it is stable again, not cycling.
    let s2 = status(robot);
    assert_eq!(s2["broker"]["connects"].as_u64(), Some(connects), "robotd is still reconnecting: {s2}");
    assert!(rss1 < rss0 + 32 * 1024, "RSS grew from {rss0} KiB to {rss1} KiB");
    // No forged message started a call: a second invite finds the robot busy.
    match phone.invite(&paired, &Offer::new(LOCALHOST, sink.port), SOON).await.expect("an answer") {
        InviteOutcome::Refused(v) => assert_eq!(v["status"], "busy", "{v}"),
        InviteOutcome::Accepted(_) => panic!("accepted during a call"),
    }
    assert!(!robot.log().contains("panicked"), "robotd panicked:\n{}", robot.log());
}
