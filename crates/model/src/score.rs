//! Scores: judgements attached to a trace or one span of it (a user's thumbs-up, an
//! evaluator's grade), kept apart from spans because they are small and change.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::span::is_valid_hex_id;

/// Longest name, label or source accepted; comments may be longer.
pub const MAX_SCORE_TEXT: usize = 256;
pub const MAX_SCORE_COMMENT: usize = 16 * 1024;
/// Longest id: a default id names trace, span, name and source.
pub const MAX_SCORE_ID: usize = 1024;

/// One score. The same `(project, id)` written again replaces the earlier one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub project: String,
    pub id: String,
    pub trace_id: String,
    /// The span scored; `None` scores the whole trace.
    #[serde(default)]
    pub span_id: Option<String>,
    pub name: String,
    /// A number, a label, or both.
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    /// Who scored: `api`, `human`, `eval`, or an evaluator's name.
    pub source: String,
    /// When it was written, ns.
    pub created_at: i64,
}

impl Score {
    /// What is wrong with a score, in words an API client can act on.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::BadRequest(message));
        if !is_valid_hex_id(&self.trace_id, 32) {
            return bad(format!(
                "score {:?}: trace_id {:?} is not a 32-character hex id",
                self.id, self.trace_id
            ));
        }
        if let Some(span_id) = &self.span_id
            && !is_valid_hex_id(span_id, 16)
        {
            return bad(format!(
                "score {:?}: span_id {span_id:?} is not a 16-character hex id",
                self.id
            ));
        }
        for (field, text, max) in [
            ("id", &self.id, MAX_SCORE_ID),
            ("name", &self.name, MAX_SCORE_TEXT),
            ("source", &self.source, MAX_SCORE_TEXT),
        ] {
            if text.trim().is_empty() || text.len() > max {
                return bad(format!(
                    "score {:?}: {field} must be 1 to {max} bytes",
                    self.id
                ));
            }
        }
        if self
            .label
            .as_ref()
            .is_some_and(|l| l.len() > MAX_SCORE_TEXT)
        {
            return bad(format!(
                "score {:?}: label is longer than {MAX_SCORE_TEXT} bytes",
                self.id
            ));
        }
        if self
            .comment
            .as_ref()
            .is_some_and(|c| c.len() > MAX_SCORE_COMMENT)
        {
            return bad(format!(
                "score {:?}: comment is longer than {MAX_SCORE_COMMENT} bytes",
                self.id
            ));
        }
        match self.value {
            Some(value) if !value.is_finite() => bad(format!(
                "score {:?}: value must be a finite number",
                self.id
            )),
            None if self.label.is_none() => bad(format!(
                "score {:?}: give a value, a label, or both",
                self.id
            )),
            _ => Ok(()),
        }
    }
}

/// Which scores to read: one project's, of one trace (and optionally one span), or by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreQuery {
    pub project: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub name: Option<String>,
    pub limit: usize,
}

impl ScoreQuery {
    pub fn matches(&self, score: &Score) -> bool {
        score.project == self.project
            && self.trace_id.as_ref().is_none_or(|t| *t == score.trace_id)
            && self
                .span_id
                .as_ref()
                .is_none_or(|s| score.span_id.as_ref() == Some(s))
            && self.name.as_ref().is_none_or(|n| *n == score.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score() -> Score {
        Score {
            project: "p".into(),
            id: "s1".into(),
            trace_id: "ab".repeat(16),
            span_id: None,
            name: "helpful".into(),
            value: Some(1.0),
            label: None,
            comment: None,
            source: "human".into(),
            created_at: 1,
        }
    }

    #[test]
    fn bad_scores_are_named() {
        assert!(score().validate().is_ok());
        for (broken, needle) in [
            (
                Score {
                    trace_id: "xyz".into(),
                    ..score()
                },
                "trace_id",
            ),
            (
                Score {
                    span_id: Some("12".into()),
                    ..score()
                },
                "span_id",
            ),
            (
                Score {
                    name: " ".into(),
                    ..score()
                },
                "name must be",
            ),
            (
                Score {
                    value: None,
                    ..score()
                },
                "value, a label",
            ),
            (
                Score {
                    value: Some(f64::NAN),
                    ..score()
                },
                "finite",
            ),
        ] {
            let err = broken.validate().err().unwrap().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let labelled = Score {
            value: None,
            label: Some("good".into()),
            ..score()
        };
        assert!(labelled.validate().is_ok());
    }
}
