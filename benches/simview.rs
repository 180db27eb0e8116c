//! The simulated camera's cost per frame (criterion): `simview::render_i420`
//! of a room (four walls, a shut door ahead, a bin) at 640x480 and 1280x720,
//! overlay included: what `robotd-media` spends per frame for
//! `video.device = "sim"` before the encoder. Floor, in the same run: writing
//! the same I420 frame with a grey ramp per row (what any source spends just
//! to fill the pixels). Run: `cargo bench --bench simview`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use robotd::hal::config::Obstacle;
use robotd::video::simview::{Overlay, ViewPose, render_i420};

fn room() -> Vec<Obstacle> {
    let b = |min: [f64; 2], max: [f64; 2]| Obstacle::Box { min, max };
    vec![
        b([-1.0, -2.0], [6.0, -1.9]),
        b([-1.0, 1.9], [6.0, 2.0]),
        b([-1.1, -2.0], [-1.0, 2.0]),
        b([6.0, -2.0], [6.1, 2.0]),
        b([3.0, -0.6], [3.05, 0.6]),
        Obstacle::Circle { center: [2.0, 1.2], radius: 0.2 },
    ]
}

fn benches(c: &mut Criterion) {
    let world = room();
    let pose = ViewPose { x: 0.5, y: 0.2, heading: 0.3, state: "driving".into() };
    let overlay = Overlay { time_ms: 12_345_678 };
    let mut frame = Vec::new();
    for (w, h) in [(640, 480), (1280, 720)] {
        c.bench_function(&format!("floor_fill_{w}x{h}"), |b| {
            b.iter(|| {
                let (wu, hu) = (w as usize, h as usize);
                frame.clear();
                frame.resize(robotd::video::simview::i420_len(w, h), 128);
                for (row, line) in frame[..wu * hu].chunks_exact_mut(wu).enumerate() {
                    line.fill(black_box(row as u8));
                }
                black_box(&frame);
            })
        });
        c.bench_function(&format!("simview_render_{w}x{h}"), |b| {
            b.iter(|| render_i420(black_box(&world), black_box(&pose), Some(&overlay), w, h, &mut frame))
        });
    }
}

criterion_group!(simview, benches);
criterion_main!(simview);
