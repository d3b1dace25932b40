//! The comparison's plot (`latency.svg` beside `table.md`): send→delivered
//! p99 (top) and p50 (bottom) against the offered open-loop rate, one line
//! per system, both axes logarithmic. Drawn with `plotters`.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::coord::combinators::LogCoord;
use plotters::prelude::*;

use crate::peers::RunResult;

/// Colours by system, in name order.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Writes the plot of the open-loop runs in `results` to `path`.
pub fn latency_svg(results: &[RunResult], path: &Path) -> Result<(), String> {
    draw(results, path).map_err(|e| e.to_string())
}

fn draw(results: &[RunResult], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut lines: BTreeMap<&str, Vec<&RunResult>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.rate.is_some()) {
        lines.entry(r.system.as_str()).or_default().push(r);
    }
    for runs in lines.values_mut() {
        runs.sort_by_key(|r| r.rate);
    }
    let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    panel(&top, &lines, "p99", |r| r.p99_us)?;
    panel(&bottom, &lines, "p50", |r| r.p50_us)?;
    root.present()?;
    Ok(())
}

fn panel(
    area: &Area<'_>,
    lines: &BTreeMap<&str, Vec<&RunResult>>,
    name: &str,
    value: fn(&RunResult) -> u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let ms = |r: &RunResult| (value(r) as f64 / 1000.0).max(0.01);
    let all = || lines.values().flatten();
    let rate = |r: &RunResult| r.rate.unwrap_or(1) as f64;
    let x_min = all().map(|r| rate(r)).fold(f64::MAX, f64::min).min(1000.0);
    let x_max = all().map(|r| rate(r)).fold(x_min * 2.0, f64::max);
    let y_max = all().map(|r| ms(r)).fold(1.0, f64::max);
    let y_min = all().map(|r| ms(r)).fold(y_max, f64::min).min(0.5);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("send→delivered {name} (ms, log) by offered rate"),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x_min * 0.8..x_max * 1.25).log_scale(),
            (y_min * 0.8..y_max * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("offered msgs/s")
        .y_desc("ms")
        .draw()?;
    for (i, (system, runs)) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<(f64, f64)> = runs.iter().map(|r| (rate(r), ms(r))).collect();
        line(&mut chart, points, system, colour)?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<LogCoord<f64>, LogCoord<f64>>>;

/// One labelled line with its points marked.
fn line(
    chart: &mut Chart<'_, '_>,
    points: Vec<(f64, f64)>,
    name: &str,
    colour: RGBColor,
) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
        .label(name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    chart.draw_series(
        points
            .into_iter()
            .map(|p| Circle::new(p, 3, colour.filled())),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_has_a_line_per_system_in_both_panels() {
        let run = |system: &str, rate, p99_us| RunResult {
            system: system.into(),
            rate,
            delivered_per_s: 0.0,
            p50_us: p99_us / 2,
            p99_us,
            p999_us: p99_us,
            faults: 0,
            delivered: 1,
            server_cpu_us: 0,
            client_cpu_us: None,
            tcp_segments: None,
        };
        let results = [
            run("gateway", None, 0),
            run("gateway", Some(2000), 4000),
            run("gateway", Some(10_000), 9000),
            run("nats", Some(2000), 2000),
            run("nats", Some(10_000), 3000),
        ];
        let dir = std::env::temp_dir().join(format!("peers-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latency.svg");
        latency_svg(&results, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..50]);
        assert!(text.contains("send→delivered p99") && text.contains("send→delivered p50"));
        assert_eq!(
            text.matches("<circle").count(),
            8,
            "four open-loop runs × two panels"
        );
        assert!(
            text.contains("\ngateway\n") && text.contains("\nnats\n"),
            "legend"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
