//! Line charts as SVG text, drawn by hand (a few hundred bytes of markup per line, no
//! plotting crate to build on a 2-core CI): log-scaled axes, one polyline per series.

use std::fmt::Write as _;

/// One line of a chart.
pub(super) struct Series {
    pub(super) name: String,
    pub(super) color: &'static str,
    pub(super) dashed: bool,
    /// (x, y), both positive (log scales).
    pub(super) points: Vec<(f64, f64)>,
}

/// One chart: its axes and lines.
pub(super) struct Panel {
    pub(super) title: String,
    pub(super) x_label: String,
    pub(super) y_label: String,
    /// Where the x ticks go and what they say (the measured points).
    pub(super) x_ticks: Vec<(f64, String)>,
    pub(super) series: Vec<Series>,
}

const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 320.0;
/// Plot area inside a panel: left, top, right and bottom margins.
const MARGIN: (f64, f64, f64, f64) = (70.0, 36.0, 16.0, 96.0);

/// Panels side by side under one title, as a standalone SVG document.
pub(super) fn figure(title: &str, panels: &[Panel]) -> String {
    let width = PANEL_W * panels.len() as f64;
    let height = PANEL_H + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        width / 2.0,
        escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<g transform=\"translate({} 30)\">",
            i as f64 * PANEL_W
        );
        draw_panel(&mut svg, panel);
        let _ = writeln!(svg, "</g>");
    }
    svg.push_str("</svg>\n");
    svg
}

/// A log axis: maps values in [lo, hi] onto [a, b] (pixels).
struct LogAxis {
    lo: f64,
    hi: f64,
    a: f64,
    b: f64,
}

impl LogAxis {
    fn new(values: impl Iterator<Item = f64>, a: f64, b: f64) -> LogAxis {
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            (lo, hi) = (1.0, 10.0);
        }
        // A little air around the lines, and never a zero-width axis.
        let (lo, hi) = (lo / 1.25, (hi * 1.25).max(lo * 2.0));
        LogAxis { lo, hi, a, b }
    }

    fn at(&self, v: f64) -> f64 {
        let f = (v.max(self.lo).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln());
        self.a + f * (self.b - self.a)
    }

    /// 1-2-5 ticks inside the axis.
    fn ticks(&self) -> Vec<f64> {
        let mut ticks = Vec::new();
        let mut decade = 10f64.powf(self.lo.log10().floor());
        while decade <= self.hi {
            for m in [1.0, 2.0, 5.0] {
                let t = decade * m;
                if t >= self.lo && t <= self.hi {
                    ticks.push(t);
                }
            }
            decade *= 10.0;
        }
        ticks
    }
}

fn draw_panel(svg: &mut String, p: &Panel) {
    let (ml, mt, mr, mb) = MARGIN;
    let (x0, x1, y0, y1) = (ml, PANEL_W - mr, PANEL_H - mb, mt);
    let xs = LogAxis::new(p.x_ticks.iter().map(|t| t.0), x0, x1);
    let ys = LogAxis::new(
        p.series.iter().flat_map(|s| s.points.iter().map(|pt| pt.1)),
        y0,
        y1,
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"16\" text-anchor=\"middle\" font-size=\"13\">{}</text>\n\
         <rect x=\"{x0}\" y=\"{y1}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>",
        (x0 + x1) / 2.0,
        escape(&p.title),
        x1 - x0,
        y0 - y1
    );
    for t in ys.ticks() {
        let y = ys.at(t);
        let _ = writeln!(
            svg,
            "<line x1=\"{x0}\" x2=\"{x1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 4.0,
            y + 4.0,
            short(t)
        );
    }
    for (x, label) in &p.x_ticks {
        let x = xs.at(*x);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y1}\" y2=\"{y0}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            y0 + 16.0,
            escape(label)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text transform=\"translate(14 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        (x0 + x1) / 2.0,
        y0 + 34.0,
        escape(&p.x_label),
        (y0 + y1) / 2.0,
        escape(&p.y_label)
    );
    for (i, s) in p.series.iter().enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| *x > 0.0 && *y > 0.0)
            .map(|(x, y)| format!("{:.1},{:.1}", xs.at(*x), ys.at(*y)))
            .collect();
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash}/>",
            points.join(" "),
            s.color
        );
        for pt in &points {
            let (x, y) = pt.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                svg,
                "<circle cx=\"{x}\" cy=\"{y}\" r=\"2.5\" fill=\"{}\"/>",
                s.color
            );
        }
        // The legend, two entries per row under the plot.
        let (col, row) = ((i % 2) as f64, (i / 2) as f64);
        let (lx, ly) = (x0 + col * 190.0, y0 + 52.0 + row * 16.0);
        let _ = writeln!(
            svg,
            "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"{dash}/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            lx + 24.0,
            s.color,
            lx + 30.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
}

/// 1500 → "1.5k", 2000000 → "2M", 0.5 → "0.5".
fn short(v: f64) -> String {
    let (n, unit) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = format!("{n:.1}");
    format!("{}{unit}", text.trim_end_matches(".0"))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_labels() {
        let axis = LogAxis::new([100.0, 900.0].into_iter(), 0.0, 100.0);
        assert_eq!(axis.ticks(), vec![100.0, 200.0, 500.0, 1000.0]);
        assert!(axis.at(100.0) > 0.0 && axis.at(900.0) < 100.0);
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(2e6), "2M");
        assert_eq!(escape("a<b & c"), "a&lt;b &amp; c");
    }

    #[test]
    fn a_figure_holds_every_series() {
        let panel = Panel {
            title: "ops/s".into(),
            x_label: "tasks".into(),
            y_label: "ops/s".into(),
            x_ticks: vec![(1.0, "1".into()), (16.0, "16".into())],
            series: vec![Series {
                name: "ours get".into(),
                color: "#1f77b4",
                dashed: false,
                points: vec![(1.0, 10.0), (16.0, 100.0)],
            }],
        };
        let svg = figure("Redis", &[panel]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("ours get"));
    }
}
