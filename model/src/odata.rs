//! The query language of the OGC SensorThings API v1.1 (a subset of OData 4.0 URL conventions):
//! `$filter` expressions, `$orderby`, `$select`, `$expand` with nested options, `$top`, `$skip`,
//! `$count`, `$resultFormat` and `$skiptoken`, parsed into plain values.
//!
//! Parsing is total: any input gives either [`QueryOptions`] or a [`QueryError`] naming the option
//! at fault, and nesting is bounded so that a hostile query cannot exhaust the stack. What the
//! parsed query means against the stored relations is the store's business.

use chrono::{DateTime, NaiveDate, Utc};
use std::fmt;

/// Deepest nesting of parentheses, operators or `$expand` a query may use.
pub const MAX_DEPTH: usize = 32;

/// A `$filter` or `$orderby` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Null,
    Bool(bool),
    Number(f64),
    Text(String),
    Time(DateTime<Utc>),
    Date(NaiveDate),
    /// A `geography'...'` literal in well-known text.
    Geometry(Geometry),
    /// A property, through navigation properties: `Datastream/Thing/name`.
    Property(Vec<String>),
    Not(Box<Expr>),
    Negate(Box<Expr>),
    Binary(Op, Box<Expr>, Box<Expr>),
    /// A function call, its name in lower case (`substringof`, `geo.intersects`).
    Call(String, Vec<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    And,
    Or,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl Op {
    fn parse(word: &str) -> Option<Op> {
        Some(match word {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            "and" => Op::And,
            "or" => Op::Or,
            "add" => Op::Add,
            "sub" => Op::Sub,
            "mul" => Op::Mul,
            "div" => Op::Div,
            "mod" => Op::Mod,
            _ => return None,
        })
    }

    /// Binding strength: `or` < `and` < comparisons < `add sub` < `mul div mod`.
    fn precedence(self) -> u8 {
        match self {
            Op::Or => 1,
            Op::And => 2,
            Op::Eq | Op::Ne | Op::Gt | Op::Ge | Op::Lt | Op::Le => 3,
            Op::Add | Op::Sub => 4,
            Op::Mul | Op::Div | Op::Mod => 5,
        }
    }

    pub fn is_comparison(self) -> bool {
        self.precedence() == 3
    }

    pub fn is_arithmetic(self) -> bool {
        self.precedence() >= 4
    }
}

/// A geometry from well-known text, in WGS84 longitude and latitude.
#[derive(Debug, Clone, PartialEq)]
pub enum Geometry {
    Point(f64, f64),
    /// A polygon without holes: its outer ring, closed.
    Polygon(Vec<(f64, f64)>),
    /// Anything else that names a geometry type (`LINESTRING(...)`, a polygon with holes): the
    /// type's name, for an answer saying it is not supported.
    Other(String),
}

/// What is wrong with a query, and which option it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// The option at fault (`$filter`, `$top`, ...).
    pub option: String,
    pub message: String,
    /// True for a well-formed request for something not implemented (HTTP 501), false for a
    /// malformed one (HTTP 400).
    pub unsupported: bool,
}

impl QueryError {
    pub fn bad(option: &str, message: impl Into<String>) -> QueryError {
        QueryError {
            option: option.to_owned(),
            message: message.into(),
            unsupported: false,
        }
    }

    pub fn unsupported(option: &str, message: impl Into<String>) -> QueryError {
        QueryError {
            option: option.to_owned(),
            message: message.into(),
            unsupported: true,
        }
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.option, self.message)
    }
}

impl std::error::Error for QueryError {}

/// One `$orderby` term.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderBy {
    pub expr: Expr,
    pub descending: bool,
}

/// One `$expand` item: a navigation path and the options for what it brings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expand {
    pub path: Vec<String>,
    pub options: QueryOptions,
    /// The nested options as given (`("$top", "2")`), for links that repeat them.
    pub given: Vec<(String, String)>,
}

/// The system query options of one request, or of one `$expand` item.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryOptions {
    pub top: Option<u64>,
    pub skip: Option<u64>,
    pub count: Option<bool>,
    pub filter: Option<Expr>,
    pub orderby: Vec<OrderBy>,
    pub select: Option<Vec<String>>,
    pub expand: Vec<Expand>,
    /// `$resultFormat`: `dataArray` is the Data Array extension.
    pub result_format: Option<String>,
    /// The opaque position a `@iot.nextLink` carries.
    pub skiptoken: Option<String>,
}

impl QueryOptions {
    /// Parses the options of a URL query, already split into decoded `(name, value)` pairs.
    /// Parameters that are not system options (no `$`) are left to the caller.
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<QueryOptions, QueryError> {
        let mut options = QueryOptions::default();
        for (name, value) in pairs {
            if !name.starts_with('$') {
                continue;
            }
            options.set(name, value, 0)?;
        }
        Ok(options)
    }

    fn set(&mut self, name: &str, value: &str, depth: usize) -> Result<(), QueryError> {
        let twice = || QueryError::bad(name, "given more than once");
        match name {
            "$top" => {
                if self.top.replace(number(name, value)?).is_some() {
                    return Err(twice());
                }
            }
            "$skip" => {
                if self.skip.replace(number(name, value)?).is_some() {
                    return Err(twice());
                }
            }
            "$count" => {
                let count = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(QueryError::bad(name, "must be true or false")),
                };
                if self.count.replace(count).is_some() {
                    return Err(twice());
                }
            }
            "$filter" => {
                let expr = parse_expr(value).map_err(|m| QueryError::bad(name, m))?;
                if self.filter.replace(expr).is_some() {
                    return Err(twice());
                }
            }
            "$orderby" => {
                if !self.orderby.is_empty() {
                    return Err(twice());
                }
                self.orderby = parse_orderby(value).map_err(|m| QueryError::bad(name, m))?;
            }
            "$select" => {
                let mut names = Vec::new();
                for item in split_top(value, ',').map_err(|m| QueryError::bad(name, m))? {
                    let item = item.trim();
                    if !is_path(item) {
                        return Err(QueryError::bad(name, format!("{item:?} is not a property")));
                    }
                    names.push(item.to_owned());
                }
                if self.select.replace(names).is_some() {
                    return Err(twice());
                }
            }
            "$expand" => {
                if !self.expand.is_empty() {
                    return Err(twice());
                }
                self.expand = parse_expand(value, depth)?;
            }
            "$resultFormat" => {
                if self.result_format.replace(value.to_owned()).is_some() {
                    return Err(twice());
                }
            }
            "$skiptoken" => {
                if self.skiptoken.replace(value.to_owned()).is_some() {
                    return Err(twice());
                }
            }
            "$search" | "$format" | "$apply" | "$compute" | "$levels" => {
                return Err(QueryError::unsupported(
                    name,
                    "this query option is not supported",
                ))
            }
            _ => return Err(QueryError::bad(name, "not a query option of SensorThings")),
        }
        Ok(())
    }
}

fn number(option: &str, value: &str) -> Result<u64, QueryError> {
    value
        .parse::<u64>()
        .map_err(|_| QueryError::bad(option, "must be a whole number, 0 or more"))
}

fn is_path(text: &str) -> bool {
    !text.is_empty()
        && text.split('/').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@' || c == '.')
        })
}

/// Splits at `separator` outside parentheses and quoted strings.
fn split_top(text: &str, separator: char) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "a ')' closes nothing".to_owned())?
            }
            c if c == separator && !quoted && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted {
        return Err("a string is not closed".to_owned());
    }
    if depth != 0 {
        return Err("a '(' is not closed".to_owned());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_expand(value: &str, depth: usize) -> Result<Vec<Expand>, QueryError> {
    const NAME: &str = "$expand";
    if depth >= MAX_DEPTH {
        return Err(QueryError::bad(NAME, "nested too deeply"));
    }
    let mut items = Vec::new();
    for item in split_top(value, ',').map_err(|m| QueryError::bad(NAME, m))? {
        let item = item.trim();
        let (path, inner) = match item.find('(') {
            Some(open) => {
                let Some(inner) = item[open + 1..].strip_suffix(')') else {
                    return Err(QueryError::bad(
                        NAME,
                        format!("{item:?}: nested options must end the item with ')'"),
                    ));
                };
                (&item[..open], Some(inner))
            }
            None => (item, None),
        };
        if !is_path(path) {
            return Err(QueryError::bad(
                NAME,
                format!("{path:?} is not a navigation path"),
            ));
        }
        let mut options = QueryOptions::default();
        let mut given = Vec::new();
        if let Some(inner) = inner {
            for option in split_top(inner, ';').map_err(|m| QueryError::bad(NAME, m))? {
                let option = option.trim();
                if option.is_empty() {
                    continue;
                }
                let Some((name, value)) = option.split_once('=') else {
                    return Err(QueryError::bad(
                        NAME,
                        format!("{option:?} is not name=value"),
                    ));
                };
                if name == "$skiptoken" || name == "$resultFormat" {
                    return Err(QueryError::bad(
                        NAME,
                        format!("{name} cannot be used inside $expand"),
                    ));
                }
                options.set(name.trim(), value, depth + 1)?;
                given.push((name.trim().to_owned(), value.to_owned()));
            }
        }
        items.push(Expand {
            path: path.split('/').map(str::to_owned).collect(),
            options,
            given,
        });
    }
    Ok(items)
}

fn parse_orderby(value: &str) -> Result<Vec<OrderBy>, String> {
    let mut terms = Vec::new();
    for term in split_top(value, ',')? {
        let term = term.trim();
        let (text, descending) = if let Some(text) = term.strip_suffix(" desc") {
            (text, true)
        } else if let Some(text) = term.strip_suffix(" asc") {
            (text, false)
        } else {
            (term, false)
        };
        terms.push(OrderBy {
            expr: parse_expr(text)?,
            descending,
        });
    }
    Ok(terms)
}

/// Parses a `$filter` (or `$orderby`) expression.
pub fn parse_expr(text: &str) -> Result<Expr, String> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, at: 0 };
    let expr = parser.expression(0, 0)?;
    match parser.tokens.get(parser.at) {
        None => Ok(expr),
        Some(token) => Err(format!("unexpected {token} after a complete expression")),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Number(f64),
    Time(DateTime<Utc>),
    Date(NaiveDate),
    Geometry(Geometry),
    Open,
    Close,
    Comma,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Word(w) => write!(f, "{w:?}"),
            Token::Text(t) => write!(f, "the string '{t}'"),
            Token::Number(n) => write!(f, "the number {n}"),
            Token::Time(t) => write!(f, "the time {}", t.to_rfc3339()),
            Token::Date(d) => write!(f, "the date {d}"),
            Token::Geometry(_) => f.write_str("a geometry"),
            Token::Open => f.write_str("'('"),
            Token::Close => f.write_str("')'"),
            Token::Comma => f.write_str("','"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            tokens.push(Token::Open);
            i += 1;
        } else if c == ')' {
            tokens.push(Token::Close);
            i += 1;
        } else if c == ',' {
            tokens.push(Token::Comma);
            i += 1;
        } else if c == '\'' {
            let (value, next) = quoted(&chars, i)?;
            tokens.push(Token::Text(value));
            i = next;
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || matches!(chars[i], '.' | ':' | '-' | '+')
                        && !(chars[i] == '-' && chars[i - 1] == ' '))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            tokens.push(literal(&word)?);
        } else if c == '-' {
            tokens.push(Token::Word("-".to_owned()));
            i += 1;
        } else if c.is_alphabetic() || c == '_' || c == '@' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '/' | '.' | '@' | '$'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if chars.get(i) == Some(&'\'') {
                // A typed literal: geography'POINT(1 2)', geometry'...', duration'P1D'.
                let (value, next) = quoted(&chars, i)?;
                i = next;
                match word.to_ascii_lowercase().as_str() {
                    "geography" | "geometry" => tokens.push(Token::Geometry(wkt(&value)?)),
                    other => return Err(format!("literals of type {other} are not supported")),
                }
            } else {
                tokens.push(Token::Word(word));
            }
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(tokens)
}

/// A single-quoted string starting at `start`, with `''` for a quote; and where it ends.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let mut value = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => return Err("a string is not closed".to_owned()),
            Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                value.push('\'');
                i += 2;
            }
            Some('\'') => return Ok((value, i + 1)),
            Some(c) => {
                value.push(*c);
                i += 1;
            }
        }
    }
}

fn literal(word: &str) -> Result<Token, String> {
    if let Ok(n) = word.parse::<f64>() {
        if n.is_finite() {
            return Ok(Token::Number(n));
        }
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(word) {
        return Ok(Token::Time(time.with_timezone(&Utc)));
    }
    if let Ok(date) = NaiveDate::parse_from_str(word, "%Y-%m-%d") {
        return Ok(Token::Date(date));
    }
    Err(format!(
        "{word:?} is neither a number nor a time (RFC 3339, with its offset) nor a date"
    ))
}

/// Well-known text of a point or a polygon without holes, optionally prefixed by `SRID=4326;`.
fn wkt(text: &str) -> Result<Geometry, String> {
    let mut text = text.trim();
    if let Some((srid, rest)) = text.split_once(';') {
        if srid.trim().eq_ignore_ascii_case("SRID=4326") {
            text = rest.trim();
        } else {
            return Err(format!("{srid}: only WGS84 (SRID=4326) is supported"));
        }
    }
    let open = text
        .find('(')
        .ok_or_else(|| format!("{text:?} is not well-known text"))?;
    let kind = text[..open].trim().to_ascii_uppercase();
    let body = text[open..].trim();
    let inner = body
        .strip_prefix('(')
        .and_then(|b| b.strip_suffix(')'))
        .ok_or_else(|| format!("{text:?}: unbalanced parentheses"))?;
    let coordinates = |list: &str| -> Result<Vec<(f64, f64)>, String> {
        list.split(',')
            .map(|pair| {
                let mut numbers = pair.split_whitespace().map(str::parse::<f64>);
                match (numbers.next(), numbers.next(), numbers.next()) {
                    (Some(Ok(x)), Some(Ok(y)), None) if x.is_finite() && y.is_finite() => {
                        Ok((x, y))
                    }
                    _ => Err(format!("{pair:?} is not a coordinate pair")),
                }
            })
            .collect()
    };
    match kind.as_str() {
        "POINT" => {
            let points = coordinates(inner)?;
            match points.as_slice() {
                [(x, y)] => Ok(Geometry::Point(*x, *y)),
                _ => Err("a POINT has one coordinate pair".to_owned()),
            }
        }
        "POLYGON" => {
            let rings = split_top(inner, ',')?;
            if rings.len() != 1 {
                return Ok(Geometry::Other("POLYGON with holes".to_owned()));
            }
            let ring = rings[0]
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| "a POLYGON's ring must be in parentheses".to_owned())?;
            let points = coordinates(ring)?;
            if points.len() < 4 || points.first() != points.last() {
                return Err(
                    "a POLYGON's ring needs four or more points, the last the first".into(),
                );
            }
            Ok(Geometry::Polygon(points))
        }
        "LINESTRING" | "MULTIPOINT" | "MULTILINESTRING" | "MULTIPOLYGON" | "GEOMETRYCOLLECTION" => {
            Ok(Geometry::Other(kind))
        }
        _ => Err(format!("{kind:?} is not a geometry type")),
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn expression(&mut self, min: u8, depth: usize) -> Result<Expr, String> {
        if depth > MAX_DEPTH {
            return Err("the expression is nested too deeply".to_owned());
        }
        let mut left = self.unary(depth)?;
        while let Some(Token::Word(w)) = self.peek() {
            let Some(op) = Op::parse(w) else {
                return Err(format!("{w:?} is not an operator"));
            };
            if op.precedence() <= min {
                break;
            }
            self.at += 1;
            let right = self.expression(op.precedence(), depth + 1)?;
            if op.is_comparison() {
                if let Expr::Binary(inner, ..) = &left {
                    if inner.is_comparison() {
                        return Err("comparisons cannot be chained; join them with and".into());
                    }
                }
            }
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, String> {
        if depth > MAX_DEPTH {
            return Err("the expression is nested too deeply".to_owned());
        }
        match self.next() {
            None => Err("the expression ends too early".to_owned()),
            Some(Token::Open) => {
                let inner = self.expression(0, depth + 1)?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    _ => Err("a '(' is not closed".to_owned()),
                }
            }
            Some(Token::Text(t)) => Ok(Expr::Text(t)),
            Some(Token::Number(n)) => Ok(Expr::Number(n)),
            Some(Token::Time(t)) => Ok(Expr::Time(t)),
            Some(Token::Date(d)) => Ok(Expr::Date(d)),
            Some(Token::Geometry(g)) => Ok(Expr::Geometry(g)),
            Some(Token::Word(w)) => match w.as_str() {
                "null" => Ok(Expr::Null),
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                "not" => Ok(Expr::Not(Box::new(self.unary(depth + 1)?))),
                "-" => Ok(Expr::Negate(Box::new(self.unary(depth + 1)?))),
                _ if self.peek() == Some(&Token::Open) => {
                    self.at += 1;
                    let mut args = Vec::new();
                    if self.peek() == Some(&Token::Close) {
                        self.at += 1;
                    } else {
                        loop {
                            args.push(self.expression(0, depth + 1)?);
                            match self.next() {
                                Some(Token::Comma) => continue,
                                Some(Token::Close) => break,
                                _ => return Err(format!("the arguments of {w} are not closed")),
                            }
                        }
                    }
                    Ok(Expr::Call(w.to_ascii_lowercase(), args))
                }
                _ if Op::parse(&w).is_some() => {
                    Err(format!("the operator {w} is missing its left side"))
                }
                _ if is_path(&w) => Ok(Expr::Property(w.split('/').map(str::to_owned).collect())),
                _ => Err(format!("{w:?} is not a property")),
            },
            Some(other) => Err(format!("unexpected {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop(path: &str) -> Box<Expr> {
        Box::new(Expr::Property(path.split('/').map(str::to_owned).collect()))
    }

    #[test]
    fn operators_bind_as_odata_says() {
        let e = parse_expr("result add 1 mul 2 gt 3 and not name eq 'x' or id eq 1").unwrap();
        let expected = Expr::Binary(
            Op::Or,
            Box::new(Expr::Binary(
                Op::And,
                Box::new(Expr::Binary(
                    Op::Gt,
                    Box::new(Expr::Binary(
                        Op::Add,
                        prop("result"),
                        Box::new(Expr::Binary(
                            Op::Mul,
                            Box::new(Expr::Number(1.0)),
                            Box::new(Expr::Number(2.0)),
                        )),
                    )),
                    Box::new(Expr::Number(3.0)),
                )),
                Box::new(Expr::Binary(
                    Op::Eq,
                    Box::new(Expr::Not(prop("name"))),
                    Box::new(Expr::Text("x".to_owned())),
                )),
            )),
            Box::new(Expr::Binary(
                Op::Eq,
                prop("id"),
                Box::new(Expr::Number(1.0)),
            )),
        );
        assert_eq!(e, expected);
    }

    #[test]
    fn literals_functions_and_paths() {
        let e = parse_expr(
            "phenomenonTime ge 2023-10-20T12:00:00+02:00 and substringof('O''Brien', Datastream/Thing/name) and result le -1.5e0",
        )
        .unwrap();
        let Expr::Binary(Op::And, left, right) = e else {
            panic!("{e:?}")
        };
        let Expr::Binary(Op::And, time, call) = *left else {
            panic!()
        };
        assert_eq!(
            *time,
            Expr::Binary(
                Op::Ge,
                prop("phenomenonTime"),
                Box::new(Expr::Time(
                    "2023-10-20T10:00:00Z".parse::<DateTime<Utc>>().unwrap()
                ))
            )
        );
        assert_eq!(
            *call,
            Expr::Call(
                "substringof".to_owned(),
                vec![
                    Expr::Text("O'Brien".to_owned()),
                    *prop("Datastream/Thing/name")
                ]
            )
        );
        assert_eq!(
            *right,
            Expr::Binary(Op::Le, prop("result"), Box::new(Expr::Number(-1.5)))
        );
        assert_eq!(
            parse_expr("st_within(location, geography'POLYGON((9 54, 10 54, 10 55, 9 54))')")
                .unwrap(),
            Expr::Call(
                "st_within".to_owned(),
                vec![
                    *prop("location"),
                    Expr::Geometry(Geometry::Polygon(vec![
                        (9.0, 54.0),
                        (10.0, 54.0),
                        (10.0, 55.0),
                        (9.0, 54.0)
                    ]))
                ]
            )
        );
        assert_eq!(
            parse_expr("now() gt 2020-01-01").unwrap(),
            Expr::Binary(
                Op::Gt,
                Box::new(Expr::Call("now".to_owned(), vec![])),
                Box::new(Expr::Date(NaiveDate::from_ymd_opt(2020, 1, 1).unwrap()))
            )
        );
    }

    #[test]
    fn malformed_expressions_are_refused_with_a_reason() {
        for bad in [
            "",
            "result gt",
            "gt 3",
            "result gt 3 3",
            "(result gt 3",
            "name eq 'open",
            "result between 1",
            "a eq b eq c",
            "result gt 12abc",
            "x eq geography'CIRCLE(1 2)'",
            "x eq duration'P1D'",
            "result # 3",
        ] {
            assert!(parse_expr(bad).is_err(), "{bad:?} parsed");
        }
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(parse_expr(&deep).is_err());
        let long_not = format!("{}true", "not ".repeat(10_000));
        assert!(parse_expr(&long_not).is_err());
    }

    #[test]
    fn options_with_nested_expands() {
        let options = QueryOptions::parse([
            ("$top", "5"),
            ("$count", "true"),
            ("$orderby", "phenomenonTime desc, id"),
            ("$select", "id,name"),
            (
                "$expand",
                "Datastreams($filter=name eq 'a,b';$top=2;$expand=Observations($top=1)),Locations",
            ),
            ("other", "ignored"),
        ])
        .unwrap();
        assert_eq!(options.top, Some(5));
        assert_eq!(options.count, Some(true));
        assert_eq!(options.orderby.len(), 2);
        assert!(options.orderby[0].descending && !options.orderby[1].descending);
        assert_eq!(
            options.select,
            Some(vec!["id".to_owned(), "name".to_owned()])
        );
        assert_eq!(options.expand.len(), 2);
        let datastreams = &options.expand[0];
        assert_eq!(datastreams.path, ["Datastreams"]);
        assert_eq!(datastreams.options.top, Some(2));
        assert!(datastreams.options.filter.is_some());
        assert_eq!(datastreams.options.expand[0].path, ["Observations"]);
        assert_eq!(datastreams.options.expand[0].options.top, Some(1));
        assert_eq!(options.expand[1].path, ["Locations"]);

        for (name, value) in [
            ("$top", "-1"),
            ("$count", "yes"),
            ("$expand", "Datastreams($top=1"),
            ("$expand", "Datastreams($top)"),
            ("$select", "a b"),
            ("$orderby", "name sideways"),
            ("$bogus", "1"),
        ] {
            let error = QueryOptions::parse([(name, value)]).unwrap_err();
            assert!(!error.unsupported, "{name}={value}");
            assert_eq!(
                error.option,
                if name == "$expand" { "$expand" } else { name }
            );
        }
        assert!(
            QueryOptions::parse([("$search", "x")])
                .unwrap_err()
                .unsupported
        );
        assert!(QueryOptions::parse([("$top", "1"), ("$top", "2")]).is_err());
        let nested = |n: usize| format!("{}A{}", "A($expand=".repeat(n), ")".repeat(n));
        assert!(QueryOptions::parse([("$expand", nested(3).as_str())]).is_ok());
        let error = QueryOptions::parse([("$expand", nested(100).as_str())]).unwrap_err();
        assert!(error.message.contains("deeply"), "{error}");
    }
}
