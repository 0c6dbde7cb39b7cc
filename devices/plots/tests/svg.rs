//! Every figure parses as XML, is an `<svg>` document, and shows what it was given.

use roxmltree::{Document, Node};
use testbed_plots::{render_bars, render_svg, Bar, BarChart, BarGroup, Panel, Series};

const SIZES: [f64; 7] = [64.0, 128.0, 256.0, 512.0, 1024.0, 1500.0, 9000.0];

fn series(name: &str, f: &dyn Fn(f64) -> f64) -> Series {
    Series { name: name.into(), points: SIZES.iter().map(|&x| (x, f(x))).collect() }
}

fn panels() -> Vec<Panel> {
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

fn bar_chart() -> BarChart {
    let group = |label: &str, a: f64, b: f64| BarGroup {
        label: label.into(),
        bars: vec![
            Bar { value: a, min: a * 0.9, max: a * 1.1 },
            Bar { value: b, min: b * 0.95, max: b * 1.05 },
        ],
        note: format!("×{:.2}", a / b),
    };
    BarChart {
        title: "Apps: Ensō vs packetized".into(),
        y_label: "Mfps".into(),
        series: vec!["Ensō".into(), "packetized".into()],
        groups: vec![group("maglev", 3.0, 1.0), group("logmon", 2.0, 1.5), group("nat & fw", 1.0, 0.5)],
    }
}

/// The parsed document's root, checked to be an SVG element.
fn parse(svg: &str) -> Document<'_> {
    let doc = Document::parse(svg).unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{svg}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(root.tag_name().namespace(), Some("http://www.w3.org/2000/svg"));
    doc
}

fn texts(doc: &Document) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_string())
        .collect()
}

/// Elements of `tag` whose `attr` mentions `colour` (plotters writes fills and strokes
/// as `#RRGGBB`).
fn count(doc: &Document, tag: &str, attr: &str, colour: &str) -> usize {
    let has = |n: &Node| n.attribute(attr).is_some_and(|v| v.eq_ignore_ascii_case(colour));
    doc.descendants().filter(|n| n.has_tag_name(tag) && has(n)).count()
}

fn assert_finite(svg: &str) {
    let lower = svg.to_ascii_lowercase();
    assert!(!lower.contains("nan") && !lower.contains("inf"), "a non-finite number in {svg}");
}

#[test]
fn lines_show_titles_labels_legends_and_every_point() {
    let svg = render_svg("Echo: enso vs packetized", "Packet size (bytes)", &panels());
    assert_finite(&svg);
    let doc = parse(&svg);
    let t = texts(&doc);
    for want in [
        "Echo: enso vs packetized",
        "Echo throughput",
        "Interface metadata in PCIe DMA",
        "Throughput (Mpps)",
        "Metadata (% of DMA bytes)",
    ] {
        assert_eq!(t.iter().filter(|x| *x == want).count(), 1, "{want} in {t:?}");
    }
    assert_eq!(t.iter().filter(|x| *x == "Packet size (bytes)").count(), 2, "one x label per panel");
    // Legends: each series named once per panel.
    for name in ["enso", "packetized"] {
        assert_eq!(t.iter().filter(|x| *x == name).count(), 2, "{name} in {t:?}");
    }
    // A tick label at every size present, in both panels, but for 1500: it would run
    // into 1024's.
    assert!(!t.iter().any(|x| x == "1500"), "{t:?}");
    for size in SIZES.into_iter().filter(|&s| s != 1500.0) {
        assert_eq!(t.iter().filter(|x| **x == size.to_string()).count(), 2, "{size} in {t:?}");
    }
    assert!(t.iter().any(|x| x.ends_with('%')), "percent ticks in {t:?}");
    // enso: circles, 7 points per panel plus its legend mark in each; packetized: squares.
    assert_eq!(count(&doc, "circle", "fill", "#0072B2"), 2 * (SIZES.len() + 1));
    assert_eq!(count(&doc, "rect", "fill", "#D55E00"), 2 * (SIZES.len() + 1));
    // One line per series per panel, plus the legend's sample line.
    assert_eq!(count(&doc, "polyline", "stroke", "#0072B2"), 4);
    assert_eq!(count(&doc, "polyline", "stroke", "#D55E00"), 4);
}

#[test]
fn lines_keep_a_series_style_across_panels_and_vary_markers() {
    let names = ["a", "b", "c", "d", "e", "f"];
    let panel = |names: &[&str]| Panel {
        title: "p".into(),
        y_label: "y".into(),
        series: names.iter().map(|n| series(n, &|x| x)).collect(),
        y_percent: false,
    };
    // "c" comes third in the first panel and first in the second: same colour in both.
    let svg = render_svg("t", "x", &[panel(&names), panel(&["c"])]);
    let doc = parse(&svg);
    let per_series = SIZES.len() + 1;
    assert_eq!(count(&doc, "polygon", "fill", "#009E73"), 2 * per_series, "c: triangles in both panels");
    assert_eq!(count(&doc, "polygon", "fill", "#CC79A7"), per_series, "d: diamonds");
    assert_eq!(count(&doc, "polygon", "fill", "#E69F00"), per_series, "e: triangles down");
    // f: crosses, drawn as two strokes each.
    assert!(
        count(&doc, "polyline", "stroke", "#56B4E9") + count(&doc, "line", "stroke", "#56B4E9") > per_series
    );
}

#[test]
fn lines_skip_points_that_cannot_be_placed() {
    let odd = Panel {
        title: "odd <&> \"quotes\"".into(),
        y_label: "y".into(),
        series: vec![Series {
            name: "s".into(),
            points: vec![
                (64.0, 1.0),
                (0.0, 2.0),
                (-1.0, 3.0),
                (f64::NAN, 1.0),
                (128.0, f64::INFINITY),
                (256.0, 2.0),
            ],
        }],
        y_percent: false,
    };
    let svg = render_svg("t", "x", &[odd]);
    assert_finite(&svg);
    let doc = parse(&svg);
    assert!(texts(&doc).iter().any(|t| t == "odd <&> \"quotes\""), "escaped and read back");
    assert_eq!(count(&doc, "circle", "fill", "#0072B2"), 2 + 1, "two placeable points and the legend");

    for panels in
        [vec![], vec![Panel { title: "empty".into(), y_label: "y".into(), series: vec![], y_percent: true }]]
    {
        let svg = render_svg("nothing", "x", &panels);
        assert_finite(&svg);
        parse(&svg);
    }
    let flat = Panel {
        title: "zeros".into(),
        y_label: "y".into(),
        series: vec![series("z", &|_| 0.0)],
        y_percent: false,
    };
    parse(&render_svg("zeros", "x", &[flat]));
}

#[test]
fn bars_show_groups_bars_whiskers_and_notes() {
    let svg = render_bars(&bar_chart());
    assert_finite(&svg);
    let doc = parse(&svg);
    let t = texts(&doc);
    for want in
        ["Apps: Ensō vs packetized", "Mfps", "maglev", "logmon", "nat & fw", "×3.00", "×1.33", "×2.00"]
    {
        assert_eq!(t.iter().filter(|x| *x == want).count(), 1, "{want} in {t:?}");
    }
    for name in ["Ensō", "packetized"] {
        assert!(t.iter().any(|x| x == name), "legend {name} in {t:?}");
    }
    // Three bars per series plus a legend swatch; a whisker per bar.
    assert_eq!(count(&doc, "rect", "fill", "#0072B2"), 3 + 1);
    assert_eq!(count(&doc, "rect", "fill", "#D55E00"), 3 + 1);
    assert_eq!(count(&doc, "polyline", "stroke", "#444444"), 6);
}

#[test]
fn bars_with_nothing_or_non_finite_values_still_parse() {
    let mut c = bar_chart();
    c.groups[0].bars[0] = Bar { value: f64::NAN, min: f64::NEG_INFINITY, max: f64::INFINITY };
    let svg = render_bars(&c);
    assert_finite(&svg);
    parse(&svg);
    c.groups.clear();
    parse(&render_bars(&c));
}

/// Writes the sample figures into `$PLOT_SAMPLE_DIR` (if set) for viewing:
/// `PLOT_SAMPLE_DIR=/tmp/plots cargo test -p testbed-plots write_samples`.
#[test]
fn write_samples() {
    if let Some(dir) = std::env::var_os("PLOT_SAMPLE_DIR") {
        let dir = std::path::Path::new(&dir);
        std::fs::write(
            dir.join("lines.svg"),
            render_svg("Echo: enso vs packetized", "Packet size (bytes)", &panels()),
        )
        .unwrap();
        std::fs::write(dir.join("bars.svg"), render_bars(&bar_chart())).unwrap();
    }
}
