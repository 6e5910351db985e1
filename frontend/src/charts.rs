//! Charts drawn with plotters into SVG strings: grouped bars of the five metrics per method (and per ζ treatment), a
//! metric against K for sequential editing, and the five metrics against a swept parameter (fixed α, retrieved K).

use plotters::prelude::*;

/// Names and colours of the five metrics, in order.
pub const METRICS: [(&str, RGBColor); 5] = [
    ("Reliability", RGBColor(31, 119, 180)),
    ("T-Generality", RGBColor(255, 127, 14)),
    ("M-Generality", RGBColor(44, 160, 44)),
    ("T-Locality", RGBColor(214, 39, 40)),
    ("M-Locality", RGBColor(148, 103, 189)),
];

/// Grouped bars: one group per `(label, five metrics in percent)`.
pub fn grouped_bars(title: &str, groups: &[(String, [f64; 5])]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let n = groups.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..n as f64, 0f64..125f64)
            .map_err(|e| e.to_string())?;
        let labels: Vec<String> = groups.iter().map(|(l, _)| l.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.26 {
                    labels.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("%")
            .draw()
            .map_err(|e| e.to_string())?;
        for (j, (name, colour)) in METRICS.iter().enumerate() {
            let bars = groups.iter().enumerate().map(move |(i, (_, v))| {
                let x0 = i as f64 + 0.1 + j as f64 * 0.16;
                Rectangle::new([(x0, 0.0), (x0 + 0.15, v[j])], colour.filled())
            });
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperMiddle)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// One line per method: the mean of the five metrics against K.
pub fn metric_vs_k(title: &str, x_desc: &str, lines: &[(String, Vec<(usize, f64)>)]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let kmax = lines.iter().flat_map(|(_, p)| p.iter().map(|(k, _)| *k)).max().unwrap_or(1).max(2);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(44)
            .build_cartesian_2d(1usize..kmax, 0f64..100f64)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc(x_desc).y_desc("mean %").draw().map_err(|e| e.to_string())?;
        for (i, (name, pts)) in lines.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            let mut pts = pts.clone();
            pts.sort_by_key(|p| p.0);
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], colour.stroke_width(2)));
            // Markers: a method measured at one K is a point, not an invisible one-point line.
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, colour.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart.configure_series_labels().border_style(BLACK).draw().map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The five metrics against a swept parameter (one line per metric, with markers), and the unswept variant's values
/// as dashed horizontal lines of the same colours (`reference`: adaptive α, default K).
pub fn sweep(
    title: &str,
    x_desc: &str,
    points: &[(f64, [f64; 5])],
    reference: Option<[f64; 5]>,
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (lo, hi) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
        let pad = ((hi - lo) * 0.05).max(0.01);
        let lows = points.iter().flat_map(|(_, v)| v.iter()).chain(reference.iter().flatten());
        let y0 = (lows.fold(100f64, |a, v| a.min(*v)) - 5.0).clamp(0.0, 80.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(44)
            .build_cartesian_2d((lo - pad)..(hi + pad), y0..101f64)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc(x_desc).y_desc("%").draw().map_err(|e| e.to_string())?;
        for (j, (name, colour)) in METRICS.iter().enumerate() {
            let pts: Vec<(f64, f64)> = points.iter().map(|(x, v)| (*x, v[j])).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], colour.stroke_width(2)));
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
                .map_err(|e| e.to_string())?;
            if let Some(r) = reference {
                let dashes =
                    DashedLineSeries::new(vec![(lo - pad, r[j]), (hi + pad, r[j])], 6, 4, colour.stroke_width(1));
                chart.draw_series(dashes).map_err(|e| e.to_string())?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}
