//! Charts drawn with plotters into SVG strings: grouped bars of the five metrics per method (and per ζ treatment), a
//! metric against K for sequential editing, and the five metrics against a swept parameter (fixed α, retrieved K).
//! Percentages run 0–100; the legend stands beside the plot, never over it; colours are Okabe and Ito's colour-blind
//! safe palette; each bar carries its value as a tooltip (an SVG `<title>`).

use plotters::coord::Shift;
use plotters::prelude::*;

/// Okabe and Ito's palette (colour-blind safe), yellow last (faint on white).
const OKABE_ITO: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(230, 159, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

/// Names and colours of the five metrics, in order.
pub const METRICS: [(&str, RGBColor); 5] = [
    ("Reliability", OKABE_ITO[0]),
    ("T-Generality", OKABE_ITO[1]),
    ("M-Generality", OKABE_ITO[2]),
    ("T-Locality", OKABE_ITO[3]),
    ("M-Locality", OKABE_ITO[4]),
];

/// Width of the legend column beside the plot, in pixels.
const LEGEND_WIDTH: u32 = 170;

/// The colour of series `i` of a line chart.
fn series_colour(i: usize) -> RGBColor {
    OKABE_ITO[i % OKABE_ITO.len()]
}

/// How a legend entry shows its series.
#[derive(Clone, Copy)]
enum Swatch {
    Bar,
    Line,
}

/// The legend, one entry per line, in `area` (the column beside the plot).
fn legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    entries: &[(String, RGBColor)],
    swatch: Swatch,
) -> Result<(), String> {
    for (i, (name, colour)) in entries.iter().enumerate() {
        let y = 40 + 20 * i as i32;
        match swatch {
            Swatch::Bar => area.draw(&Rectangle::new([(8, y - 6), (20, y + 6)], colour.filled())),
            Swatch::Line => area.draw(&PathElement::new(vec![(6, y), (22, y)], colour.stroke_width(2))),
        }
        .map_err(|e| e.to_string())?;
        let short: String = name.chars().take(22).collect();
        area.draw(&Text::new(short, (28, y - 7), ("sans-serif", 13))).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Adds a tooltip to the bars of `svg`: the `k`-th rectangle filled with `colour` gets `titles[k]`.
fn with_titles(svg: String, colour: RGBColor, titles: &[String]) -> String {
    let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", colour.0, colour.1, colour.2);
    let mut out = String::with_capacity(svg.len() + titles.iter().map(|t| t.len() + 16).sum::<usize>());
    let mut rest = svg.as_str();
    let mut k = 0;
    while let Some(start) = rest.find("<rect") {
        let Some(len) = rest[start..].find("/>") else { break };
        let element = &rest[start..start + len];
        out.push_str(&rest[..start]);
        match titles.get(k).filter(|_| element.to_ascii_lowercase().contains(&fill.to_ascii_lowercase())) {
            Some(t) => {
                out.push_str(element);
                out.push_str("><title>");
                out.push_str(&t.replace('&', "&amp;").replace('<', "&lt;"));
                out.push_str("</title></rect>");
                k += 1;
            }
            None => {
                out.push_str(element);
                out.push_str("/>");
            }
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Grouped bars: one group per `(label, five metrics in percent)`.
pub fn grouped_bars(title: &str, groups: &[(String, [f64; 5])]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (plot, side) = root.split_horizontally(760 - LEGEND_WIDTH);
        let n = groups.len().max(1);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..n as f64, 0f64..100f64)
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
        for (j, (_, colour)) in METRICS.iter().enumerate() {
            let bars = groups.iter().enumerate().map(move |(i, (_, v))| {
                let x0 = i as f64 + 0.1 + j as f64 * 0.16;
                Rectangle::new([(x0, 0.0), (x0 + 0.15, v[j].clamp(0.0, 100.0))], colour.filled())
            });
            chart.draw_series(bars).map_err(|e| e.to_string())?;
        }
        let entries: Vec<(String, RGBColor)> = METRICS.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        legend(&side, &entries, Swatch::Bar)?;
        root.present().map_err(|e| e.to_string())?;
    }
    // Tooltips: the bars of each metric were drawn in group order, before the legend's swatches.
    for (j, (name, colour)) in METRICS.iter().enumerate() {
        let titles: Vec<String> = groups.iter().map(|(label, v)| format!("{label} — {name}: {:.1} %", v[j])).collect();
        svg = with_titles(svg, *colour, &titles);
    }
    Ok(svg)
}

/// One line per method: the mean of the five metrics against K.
pub fn metric_vs_k(title: &str, x_desc: &str, lines: &[(String, Vec<(usize, f64)>)]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (plot, side) = root.split_horizontally(760 - LEGEND_WIDTH);
        let kmax = lines.iter().flat_map(|(_, p)| p.iter().map(|(k, _)| *k)).max().unwrap_or(1).max(2);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(44)
            .build_cartesian_2d(1usize..kmax, 0f64..100f64)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc(x_desc).y_desc("mean %").draw().map_err(|e| e.to_string())?;
        for (i, (_, pts)) in lines.iter().enumerate() {
            let colour = series_colour(i);
            let mut pts = pts.clone();
            pts.sort_by_key(|p| p.0);
            chart.draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2))).map_err(|e| e.to_string())?;
            // Markers: a method measured at one K is a point, not an invisible one-point line.
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, colour.filled())))
                .map_err(|e| e.to_string())?;
        }
        let entries: Vec<(String, RGBColor)> =
            lines.iter().enumerate().map(|(i, (name, _))| (name.clone(), series_colour(i))).collect();
        legend(&side, &entries, Swatch::Line)?;
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
        let (plot, side) = root.split_horizontally(760 - LEGEND_WIDTH);
        let (lo, hi) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
        let pad = ((hi - lo) * 0.05).max(0.01);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(44)
            .build_cartesian_2d((lo - pad)..(hi + pad), 0f64..100f64)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc(x_desc).y_desc("%").draw().map_err(|e| e.to_string())?;
        for (j, (_, colour)) in METRICS.iter().enumerate() {
            let pts: Vec<(f64, f64)> = points.iter().map(|(x, v)| (*x, v[j])).collect();
            chart.draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2))).map_err(|e| e.to_string())?;
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
                .map_err(|e| e.to_string())?;
            if let Some(r) = reference {
                let dashes =
                    DashedLineSeries::new(vec![(lo - pad, r[j]), (hi + pad, r[j])], 6, 4, colour.stroke_width(1));
                chart.draw_series(dashes).map_err(|e| e.to_string())?;
            }
        }
        let mut entries: Vec<(String, RGBColor)> = METRICS.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        if reference.is_some() {
            entries.push(("dashed: reference".into(), RGBColor(90, 90, 90)));
        }
        legend(&side, &entries, Swatch::Line)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}
