//! Tokens of HStreamDB's SQL (v1 grammar subset), each with its line and column so errors can
//! point at it.

use super::SqlError;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A bare identifier or keyword (keywords are matched case-insensitively by the parser).
    Word(String),
    /// A double-quoted identifier (or, leniently, a value).
    Quoted(String),
    /// A single-quoted string literal.
    Str(String),
    Int(i64),
    Float(f64),
    Sym(char),
    Semi,
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub line: usize,
    pub col: usize,
}

pub fn lex(src: &str) -> Result<Vec<Token>, SqlError> {
    let mut out = Vec::new();
    let chars: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut col) = (0usize, 1usize, 1usize);
    let advance = |i: &mut usize, line: &mut usize, col: &mut usize, c: char| {
        *i += 1;
        if c == '\n' {
            *line += 1;
            *col = 1;
        } else {
            *col += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let (tl, tc) = (line, col);
        if c.is_whitespace() {
            advance(&mut i, &mut line, &mut col, c);
            continue;
        }
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                let ch = chars[i];
                advance(&mut i, &mut line, &mut col, ch);
            }
            continue;
        }
        let tok = if c.is_ascii_alphabetic() || c == '_' {
            let mut w = String::new();
            // Names may hold '-' between alphanumerics, as HStreamDB's names do.
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '_'
                    || (chars[i] == '-' && chars.get(i + 1).is_some_and(|n| n.is_ascii_alphanumeric())))
            {
                let ch = chars[i];
                w.push(ch);
                advance(&mut i, &mut line, &mut col, ch);
            }
            Tok::Word(w)
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit())) {
            let mut w = String::from(c);
            advance(&mut i, &mut line, &mut col, c);
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                let ch = chars[i];
                w.push(ch);
                advance(&mut i, &mut line, &mut col, ch);
            }
            if w.contains('.') {
                Tok::Float(w.parse().map_err(|_| SqlError::at(tl, tc, format!("bad number {w}")))?)
            } else {
                Tok::Int(w.parse().map_err(|_| SqlError::at(tl, tc, format!("bad number {w}")))?)
            }
        } else if c == '\'' || c == '"' {
            let quote = c;
            advance(&mut i, &mut line, &mut col, c);
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None => return Err(SqlError::at(tl, tc, "unterminated quoted text".into())),
                    // A doubled quote inside is one quote character.
                    Some(&q) if q == quote && chars.get(i + 1) == Some(&quote) => {
                        s.push(q);
                        advance(&mut i, &mut line, &mut col, q);
                        advance(&mut i, &mut line, &mut col, q);
                    }
                    Some(&q) if q == quote => {
                        advance(&mut i, &mut line, &mut col, q);
                        break;
                    }
                    Some(&x) => {
                        s.push(x);
                        advance(&mut i, &mut line, &mut col, x);
                    }
                }
            }
            if quote == '\'' { Tok::Str(s) } else { Tok::Quoted(s) }
        } else if c == ';' {
            advance(&mut i, &mut line, &mut col, c);
            Tok::Semi
        } else if "(),=*".contains(c) {
            advance(&mut i, &mut line, &mut col, c);
            Tok::Sym(c)
        } else {
            return Err(SqlError::at(tl, tc, format!("unexpected character {c:?}")));
        };
        out.push(Token { tok, line: tl, col: tc });
    }
    out.push(Token {
        tok: Tok::Eof,
        line,
        col,
    });
    Ok(out)
}
