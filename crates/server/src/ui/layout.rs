//! The page shell, the filter bar and the small formatting helpers every page uses.

use maud::{DOCTYPE, Markup, html};

use super::{RANGES, UiQuery};

const NAV: [(&str, &str); 6] = [
    ("traces", "/traces"),
    ("agent runs", "/traces?kind=agent"),
    ("sessions", "/sessions"),
    ("dashboard", "/dashboard"),
    ("live", "/live"),
    ("api", "/api/openapi.json"),
];

/// A whole page: head, navigation (with `current` marked), the content, the drawer.
pub fn page(title: &str, current: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · llmtrace" }
                link rel="stylesheet" href="/ui/app.css";
                script src="/ui/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "llmtrace" }
                    nav {
                        @for (name, href) in NAV {
                            a href=(href) class=[(name == current).then_some("current")] { (name) }
                        }
                    }
                    button #theme type="button" title="Switch light / dark theme" { "◐" }
                }
                main { (content) }
            }
        }
    }
}

/// The filter bar: time range and the filters `fields` names, then `extra` controls, as
/// one GET form on `action`.
pub fn filter_bar(action: &str, query: &UiQuery, fields: &[&str], extra: Markup) -> Markup {
    let range = query.range();
    html! {
        form.filters method="get" action=(action) {
            label {
                span { "Time" }
                select name="range" #range {
                    @for (value, label, _) in RANGES {
                        option value=(value) selected[range == value] { (label) }
                    }
                    option value="custom" selected[range == "custom"] { "Custom range" }
                }
            }
            span.custom-range hidden[range != "custom"] {
                label { span { "From" } input type="text" name="since" placeholder="2026-12-01T00:00:00Z" value=[query.get("since")]; }
                label { span { "To" } input type="text" name="until" placeholder="now" value=[query.get("until")]; }
            }
            @for field in fields {
                @let (label, placeholder) = field_label(field);
                @if *field == "status" {
                    label {
                        span { (label) }
                        select name="status" {
                            option value="" { "any" }
                            @for status in ["ok", "error", "timeout", "cancelled"] {
                                option value=(status) selected[query.get("status") == Some(status)] { (status) }
                            }
                        }
                    }
                } @else if *field == "kind" {
                    label {
                        span { (label) }
                        select name="kind" {
                            option value="" { "model calls" }
                            option value="all" selected[query.get("kind") == Some("all")] { "all spans" }
                            @for kind in ["agent", "tool", "chain", "retriever", "guardrail", "handoff", "llm", "embedding", "other"] {
                                option value=(kind) selected[query.get("kind") == Some(kind)] { (kind) }
                            }
                        }
                    }
                } @else {
                    label {
                        span { (label) }
                        input type=(if *field == "q" { "search" } else { "text" }) name=(field)
                            placeholder=(placeholder) value=[query.get(field)];
                    }
                }
            }
            @if let Some(project) = query.get("project") {
                input type="hidden" name="project" value=(project);
            }
            (extra)
            button type="submit" { "Apply" }
            a.reset href=(action) { "Reset" }
        }
    }
}

fn field_label(field: &str) -> (&'static str, &'static str) {
    match field {
        "model" => ("Model", "gpt-4o"),
        "provider" => ("Provider", "openai"),
        "status" => ("Status", ""),
        "user_id" => ("User", "user id"),
        "session_id" => ("Session", "session id"),
        "meta" => ("Metadata", "key=value"),
        "q" => ("Text", "words in prompts or outputs"),
        "kind" => ("Kind", ""),
        _ => ("", ""),
    }
}

/// `2026-12-01 03:04:05` (UTC) of a time in ns.
pub fn time(ns: i64) -> String {
    let seconds = ns.div_euclid(1_000_000_000);
    let Ok(seconds) = u64::try_from(seconds) else {
        return ns.to_string();
    };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

/// A duration in ms as people read it: `840 ms`, `2.4 s`, `3 m 12 s`.
pub fn duration(ms: f64) -> String {
    if !ms.is_finite() {
        return "–".into();
    }
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        let seconds = (ms / 1000.0).round() as i64;
        if seconds < 3_600 {
            format!("{} m {} s", seconds / 60, seconds % 60)
        } else {
            format!("{} h {} m", seconds / 3_600, (seconds % 3_600) / 60)
        }
    }
}

/// Dollars with enough digits for a single cheap call.
pub fn cost(usd: f64) -> String {
    if usd == 0.0 {
        "$0".into()
    } else if usd < 0.01 {
        format!("${usd:.6}")
    } else if usd < 100.0 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.2}")
    }
}

/// Large counts shortened: 1234 → `1.2k`.
pub fn count(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e9 {
        format!("{:.1}G", value / 1e9)
    } else if magnitude >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if magnitude >= 1e4 {
        format!("{:.1}k", value / 1e3)
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// The first `max` characters of `text` on one line, with an ellipsis when cut.
pub fn preview(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(max.min(text.len()) + 3);
    for (taken, c) in text.chars().enumerate() {
        if taken == max {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// Status as a badge.
pub fn status_badge(status: &str) -> Markup {
    let class = match status {
        "ok" => "badge ok",
        "error" => "badge error",
        _ => "badge warn",
    };
    html! { span class=(class) { (status) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_read_like_people_write() {
        assert_eq!(time(1_795_305_600_000_000_000), "2026-11-22 00:00:00");
        assert_eq!(duration(0.5), "500 µs");
        assert_eq!(duration(840.2), "840 ms");
        assert_eq!(duration(2_400.0), "2.4 s");
        assert_eq!(duration(192_000.0), "3 m 12 s");
        assert_eq!(cost(0.000123), "$0.000123");
        assert_eq!(cost(1.5), "$1.5000");
        assert_eq!(count(12_345.0), "12.3k");
        assert_eq!(preview("ab\ncd", 3), "ab …");
        assert_eq!(preview("héllo", 10), "héllo");
    }
}
