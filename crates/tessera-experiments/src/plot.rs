//! SVG plots for reports (plotters' SVG backend): line charts of curves over epochs or
//! steps, banded curves, scatter charts of accuracy-latency planes, and bar charts comparing
//! runs. Each function returns the SVG text; the runner
//! writes it atomically next to the report.

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{ExperimentError, Result};

/// One named curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// A finished plot: a file name (`*.svg`) and its content.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    /// File name inside the run directory.
    pub file: String,
    /// Caption for the report.
    pub caption: String,
    /// The SVG document.
    pub svg: String,
}

const SIZE: (u32, u32) = (720, 440);

fn plot_err(name: &str, e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Plot { name: name.to_string(), reason: e.to_string() }
}

/// Range of `values` widened by 5% (and made non-empty).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(1e-9 * hi.abs().max(1.0));
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// The chart area every x-y plot shares: white background, caption, mesh with axis labels,
/// ranges padded around `xs` and `ys`; `draw` adds the series, then the legend goes at
/// `legend`.
fn xy_chart(
    title: &str,
    (x_label, y_label): (&str, &str),
    (xs, ys): (Vec<f64>, Vec<f64>),
    legend: SeriesLabelPosition,
    draw: impl FnOnce(&mut Chart<'_, '_>) -> Result<()>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(title, e))?;
        let (x0, x1) = padded_range(xs.into_iter());
        let (y0, y1) = padded_range(ys.into_iter());
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| plot_err(title, e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| plot_err(title, e))?;
        draw(&mut chart)?;
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(title, e))?;
        root.present().map_err(|e| plot_err(title, e))?;
    }
    Ok(svg)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn xs_ys(series: &[Series]) -> (Vec<f64>, Vec<f64>) {
    series.iter().flat_map(|s| s.points.iter().copied()).unzip()
}

/// A line chart of `series` (with point markers), legend in the lower right.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<String> {
    xy_chart(title, (x_label, y_label), xs_ys(series), SeriesLabelPosition::LowerRight, |chart| {
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
                .map_err(|e| plot_err(title, e))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| plot_err(title, e))?;
        }
        Ok(())
    })
}

/// A scatter chart of `series` (markers only, no lines: points of a Pareto plane), legend in
/// the lower right; series whose name starts with `(` are drawn small and hollow (context,
/// e.g. every candidate a search evaluated).
pub fn scatter_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<String> {
    xy_chart(title, (x_label, y_label), xs_ys(series), SeriesLabelPosition::LowerRight, |chart| {
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let context = s.name.starts_with('(');
            let style = if context { color.mix(0.6).stroke_width(1) } else { color.filled() };
            let radius = if context { 3 } else { 5 };
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, radius, style)))
                .map_err(|e| plot_err(title, e))?
                .label(s.name.clone())
                .legend(move |(x, y)| Circle::new((x + 9, y), radius, style));
        }
        Ok(())
    })
}

/// One curve with an uncertainty band: `(x, mean, low, high)` points in x order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Band {
    /// Legend label.
    pub name: String,
    /// `(x, mean, low, high)`.
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// A line chart of band means with each band's `[low, high]` shaded, legend lower left.
pub fn band_chart(title: &str, x_label: &str, y_label: &str, bands: &[Band]) -> Result<String> {
    let xs = bands.iter().flat_map(|b| b.points.iter().map(|p| p.0)).collect();
    let ys = bands.iter().flat_map(|b| b.points.iter().flat_map(|p| [p.2, p.3, p.1])).collect();
    xy_chart(title, (x_label, y_label), (xs, ys), SeriesLabelPosition::LowerLeft, |chart| {
        for (i, b) in bands.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let outline: Vec<(f64, f64)> = b
                .points
                .iter()
                .map(|p| (p.0, p.3))
                .chain(b.points.iter().rev().map(|p| (p.0, p.2)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled())))
                .map_err(|e| plot_err(title, e))?;
            chart
                .draw_series(LineSeries::new(
                    b.points.iter().map(|p| (p.0, p.1)),
                    color.stroke_width(2),
                ))
                .map_err(|e| plot_err(title, e))?
                .label(b.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        Ok(())
    })
}

/// A bar chart, one bar per `(label, value)`, values printed above the bars.
pub fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64)]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(title, e))?;
        let top =
            bars.iter().map(|b| b.1).filter(|v| v.is_finite()).fold(0.0f64, f64::max).max(1e-9)
                * 1.15;
        let n = bars.len().max(1);
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((0..n).into_segmented(), 0.0..top)
            .map_err(|e| plot_err(title, e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_desc(y_label)
            .draw()
            .map_err(|e| plot_err(title, e))?;
        for (i, (_, v)) in bars.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut bar = Rectangle::new(
                [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), *v)],
                color.filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            chart.draw_series(std::iter::once(bar)).map_err(|e| plot_err(title, e))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format_value(*v),
                    (SegmentValue::CenterOf(i), *v + top * 0.02),
                    ("sans-serif", 14),
                )))
                .map_err(|e| plot_err(title, e))?;
        }
        root.present().map_err(|e| plot_err(title, e))?;
    }
    Ok(svg)
}

/// A compact number for labels: 3 significant digits.
pub fn format_value(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_chart_is_svg_with_every_series() {
        let s = vec![
            Series { name: "train".into(), points: vec![(0.0, 1.0), (1.0, 0.5), (2.0, 0.25)] },
            Series { name: "test".into(), points: vec![(0.0, 1.2), (1.0, 0.7)] },
        ];
        let svg = line_chart("loss", "epoch", "loss", &s).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50.min(svg.len())]);
        assert!(svg.contains("train") && svg.contains("test") && svg.contains("epoch"));
        assert!(svg.matches("<circle").count() >= 5);
    }

    #[test]
    fn bar_chart_draws_a_bar_per_value() {
        let svg = bar_chart("acc", "top-1", &[("a".into(), 0.9), ("b".into(), 0.95)]).unwrap();
        assert!(svg.contains("0.950") && svg.contains("0.900"));
        assert!(svg.matches("<rect").count() >= 3, "background + 2 bars");
    }

    #[test]
    fn degenerate_inputs_still_plot() {
        assert!(line_chart("empty", "x", "y", &[]).unwrap().starts_with("<svg"));
        let flat = [Series { name: "c".into(), points: vec![(1.0, 2.0)] }];
        assert!(line_chart("one point", "x", "y", &flat).unwrap().starts_with("<svg"));
        assert!(bar_chart("none", "y", &[]).unwrap().starts_with("<svg"));
    }

    #[test]
    fn values_format_to_three_digits() {
        assert_eq!(format_value(0.98765), "0.988");
        assert_eq!(format_value(123.456), "123");
        assert_eq!(format_value(12.345), "12.3");
        assert_eq!(format_value(0.0), "0");
    }
}
