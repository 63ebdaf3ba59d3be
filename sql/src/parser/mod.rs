//! The recursive-descent parser of statements and expressions (decision 007, grown for queries
//! in decision 031): the token cursor and the entry points here, statements in
//! `statements.rs`, expressions in `expressions.rs`.

use serde_json::Value;

use crate::SqlError;
use crate::lexer::{Tok, Token, lex};

mod expressions;
mod statements;

pub use statements::Statement;

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    /// Nodes of the expression being parsed (see `expressions::MAX_EXPRESSION_NODES`).
    nodes: usize,
    /// Expressions being parsed inside one another (see `expressions::MAX_EXPRESSION_NESTING`).
    nesting: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("{w:?}"),
        Tok::Quoted(q) => format!("\"{q}\""),
        Tok::Str(s) => format!("'{s}'"),
        Tok::Int(i) => i.to_string(),
        Tok::Float(f) => f.to_string(),
        Tok::Sym(c) => format!("'{c}'"),
        Tok::Semi => "';'".into(),
        Tok::Eof => "the end of input".into(),
    }
}

/// Words that end or join expressions, never column names when bare.
const RESERVED: &[&str] = &[
    "and", "or", "not", "is", "null", "true", "false", "as", "from", "where", "select", "emit", "group", "having",
    "between", "in", "with", "cast", "join", "on",
];

impl Parser {
    fn peek(&self) -> &Token {
        &self.toks[self.pos]
    }

    fn peek_at(&self, n: usize) -> &Token {
        &self.toks[(self.pos + n).min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.toks[self.pos].clone();
        if t.tok != Tok::Eof {
            self.pos += 1;
        }
        t
    }

    fn error<T>(&self, expected: &str) -> Result<T, SqlError> {
        let t = self.peek();
        Err(SqlError::at(
            t.line,
            t.col,
            format!("expected {expected}, found {}", describe(&t.tok)),
        ))
    }

    fn error_at<T>(t: &Token, message: String) -> Result<T, SqlError> {
        Err(SqlError::at(t.line, t.col, message))
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn kw(&mut self, kw: &str) -> Result<(), SqlError> {
        if self.is_kw(kw) {
            self.next();
            Ok(())
        } else {
            self.error(&kw.to_ascii_uppercase())
        }
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.is_kw(kw);
        if yes {
            self.next();
        }
        yes
    }

    fn is_sym(&self, s: &str) -> bool {
        matches!(&self.peek().tok, Tok::Sym(x) if *x == s)
    }

    fn sym(&mut self, s: &str) -> Result<(), SqlError> {
        if self.is_sym(s) {
            self.next();
            Ok(())
        } else {
            self.error(&format!("'{s}'"))
        }
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        let yes = self.is_sym(s);
        if yes {
            self.next();
        }
        yes
    }

    /// The name of a stream, connector or query: a word or a quoted name; `-` joins the words
    /// of a name written without spaces (`my-stream`), as HStreamDB's names allow.
    fn name(&mut self, what: &str) -> Result<String, SqlError> {
        let mut name = match &self.peek().tok {
            Tok::Word(w) => w.clone(),
            Tok::Quoted(q) => {
                let q = q.clone();
                self.next();
                return Ok(q);
            }
            _ => return self.error(what),
        };
        let mut end = self.next().end;
        loop {
            let (dash, part) = (self.peek().clone(), self.peek_at(1).clone());
            let adjacent = dash.tok == Tok::Sym("-") && dash.start == end && part.start == dash.end;
            match &part.tok {
                Tok::Word(w) if adjacent => name.push_str(&format!("-{w}")),
                Tok::Int(i) if adjacent => name.push_str(&format!("-{i}")),
                _ => return Ok(name),
            }
            self.next();
            end = self.next().end;
        }
    }

    /// A column name (no `-` joining: `a-b` is a subtraction).
    fn column(&mut self, what: &str) -> Result<String, SqlError> {
        match &self.peek().tok {
            Tok::Word(w) if !RESERVED.contains(&w.to_ascii_lowercase().as_str()) => {
                let w = w.clone();
                self.next();
                Ok(w)
            }
            Tok::Quoted(q) => {
                let q = q.clone();
                self.next();
                Ok(q)
            }
            _ => self.error(what),
        }
    }

    fn int(&mut self, what: &str) -> Result<u32, SqlError> {
        match self.peek().tok {
            Tok::Int(i) if i <= u32::MAX as u64 => {
                self.next();
                Ok(i as u32)
            }
            _ => self.error(what),
        }
    }

    /// A constant: single-quoted string (canonical), double-quoted string (lenient), signed
    /// number, boolean or NULL.
    fn constant(&mut self) -> Result<Value, SqlError> {
        let negative = if self.is_sym("-") && matches!(self.peek_at(1).tok, Tok::Int(_) | Tok::Float(_)) {
            self.next();
            true
        } else {
            false
        };
        let v = match &self.peek().tok {
            Tok::Str(s) | Tok::Quoted(s) if !negative => Value::String(s.clone()),
            Tok::Int(i) => signed(*i, negative).ok_or_else(|| {
                let t = self.peek();
                SqlError::at(t.line, t.col, format!("number -{i} is out of range"))
            })?,
            Tok::Float(f) => {
                serde_json::Number::from_f64(if negative { -f } else { *f }).map_or(Value::Null, Value::Number)
            }
            Tok::Word(w) if !negative && w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Tok::Word(w) if !negative && w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Tok::Word(w) if !negative && w.eq_ignore_ascii_case("null") => Value::Null,
            _ => return self.error("a constant (a 'string', a number, TRUE, FALSE or NULL)"),
        };
        self.next();
        Ok(v)
    }
}

/// An unsigned literal with its sign, as an integer when it fits.
fn signed(i: u64, negative: bool) -> Option<Value> {
    if negative {
        if i <= i64::MAX as u64 + 1 {
            Some(Value::from((i as i128).wrapping_neg() as i64))
        } else {
            None
        }
    } else {
        Some(Value::from(i))
    }
}

/// Parses a script of `;`-terminated statements, each with its own text (from its first token
/// to its `;`). Nothing is returned unless all of it parses.
pub fn parse_with_text(src: &str) -> Result<Vec<(Statement, String)>, SqlError> {
    let chars: Vec<char> = src.chars().collect();
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
        nodes: 0,
        nesting: 0,
    };
    let mut out = Vec::new();
    loop {
        while p.peek().tok == Tok::Semi {
            p.next();
        }
        if p.peek().tok == Tok::Eof {
            return Ok(out);
        }
        let start = p.peek().start;
        let stmt = p.statement()?;
        if p.peek().tok != Tok::Semi {
            return p.error("';'");
        }
        let end = p.peek().end;
        out.push((stmt, chars[start..end].iter().collect()));
    }
}

/// Parses a script of `;`-terminated statements. Nothing is returned unless all of it parses.
pub fn parse(src: &str) -> Result<Vec<Statement>, SqlError> {
    Ok(parse_with_text(src)?.into_iter().map(|(s, _)| s).collect())
}

/// Whether `src` holds at least one complete statement and nothing unterminated after it (for
/// the shell's multi-line input): quotes are closed and the last token is `;`.
pub fn complete(src: &str) -> bool {
    match lex(src) {
        Ok(toks) => toks.len() >= 2 && toks[toks.len() - 2].tok == Tok::Semi,
        Err(e) => !e.message.starts_with("unterminated"),
    }
}
