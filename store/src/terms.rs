//! Reading the warning vocabulary back from rows: each term through its one spelling, each
//! severity through its level. A stored value outside the vocabulary is an
//! [`Error::Inconsistent`], never a default.

use crate::{Error, Result};
use tidemark_model::warning::Severity;
use tokio_postgres::Row;

/// A stored term (`text` column) read back through `parse`.
pub(crate) fn term<T>(r: &Row, column: usize, parse: fn(&str) -> Option<T>) -> Result<T> {
    let text: &str = r.get(column);
    parse(text).ok_or_else(|| unknown_term(text))
}

/// Terms stored in a `text[]` column.
pub(crate) fn terms<T>(r: &Row, column: usize, parse: fn(&str) -> Option<T>) -> Result<Vec<T>> {
    let texts: Vec<&str> = r.get(column);
    texts
        .into_iter()
        .map(|t| parse(t).ok_or_else(|| unknown_term(t)))
        .collect()
}

/// A stored severity level (`smallint`, 1 to 3).
pub(crate) fn severity(r: &Row, column: usize) -> Result<Severity> {
    level(r.get(column))
}

/// A nullable stored severity level.
pub(crate) fn opt_severity(r: &Row, column: usize) -> Result<Option<Severity>> {
    r.get::<_, Option<i16>>(column).map(level).transpose()
}

/// A severity level read from anywhere (a column, a JSON detail).
pub(crate) fn level(level: i16) -> Result<Severity> {
    Severity::from_level(level)
        .ok_or_else(|| Error::Inconsistent(format!("a stored severity of {level}")))
}

fn unknown_term(text: &str) -> Error {
    Error::Inconsistent(format!("an unknown stored term {text:?}"))
}
