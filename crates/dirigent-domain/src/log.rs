//! Log records: their sources and levels, and the search language of the log store.
//!
//! A search is words, `"quoted phrases"` and `prefixes*`, all of which must occur (in any
//! order), `a OR b` for either, and `-word` for a word that must not occur. Words are matched
//! as the store's full-text index splits text: runs of letters and digits, case ignored, so
//! `invoice-7` is the phrase `invoice 7`. A query is checked here and rendered for each
//! backend (SQLite FTS5, PostgreSQL `tsquery`), so no outside syntax reaches the database.

use std::fmt;

use crate::InvalidField;

/// Where a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A robot's output, or a structured record it wrote.
    Robot,
    /// An agent's own log.
    Agent,
    /// The orchestrator's own log.
    Server,
    /// An activity's output.
    Activity,
}

impl Source {
    pub const ALL: [Source; 4] = [
        Source::Robot,
        Source::Agent,
        Source::Server,
        Source::Activity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Robot => "robot",
            Source::Agent => "agent",
            Source::Server => "server",
            Source::Activity => "activity",
        }
    }

    pub fn parse(text: &str) -> Option<Source> {
        Source::ALL
            .into_iter()
            .find(|source| source.as_str() == text)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much a record matters, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    /// A level as programs write it: our names, and the usual others (`warning`,
    /// `critical`, `fatal`, `err`, any case).
    pub fn parse(text: &str) -> Option<Level> {
        match text.to_ascii_lowercase().as_str() {
            "trace" => Some(Level::Trace),
            "debug" => Some(Level::Debug),
            "info" | "information" | "notice" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" | "err" | "critical" | "fatal" | "crit" | "alert" | "emergency" => {
                Some(Level::Error)
            }
            _ => None,
        }
    }

    /// This level and every one above it.
    pub fn and_above(self) -> impl Iterator<Item = Level> {
        Level::ALL.into_iter().filter(move |level| self <= *level)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line longer than this many bytes is kept cut, with [`TRUNCATED_MARKER`] after it.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// What follows a line that was cut.
pub const TRUNCATED_MARKER: &str = " …[truncated]";

/// A search query, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// Every clause must match.
    clauses: Vec<Clause>,
    /// None of these may match.
    excluded: Vec<Term>,
}

/// Terms of which at least one must match.
type Clause = Vec<Term>;

/// Tokens that must follow each other; the last one a prefix when `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    tokens: Vec<String>,
    prefix: bool,
}

/// The longest query accepted, in characters.
const MAX_QUERY_CHARS: usize = 1024;
/// The most terms in one query.
const MAX_TERMS: usize = 32;

impl Search {
    /// Parses a query; the error names the position (in characters, from 1) at fault.
    pub fn parse(query: &str) -> Result<Search, InvalidField> {
        let fail = |at: usize, reason: String| InvalidField::new("q", format!("at {at}: {reason}"));
        if MAX_QUERY_CHARS < query.chars().count() {
            return Err(InvalidField::new(
                "q",
                format!("is longer than {MAX_QUERY_CHARS} characters"),
            ));
        }
        let mut clauses: Vec<Clause> = Vec::new();
        let mut excluded = Vec::new();
        let mut pending_or: Option<usize> = None;
        let mut terms = 0;
        let chars: Vec<char> = query.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if chars[i].is_whitespace() {
                i += 1;
                continue;
            }
            let start = i;
            let negated = chars[i] == '-';
            if negated {
                i += 1;
            }
            let (word, quoted) = if chars.get(i) == Some(&'"') {
                let Some(len) = chars[i + 1..].iter().position(|c| *c == '"') else {
                    return Err(fail(start + 1, "a quote that is not closed".to_owned()));
                };
                let word: String = chars[i + 1..i + 1 + len].iter().collect();
                i += len + 2;
                (word, true)
            } else {
                let len = chars[i..]
                    .iter()
                    .position(|c| c.is_whitespace() || *c == '"')
                    .unwrap_or(chars.len() - i);
                let word: String = chars[i..i + len].iter().collect();
                i += len;
                (word, false)
            };
            if !quoted && !negated && word == "OR" {
                if clauses.is_empty() || pending_or.is_some() {
                    return Err(fail(start + 1, "OR needs a term on each side".to_owned()));
                }
                pending_or = Some(start);
                continue;
            }
            let prefix = !quoted && word.ends_with('*');
            let tokens = tokens(word.trim_end_matches('*'));
            if tokens.is_empty() {
                return Err(fail(
                    start + 1,
                    format!("{word:?} has no letters or digits to search for"),
                ));
            }
            terms += 1;
            if MAX_TERMS < terms {
                return Err(fail(start + 1, format!("more than {MAX_TERMS} terms")));
            }
            let term = Term { tokens, prefix };
            if negated {
                if pending_or.is_some() {
                    return Err(fail(
                        start + 1,
                        "OR cannot join an excluded term".to_owned(),
                    ));
                }
                excluded.push(term);
            } else if pending_or.take().is_some() {
                if let Some(clause) = clauses.last_mut() {
                    clause.push(term);
                }
            } else {
                clauses.push(vec![term]);
            }
        }
        if let Some(at) = pending_or {
            return Err(fail(at + 1, "OR needs a term on each side".to_owned()));
        }
        if clauses.is_empty() {
            return Err(InvalidField::new(
                "q",
                if excluded.is_empty() {
                    "has nothing to search for"
                } else {
                    "needs a word to find besides the excluded ones"
                },
            ));
        }
        Ok(Search { clauses, excluded })
    }

    /// The query in SQLite FTS5's syntax: every token quoted.
    pub fn to_fts5(&self) -> String {
        let term = |term: &Term| {
            let phrase = term
                .tokens
                .iter()
                .map(|token| format!("\"{token}\""))
                .collect::<Vec<_>>()
                .join(" + ");
            if term.prefix {
                format!("{phrase}*")
            } else {
                phrase
            }
        };
        let mut query = self
            .clauses
            .iter()
            .map(|clause| {
                let alternatives: Vec<String> = clause.iter().map(term).collect();
                format!("({})", alternatives.join(" OR "))
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        for excluded in &self.excluded {
            query = format!("({query}) NOT {}", term(excluded));
        }
        query
    }

    /// The query as a PostgreSQL `tsquery` (for `to_tsquery('simple', …)`).
    pub fn to_tsquery(&self) -> String {
        let term = |term: &Term| {
            let last = term.tokens.len() - 1;
            let tokens: Vec<String> = term
                .tokens
                .iter()
                .enumerate()
                .map(|(i, token)| {
                    if term.prefix && i == last {
                        format!("'{token}':*")
                    } else {
                        format!("'{token}'")
                    }
                })
                .collect();
            format!("({})", tokens.join(" <-> "))
        };
        let mut parts: Vec<String> = self
            .clauses
            .iter()
            .map(|clause| {
                let alternatives: Vec<String> = clause.iter().map(term).collect();
                format!("({})", alternatives.join(" | "))
            })
            .collect();
        parts.extend(
            self.excluded
                .iter()
                .map(|excluded| format!("!{}", term(excluded))),
        );
        parts.join(" & ")
    }
}

/// Splits text as the full-text index does: runs of letters and digits, lower-cased.
fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|token| !token.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Cuts `text` to at most [`MAX_LINE_BYTES`] (on a character boundary) and marks the cut.
pub fn bounded_line(mut text: String) -> String {
    if text.len() <= MAX_LINE_BYTES {
        return text;
    }
    let mut end = MAX_LINE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(TRUNCATED_MARKER);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(query: &str, fts5: &str, tsquery: &str) {
        let search = Search::parse(query).unwrap();
        assert_eq!(search.to_fts5(), fts5, "fts5 of {query:?}");
        assert_eq!(search.to_tsquery(), tsquery, "tsquery of {query:?}");
    }

    #[track_caller]
    fn refused(query: &str, reason: &str) {
        let err = Search::parse(query).unwrap_err();
        assert_eq!(err.field, "q");
        assert_eq!(err.reason, reason, "{query:?}");
    }

    #[test]
    fn words_phrases_prefixes_alternatives_and_exclusions() {
        check("timeout", "(\"timeout\")", "(('timeout'))");
        check(
            "Portal timeout",
            "(\"portal\") AND (\"timeout\")",
            "(('portal')) & (('timeout'))",
        );
        check(
            "\"connection refused\"",
            "(\"connection\" + \"refused\")",
            "(('connection' <-> 'refused'))",
        );
        check(
            "invoice-7",
            "(\"invoice\" + \"7\")",
            "(('invoice' <-> '7'))",
        );
        check("inv*", "(\"inv\"*)", "(('inv':*))");
        check(
            "timeout OR refused error",
            "(\"timeout\" OR \"refused\") AND (\"error\")",
            "(('timeout') | ('refused')) & (('error'))",
        );
        check(
            "error -retry -\"will retry\"",
            "(((\"error\")) NOT \"retry\") NOT \"will\" + \"retry\"",
            "(('error')) & !('retry') & !('will' <-> 'retry')",
        );
        check("Größe", "(\"größe\")", "(('größe'))");
    }

    #[test]
    fn what_does_not_parse_says_where() {
        refused("error \"not closed", "at 7: a quote that is not closed");
        refused("OR error", "at 1: OR needs a term on each side");
        refused("error OR", "at 7: OR needs a term on each side");
        refused("a OR OR b", "at 6: OR needs a term on each side");
        refused("a OR -b", "at 6: OR cannot join an excluded term");
        refused(
            "error --",
            "at 7: \"-\" has no letters or digits to search for",
        );
        refused("   ", "has nothing to search for");
        refused("-retry", "needs a word to find besides the excluded ones");
        refused("\"\"", "at 1: \"\" has no letters or digits to search for");
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary_and_marked() {
        assert_eq!(bounded_line("short".to_owned()), "short");
        let long = "é".repeat(MAX_LINE_BYTES);
        let cut = bounded_line(long);
        assert!(cut.ends_with(TRUNCATED_MARKER));
        assert!(cut.len() <= MAX_LINE_BYTES + TRUNCATED_MARKER.len());
    }

    #[test]
    fn levels_read_as_programs_write_them() {
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse("critical"), Some(Level::Error));
        assert_eq!(Level::parse("loud"), None);
        let above: Vec<Level> = Level::Warn.and_above().collect();
        assert_eq!(above, [Level::Warn, Level::Error]);
    }
}
