//! An SVG line chart (no plotting library): one series per server, x = subscriber count
//! (log scale), y = a figure (linear, from zero). Used by `bench-chart` for the results
//! document.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One series: a name and `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points, any order.
    pub points: Vec<(f64, f64)>,
}

const COLORS: &[&str] = &["#1b6ac9", "#d9480f", "#2b8a3e", "#862e9c", "#495057"];

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders a chart. `log_y` uses a log scale on y too (for series orders of magnitude apart).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> String {
    let (w, h) = (780.0, 440.0);
    let (left, right, top, bottom) = (80.0, 220.0, 50.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min).max(1.0);
    let xmax = xs.iter().copied().fold(0.0, f64::max).max(xmin * 10.0);
    let (lx0, lx1) = (xmin.log10().floor(), xmax.log10().ceil());
    let ymax_raw = ys.iter().copied().fold(0.0, f64::max);
    let ymin_pos = ys
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let (ly0, ly1) = if log_y && ymin_pos.is_finite() {
        (
            ymin_pos.log10().floor(),
            ymax_raw.log10().ceil().max(ymin_pos.log10().floor() + 1.0),
        )
    } else {
        (0.0, 0.0)
    };
    let ymax = nice_max(ymax_raw);
    let px = |x: f64| left + (x.max(1.0).log10() - lx0) / (lx1 - lx0) * pw;
    let py = |y: f64| {
        if log_y {
            top + ph - (y.max(10f64.powf(ly0)).log10() - ly0) / (ly1 - ly0) * ph
        } else {
            top + ph - y / ymax * ph
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        left + pw / 2.0,
        esc(title)
    );
    // Grid and y ticks.
    let yticks: Vec<f64> = if log_y {
        (ly0 as i32..=ly1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| ymax * f64::from(i) / 5.0).collect()
    };
    for t in yticks {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 8.0,
            y + 4.0,
            fmt_num(t)
        );
    }
    for e in lx0 as i32..=lx1 as i32 {
        let x = px(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 18.0,
            fmt_num(10f64.powi(e))
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 18.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        top + ph / 2.0,
        top + ph / 2.0,
        esc(y_label)
    );
    for (i, se) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts = se.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2.5"/>"#,
            path.join(" ")
        );
        for (x, y) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{color}"><title>{}: {} at {}</title></circle>"#,
                px(*x),
                py(*y),
                esc(&se.name),
                fmt_num(*y),
                fmt_num(*x)
            );
        }
        let ly = top + 10.0 + 22.0 * i as f64;
        let lx = left + pw + 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="2.5"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Groups `(series, x, y)` samples and takes the median per point.
pub fn median_series(samples: &[(String, f64, f64)]) -> Vec<Series> {
    let mut m: BTreeMap<String, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for (name, x, y) in samples {
        m.entry(name.clone())
            .or_default()
            .entry(*x as u64)
            .or_default()
            .push(*y);
    }
    m.into_iter()
        .map(|(name, pts)| Series {
            name,
            points: pts
                .into_iter()
                .map(|(x, ys)| (x as f64, crate::report::median(ys)))
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_and_point() {
        let series = median_series(&[
            ("a".into(), 10.0, 5.0),
            ("a".into(), 10.0, 7.0),
            ("a".into(), 10.0, 6.0),
            ("a".into(), 1000.0, 9000.0),
            ("b & c".into(), 100.0, 20.0),
        ]);
        assert_eq!(series[0].points, vec![(10.0, 6.0), (1000.0, 9000.0)]);
        let svg = line_chart("t", "x", "y", &series, false);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("b &amp; c"));
        let log = line_chart("t", "x", "y", &series, true);
        assert_eq!(log.matches("<polyline").count(), 2);
    }
}
