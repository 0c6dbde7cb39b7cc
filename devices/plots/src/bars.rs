//! Groups of bars, one bar per series in each group, with min–max whiskers.

use plotters::coord::combinators::BindKeyPoints;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{error_svg, COLOURS, FONT};

/// One bar: its height and the whisker's ends.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bar {
    pub value: f64,
    pub min: f64,
    pub max: f64,
}

/// Bars side by side under one x label, with a note above them.
#[derive(Debug, Clone, PartialEq)]
pub struct BarGroup {
    pub label: String,
    /// One bar per series, in the order of [`BarChart::series`].
    pub bars: Vec<Bar>,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    /// The series' names, shown in the legend.
    pub series: Vec<String>,
    pub groups: Vec<BarGroup>,
}

const WIDTH: u32 = 760;
const HEIGHT: u32 = 440;
const WHISKER: RGBColor = RGBColor(0x44, 0x44, 0x44);

/// Renders the chart as a standalone SVG document, the y axis from 0 with headroom
/// above the bars for their notes and the legend.
pub fn render_bars(chart: &BarChart) -> String {
    let mut out = String::new();
    match draw(SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)), chart) {
        Ok(()) => out,
        Err(e) => error_svg(&chart.title, &e),
    }
}

fn draw(backend: SVGBackend, c: &BarChart) -> Result<(), Box<dyn std::error::Error>> {
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    // Each group's highest point (bar or whisker; a non-finite value draws at 0): its
    // note goes above it, and the y axis spans the highest.
    let highs: Vec<f64> = c
        .groups
        .iter()
        .map(|g| g.bars.iter().map(|b| finite(b.value).max(finite(b.max))).fold(0.0, f64::max))
        .collect();
    let top = highs.iter().copied().fold(0.0f64, f64::max).max(1e-9);
    let n = c.groups.len().max(1);
    // Group i spans x in [i, i + 1); its label sits at the middle.
    let centres: Vec<f64> = (0..n).map(|i| i as f64 + 0.5).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, (FONT, 20).into_font().style(FontStyle::Bold))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(72)
        // A partial axis over the whole range: a linear axis with plain f64 labels, to format.
        .build_cartesian_2d(
            (0.0..n as f64).partial_axis(0.0..n as f64).with_key_points(centres),
            0.0..top * 1.35,
        )?;
    let label_of = |x: &f64| c.groups.get(x.floor() as usize).map(|g| g.label.clone()).unwrap_or_default();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label_of)
        .y_desc(&c.y_label)
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 16))
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .max_light_lines(0)
        .draw()?;

    // Bars fill the middle 60 % of their group.
    let width = 0.6 / c.series.len().max(1) as f64;
    let left = |i: usize, j: usize| i as f64 + 0.2 + width * j as f64;
    for (j, name) in c.series.iter().enumerate() {
        let colour = COLOURS[j % COLOURS.len()];
        let bars = c.groups.iter().enumerate().filter_map(|(i, g)| g.bars.get(j).map(|b| (i, b)));
        chart
            .draw_series(bars.clone().map(|(i, b)| {
                Rectangle::new([(left(i, j), 0.0), (left(i, j) + width, finite(b.value))], colour.filled())
            }))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled()));
        chart.draw_series(bars.map(|(i, b)| {
            let x = left(i, j) + width / 2.0;
            PathElement::new(vec![(x, finite(b.min)), (x, finite(b.max))], WHISKER.stroke_width(2))
        }))?;
    }
    let note_style = TextStyle::from((FONT, 16).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(c.groups.iter().zip(&highs).enumerate().map(|(i, (g, &high))| {
        EmptyElement::at((i as f64 + 0.5, high)) + Text::new(g.note.clone(), (0, -10), note_style.clone())
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xbb, 0xbb, 0xbb))
        .draw()?;
    root.present()?;
    Ok(())
}

fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}
