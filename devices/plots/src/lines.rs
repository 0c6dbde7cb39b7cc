//! Panels of lines that share a log2 x axis.

use plotters::coord::combinators::BindKeyPoints;
use plotters::element::DynElement;
use plotters::prelude::*;

use crate::{error_svg, fmt_value, COLOURS, FONT};

/// One line in a panel: `(x, y)` points, drawn in x order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart of the figure, with its own y axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// The y values are already percentages (e.g. `12.5` for 12.5 %); tick labels get a
    /// `%` suffix. The values are not rescaled.
    pub y_percent: bool,
}

const PANEL_WIDTH: u32 = 520;
const HEIGHT: u32 = 460;
/// A panel's margin and y label area (pixels).
const MARGIN: u32 = 12;
const Y_LABEL_AREA: u32 = 72;
/// The plot area's width within a panel, and the advance of one tick label digit (pixels):
/// enough to space x tick labels.
const PLOT_WIDTH: f64 = (PANEL_WIDTH - 2 * MARGIN - Y_LABEL_AREA) as f64;
const TICK_CHAR_WIDTH: f64 = 8.0;
/// Marker shapes, one per series in turn, so series differ in more than colour.
const MARKERS: usize = 6;

/// Renders the panels side by side as a standalone SVG document. The x axis is log2
/// with a tick at each x value present; a series keeps its colour and marker in every
/// panel (keyed by its name).
pub fn render_svg(title: &str, x_label: &str, panels: &[Panel]) -> String {
    let mut out = String::new();
    let width = PANEL_WIDTH * panels.len().max(1) as u32;
    let drawn = draw(SVGBackend::with_string(&mut out, (width, HEIGHT)), title, x_label, panels);
    match drawn {
        Ok(()) => out,
        Err(e) => error_svg(title, &e),
    }
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(backend: SVGBackend, title: &str, x_label: &str, panels: &[Panel]) -> DrawResult {
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 24).into_font().style(FontStyle::Bold))?;

    // Series styles, keyed by name in order of first appearance across all panels.
    let mut names: Vec<&str> = Vec::new();
    for s in panels.iter().flat_map(|p| &p.series) {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    let style_of = |name: &str| names.iter().position(|n| *n == name).unwrap_or(0);

    // Shared x axis: the distinct x values present, padded by 6 % of the log2 span.
    let mut xs: Vec<f64> = panels
        .iter()
        .flat_map(|p| &p.series)
        .flat_map(|s| &s.points)
        .filter(|&&p| valid(p))
        .map(|p| p.0)
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup_by(|a, b| (*a - *b).abs() <= 1e-9 * b.abs());
    let (lmin, lmax) = match (xs.first(), xs.last()) {
        (Some(a), Some(b)) => (a.log2(), b.log2()),
        _ => (0.0, 1.0),
    };
    let pad = if lmax > lmin { (lmax - lmin) * 0.06 } else { 1.0 };
    let x_range = (lmin - pad).exp2()..(lmax + pad).exp2();
    let labelled = x_labels_that_fit(&xs, (lmin - pad, lmax + pad));

    for (area, panel) in root.split_evenly((1, panels.len().max(1))).iter().zip(panels) {
        let ys = panel.series.iter().flat_map(|s| &s.points).filter(|&&p| valid(p)).map(|p| p.1);
        let (ymin, ymax) = ys.fold((0.0f64, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
        let span = if ymax > ymin { ymax - ymin } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, (FONT, 19).into_font().style(FontStyle::Bold))
            .margin(MARGIN)
            .x_label_area_size(48)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(
                x_range.clone().log_scale().base(2.0).with_key_points(xs.clone()),
                ymin..ymin + span * 1.1,
            )?;
        let percent = if panel.y_percent { "%" } else { "" };
        chart
            .configure_mesh()
            .x_labels(xs.len().max(1))
            // Grid lines at the ticks only: plotters adds light lines between them.
            .max_light_lines(0)
            .x_desc(x_label)
            .y_desc(&panel.y_label)
            .x_label_formatter(&|x| if labelled.contains(x) { fmt_value(*x) } else { String::new() })
            .y_label_formatter(&|y| format!("{}{percent}", fmt_value(*y)))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 16))
            .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
            .draw()?;

        for s in &panel.series {
            let k = style_of(&s.name);
            let colour = COLOURS[k % COLOURS.len()];
            let mut pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|&p| valid(p)).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    EmptyElement::at((x + 10, y))
                        + PathElement::new(vec![(-10, 0), (10, 0)], colour.stroke_width(2))
                        + marker(k, colour)
                });
            chart.draw_series(pts.into_iter().map(|p| EmptyElement::at(p) + marker(k, colour)))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(0xbb, 0xbb, 0xbb))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// The x values whose tick labels do not run into the label on their left, in a plot
/// area about `PLOT_WIDTH` wide spanning `log2_domain` (the rest keep their tick).
fn x_labels_that_fit(xs: &[f64], (lo, hi): (f64, f64)) -> Vec<f64> {
    let mut kept = Vec::new();
    let mut right_of_last = f64::NEG_INFINITY;
    for &x in xs {
        let centre = (x.log2() - lo) / (hi - lo) * PLOT_WIDTH;
        let half = fmt_value(x).chars().count() as f64 * TICK_CHAR_WIDTH / 2.0;
        if centre - half > right_of_last + 6.0 {
            right_of_last = centre + half;
            kept.push(x);
        }
    }
    kept
}

/// A point that can be placed: finite coordinates and a positive x (log scale).
fn valid((x, y): (f64, f64)) -> bool {
    x.is_finite() && y.is_finite() && x > 0.0
}

/// The `k`th marker shape, centred on its anchor.
fn marker<DB: DrawingBackend>(k: usize, colour: RGBColor) -> DynElement<'static, DB, (i32, i32)> {
    let fill = colour.filled();
    match k % MARKERS {
        0 => Circle::new((0, 0), 4, fill).into_dyn(),
        1 => Rectangle::new([(-4, -4), (4, 4)], fill).into_dyn(),
        2 => Polygon::new(vec![(0, -5), (5, 4), (-5, 4)], fill).into_dyn(),
        3 => Polygon::new(vec![(0, -5), (5, 0), (0, 5), (-5, 0)], fill).into_dyn(),
        4 => Polygon::new(vec![(0, 5), (5, -4), (-5, -4)], fill).into_dyn(),
        _ => Cross::new((0, 0), 4, colour.stroke_width(2)).into_dyn(),
    }
}
