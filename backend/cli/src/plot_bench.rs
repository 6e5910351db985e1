//! Benchmark charts (plotters, bitmap backend, DejaVu Sans embedded): grouped bars of the five editing metrics per
//! method or variant, and metric-versus-parameter lines.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::plot::{register_font, SERIES};

/// The five metrics every table reports, with their labels.
pub const METRICS: [&str; 5] = ["Reliability", "T-Generality", "M-Generality", "T-Locality", "M-Locality"];

/// Grouped bars: one group per metric, one bar per series (`(label, values)`), 0–100 %.
pub fn grouped_bars(path: &Path, title: &str, series: &[(String, [f64; 5])]) -> Result<()> {
    register_font();
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    let root = BitMapBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..5f64, 0f64..110f64)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("%")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    // Metric names above their groups (the x axis is continuous).
    chart
        .draw_series(
            METRICS
                .iter()
                .enumerate()
                .map(|(i, m)| Text::new(m.to_string(), (i as f64 + 0.38, 108.0), ("sans-serif", 16).into_font())),
        )
        .map_err(|e| err(&e))?;
    let n = series.len().max(1) as f64;
    let w = 0.8 / n;
    for (j, (label, vals)) in series.iter().enumerate() {
        let colour = SERIES[j % SERIES.len()];
        let bars = vals.iter().enumerate().map(move |(i, v)| {
            let x0 = i as f64 + 0.1 + j as f64 * w;
            Rectangle::new([(x0, 0.0), (x0 + w * 0.92, *v)], colour.filled())
        });
        chart
            .draw_series(bars)
            .map_err(|e| err(&e))?
            .label(label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Lines: each metric against `xs` (one point per configuration).
pub fn metric_lines(path: &Path, title: &str, x_desc: &str, xs: &[f64], vals: &[[f64; 5]]) -> Result<()> {
    let series: Vec<(String, Vec<f64>)> =
        METRICS.iter().enumerate().map(|(i, name)| (name.to_string(), vals.iter().map(|v| v[i]).collect())).collect();
    series_lines(path, title, x_desc, xs, &series)
}

/// Lines: each named series (a value per x, in percent) against `xs`.
pub fn series_lines(path: &Path, title: &str, x_desc: &str, xs: &[f64], series: &[(String, Vec<f64>)]) -> Result<()> {
    register_font();
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (lo, hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(*x), b.max(*x)));
    let pad = ((hi - lo) * 0.05).max(0.5);
    let lo_y = series.iter().flat_map(|(_, v)| v).fold(100f64, |a, v| a.min(*v)).min(80.0) - 5.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo - pad)..(hi + pad), lo_y.max(0.0)..101f64)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc(x_desc).y_desc("%").label_style(("sans-serif", 15)).draw().map_err(|e| err(&e))?;
    for (i, (name, ys)) in series.iter().enumerate() {
        let colour = SERIES[i % SERIES.len()];
        let pts: Vec<(f64, f64)> = xs.iter().zip(ys).map(|(x, y)| (*x, *y)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, colour.filled()))).map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
