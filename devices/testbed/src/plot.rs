//! A small, dependency-free SVG chart writer for benchmark results.
//!
//! [`render_svg`] draws two or more panels side by side that share the x axis (packet
//! size in bytes, on a log2 scale with ticks at the sizes present in the data). Each
//! panel has its own linear y axis starting at 0 with "nice" tick values (1, 2 or 5 ×
//! 10^k), a legend, and one line with point markers per series. A series keeps the same
//! colour and marker in every panel (keyed by its name). The output is a standalone
//! SVG 1.1 document sized for roughly 500 px per panel × 450 px.
//!
//! Points whose coordinates are not finite, or whose x is not positive (it cannot be
//! placed on a log scale), are skipped, so the output never contains `NaN` or `inf`.

use std::fmt::Write as _;

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

const PANEL_WIDTH: f64 = 500.0;
const HEIGHT: f64 = 450.0;
const FONT: &str = "DejaVu Sans, Arial, Helvetica, sans-serif";
/// Rough advance width of one character as a fraction of the font size.
const CHAR_WIDTH: f64 = 0.6;
const TICK_FONT: f64 = 12.0;
const LEGEND_FONT: f64 = 12.0;
const LEGEND_ROW: f64 = 18.0;
const LEGEND_TOP: f64 = 64.0;
const PLOT_BOTTOM_MARGIN: f64 = 66.0;
const RIGHT_MARGIN: f64 = 18.0;

/// Colour-blind friendly palette (Okabe–Ito, with black last).
const COLOURS: [&str; 8] =
    ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"];

#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
    TriangleDown,
    Cross,
}

const MARKERS: [Marker; 6] =
    [Marker::Circle, Marker::Square, Marker::Triangle, Marker::Diamond, Marker::TriangleDown, Marker::Cross];

/// Renders the figure as a standalone SVG 1.1 document.
pub fn render_svg(title: &str, x_label: &str, panels: &[Panel]) -> String {
    let n = panels.len().max(1);
    let width = PANEL_WIDTH * n as f64;
    let height = HEIGHT;

    // Series styles, keyed by name in order of first appearance across all panels.
    let mut names: Vec<&str> = Vec::new();
    for s in panels.iter().flat_map(|p| &p.series) {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    let style_of = |name: &str| {
        let i = names.iter().position(|n| *n == name).unwrap_or(0);
        (COLOURS[i % COLOURS.len()], MARKERS[i % MARKERS.len()])
    };

    // Shared x axis: the distinct positive finite x values present in any panel.
    let mut xs: Vec<f64> = panels
        .iter()
        .flat_map(|p| &p.series)
        .flat_map(|s| &s.points)
        .filter(|&&p| valid(p))
        .map(|&(x, _)| x)
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup_by(|a, b| (*a - *b).abs() <= 1e-9 * b.abs());
    let (lmin, lmax) = match (xs.first(), xs.last()) {
        (Some(a), Some(b)) => (a.log2(), b.log2()),
        _ => (0.0, 1.0),
    };
    let range = lmax - lmin;
    let pad = if range > 0.0 { range * 0.06 } else { 1.0 };
    let (dom_lo, dom_hi) = (lmin - pad, lmax + pad);

    // Legend layout, identical height in every panel so that plot areas line up.
    let legend_rows =
        panels.iter().map(|p| legend_layout(p, PANEL_WIDTH - 2.0 * RIGHT_MARGIN).1).max().unwrap_or(0);
    let plot_top = LEGEND_TOP + legend_rows as f64 * LEGEND_ROW + 10.0;
    let plot_bottom = height - PLOT_BOTTOM_MARGIN;

    let mut out = String::new();
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8" standalone="no"?>"#);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT}">"#,
        w = num(width),
        h = num(height),
    );
    let _ = writeln!(out, "<title>{}</title>", esc(title));
    let _ = writeln!(
        out,
        r##"<rect x="0" y="0" width="{}" height="{}" fill="#ffffff"/>"##,
        num(width),
        num(height)
    );
    let _ = writeln!(
        out,
        r##"<text class="title" x="{}" y="26" text-anchor="middle" font-size="18" font-weight="bold" fill="#222222">{}</text>"##,
        num(width / 2.0),
        esc(title)
    );

    for (i, panel) in panels.iter().enumerate() {
        let x0 = i as f64 * PANEL_WIDTH;

        // Y axis: from min(0, data) to a nice value at or above the data maximum.
        let ys = panel.series.iter().flat_map(|s| &s.points).filter(|&&p| valid(p)).map(|&(_, y)| y);
        let (ymin, ymax) = ys.fold((0.0f64, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
        let (ticks, step) = nice_ticks(ymin, ymax);
        let (y_lo, y_hi) = (ticks[0], ticks[ticks.len() - 1]);
        let labels: Vec<String> = ticks.iter().map(|&t| tick_label(t, step, panel.y_percent)).collect();
        let label_w = labels.iter().map(|l| text_width(l, TICK_FONT)).fold(0.0, f64::max);

        let left = x0 + 28.0 + label_w + 10.0;
        let right = x0 + PANEL_WIDTH - RIGHT_MARGIN;
        let map_x = |x: f64| left + (x.log2() - dom_lo) / (dom_hi - dom_lo) * (right - left);
        let map_y = |y: f64| plot_bottom - (y - y_lo) / (y_hi - y_lo) * (plot_bottom - plot_top);

        let _ = writeln!(out, r#"<g class="panel" id="panel{i}">"#);
        let _ = writeln!(
            out,
            r##"<text class="panel-title" x="{}" y="52" text-anchor="middle" font-size="14" font-weight="bold" fill="#222222">{}</text>"##,
            num((left + right) / 2.0),
            esc(&panel.title)
        );
        let _ = writeln!(
            out,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="#fafafa" stroke="none"/>"##,
            num(left),
            num(plot_top),
            num(right - left),
            num(plot_bottom - plot_top)
        );

        // Horizontal grid lines and y tick labels.
        for (&t, label) in ticks.iter().zip(&labels) {
            let y = map_y(t);
            let _ = writeln!(
                out,
                r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#dddddd" stroke-width="1"/>"##,
                num(left),
                num(right),
                y = num(y)
            );
            let _ = writeln!(
                out,
                r##"<text class="ytick" x="{}" y="{}" text-anchor="end" font-size="{}" fill="#333333">{}</text>"##,
                num(left - 6.0),
                num(y + TICK_FONT * 0.35),
                num(TICK_FONT),
                esc(label)
            );
        }

        // Vertical grid lines and x tick labels at the sizes present. A label that would
        // overlap its left neighbour goes on a second row; if that is taken too, it is
        // left out (the tick stays).
        let mut last_label_right = [f64::NEG_INFINITY; 2];
        for &x in &xs {
            let px = map_x(x);
            let _ = writeln!(
                out,
                r##"<line x1="{px}" y1="{}" x2="{px}" y2="{}" stroke="#eeeeee" stroke-width="1"/>"##,
                num(plot_top),
                num(plot_bottom),
                px = num(px)
            );
            let _ = writeln!(
                out,
                r##"<line class="xtickmark" x1="{px}" y1="{}" x2="{px}" y2="{}" stroke="#444444" stroke-width="1"/>"##,
                num(plot_bottom),
                num(plot_bottom + 5.0),
                px = num(px)
            );
            let label = fmt_x(x);
            let w = text_width(&label, TICK_FONT);
            if let Some(row) = (0..2).find(|&r| px - w / 2.0 > last_label_right[r] + 4.0) {
                last_label_right[row] = px + w / 2.0;
                let _ = writeln!(
                    out,
                    r##"<text class="xtick" x="{}" y="{}" text-anchor="middle" font-size="{}" fill="#333333">{}</text>"##,
                    num(px),
                    num(plot_bottom + 19.0 + row as f64 * 14.0),
                    num(TICK_FONT),
                    esc(&label)
                );
            }
        }

        // Axes.
        let _ = writeln!(
            out,
            r##"<path d="M{l} {t} L{l} {b} L{r} {b}" fill="none" stroke="#444444" stroke-width="1.2"/>"##,
            l = num(left),
            t = num(plot_top),
            b = num(plot_bottom),
            r = num(right)
        );

        // Axis labels.
        let _ = writeln!(
            out,
            r##"<text class="xlabel" x="{}" y="{}" text-anchor="middle" font-size="13" fill="#222222">{}</text>"##,
            num((left + right) / 2.0),
            num(height - 12.0),
            esc(x_label)
        );
        let (lx, ly) = (x0 + 16.0, (plot_top + plot_bottom) / 2.0);
        let _ = writeln!(
            out,
            r##"<text class="ylabel" x="{lx}" y="{ly}" transform="rotate(-90 {lx} {ly})" text-anchor="middle" font-size="13" fill="#222222">{}</text>"##,
            esc(&panel.y_label),
            lx = num(lx),
            ly = num(ly)
        );

        // Series.
        for s in &panel.series {
            let (colour, marker) = style_of(&s.name);
            let mut pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|&p| valid(p)).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let _ = writeln!(out, r#"<g class="series" data-name="{}">"#, esc(&s.name));
            if pts.len() > 1 {
                let coords: Vec<String> =
                    pts.iter().map(|&(x, y)| format!("{},{}", num(map_x(x)), num(map_y(y)))).collect();
                let _ = writeln!(
                    out,
                    r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round"/>"#,
                    coords.join(" ")
                );
            }
            for &(x, y) in &pts {
                let tip = format!(
                    "{}: x={}, y={}{}",
                    s.name,
                    fmt_x(x),
                    fmt_value(y),
                    if panel.y_percent { "%" } else { "" }
                );
                out += &marker_svg(marker, colour, map_x(x), map_y(y), 4.0, Some(&tip));
            }
            out += "</g>\n";
        }

        // Legend, under the panel title.
        let (entries, _) = legend_layout(panel, right - left);
        for (s, (ex, row)) in panel.series.iter().zip(entries) {
            let (colour, marker) = style_of(&s.name);
            let cx = left + ex;
            let cy = LEGEND_TOP + row as f64 * LEGEND_ROW + 6.0;
            let _ = writeln!(
                out,
                r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"/>"#,
                num(cx),
                num(cx + 22.0),
                y = num(cy)
            );
            out += &marker_svg(marker, colour, cx + 11.0, cy, 4.0, None);
            let _ = writeln!(
                out,
                r##"<text class="legend" x="{}" y="{}" font-size="{}" fill="#222222">{}</text>"##,
                num(cx + 28.0),
                num(cy + LEGEND_FONT * 0.35),
                num(LEGEND_FONT),
                esc(&s.name)
            );
        }
        out += "</g>\n";
    }
    out += "</svg>\n";
    out
}

/// A point that can be placed: finite coordinates and a positive x (log scale).
fn valid((x, y): (f64, f64)) -> bool {
    x.is_finite() && y.is_finite() && x > 0.0
}

/// Positions `(x offset, row)` of a panel's legend entries within `avail` pixels, and
/// the number of rows used.
fn legend_layout(panel: &Panel, avail: f64) -> (Vec<(f64, usize)>, usize) {
    let mut pos = Vec::new();
    let (mut x, mut row) = (0.0, 0);
    for s in &panel.series {
        let w = 28.0 + text_width(&s.name, LEGEND_FONT) + 18.0;
        if x > 0.0 && x + w > avail {
            x = 0.0;
            row += 1;
        }
        pos.push((x, row));
        x += w;
    }
    let rows = if pos.is_empty() { 0 } else { row + 1 };
    (pos, rows)
}

fn text_width(s: &str, font_size: f64) -> f64 {
    s.chars().count() as f64 * font_size * CHAR_WIDTH
}

fn marker_svg(m: Marker, colour: &str, cx: f64, cy: f64, r: f64, tip: Option<&str>) -> String {
    let stroke = r##"stroke="#ffffff" stroke-width="1""##;
    let tip = tip.map(|t| format!("<title>{}</title>", esc(t))).unwrap_or_default();
    let poly = |pts: &[(f64, f64)]| {
        let p: Vec<String> =
            pts.iter().map(|&(dx, dy)| format!("{},{}", num(cx + dx), num(cy + dy))).collect();
        format!(r#"<polygon points="{}" fill="{colour}" {stroke}>{tip}</polygon>"#, p.join(" "))
    };
    let s = match m {
        Marker::Circle => format!(
            r#"<circle cx="{}" cy="{}" r="{}" fill="{colour}" {stroke}>{tip}</circle>"#,
            num(cx),
            num(cy),
            num(r)
        ),
        Marker::Square => {
            let h = r * 0.9;
            poly(&[(-h, -h), (h, -h), (h, h), (-h, h)])
        }
        Marker::Triangle => {
            let h = r * 1.2;
            poly(&[(0.0, -h), (h, h * 0.8), (-h, h * 0.8)])
        }
        Marker::TriangleDown => {
            let h = r * 1.2;
            poly(&[(0.0, h), (h, -h * 0.8), (-h, -h * 0.8)])
        }
        Marker::Diamond => {
            let h = r * 1.3;
            poly(&[(0.0, -h), (h, 0.0), (0.0, h), (-h, 0.0)])
        }
        Marker::Cross => {
            let h = r;
            format!(
                r#"<path d="M{} {} L{} {} M{} {} L{} {}" stroke="{colour}" stroke-width="2.5">{tip}</path>"#,
                num(cx - h),
                num(cy - h),
                num(cx + h),
                num(cy + h),
                num(cx - h),
                num(cy + h),
                num(cx + h),
                num(cy - h)
            )
        }
    };
    s + "\n"
}

/// Tick values from a nice number at or below `min(lo, 0)` to one at or above `hi`,
/// spaced by a step of 1, 2 or 5 × 10^k (about five intervals). Returns the ticks and
/// the step. A degenerate range (e.g. all zeros) gets the axis 0..1.
fn nice_ticks(lo: f64, hi: f64) -> (Vec<f64>, f64) {
    let lo = if lo.is_finite() { lo.min(0.0) } else { 0.0 };
    let hi = if hi.is_finite() { hi.max(0.0) } else { 0.0 };
    let (hi, span) = if hi - lo > 0.0 && (hi - lo).is_finite() { (hi, hi - lo) } else { (lo + 1.0, 1.0) };
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let mult = if norm <= 1.0 + 1e-9 {
        1.0
    } else if norm <= 2.0 + 1e-9 {
        2.0
    } else if norm <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    let step = mult * mag;
    if !(step.is_finite() && step > 0.0) {
        return (vec![0.0, 1.0], 1.0);
    }
    let first = (lo / step + 1e-9).floor() as i64;
    let mut last = (hi / step - 1e-9).ceil() as i64;
    if last <= first {
        last = first + 1;
    }
    let ticks: Vec<f64> = (first..=last).map(|k| k as f64 * step).collect();
    if ticks.iter().all(|t| t.is_finite()) {
        (ticks, step)
    } else {
        (vec![0.0, 1.0], 1.0)
    }
}

/// A y tick label: as many decimals as the step needs; SI suffixes for large values.
fn tick_label(v: f64, step: f64, percent: bool) -> String {
    let (scale, suffix) = if step >= 1e12 {
        (1e12, "T")
    } else if step >= 1e9 {
        (1e9, "G")
    } else if step >= 1e6 {
        (1e6, "M")
    } else if step >= 1e4 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let step = step / scale;
    let decimals = if step >= 1.0 { 0 } else { (-(step.log10()).floor() as usize).min(12) };
    let mut s = format!("{:.*}", decimals, v / scale);
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s.remove(0); // "-0.0" → "0.0"
    }
    if v != 0.0 {
        s += suffix;
    }
    if percent {
        s += "%";
    }
    s
}

/// An x value (packet size): integers as such, anything else with 3 significant digits.
fn fmt_x(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        fmt_value(x)
    }
}

/// A data value for tooltips, with about 4 significant digits.
fn fmt_value(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let digits = v.abs().log10().floor() as i32;
    if !(-4..=9).contains(&digits) {
        return format!("{v:.3e}");
    }
    let decimals = (3 - digits).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A coordinate, with two decimals at most; never NaN or inf.
fn num(v: f64) -> String {
    let v = if v.is_finite() { v } else { 0.0 };
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Escapes text for XML character data and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&apos;",
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' && c != '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny XML well-formedness check: balanced, properly nested tags, one root,
    /// quoted unique attributes, and `&` only in known entity or character references.
    fn check_xml(s: &str) -> Result<(), String> {
        fn check_text(t: &str) -> Result<(), String> {
            let mut rest = t;
            while let Some(i) = rest.find('&') {
                let after = &rest[i + 1..];
                let end = after.find(';').ok_or_else(|| format!("bad entity in {t:?}"))?;
                let ent = &after[..end];
                let ok = matches!(ent, "amp" | "lt" | "gt" | "quot" | "apos")
                    || (ent.starts_with('#')
                        && ent.len() > 1
                        && ent[1..].chars().all(|c| c.is_ascii_digit()));
                if !ok {
                    return Err(format!("unknown entity &{ent};"));
                }
                rest = &after[end + 1..];
            }
            if t.contains('<') {
                return Err(format!("stray < in {t:?}"));
            }
            Ok(())
        }
        let is_name = |n: &str| {
            !n.is_empty()
                && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'))
                && !n.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
        };
        let mut stack: Vec<&str> = Vec::new();
        let mut roots = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let Some(lt) = rest.find('<') else {
                check_text(rest)?;
                if !rest.trim().is_empty() && stack.is_empty() {
                    return Err("text outside the root".into());
                }
                break;
            };
            let text = &rest[..lt];
            check_text(text)?;
            if !text.trim().is_empty() && stack.is_empty() {
                return Err("text outside the root".into());
            }
            rest = &rest[lt..];
            if let Some(r) = rest.strip_prefix("<?") {
                let end = r.find("?>").ok_or("unterminated <?")?;
                rest = &r[end + 2..];
            } else if let Some(r) = rest.strip_prefix("<!--") {
                let end = r.find("-->").ok_or("unterminated comment")?;
                rest = &r[end + 3..];
            } else if let Some(r) = rest.strip_prefix("</") {
                let end = r.find('>').ok_or("unterminated end tag")?;
                let name = r[..end].trim_end();
                match stack.pop() {
                    Some(open) if open == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                rest = &r[end + 1..];
            } else {
                let r = &rest[1..];
                let name_end = r
                    .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
                    .ok_or("unterminated start tag")?;
                let name = &r[..name_end];
                if !is_name(name) {
                    return Err(format!("bad element name {name:?}"));
                }
                let mut a = &r[name_end..];
                let mut attrs: Vec<&str> = Vec::new();
                let self_closing;
                loop {
                    a = a.trim_start();
                    if let Some(x) = a.strip_prefix("/>") {
                        self_closing = true;
                        a = x;
                        break;
                    }
                    if let Some(x) = a.strip_prefix('>') {
                        self_closing = false;
                        a = x;
                        break;
                    }
                    let eq = a.find('=').ok_or_else(|| format!("attribute without = in <{name}"))?;
                    let an = a[..eq].trim_end();
                    if !is_name(an) || attrs.contains(&an) {
                        return Err(format!("bad or duplicate attribute {an:?} in <{name}"));
                    }
                    attrs.push(an);
                    let v = a[eq + 1..].trim_start();
                    let q = v.chars().next().ok_or("eof in attribute")?;
                    if q != '"' && q != '\'' {
                        return Err(format!("unquoted attribute {an}"));
                    }
                    let close = v[1..].find(q).ok_or("unterminated attribute value")?;
                    check_text(&v[1..1 + close])?;
                    a = &v[1 + close + 1..];
                    if !(a.starts_with(char::is_whitespace) || a.starts_with('>') || a.starts_with("/>")) {
                        return Err(format!("no space after attribute {an} in <{name}"));
                    }
                }
                if stack.is_empty() {
                    roots += 1;
                }
                if !self_closing {
                    stack.push(name);
                }
                rest = a;
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed elements {stack:?}"));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        Ok(())
    }

    /// Values of attribute `attr` on the elements carrying `class="{class}"`, in order.
    fn attr_of_class(svg: &str, class: &str, attr: &str) -> Vec<f64> {
        let key = format!(r#"class="{class}""#);
        svg.match_indices(&key)
            .map(|(i, _)| {
                let tag = &svg[i..i + svg[i..].find('>').unwrap()];
                let a = format!(" {attr}=\"");
                let s = &tag[tag.find(&a).unwrap() + a.len()..];
                s[..s.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    /// Text content of the elements carrying `class="{class}"`, in order.
    fn text_of_class(svg: &str, class: &str) -> Vec<String> {
        let key = format!(r#"class="{class}""#);
        svg.match_indices(&key)
            .map(|(i, _)| {
                let s = &svg[i + svg[i..].find('>').unwrap() + 1..];
                s[..s.find('<').unwrap()].to_string()
            })
            .collect()
    }

    fn is_nice_step(step: f64) -> bool {
        let mag = 10f64.powf(step.log10().floor());
        let m = step / mag;
        [1.0, 2.0, 5.0, 10.0].iter().any(|n| (m - n).abs() < 1e-6)
    }

    fn sizes() -> Vec<f64> {
        vec![64.0, 128.0, 256.0, 512.0, 1024.0, 1500.0, 9000.0]
    }

    pub(super) fn sample() -> Vec<Panel> {
        let s = sizes();
        let series = |name: &str, f: &dyn Fn(f64) -> f64| Series {
            name: name.into(),
            points: s.iter().map(|&x| (x, f(x))).collect(),
        };
        vec![
            Panel {
                title: "Echo throughput".into(),
                y_label: "Throughput (Mpps)".into(),
                series: vec![
                    series("enso", &|x| 14.88_f64.min(9000.0 / x * 0.9)),
                    series("packetized", &|x| 3.2_f64.min(4000.0 / x)),
                ],
                y_percent: false,
            },
            Panel {
                title: "Interface metadata in PCIe DMA".into(),
                y_label: "Metadata (% of DMA bytes)".into(),
                series: vec![
                    series("enso", &|x| 100.0 * 4.0 / (x + 4.0)),
                    series("packetized", &|x| 100.0 * 32.0 / (x + 32.0)),
                ],
                y_percent: true,
            },
        ]
    }

    fn assert_clean(svg: &str) {
        check_xml(svg).unwrap_or_else(|e| panic!("not well-formed: {e}\n{svg}"));
        let lower = svg.to_ascii_lowercase();
        assert!(!lower.contains("nan"), "NaN in output");
        assert!(!lower.contains("inf"), "inf in output");
    }

    #[test]
    fn plot_sample_is_well_formed_svg() {
        let svg = render_svg("Echo: enso vs packetized", "Packet size (bytes)", &sample());
        assert_clean(&svg);
        assert!(svg.contains(r#"xmlns="http://www.w3.org/2000/svg""#));
        assert!(svg.contains(r#"version="1.1""#));
        assert!(svg.contains(r#"viewBox="0 0 1000 450""#));
        assert!(svg.contains(r#"width="1000" height="450""#));
        for name in ["enso", "packetized", "Echo: enso vs packetized", "Packet size (bytes)"] {
            assert!(svg.contains(name), "missing {name}");
        }
        assert_eq!(text_of_class(&svg, "legend"), ["enso", "packetized", "enso", "packetized"]);
    }

    #[test]
    fn plot_y_ticks_are_nice_and_cover_the_data() {
        let panels = sample();
        let svg = render_svg("t", "x", &panels);
        let labels = text_of_class(&svg, "ytick");
        // Split the labels per panel: the percent panel's end with '%'.
        let (pct, plain): (Vec<_>, Vec<_>) = labels.iter().partition(|l| l.ends_with('%'));
        for (ls, panel) in [(plain, &panels[0]), (pct, &panels[1])] {
            let v: Vec<f64> = ls.iter().map(|l| l.trim_end_matches('%').parse().unwrap()).collect();
            assert_eq!(v[0], 0.0, "{ls:?}");
            let step = v[1] - v[0];
            assert!(is_nice_step(step), "step {step} in {ls:?}");
            for w in v.windows(2) {
                assert!(((w[1] - w[0]) - step).abs() < 1e-9 * step.max(1.0), "{ls:?}");
            }
            let max = panel.series.iter().flat_map(|s| &s.points).map(|p| p.1).fold(0.0, f64::max);
            assert!(*v.last().unwrap() >= max - 1e-9, "{ls:?} below {max}");
            assert!(*v.last().unwrap() < max + step + 1e-9, "{ls:?} too far above {max}");
        }
    }

    #[test]
    fn plot_nice_ticks_for_many_ranges() {
        for max in [1e-7, 0.003, 0.37, 1.0, 7.3, 14.88, 99.9, 100.0, 123_456.0, 4.2e12] {
            let (ticks, step) = nice_ticks(0.0, max);
            assert!(is_nice_step(step), "{max}: step {step}");
            assert_eq!(ticks[0], 0.0);
            assert!(*ticks.last().unwrap() >= max);
            assert!((3..=11).contains(&ticks.len()), "{max}: {ticks:?}");
            for t in &ticks {
                let k = t / step;
                assert!((k - k.round()).abs() < 1e-9, "{max}: {t} not a multiple of {step}");
            }
            let labels: Vec<String> = ticks.iter().map(|&t| tick_label(t, step, false)).collect();
            let mut dedup = labels.clone();
            dedup.dedup();
            assert_eq!(labels, dedup, "{max}: labels collide");
        }
        assert_eq!(nice_ticks(0.0, 14.88), (vec![0.0, 5.0, 10.0, 15.0], 5.0));
        assert_eq!(nice_ticks(0.0, 0.0).0, vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        assert_eq!(tick_label(0.6000000000000001, 0.2, true), "0.6%");
        assert_eq!(tick_label(2_000_000.0, 500_000.0, false), "2000k");
        assert_eq!(tick_label(2_000_000.0, 1_000_000.0, false), "2M");
        let (t, s) = nice_ticks(-3.0, 7.0);
        assert!(t[0] <= -3.0 && *t.last().unwrap() >= 7.0 && is_nice_step(s));
    }

    #[test]
    fn plot_x_positions_follow_log2() {
        let svg = render_svg("t", "Packet size (bytes)", &sample());
        let marks = attr_of_class(&svg, "xtickmark", "x1");
        assert_eq!(marks.len(), 2 * sizes().len());
        for panel in marks.chunks(sizes().len()) {
            assert!(panel.windows(2).all(|w| w[1] > w[0]), "not monotonic: {marks:?}");
        }
        let xs = attr_of_class(&svg, "xtick", "x");
        let labels = text_of_class(&svg, "xtick");
        // Every size is labelled in both panels (crowded ones on a second row).
        let want: Vec<String> = sizes().iter().map(|&s| fmt_x(s)).collect();
        assert_eq!(labels, [want.clone(), want].concat());
        let first_panel: Vec<(f64, f64)> = labels
            .iter()
            .zip(&xs)
            .take_while(|(_, &x)| x < PANEL_WIDTH)
            .map(|(l, &x)| (l.parse().unwrap(), x))
            .collect();
        assert_eq!(first_panel.len(), sizes().len(), "{first_panel:?}");
        for w in first_panel.windows(2) {
            assert!(w[1].0 > w[0].0 && w[1].1 > w[0].1, "not monotonic: {first_panel:?}");
        }
        // Doublings are equally spaced.
        let px = |size: f64| first_panel.iter().find(|p| p.0 == size).unwrap().1;
        let d1 = px(128.0) - px(64.0);
        let d2 = px(256.0) - px(128.0);
        let d3 = px(1024.0) - px(512.0);
        assert!((d1 - d2).abs() < 0.05 && (d1 - d3).abs() < 0.05, "{d1} {d2} {d3}");
        // 1500 is log2-placed between 1024 and 2048.
        let f = (px(1500.0) - px(1024.0)) / d1;
        assert!((f - (1500f64 / 1024.0).log2()).abs() < 0.01, "{f}");
    }

    #[test]
    fn plot_same_colour_for_same_series_across_panels() {
        let mut panels = sample();
        panels[1].series.reverse();
        let svg = render_svg("t", "x", &panels);
        let colour_of = |panel: usize, name: &str| {
            let p = &svg[svg.find(&format!(r#"id="panel{panel}""#)).unwrap()..];
            let g = &p[p.find(&format!(r#"data-name="{name}""#)).unwrap()..];
            let s = &g[g.find("stroke=\"").unwrap() + 8..];
            s[..s.find('"').unwrap()].to_string()
        };
        assert_eq!(colour_of(0, "enso"), colour_of(1, "enso"));
        assert_eq!(colour_of(0, "packetized"), colour_of(1, "packetized"));
        assert_ne!(colour_of(0, "enso"), colour_of(0, "packetized"));
    }

    #[test]
    fn plot_edge_cases() {
        let one = |name: &str, pts: Vec<(f64, f64)>| Series { name: name.into(), points: pts };
        let cases: Vec<Vec<Panel>> = vec![
            // A single size.
            vec![Panel {
                title: "single".into(),
                y_label: "Mpps".into(),
                series: vec![one("enso", vec![(64.0, 10.0)]), one("packetized", vec![(64.0, 2.0)])],
                y_percent: false,
            }],
            // All zero, NaN/inf, non-positive x, and very different magnitudes.
            vec![
                Panel {
                    title: "zeros".into(),
                    y_label: "y".into(),
                    series: vec![
                        one("enso", vec![(64.0, 0.0), (1500.0, 0.0)]),
                        one(
                            "bad",
                            vec![
                                (f64::NAN, 1.0),
                                (64.0, f64::INFINITY),
                                (0.0, 5.0),
                                (-64.0, 5.0),
                                (128.0, f64::NEG_INFINITY),
                            ],
                        ),
                    ],
                    y_percent: true,
                },
                Panel {
                    title: "tiny".into(),
                    y_label: "y".into(),
                    series: vec![one("enso", vec![(64.0, 1e-6), (9000.0, 3e-6)])],
                    y_percent: false,
                },
                Panel {
                    title: "huge".into(),
                    y_label: "y".into(),
                    series: vec![one("x", vec![(64.0, 1e12), (9000.0, 3.3e13)])],
                    y_percent: false,
                },
            ],
            // No data at all, escaping, empty panel list.
            vec![Panel {
                title: "<a & b> \"q\" 'q'".into(),
                y_label: "".into(),
                series: vec![one("n<&>", vec![]), one("", vec![])],
                y_percent: false,
            }],
            vec![],
        ];
        for panels in &cases {
            let svg = render_svg("T & <t>", "size", panels);
            assert_clean(&svg);
            assert!(svg.contains("T &amp; &lt;t&gt;"));
            for l in text_of_class(&svg, "ytick") {
                let v: f64 = l.trim_end_matches(['%', 'k', 'M', 'G', 'T']).parse().unwrap();
                assert!(v.is_finite(), "{l}");
            }
        }
        let single = render_svg("t", "x", &cases[0]);
        assert_eq!(text_of_class(&single, "xtick"), ["64"]);
        let escaped = render_svg("t", "x", &cases[2]);
        assert!(escaped.contains("&lt;a &amp; b&gt; &quot;q&quot; &apos;q&apos;"));
        assert!(escaped.contains("n&lt;&amp;&gt;"));
    }

    #[test]
    fn plot_xml_checker_rejects_malformed() {
        assert!(check_xml("<a><b></a></b>").is_err());
        assert!(check_xml("<a x=1/>").is_err());
        assert!(check_xml("<a>&foo;</a>").is_err());
        assert!(check_xml("<a>x & y</a>").is_err());
        assert!(check_xml("<a/><b/>").is_err());
        assert!(check_xml("<a").is_err());
        assert!(check_xml("<?xml version=\"1.0\"?><a x=\"1\"><b/>t&amp;</a>").is_ok());
    }

    /// Writes the sample to `$PLOT_SAMPLE` (if set) for viewing: `PLOT_SAMPLE=/tmp/plot.svg
    /// cargo test -p testbed --lib plot_write_sample`.
    #[test]
    fn plot_write_sample() {
        if let Some(path) = std::env::var_os("PLOT_SAMPLE") {
            let svg = render_svg("Echo benchmark: enso vs packetized", "Packet size (bytes)", &sample());
            std::fs::write(path, svg).unwrap();
        }
    }
}
