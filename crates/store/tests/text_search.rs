//! Full-text search answers as `SpanFilter::matches` does, whether rows sit in the memtable
//! (scanned, with a substring prefilter) or in segments (answered by the term index),
//! including text where a non-ASCII letter lower-cases to an ASCII one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use llmtrace_model::{Span, SpanFilter, SpanQuery, Store};
use llmtrace_store::{Durability, EmbeddedStore, StoreConfig};

const TEXTS: [&str; 8] = [
    "The capital is Paris.",
    "PARIS, again",
    "parisian food",
    "\u{212A}elvin is a unit", // KELVIN SIGN lower-cases to an ASCII `k`
    "kelvin_scale and Straße",
    "STRASSE is not straße",
    "ΟΔΟΣ means road",
    "nothing here",
];

fn spans() -> Vec<Span> {
    TEXTS
        .iter()
        .enumerate()
        .map(|(n, text)| Span {
            project: "p".into(),
            trace_id: format!("{:032x}", n + 1),
            span_id: format!("{:016x}", n + 1),
            start_time: 1_795_000_000_000_000_000 + n as i64,
            input_text: (*text).into(),
            output_text: if n % 2 == 0 {
                "done".into()
            } else {
                String::new()
            },
            ..Span::default()
        })
        .collect()
}

fn hits(store: &EmbeddedStore, text: &str) -> Vec<String> {
    let filter = SpanFilter {
        text: Some(text.into()),
        ..SpanFilter::for_project("p")
    };
    let mut query = SpanQuery::new(filter);
    query.limit = 3; // several pages: the memtable's early stop must not lose rows
    let mut out = Vec::new();
    loop {
        let page = store.search(&query).unwrap();
        out.extend(page.spans.into_iter().map(|span| span.input_text));
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    out.sort();
    out
}

fn expected(text: &str) -> Vec<String> {
    let filter = SpanFilter {
        text: Some(text.into()),
        ..SpanFilter::for_project("p")
    };
    let mut out: Vec<String> = spans()
        .into_iter()
        .filter(|span| filter.matches(span))
        .map(|span| span.input_text)
        .collect();
    out.sort();
    out
}

#[test]
fn full_text_agrees_with_the_reference_in_memtable_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.durability = Durability::None;
    config.background = false;
    let store = EmbeddedStore::open(config).unwrap();
    store.append(spans()).unwrap();
    let queries = [
        "paris",
        "PARIS",
        "kelvin",
        "scale",
        "straße",
        "strasse",
        "οδος",
        "ΟΔΟΣ",
        "done",
        "paris done",
        "unit kelvin",
        "absent",
    ];
    assert_eq!(expected("kelvin").len(), 2, "the Kelvin sign counts as k");
    for place in ["memtable", "segment"] {
        for query in queries {
            assert_eq!(
                hits(&store, query),
                expected(query),
                "{query:?} in the {place}"
            );
        }
        store.flush().unwrap();
    }
}
