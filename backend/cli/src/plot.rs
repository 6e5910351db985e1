//! The training curve as a PNG (plotters, bitmap backend, the DejaVu Sans font embedded): loss on a log scale above,
//! accuracy per split below, stages marked.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use unike_core::train::driver::{CurvePoint, Stage};

pub const SERIES: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

pub fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The embedded font is valid; a failure would only lose the labels, not the plot.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws `curve` into `path` (PNG, 1100 x 800).
pub fn training_curve(curve: &[CurvePoint], title: &str, path: &Path) -> Result<()> {
    register_font();
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    let root = BitMapBackend::new(path, (1100, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(330);
    let last = curve.last().map_or(1, |p| p.step) as f64;
    let (lo, hi) =
        curve.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), p| (lo.min(p.loss), hi.max(p.loss)));
    let (lo, hi) = if lo.is_finite() { ((lo * 0.8).max(1e-4) as f64, (hi * 1.25) as f64) } else { (1e-3, 10.0) };

    let mut chart = ChartBuilder::on(&top)
        .margin(12)
        .caption("training loss (mean since the previous point)", ("sans-serif", 16))
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..last, (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("step").y_desc("loss").draw().map_err(|e| err(&e))?;
    for (i, stage) in [Stage::Vision, Stage::Align, Stage::Tune].into_iter().enumerate() {
        let pts: Vec<(f64, f64)> =
            curve.iter().filter(|p| p.stage == stage).map(|p| (p.step as f64, p.loss as f64)).collect();
        if pts.is_empty() {
            continue;
        }
        let colour = SERIES[i];
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{} stage", stage.name()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(|e| err(&e))?;

    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .caption("accuracy (vision: classifier; then teacher-forced exact match per split)", ("sans-serif", 16))
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..last, 0f64..1.02)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("step").y_desc("accuracy").draw().map_err(|e| err(&e))?;
    let mut names: Vec<&String> = curve.iter().flat_map(|p| p.metrics.keys()).collect();
    names.sort();
    names.dedup();
    for (i, name) in names.into_iter().enumerate() {
        let pts: Vec<(f64, f64)> =
            curve.iter().filter_map(|p| p.metrics.get(name).map(|&v| (p.step as f64, v as f64))).collect();
        let colour = SERIES[i % SERIES.len()];
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
