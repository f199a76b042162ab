//! The bench's pictures (issue 12 point 5): tokens/s against context length
//! and against concurrency, as SVG that any browser shows. Plain line charts
//! in panels side by side, one panel per figure with its own y scale
//! (prefill and decode differ by two orders of magnitude). No dependency: a
//! few hundred bytes of markup per series.

use std::fmt::Write;

/// One line of a panel: a name for the legend and its (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const W: f64 = 460.0;
const H: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Maps data to pixels in one panel: x from the smallest to the largest x,
/// y from 0 to the first round tick at or above the largest y plus a
/// twentieth.
struct Scale {
    x0: f64,
    x1: f64,
    y1: f64,
    /// Distance between y ticks: 1, 2, 2.5 or 5 times a power of ten.
    y_step: f64,
}

/// The round tick distance (1, 2, 2.5 or 5 times a power of ten) at or
/// above `raw`, for `raw` > 0.
fn round_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let f = raw / magnitude;
    let mult = [1.0, 2.0, 2.5, 5.0]
        .into_iter()
        .find(|&m| f <= m * (1.0 + 1e-9))
        .unwrap_or(10.0);
    mult * magnitude
}

impl Scale {
    fn of(panel: &Panel) -> Scale {
        let pts = || panel.series.iter().flat_map(|s| s.points.iter());
        let x0 = pts().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let x1 = pts().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        let ymax = pts().map(|p| p.1).fold(0.0, f64::max);
        let (x0, x1) = match (x0.is_finite(), x1 > x0) {
            (true, true) => (x0, x1),
            (true, false) => (x0 - 1.0, x0 + 1.0),
            _ => (0.0, 1.0),
        };
        let top = if ymax > 0.0 { ymax * 1.05 } else { 1.0 };
        let y_step = round_step(top / 4.0);
        Scale {
            x0,
            x1,
            y1: y_step * (top / y_step).ceil(),
            y_step,
        }
    }

    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        TOP + (1.0 - y / self.y1) * (H - TOP - BOTTOM)
    }
}

/// The panels side by side in one SVG document.
pub fn svg(panels: &[Panel]) -> String {
    let width = W * panels.len().max(1) as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, p) in panels.iter().enumerate() {
        let _ = writeln!(out, "<g transform=\"translate({},0)\">", W * i as f64);
        panel(&mut out, p);
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, p: &Panel) {
    let s = Scale::of(p);
    let (bottom, right) = (H - BOTTOM, W - RIGHT);
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>",
        W / 2.0,
        escape(&p.title)
    );
    let _ = writeln!(
        out,
        "<path d=\"M{LEFT},{TOP} V{bottom} H{right}\" fill=\"none\" stroke=\"black\"/>"
    );
    let ticks = (s.y1 / s.y_step).round() as usize;
    // Enough decimals for steps below 1 (0.25 needs two).
    let decimals = if s.y_step >= 1.0 {
        0
    } else {
        (-s.y_step.log10()).ceil() as usize + 1
    };
    for k in 0..=ticks {
        let y = s.y_step * k as f64;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{y:.decimals$}</text>",
            LEFT - 6.0,
            s.py(y) + 4.0,
        );
    }
    let mut xs: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{x}</text>",
            s.px(x),
            bottom + 16.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        (LEFT + right) / 2.0,
        H - 10.0,
        escape(&p.x_label)
    );
    let _ = writeln!(
        out,
        "<text transform=\"translate(14,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        (TOP + bottom) / 2.0,
        escape(&p.y_label)
    );
    for (i, series) in p.series.iter().enumerate() {
        line(out, &s, series, COLOURS[i % COLOURS.len()], i);
    }
}

fn line(out: &mut String, s: &Scale, series: &Series, colour: &str, i: usize) {
    let pts: Vec<String> = series
        .points
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", s.px(x), s.py(y)))
        .collect();
    let _ = writeln!(
        out,
        "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
        pts.join(" ")
    );
    for &(x, y) in &series.points {
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{x}: {y:.1}</title></circle>",
            s.px(x),
            s.py(y)
        );
    }
    let ly = TOP + 6.0 + 16.0 * i as f64;
    let _ = writeln!(
        out,
        "<rect x=\"{}\" y=\"{:.1}\" width=\"12\" height=\"4\" fill=\"{colour}\"/>\
         <text x=\"{}\" y=\"{:.1}\">{}</text>",
        LEFT + 10.0,
        ly - 4.0,
        LEFT + 28.0,
        ly,
        escape(&series.name)
    );
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polyline_ys(doc: &str) -> Vec<Vec<f64>> {
        doc.lines()
            .filter_map(|l| l.split("points=\"").nth(1))
            .map(|rest| {
                rest.split('"')
                    .next()
                    .unwrap_or("")
                    .split(' ')
                    .map(|p| p.split(',').nth(1).unwrap().parse().unwrap())
                    .collect()
            })
            .collect()
    }

    /// Each series is drawn through all its points, a larger value higher up
    /// (a smaller SVG y), equal values level, and zero on the x axis.
    #[test]
    fn lines_follow_their_values() {
        let p = Panel {
            title: "decode <tok/s>".into(),
            x_label: "context".into(),
            y_label: "tok/s".into(),
            series: vec![
                Series {
                    name: "ours".into(),
                    points: vec![(0.0, 900.0), (512.0, 800.0), (4096.0, 800.0), (8192.0, 0.0)],
                },
                Series {
                    name: "peer".into(),
                    points: vec![(0.0, 100.0)],
                },
            ],
        };
        let doc = svg(&[p.clone(), p]);
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert!(doc.contains("decode &lt;tok/s&gt;"), "titles are escaped");
        let ys = polyline_ys(&doc);
        assert_eq!(ys.len(), 4, "two series in each of two panels");
        let ours = &ys[0];
        assert_eq!(ours.len(), 4);
        assert!(ours[0] < ours[1], "900 is drawn above 800");
        assert_eq!(ours[1], ours[2], "equal values are level");
        assert_eq!(ours[3], H - BOTTOM, "zero sits on the x axis");
        assert!(ys[1][0] > ours[1], "100 is drawn below 800");
        assert!(
            doc.contains(">4096<") && doc.contains(">8192<"),
            "x ticks name the points"
        );
    }

    /// The y ticks are round numbers from 0 to the first at or above the
    /// largest value (issue 12: not 27, 53, 80).
    #[test]
    fn y_ticks_are_round() {
        let ticks = |ymax: f64| {
            let p = Panel {
                title: "t".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                series: vec![Series {
                    name: "s".into(),
                    points: vec![(1.0, ymax), (2.0, ymax / 3.0)],
                }],
            };
            svg(&[p])
                .lines()
                .filter(|l| l.contains("text-anchor=\"end\""))
                .map(|l| {
                    l.split('>')
                        .nth(1)
                        .unwrap()
                        .split('<')
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ticks(73.0), ["0", "20", "40", "60", "80"]);
        assert_eq!(ticks(6384.0), ["0", "2000", "4000", "6000", "8000"]);
        assert_eq!(ticks(900.0), ["0", "250", "500", "750", "1000"]);
        assert_eq!(ticks(0.9), ["0.00", "0.25", "0.50", "0.75", "1.00"]);
        assert_eq!(round_step(2.0), 2.0);
        assert_eq!(round_step(0.3), 0.5);
    }

    /// A single point or no points at all still make a valid picture.
    #[test]
    fn degenerate_panels_draw() {
        let one = Panel {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "s".into(),
                points: vec![(64.0, 5.0)],
            }],
        };
        let none = Panel {
            series: Vec::new(),
            ..one.clone()
        };
        for doc in [svg(&[one]), svg(&[none])] {
            assert!(!doc.contains("NaN") && !doc.contains("inf"), "{doc}");
        }
    }
}
