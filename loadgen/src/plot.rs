//! The SVG a person opens after a run: throughput per second on top, the
//! main latency's percentiles per second (log scale) below, both against
//! seconds since the run started. Drawn with `plotters`.

use std::io;
use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::report::{Counter, Report};

/// Series drawn on the throughput panel, with their colours.
const RATES: [(Counter, RGBColor); 4] = [
    (Counter::Sent, RGBColor(120, 120, 120)),
    (Counter::Acked, RGBColor(31, 119, 180)),
    (Counter::Delivered, RGBColor(44, 160, 44)),
    (Counter::Connects, RGBColor(214, 39, 40)),
];

/// Percentiles drawn on the latency panel.
const QUANTILES: [(f64, &str, RGBColor); 4] = [
    (0.5, "p50", RGBColor(44, 160, 44)),
    (0.99, "p99", RGBColor(255, 127, 14)),
    (0.999, "p99.9", RGBColor(214, 39, 40)),
    (1.0, "max", RGBColor(120, 120, 120)),
];

/// Writes the plot of `r` to `path`.
pub fn svg(r: &Report, path: &Path) -> io::Result<()> {
    draw(r, path).map_err(|e| io::Error::other(e.to_string()))
}

fn draw(r: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let first = r.series.keys().next().copied().unwrap_or(0);
    let x = |t: u64| (t - first) as f64;
    let x_max = r.series.keys().last().map_or(1.0, |t| x(*t) + 1.0).max(1.0);
    draw_rates(r, &top, first, x_max)?;
    draw_latency(r, &bottom, first, x_max)?;
    root.present()?;
    Ok(())
}

fn draw_rates(
    r: &Report,
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    first: u64,
    x_max: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let shown: Vec<_> = RATES
        .iter()
        .filter(|(c, _)| r.series.values().any(|s| s.counts[*c as usize] > 0))
        .collect();
    let y_max = r
        .series
        .values()
        .flat_map(|s| shown.iter().map(|(c, _)| s.counts[*c as usize]))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{}: per second", r.scenario), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .draw()?;
    for (c, colour) in shown {
        let points = r
            .series
            .iter()
            .map(|(t, s)| ((t - first) as f64, s.counts[*c as usize] as f64));
        line(&mut chart, points, c.name(), *colour)?;
    }
    legend(&mut chart)
}

fn draw_latency(
    r: &Report,
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    first: u64,
    x_max: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let ms = |v: u64| (v as f64 / 1000.0).max(0.001);
    let with_data = || r.series.iter().filter(|(_, s)| !s.latency.is_empty());
    let y_max = with_data()
        .map(|(_, s)| ms(s.latency.max()))
        .fold(1.0, f64::max);
    let y_min = with_data()
        .map(|(_, s)| ms(s.latency.min()))
        .fold(y_max, f64::min)
        .min(0.1);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} latency per second (ms, log)", r.main_latency.name()),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()?;
    for (q, name, colour) in QUANTILES {
        let points = with_data().map(|(t, s)| {
            let v = if q >= 1.0 {
                s.latency.max()
            } else {
                s.latency.value_at_quantile(q)
            };
            ((t - first) as f64, ms(v))
        });
        line(&mut chart, points, name, colour)?;
    }
    legend(&mut chart)
}

type Chart<'a, 'b, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Y>>;

/// One labelled line.
fn line<Y: Ranged<ValueType = f64>>(
    chart: &mut Chart<'_, '_, Y>,
    points: impl IntoIterator<Item = (f64, f64)>,
    name: &str,
    colour: RGBColor,
) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
        .label(name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    Ok(())
}

/// The box naming the lines.
fn legend<'a, Y: Ranged<ValueType = f64>>(
    chart: &mut Chart<'a, 'a, Y>,
) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Latency;

    #[test]
    fn the_plot_is_an_svg_with_both_panels() {
        let mut r = Report::new("chat", Latency::Delivered);
        for t in 0..5u64 {
            let s = r.series.entry(1_700_000_000 + t).or_default();
            s.counts[Counter::Delivered as usize] = 1000 * (t + 1);
            s.latency.record(500 + 100 * t).unwrap();
        }
        let dir = std::env::temp_dir().join(format!("loadgen-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        svg(&r, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..50]);
        assert!(text.contains("chat: per second"));
        assert!(text.contains("send_to_delivered latency"));
        assert!(text.contains("p99.9"));
        assert!(text.contains("<polyline"), "lines drawn");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
