//! Procedural images of the world: entity glyphs (identity = shape × colour × stripes) in random renderings, and
//! scenes of small objects in the four quadrants. Every image is a pure function of its parameters and a seed.

use image::{Rgb, RgbImage};

use super::lexicon::COLOURS;
use super::rng::Rng;

/// Side of every world image, in pixels.
pub const IMAGE_SIZE: u32 = 32;

/// True when `(u, v)` in `[-1, 1]²` (v down) lies inside `shape`.
pub fn inside(shape: usize, u: f32, v: f32) -> bool {
    let (au, av) = (u.abs(), v.abs());
    match shape {
        0 => u * u + v * v <= 1.0,
        1 => au <= 0.85 && av <= 0.85,
        2 => (-0.9..=0.9).contains(&v) && au <= (v + 0.9) / 1.8,
        3 => (-0.9..=0.9).contains(&v) && au <= (0.9 - v) / 1.8,
        4 => au + av <= 1.0,
        5 => (au <= 0.3 && av <= 0.95) || (av <= 0.3 && au <= 0.95),
        6 => (au - av).abs() <= 0.3 && au <= 0.95 && av <= 0.95,
        7 => (0.3..=1.0).contains(&(u * u + v * v)),
        8 => au <= 0.95 && av <= 0.4,
        _ => au <= 0.4 && av <= 0.95,
    }
}

fn background(rng: &mut Rng) -> (f32, [f32; 3], f32) {
    let g = rng.range(70.0, 180.0);
    let tint = [rng.range(-15.0, 15.0), rng.range(-15.0, 15.0), rng.range(-15.0, 15.0)];
    let gradient = if rng.unit() < 0.5 { rng.range(-40.0, 40.0) } else { 0.0 };
    (g, tint, gradient)
}

fn canvas(rng: &mut Rng) -> Vec<[f32; 3]> {
    let (g, tint, grad) = background(rng);
    let n = IMAGE_SIZE as usize;
    (0..n * n)
        .map(|i| {
            let y = (i / n) as f32 / n as f32 - 0.5;
            [g + tint[0] + grad * y, g + tint[1] + grad * y, g + tint[2] + grad * y]
        })
        .collect()
}

/// Paints `shape` with fill colour `colour` (striped or solid) into the box centred at `(cx, cy)` of half-size `r`.
fn paint(px: &mut [[f32; 3]], shape: usize, colour: usize, striped: bool, cx: f32, cy: f32, r: f32) {
    let n = IMAGE_SIZE as usize;
    let fill = COLOURS[colour].1;
    let light = matches!(colour, 3 | 4 | 8);
    let stripe = if light { [10u8, 10, 10] } else { [250u8, 250, 250] };
    let (x0, x1) = (((cx - r).floor().max(0.0)) as usize, ((cx + r).ceil().min(n as f32 - 1.0)) as usize);
    let (y0, y1) = (((cy - r).floor().max(0.0)) as usize, ((cy + r).ceil().min(n as f32 - 1.0)) as usize);
    for y in y0..=y1 {
        for x in x0..=x1 {
            let u = (x as f32 + 0.5 - cx) / r;
            let v = (y as f32 + 0.5 - cy) / r;
            if inside(shape, u, v) {
                let band = ((v + 1.0) * 2.5).floor() as i32 % 2 == 1;
                let c = if striped && band { stripe } else { fill };
                px[y * n + x] = [c[0] as f32, c[1] as f32, c[2] as f32];
            }
        }
    }
}

fn finish(px: Vec<[f32; 3]>, rng: &mut Rng) -> RgbImage {
    let n = IMAGE_SIZE;
    let sigma = rng.range(2.0, 10.0);
    let mut img = RgbImage::new(n, n);
    for (i, p) in px.into_iter().enumerate() {
        let mut c = [0u8; 3];
        for k in 0..3 {
            c[k] = (p[k] + sigma * rng.normal()).round().clamp(0.0, 255.0) as u8;
        }
        img.put_pixel(i as u32 % n, i as u32 / n, Rgb(c));
    }
    img
}

/// A rendering of an entity glyph: random scale (14-27 px), position, background and noise.
pub fn render_glyph(shape: usize, colour: usize, striped: bool, rng: &mut Rng) -> RgbImage {
    let mut px = canvas(rng);
    let n = IMAGE_SIZE as f32;
    let r = rng.range(0.22, 0.42) * n;
    let cx = rng.range(r, n - r);
    let cy = rng.range(r, n - r);
    paint(&mut px, shape, colour, striped, cx, cy, r);
    finish(px, rng)
}

/// One object of a scene: quadrant (0 top left, 1 top right, 2 bottom left, 3 bottom right), shape, colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SceneObject {
    pub slot: usize,
    pub shape: usize,
    pub colour: usize,
}

/// A rendering of a scene: each object at a jittered place and size inside its quadrant.
pub fn render_scene(objects: &[SceneObject], rng: &mut Rng) -> RgbImage {
    let mut px = canvas(rng);
    let half = IMAGE_SIZE as f32 / 2.0;
    for o in objects {
        let r = rng.range(4.5, 6.5);
        let (qx, qy) = ((o.slot % 2) as f32 * half, (o.slot / 2) as f32 * half);
        let cx = qx + rng.range(r, half - r);
        let cy = qy + rng.range(r, half - r);
        paint(&mut px, o.shape, o.colour, false, cx, cy, r);
    }
    finish(px, rng)
}
