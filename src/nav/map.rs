//! The `[nav]` section: named places, edges made of motion steps, validation
//! and route planning.
//!
//! # Frames and headings
//! Every place has a pose in the *map frame*: home is `(0, 0)` facing
//! heading 0, and every other place's pose is where the steps of the edges
//! from home leave the robot, heading included. That heading is the place's
//! *canonical heading*: a route always ends with the robot facing it, and
//! every edge's steps are measured starting from it. Loops in the map must
//! agree (within [`LOOP_TOLERANCE_M`] and [`LOOP_TOLERANCE_DEG`]), which
//! [`Map::from_config`] checks.
//!
//! # Reverse edges
//! An edge `from -> to` is also the way back. Its reverse is the inverse
//! motion: the steps in reverse order with every turn negated, and every
//! drive (which would have to be done backwards, blind to the front
//! obstacle sensor) replaced by "turn 180°, drive forwards, turn 180°".
//! Adjacent turns are then merged and normalised into (-180°, 180°], so
//! `[turn a, drive d, turn b]` reverses to `[turn 180-b, drive d, turn 180-a]`.
//! The robot therefore comes back facing `from`'s canonical heading.
//!
//! # Routes
//! [`Map::route`] is Dijkstra over the places, weighted by the metres driven
//! (turns cost nothing when choosing a route).

use serde::{Deserialize, Serialize};

use crate::wire::payloads::is_speed_fraction;

/// Name of the robot's dock unless `nav.home` says otherwise.
pub const DEFAULT_HOME: &str = "home";
/// The word `at` uses when the robot does not know where it is; no place may have it.
pub const UNKNOWN: &str = "unknown";
/// How far two ways to one place may disagree about its position.
pub const LOOP_TOLERANCE_M: f64 = 0.10;
/// How far two ways to one place may disagree about its heading.
pub const LOOP_TOLERANCE_DEG: f64 = 5.0;
/// Longest single drive step (a typo guard: 1000 instead of 1.0).
pub const MAX_DRIVE_M: f64 = 50.0;

/// A `[nav]` value that cannot work, with the key that holds it.
///
/// Cause: the map or a speed in `[nav]` is inconsistent. Fix: edit the key
/// named in the message (e.g. `nav.edges[2].to`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct NavConfigError {
    /// Dotted path of the offending key.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn err<T>(key: impl Into<String>, message: impl Into<String>) -> Result<T, NavConfigError> {
    Err(NavConfigError { key: key.into(), message: message.into() })
}

/// The `[nav]` section: the map and how the robot drives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NavConfig {
    /// The dock, where the map's frame starts (`"home"`).
    pub home: String,
    /// The other places (home may be listed too, once).
    pub places: Vec<String>,
    /// Ways between places, each travelled in both directions.
    pub edges: Vec<EdgeConfig>,
    /// How long an obstacle may stand in the way before the goto ends
    /// `blocked` (seconds, 0..=300; default 5).
    pub obstacle_clear_s: f64,
    /// Driving speed as a fraction of `hardware.max_speed_mps` (0..1; default 0.5).
    pub cruise_speed: f64,
    /// Wheel speed when turning in place, as a fraction of `hardware.max_speed_mps` (default 0.3).
    pub turn_speed: f64,
    /// Slowest commanded speed, as a fraction (default 0.04); raise it if the
    /// robot stalls just before a target (raise the motors' `min_duty` first).
    pub min_speed: f64,
    /// Acceleration and deceleration of the speed ramps (m/s², default 0.5).
    pub accel_mps2: f64,
}

impl Default for NavConfig {
    fn default() -> Self {
        Self {
            home: DEFAULT_HOME.into(),
            places: Vec::new(),
            edges: Vec::new(),
            obstacle_clear_s: 5.0,
            cruise_speed: 0.5,
            turn_speed: 0.3,
            min_speed: 0.04,
            accel_mps2: 0.5,
        }
    }
}

/// One edge (`[[nav.edges]]`): the steps that take the robot from `from`
/// (facing its canonical heading) to `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Start place.
    pub from: String,
    /// End place.
    pub to: String,
    /// Motion steps, e.g. `[{ drive_m = 2.0 }, { turn_deg = 90 }]`.
    pub steps: Vec<StepConfig>,
}

/// One step as written in the config: exactly one of the two keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Drive straight ahead this far (metres, > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drive_m: Option<f64>,
    /// Turn in place by this angle (degrees, positive = left / counter-clockwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_deg: Option<f64>,
}

/// A validated motion step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Drive forwards this many metres.
    Drive(f64),
    /// Turn in place by this many degrees, within (-180, 180], positive = left.
    Turn(f64),
}

/// An angle in degrees normalised into (-180, 180].
pub fn normalize_deg(a: f64) -> f64 {
    let mut a = a % 360.0;
    if a > 180.0 {
        a -= 360.0;
    } else if a <= -180.0 {
        a += 360.0;
    }
    a
}

/// Turns closer to zero than this are dropped when steps are merged.
const ZERO_TURN_DEG: f64 = 1e-6;

/// Merges adjacent turns (and adjacent drives) and drops turns that come to nothing.
pub fn merge_steps(steps: impl IntoIterator<Item = Step>) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for s in steps {
        match (s, out.last_mut()) {
            (Step::Turn(b), Some(Step::Turn(a))) => *a = normalize_deg(*a + b),
            (Step::Drive(b), Some(Step::Drive(a))) => *a += b,
            (Step::Turn(b), _) => out.push(Step::Turn(normalize_deg(b))),
            (d, _) => out.push(d),
        }
        if matches!(out.last(), Some(Step::Turn(a)) if a.abs() < ZERO_TURN_DEG) {
            out.pop();
        }
    }
    out
}

/// The steps that undo `steps` driving forwards only (see the module docs).
pub fn reverse_steps(steps: &[Step]) -> Vec<Step> {
    let raw = steps.iter().rev().flat_map(|s| match *s {
        Step::Turn(a) => vec![Step::Turn(-a)],
        Step::Drive(d) => vec![Step::Turn(180.0), Step::Drive(d), Step::Turn(180.0)],
    });
    merge_steps(raw)
}

/// Where the robot is in the map frame: metres, radians (0 = home's
/// heading, counter-clockwise positive).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Pose {
    /// Metres.
    pub x: f64,
    /// Metres.
    pub y: f64,
    /// Radians, normalised to (-π, π].
    pub heading: f64,
}

/// An angle in radians normalised into (-π, π].
pub fn wrap_rad(a: f64) -> f64 {
    normalize_deg(a.to_degrees()).to_radians()
}

impl Pose {
    /// The pose after `steps`.
    pub fn after(self, steps: &[Step]) -> Pose {
        steps.iter().fold(self, |p, s| match *s {
            Step::Drive(d) => Pose { x: p.x + d * p.heading.cos(), y: p.y + d * p.heading.sin(), ..p },
            Step::Turn(a) => Pose { heading: wrap_rad(p.heading + a.to_radians()), ..p },
        })
    }
}

#[derive(Debug, Clone)]
struct Edge {
    from: usize,
    to: usize,
    forward: Vec<Step>,
    reverse: Vec<Step>,
    drive_m: f64,
}

/// One edge of a route, in the direction travelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// The place this segment ends at.
    pub to: String,
    /// Its pose in the map frame.
    pub to_pose: Pose,
    /// The steps, in the direction travelled.
    pub steps: Vec<Step>,
}

/// A planned route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Start place.
    pub from: String,
    /// Its pose.
    pub from_pose: Pose,
    /// Every place on the way, start and end included.
    pub places: Vec<String>,
    /// One segment per edge travelled.
    pub segments: Vec<Segment>,
}

impl Route {
    /// The route as one flat list of steps, adjacent turns and drives merged.
    pub fn steps(&self) -> Vec<Step> {
        merge_steps(self.segments.iter().flat_map(|s| s.steps.iter().copied()))
    }

    /// Metres driven along the route (turns excluded).
    pub fn drive_m(&self) -> f64 {
        self.steps().iter().map(|s| if let Step::Drive(d) = s { *d } else { 0.0 }).sum()
    }
}

/// The validated map.
#[derive(Debug, Clone)]
pub struct Map {
    places: Vec<String>,
    poses: Vec<Pose>,
    edges: Vec<Edge>,
}

fn check_name(key: &str, name: &str) -> Result<(), NavConfigError> {
    if name.is_empty() || name.len() > 64 {
        return err(key, format!("{name:?} must be 1 to 64 bytes long"));
    }
    if name.trim() != name || name.chars().any(char::is_control) {
        return err(key, format!("{name:?} may not start or end with spaces or hold control characters"));
    }
    if name == UNKNOWN {
        return err(key, format!("{UNKNOWN:?} is reserved: it is what `at` says when the robot is lost"));
    }
    Ok(())
}

fn check_speed(key: &str, v: f64) -> Result<(), NavConfigError> {
    if !is_speed_fraction(v) || v <= 0.0 {
        return err(key, format!("must be a fraction of full speed within 0 (exclusive) to 1, got {v}"));
    }
    Ok(())
}

impl NavConfig {
    /// Validates and builds the map. Errors name the key, e.g.
    /// `nav.edges[2].to: unknown place "bedrom"`.
    pub fn validate(&self) -> Result<Map, NavConfigError> {
        Map::from_config(self)
    }
}

impl Map {
    /// Validates `cfg` and computes every place's pose.
    pub fn from_config(cfg: &NavConfig) -> Result<Map, NavConfigError> {
        check_speed("nav.cruise_speed", cfg.cruise_speed)?;
        check_speed("nav.turn_speed", cfg.turn_speed)?;
        check_speed("nav.min_speed", cfg.min_speed)?;
        if cfg.min_speed > cfg.cruise_speed.min(cfg.turn_speed) {
            return err("nav.min_speed", "must not exceed nav.cruise_speed or nav.turn_speed");
        }
        if !cfg.accel_mps2.is_finite() || cfg.accel_mps2 <= 0.0 || cfg.accel_mps2 > 10.0 {
            return err("nav.accel_mps2", format!("must be within 0 (exclusive) to 10 m/s², got {}", cfg.accel_mps2));
        }
        if !cfg.obstacle_clear_s.is_finite() || !(0.0..=300.0).contains(&cfg.obstacle_clear_s) {
            return err(
                "nav.obstacle_clear_s",
                format!("must be within 0 to 300 seconds, got {}", cfg.obstacle_clear_s),
            );
        }

        check_name("nav.home", &cfg.home)?;
        let mut places = vec![cfg.home.clone()];
        let mut home_listed = false;
        for (i, p) in cfg.places.iter().enumerate() {
            let key = format!("nav.places[{i}]");
            check_name(&key, p)?;
            if *p == cfg.home && !home_listed {
                home_listed = true;
                continue;
            }
            if places.contains(p) {
                return err(key, format!("place {p:?} is listed twice"));
            }
            places.push(p.clone());
        }
        let known = places.join(", ");
        let index = |key: String, name: &str| -> Result<usize, NavConfigError> {
            places.iter().position(|p| p == name).map_or_else(
                || err(key, format!("unknown place {name:?}; the places are {known} (add it to nav.places)")),
                Ok,
            )
        };

        let mut edges = Vec::new();
        for (i, e) in cfg.edges.iter().enumerate() {
            let key = format!("nav.edges[{i}]");
            let from = index(format!("{key}.from"), &e.from)?;
            let to = index(format!("{key}.to"), &e.to)?;
            if from == to {
                return err(format!("{key}.to"), format!("an edge must lead to another place, not back to {:?}", e.to));
            }
            if e.steps.is_empty() {
                return err(format!("{key}.steps"), "needs at least one step, e.g. [{ drive_m = 1.5 }]");
            }
            let mut steps = Vec::new();
            for (j, s) in e.steps.iter().enumerate() {
                let skey = format!("{key}.steps[{j}]");
                steps.push(match (s.drive_m, s.turn_deg) {
                    (Some(d), None) => {
                        if !d.is_finite() || d < 0.0 {
                            return err(
                                format!("{skey}.drive_m"),
                                format!("{d} is not a distance; drives go forwards (turn 180 first to go back)"),
                            );
                        }
                        if d == 0.0 {
                            return err(format!("{skey}.drive_m"), "zero-length step; remove it");
                        }
                        if d > MAX_DRIVE_M {
                            return err(format!("{skey}.drive_m"), format!("{d} m is more than {MAX_DRIVE_M} m"));
                        }
                        Step::Drive(d)
                    }
                    (None, Some(a)) => {
                        if !a.is_finite() || a.abs() > 360.0 {
                            return err(
                                format!("{skey}.turn_deg"),
                                format!("must be within -360 to 360 degrees, got {a}"),
                            );
                        }
                        if normalize_deg(a).abs() < ZERO_TURN_DEG {
                            return err(
                                format!("{skey}.turn_deg"),
                                format!("zero-length step ({a}° is no turn); remove it"),
                            );
                        }
                        Step::Turn(a)
                    }
                    _ => return err(skey, "give exactly one of drive_m or turn_deg"),
                });
            }
            let forward = merge_steps(steps);
            let reverse = reverse_steps(&forward);
            let drive_m = forward.iter().map(|s| if let Step::Drive(d) = s { *d } else { 0.0 }).sum();
            edges.push(Edge { from, to, forward, reverse, drive_m });
        }

        // Poses: breadth first from home; remember which edge found each place.
        let n = places.len();
        let mut poses: Vec<Option<(Pose, usize)>> = vec![None; n];
        poses[0] = Some((Pose::default(), usize::MAX));
        let mut queue = std::collections::VecDeque::from([0usize]);
        while let Some(p) = queue.pop_front() {
            let (pose, _) = poses[p].expect("queued places have poses");
            for (i, e) in edges.iter().enumerate() {
                let next = if e.from == p {
                    Some((e.to, pose.after(&e.forward)))
                } else if e.to == p {
                    Some((e.from, pose.after(&e.reverse)))
                } else {
                    None
                };
                if let Some((q, qpose)) = next {
                    if poses[q].is_none() {
                        poses[q] = Some((qpose, i));
                        queue.push_back(q);
                    }
                }
            }
        }
        let mut resolved = Vec::with_capacity(n);
        for (i, p) in poses.iter().enumerate() {
            match p {
                Some((pose, _)) => resolved.push(*pose),
                None => {
                    let key = cfg.places.iter().position(|q| *q == places[i]).map(|j| format!("nav.places[{j}]"));
                    return err(
                        key.unwrap_or_else(|| "nav.places".into()),
                        format!("{:?} cannot be reached from {:?}; add an edge that leads there", places[i], places[0]),
                    );
                }
            }
        }

        // Loops must agree.
        for (i, e) in edges.iter().enumerate() {
            let end = resolved[e.from].after(&e.forward);
            let want = resolved[e.to];
            let off_m = (end.x - want.x).hypot(end.y - want.y);
            let off_deg = normalize_deg((end.heading - want.heading).to_degrees()).abs();
            if off_m > LOOP_TOLERANCE_M || off_deg > LOOP_TOLERANCE_DEG {
                let via = poses[e.to].map_or(usize::MAX, |(_, k)| k);
                return err(
                    format!("nav.edges[{i}]"),
                    format!(
                        "leads from {:?} to ({:.2}, {:.2}) facing {:.0}°, but {:?} is at ({:.2}, {:.2}) facing {:.0}° \
                         by way of nav.edges[{via}]; the ways to a place must agree within {LOOP_TOLERANCE_M} m and \
                         {LOOP_TOLERANCE_DEG}° (remeasure one of them)",
                        places[e.from],
                        end.x,
                        end.y,
                        end.heading.to_degrees(),
                        places[e.to],
                        want.x,
                        want.y,
                        want.heading.to_degrees(),
                    ),
                );
            }
        }
        Ok(Map { places, poses: resolved, edges })
    }

    /// The dock.
    pub fn home(&self) -> &str {
        &self.places[0]
    }

    /// Every place, home first, then in config order.
    pub fn places(&self) -> &[String] {
        &self.places
    }

    /// Whether `name` is a place.
    pub fn contains(&self, name: &str) -> bool {
        self.places.iter().any(|p| p == name)
    }

    /// A place's pose in the map frame.
    pub fn pose(&self, place: &str) -> Option<Pose> {
        self.places.iter().position(|p| p == place).map(|i| self.poses[i])
    }

    /// The shortest route (metres driven) from `from` to `to`; `None` when
    /// either is not a place. From a place to itself the route is empty.
    pub fn route(&self, from: &str, to: &str) -> Option<Route> {
        let src = self.places.iter().position(|p| p == from)?;
        let dst = self.places.iter().position(|p| p == to)?;
        let n = self.places.len();
        // Maps are small: the O(n²) Dijkstra needs no float ordering.
        let mut dist = vec![f64::INFINITY; n];
        let mut prev: Vec<Option<(usize, usize, bool)>> = vec![None; n];
        let mut done = vec![false; n];
        dist[src] = 0.0;
        let next = |dist: &[f64], done: &[bool]| {
            (0..n).filter(|&i| !done[i] && dist[i].is_finite()).min_by(|&a, &b| dist[a].total_cmp(&dist[b]))
        };
        while let Some(u) = next(&dist, &done) {
            done[u] = true;
            if u == dst {
                break;
            }
            for (i, e) in self.edges.iter().enumerate() {
                let (v, forward) = if e.from == u {
                    (e.to, true)
                } else if e.to == u {
                    (e.from, false)
                } else {
                    continue;
                };
                let d = dist[u] + e.drive_m;
                if d < dist[v] {
                    dist[v] = d;
                    prev[v] = Some((u, i, forward));
                }
            }
        }
        if !dist[dst].is_finite() {
            return None; // validation guarantees connectivity; be safe anyway
        }
        let mut segments = Vec::new();
        let mut places = vec![self.places[dst].clone()];
        let mut v = dst;
        while let Some((u, i, forward)) = prev[v] {
            let e = &self.edges[i];
            let steps = if forward { e.forward.clone() } else { e.reverse.clone() };
            segments.push(Segment { to: self.places[v].clone(), to_pose: self.poses[v], steps });
            places.push(self.places[u].clone());
            v = u;
        }
        segments.reverse();
        places.reverse();
        Some(Route { from: self.places[src].clone(), from_pose: self.poses[src], places, segments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nav::testdata::FLAT;

    fn parse(text: &str) -> NavConfig {
        toml::from_str(text).unwrap()
    }

    fn map_err(text: &str) -> NavConfigError {
        Map::from_config(&parse(text)).expect_err("map should be rejected")
    }

    fn close(a: Pose, b: Pose) -> bool {
        (a.x - b.x).abs() < 1e-9 && (a.y - b.y).abs() < 1e-9 && wrap_rad(a.heading - b.heading).abs() < 1e-9
    }

    #[test]
    fn flat_places_have_poses() {
        let m = Map::from_config(&parse(FLAT)).unwrap();
        assert_eq!(m.places(), ["home", "hall", "kitchen", "bedroom"]);
        let deg = f64::to_radians;
        assert!(close(m.pose("hall").unwrap(), Pose { x: 2.0, y: 0.0, heading: deg(90.0) }));
        assert!(close(m.pose("kitchen").unwrap(), Pose { x: 2.0, y: 1.5, heading: deg(90.0) }));
        assert!(close(m.pose("bedroom").unwrap(), Pose { x: 4.0, y: 0.0, heading: 0.0 }));
    }

    #[test]
    fn reverse_convention() {
        // [turn a, drive d, turn b] -> [turn 180-b, drive d, turn 180-a]
        let r = reverse_steps(&[Step::Turn(30.0), Step::Drive(1.0), Step::Turn(90.0)]);
        assert_eq!(r, vec![Step::Turn(90.0), Step::Drive(1.0), Step::Turn(150.0)]);
        let r = reverse_steps(&[Step::Drive(2.0), Step::Turn(90.0)]);
        assert_eq!(r, vec![Step::Turn(90.0), Step::Drive(2.0), Step::Turn(180.0)]);
        let r = reverse_steps(&[Step::Drive(2.0), Step::Turn(90.0), Step::Drive(1.0)]);
        assert_eq!(
            r,
            vec![Step::Turn(180.0), Step::Drive(1.0), Step::Turn(-90.0), Step::Drive(2.0), Step::Turn(180.0)]
        );
    }

    #[test]
    fn forward_then_reverse_is_the_identity() {
        let cases: &[&[Step]] = &[
            &[Step::Drive(2.0), Step::Turn(90.0)],
            &[Step::Turn(-45.0), Step::Drive(1.0), Step::Turn(120.0), Step::Drive(0.5)],
            &[Step::Turn(180.0), Step::Drive(3.0)],
        ];
        for steps in cases {
            let start = Pose { x: 1.0, y: -2.0, heading: 0.3 };
            let end = start.after(steps).after(&reverse_steps(steps));
            assert!(close(start, end), "{steps:?}: {end:?}");
            // Reversing twice gives the same motion back.
            let twice = start.after(&reverse_steps(&reverse_steps(steps)));
            assert!(close(start.after(steps), twice), "{steps:?}");
        }
    }

    #[test]
    fn merging_steps() {
        assert_eq!(merge_steps([Step::Turn(90.0), Step::Turn(-90.0), Step::Drive(1.0)]), vec![Step::Drive(1.0)]);
        assert_eq!(merge_steps([Step::Turn(270.0)]), vec![Step::Turn(-90.0)]);
        assert_eq!(merge_steps([Step::Turn(-180.0)]), vec![Step::Turn(180.0)]);
        assert_eq!(merge_steps([Step::Drive(1.0), Step::Turn(0.0), Step::Drive(2.0)]), vec![Step::Drive(3.0)]);
    }

    #[test]
    fn shortest_route_through_waypoints() {
        let m = Map::from_config(&parse(FLAT)).unwrap();
        let r = m.route("kitchen", "bedroom").unwrap();
        assert_eq!(r.places, ["kitchen", "hall", "bedroom"]);
        // Back along the hall edge, then on to the bedroom: one left turn at the hall.
        assert_eq!(r.steps(), vec![Step::Turn(180.0), Step::Drive(1.5), Step::Turn(90.0), Step::Drive(2.0)]);
        assert!((r.drive_m() - 3.5).abs() < 1e-12);
        assert!(close(r.from_pose.after(&r.steps()), m.pose("bedroom").unwrap()));
        let home = m.route("home", "bedroom").unwrap();
        assert_eq!(home.steps(), vec![Step::Drive(4.0)]);
        assert!(m.route("home", "home").unwrap().segments.is_empty());
        assert!(m.route("home", "attic").is_none());
    }

    #[test]
    fn dijkstra_prefers_fewer_metres() {
        // A square home-a-b with a long way round and a short diagonal.
        let text = r#"
            places = ["a", "b"]
            [[edges]]
            from = "home"
            to = "a"
            steps = [{ drive_m = 1.0 }]
            [[edges]]
            from = "a"
            to = "b"
            steps = [{ turn_deg = 90 }, { drive_m = 1.0 }, { turn_deg = -90 }]
            [[edges]]
            from = "home"
            to = "b"
            steps = [{ turn_deg = 45 }, { drive_m = 1.41421356 }, { turn_deg = -45 }]
        "#;
        let m = Map::from_config(&parse(text)).unwrap();
        assert_eq!(m.route("home", "b").unwrap().places, ["home", "b"]);
        assert_eq!(m.route("a", "b").unwrap().places, ["a", "b"]);
    }

    #[test]
    fn validation_errors_name_the_key() {
        let edge = |from: &str, to: &str, steps: &str| {
            format!("places = [\"hall\"]\n[[edges]]\nfrom = \"{from}\"\nto = \"{to}\"\nsteps = {steps}\n")
        };
        let cases = [
            (edge("home", "hal", "[{ drive_m = 1.0 }]"), "nav.edges[0].to", "unknown place \"hal\""),
            (edge("hom", "hall", "[{ drive_m = 1.0 }]"), "nav.edges[0].from", "unknown place"),
            (edge("home", "hall", "[{ drive_m = 0.0 }]"), "nav.edges[0].steps[0].drive_m", "zero-length"),
            (edge("home", "hall", "[{ drive_m = 1.0 }, { turn_deg = 360 }]"), "nav.edges[0].steps[1].turn_deg", "zero"),
            (edge("home", "hall", "[{ drive_m = -1.0 }]"), "nav.edges[0].steps[0].drive_m", "forwards"),
            (edge("home", "hall", "[{ drive_m = 1.0, turn_deg = 5 }]"), "nav.edges[0].steps[0]", "exactly one"),
            (edge("home", "hall", "[]"), "nav.edges[0].steps", "at least one"),
            (edge("hall", "hall", "[{ drive_m = 1.0 }]"), "nav.edges[0].to", "another place"),
            ("places = [\"hall\", \"hall\"]".into(), "nav.places[1]", "twice"),
            ("places = [\"hall\"]".into(), "nav.places[0]", "cannot be reached"),
            ("places = [\"unknown\"]".into(), "nav.places[0]", "reserved"),
            ("home = \"\"".into(), "nav.home", "1 to 64"),
            ("cruise_speed = 1.5".into(), "nav.cruise_speed", "fraction"),
            ("min_speed = 0.9".into(), "nav.min_speed", "exceed"),
            ("obstacle_clear_s = -1".into(), "nav.obstacle_clear_s", "0 to 300"),
        ];
        for (text, key, what) in cases {
            let e = map_err(&text);
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.message.contains(what), "{text}: {e}");
        }
    }

    #[test]
    fn loops_must_agree() {
        let text = format!("{FLAT}\n[[edges]]\nfrom = \"home\"\nto = \"bedroom\"\nsteps = [{{ drive_m = 4.5 }}]\n");
        // Breadth first from home finds the direct edge first, so the way
        // through the hall is the one reported.
        let e = map_err(&text);
        assert_eq!(e.key, "nav.edges[2]");
        assert!(e.message.contains("\"bedroom\" is at (4.50, 0.00) facing 0° by way of nav.edges[3]"), "{e}");
        let ok = format!("{FLAT}\n[[edges]]\nfrom = \"home\"\nto = \"bedroom\"\nsteps = [{{ drive_m = 4.05 }}]\n");
        Map::from_config(&parse(&ok)).unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<NavConfig>("hme = \"x\"").is_err());
        let e = toml::from_str::<NavConfig>("[[edges]]\nfrom=\"a\"\nto=\"b\"\nsteps=[{ drive = 1 }]").unwrap_err();
        assert!(e.to_string().contains("drive"), "{e}");
        // Integers are accepted where numbers are expected.
        let c = parse("obstacle_clear_s = 3\n[[edges]]\nfrom=\"home\"\nto=\"b\"\nsteps=[{ turn_deg = 90 }]");
        assert_eq!(c.edges[0].steps[0].turn_deg, Some(90.0));
    }
}
