//! Time-series charts as inline SVG: stacked bars for additive measures, lines for rates
//! and percentiles. Drawn here rather than with a plotting crate: a chart is a few dozen
//! rectangles or one polyline, and as markup it themes through CSS classes, carries a
//! `<title>` tooltip per point, and is escaped like the rest of the page.

use maud::{Markup, html};

use super::layout;

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 150.0;
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 18.0;
/// Series beyond this many share the last colour class.
pub const PALETTE: usize = 8;

/// One named series: a value per bucket, aligned with the chart's buckets.
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
}

/// How a chart's values read.
#[derive(Clone, Copy)]
pub enum Unit {
    Count,
    Usd,
    Ms,
    Percent,
}

impl Unit {
    fn format(self, value: f64) -> String {
        match self {
            Unit::Count => layout::count(value),
            Unit::Usd => layout::cost(value),
            Unit::Ms => layout::duration(value),
            Unit::Percent => format!("{:.1}%", value * 100.0),
        }
    }
}

/// Bucket starts covering `[since, until)`, at most `max` of them.
pub fn buckets(window: (i64, i64), bucket_ns: i64, max: usize) -> Vec<i64> {
    let first = window.0.div_euclid(bucket_ns) * bucket_ns;
    (0..max as i64)
        .map(|i| first + i * bucket_ns)
        .take_while(|start| *start < window.1)
        .collect()
}

/// A bucket width (seconds) giving about 30–60 bars over a window of `seconds`.
pub fn bucket_seconds(seconds: i64) -> i64 {
    // whole hours from a day up, so rollups answer the long ranges
    const NICE: [i64; 8] = [60, 300, 900, 3_600, 10_800, 21_600, 43_200, 86_400];
    NICE.into_iter()
        .find(|width| seconds / width <= 60)
        .unwrap_or(86_400 * ((seconds / 86_400 / 60).max(1) + 1))
}

fn scale_max(series: &[Series], stacked: bool, buckets: usize) -> f64 {
    let max = if stacked {
        (0..buckets)
            .map(|i| series.iter().map(|s| s.values[i]).sum::<f64>())
            .fold(0.0, f64::max)
    } else {
        series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .fold(0.0, f64::max)
    };
    if max > 0.0 { max } else { 1.0 }
}

fn frame(
    title: &str,
    unit: Unit,
    max: f64,
    buckets: &[i64],
    body: Markup,
    series: &[Series],
) -> Markup {
    html! {
        figure.chart {
            figcaption { (title) }
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title) {
                line.axis x1=(LEFT) y1="4" x2=(LEFT) y2=(HEIGHT - BOTTOM) {}
                line.axis x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) {}
                text.tick x=(LEFT - 4.0) y="12" text-anchor="end" { (unit.format(max)) }
                text.tick x=(LEFT - 4.0) y=(HEIGHT - BOTTOM) text-anchor="end" { "0" }
                @if let (Some(first), Some(last)) = (buckets.first(), buckets.last()) {
                    text.tick x=(LEFT) y=(HEIGHT - 4.0) { (layout::time(*first)) }
                    text.tick x=(WIDTH) y=(HEIGHT - 4.0) text-anchor="end" { (layout::time(*last)) }
                }
                (body)
            }
            @if series.len() > 1 {
                ul.legend {
                    @for (i, one) in series.iter().enumerate() {
                        li { span class=(format!("swatch s{}", i.min(PALETTE - 1))) {} (one.name) }
                    }
                }
            }
        }
    }
}

/// Stacked bars, one stack per bucket.
pub fn bars(title: &str, unit: Unit, buckets: &[i64], series: &[Series]) -> Markup {
    let max = scale_max(series, true, buckets.len());
    let plot_height = HEIGHT - BOTTOM - 4.0;
    let step = (WIDTH - LEFT) / buckets.len().max(1) as f64;
    let width = (step * 0.8).max(0.5);
    // (series, bucket, value, y, height) of every non-empty piece, stacked bottom up
    let mut pieces = Vec::new();
    for (i, _) in buckets.iter().enumerate() {
        let mut base = 0.0;
        for (s, one) in series.iter().enumerate() {
            let value = one.values[i];
            if value > 0.0 {
                let height = value / max * plot_height;
                pieces.push((s, i, value, HEIGHT - BOTTOM - base - height, height));
                base += height;
            }
        }
    }
    let body = html! {
        @for (s, i, value, y, height) in pieces {
            rect class=(format!("s{}", s.min(PALETTE - 1))) x=(format!("{:.1}", LEFT + i as f64 * step + 1.0))
                y=(format!("{y:.1}")) width=(format!("{width:.1}")) height=(format!("{height:.1}")) {
                title { (layout::time(buckets[i])) " · " (series[s].name) ": " (unit.format(value)) }
            }
        }
    };
    frame(title, unit, max, buckets, body, series)
}

/// One line per series, with a dot and tooltip per bucket that has a value.
pub fn lines(title: &str, unit: Unit, buckets: &[i64], series: &[Series]) -> Markup {
    let max = scale_max(series, false, buckets.len());
    let plot_height = HEIGHT - BOTTOM - 4.0;
    let step = (WIDTH - LEFT) / buckets.len().max(1) as f64;
    let point = |i: usize, value: f64| {
        (
            LEFT + (i as f64 + 0.5) * step,
            HEIGHT - BOTTOM - value / max * plot_height,
        )
    };
    let body = html! {
        @for (s, one) in series.iter().enumerate() {
            @let class = format!("line s{}", s.min(PALETTE - 1));
            @let points: Vec<String> = one.values.iter().enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, v)| { let (x, y) = point(i, *v); format!("{x:.1},{y:.1}") })
                .collect();
            polyline class=(class) points=(points.join(" ")) {}
            @for (i, value) in one.values.iter().enumerate() {
                @if value.is_finite() {
                    @let (x, y) = point(i, *value);
                    circle class=(format!("dot s{}", s.min(PALETTE - 1))) cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="2" {
                        title { (layout::time(buckets[i])) " · " (one.name) ": " (unit.format(*value)) }
                    }
                }
            }
        }
    };
    frame(title, unit, max, buckets, body, series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_window_and_widths_are_nice() {
        let hour = 3_600 * 1_000_000_000;
        let got = buckets((hour + 5, 3 * hour + 1), hour, 100);
        assert_eq!(got, vec![hour, 2 * hour, 3 * hour]);
        assert_eq!(buckets((0, 100 * hour), hour, 10).len(), 10);
        assert_eq!(bucket_seconds(3_600), 60);
        assert_eq!(bucket_seconds(86_400), 3_600);
        assert_eq!(bucket_seconds(30 * 86_400), 43_200);
    }

    #[test]
    fn series_names_are_escaped_in_tooltips_and_legends() {
        let series = [
            Series {
                name: "<script>x</script>".into(),
                values: vec![1.0],
            },
            Series {
                name: "b".into(),
                values: vec![2.0],
            },
        ];
        let svg = bars("t", Unit::Count, &[0], &series).into_string();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        let svg = lines("t", Unit::Ms, &[0], &series).into_string();
        assert!(!svg.contains("<script>"), "{svg}");
    }
}
