//! The testbed's benchmark figures as standalone SVG documents, drawn with `plotters`
//! (its SVG backend only: no fonts or bitmaps are needed to render).
//!
//! Two kinds of figure: [`render_svg`] draws panels of lines over a shared log2 x
//! axis (frame size), and [`render_bars`] draws groups of bars with min–max whiskers.
//! Points that cannot be placed (not finite, or x ≤ 0 on the log axis) are skipped.

mod bars;
mod lines;

pub use bars::{render_bars, Bar, BarChart, BarGroup};
pub use lines::{render_svg, Panel, Series};

use plotters::style::RGBColor;

/// Colour-blind friendly palette (Okabe–Ito, with black last).
const COLOURS: [RGBColor; 8] = [
    RGBColor(0x00, 0x72, 0xB2),
    RGBColor(0xD5, 0x5E, 0x00),
    RGBColor(0x00, 0x9E, 0x73),
    RGBColor(0xCC, 0x79, 0xA7),
    RGBColor(0xE6, 0x9F, 0x00),
    RGBColor(0x56, 0xB4, 0xE9),
    RGBColor(0xF0, 0xE4, 0x42),
    RGBColor(0x00, 0x00, 0x00),
];

const FONT: &str = "sans-serif";

/// The figure when plotters reports an error (it does not for an in-memory SVG, but a
/// caller writing a report file should still get a document that says what failed).
fn error_svg(title: &str, err: &dyn std::fmt::Display) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"60\"><text x=\"10\" y=\"30\">{}: {}</text></svg>\n",
        esc(title),
        esc(&err.to_string())
    )
}

/// A number with about 4 significant digits and no trailing zeros.
fn fmt_value(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let digits = v.abs().log10().floor() as i32;
    if !(-4..=9).contains(&digits) {
        return format!("{v:.3e}");
    }
    let s = format!("{v:.*}", (3 - digits).max(0) as usize);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}
