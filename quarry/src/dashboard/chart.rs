//! Hashrate charts as server-rendered SVG: readable without JavaScript, a few kilobytes, and
//! nothing to download.

use std::fmt::Write as _;

use maud::{html, Markup, PreEscaped};

use super::format;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// One point: bucket start (Unix ms) and hashrate (H/s).
pub type Point = (i64, f64);

/// A line-and-area chart of `points` over `[from_ms, to_ms)`, labelled `label`.
pub fn hashrate(label: &str, points: &[Point], from_ms: i64, to_ms: i64) -> Markup {
    let peak = points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let top = nice_ceiling(peak);
    let span = (to_ms - from_ms).max(1) as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |ms: i64| LEFT + (ms - from_ms) as f64 / span * plot_w;
    let y = |v: f64| TOP + plot_h - if top > 0.0 { v / top * plot_h } else { 0.0 };
    let mut line = String::new();
    for (i, (ms, v)) in points.iter().enumerate() {
        let _ = write!(
            line,
            "{}{:.1},{:.1}",
            if i == 0 { "M" } else { "L" },
            x(*ms),
            y(*v)
        );
    }
    let area = match (points.first(), points.last()) {
        (Some(first), Some(last)) => format!(
            "{line}L{:.1},{:.1}L{:.1},{:.1}Z",
            x(last.0),
            y(0.0),
            x(first.0),
            y(0.0)
        ),
        _ => String::new(),
    };
    let summary = format!(
        "{label}: peak {}, latest {}",
        format::hashrate(peak),
        format::hashrate(points.last().map_or(0.0, |p| p.1))
    );
    let ticks = [0.0, 0.5, 1.0];
    let x_labels = [from_ms, from_ms + (to_ms - from_ms) / 2, to_ms];
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(summary)
                preserveAspectRatio="xMidYMid meet" {
                title { (summary) }
                @for t in ticks {
                    line.grid x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y(top * t)) y2=(y(top * t)) {}
                    text.axis x=(LEFT - 6.0) y=(y(top * t) + 4.0) text-anchor="end" {
                        (format::hashrate(top * t))
                    }
                }
                @for (i, ms) in x_labels.iter().enumerate() {
                    text.axis x=(x(*ms)) y=(HEIGHT - 8.0)
                        text-anchor=(match i { 0 => "start", 1 => "middle", _ => "end" }) {
                        (format::axis(*ms, to_ms - from_ms))
                    }
                }
                @if peak > 0.0 {
                    path.area d=(PreEscaped(area)) {}
                    path.line d=(PreEscaped(line)) {}
                } @else {
                    text.empty x=(LEFT + plot_w / 2.0) y=(TOP + plot_h / 2.0) text-anchor="middle" {
                        "No accepted shares in this window yet"
                    }
                }
            }
        }
    }
}

/// 1, 2 or 5 times a power of ten, at or above `value`: round axis labels.
fn nice_ceiling(value: f64) -> f64 {
    if !value.is_finite() || value <= 0.0 {
        return 0.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|ceiling| *ceiling >= value)
        .unwrap_or(10.0 * magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round_and_an_empty_window_says_so() {
        assert_eq!(nice_ceiling(3.2e12), 5e12);
        assert_eq!(nice_ceiling(1e6), 1e6);
        assert_eq!(nice_ceiling(0.0), 0.0);
        let empty = hashrate("Pool", &[(0, 0.0), (60_000, 0.0)], 0, 120_000).into_string();
        assert!(empty.contains("No accepted shares"));
        let full = hashrate("Pool", &[(0, 1e9), (60_000, 2e9)], 0, 120_000).into_string();
        assert!(
            full.contains("class=\"line\"") && full.contains("2.00 GH/s"),
            "{full}"
        );
    }
}
