//! Tokens of HStreamDB's SQL (v1 grammar subset), each with where it starts and ends so errors
//! can point at it and the parser can tell adjacent tokens (`my-stream` is one name, `a - b` a
//! subtraction).

use super::SqlError;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A bare identifier or keyword (keywords are matched case-insensitively by the parser).
    Word(String),
    /// A double-quoted identifier (or, leniently, a value).
    Quoted(String),
    /// A single-quoted string literal.
    Str(String),
    /// An unsigned integer literal (a sign is an operator).
    Int(u64),
    /// An unsigned literal with a fraction or exponent.
    Float(f64),
    /// Punctuation and operators.
    Sym(&'static str),
    Semi,
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub line: usize,
    pub col: usize,
    /// Character offsets of the token in the source: `[start, end)`.
    pub start: usize,
    pub end: usize,
}

/// Operators, longest first so `->>` is not read as `->` then `>`.
const SYMBOLS: &[&str] = &[
    "->>", "#>>", "->", "#>", "::", "<=", ">=", "<>", "!=", "(", ")", ",", "=", "*", "+", "-", "/", "%", "<", ">", "[",
    "]", ":", ".",
];

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
    let starts_with = |i: usize, s: &str| s.chars().enumerate().all(|(k, c)| chars.get(i + k) == Some(&c));
    while i < chars.len() {
        let c = chars[i];
        let (tl, tc, start) = (line, col, i);
        if c.is_whitespace() {
            advance(&mut i, &mut line, &mut col, c);
            continue;
        }
        // Comments: `-- …` and `// …` to the end of the line, `/* … */`.
        if starts_with(i, "--") || starts_with(i, "//") {
            while i < chars.len() && chars[i] != '\n' {
                let ch = chars[i];
                advance(&mut i, &mut line, &mut col, ch);
            }
            continue;
        }
        if starts_with(i, "/*") {
            loop {
                if i >= chars.len() {
                    return Err(SqlError::at(tl, tc, "unterminated comment".into()));
                }
                if starts_with(i, "*/") {
                    advance(&mut i, &mut line, &mut col, '*');
                    advance(&mut i, &mut line, &mut col, '/');
                    break;
                }
                let ch = chars[i];
                advance(&mut i, &mut line, &mut col, ch);
            }
            continue;
        }
        let tok = if c.is_alphabetic() || c == '_' {
            let mut w = String::new();
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                let ch = chars[i];
                w.push(ch);
                advance(&mut i, &mut line, &mut col, ch);
            }
            Tok::Word(w)
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let mut w = String::new();
            let mut float = false;
            while let Some(&ch) = chars.get(i) {
                let exponent_sign = (ch == '+' || ch == '-') && matches!(w.chars().last(), Some('e' | 'E'));
                let point = ch == '.' && !float && !w.contains(['e', 'E']);
                let exponent = (ch == 'e' || ch == 'E')
                    && !w.contains(['e', 'E'])
                    && chars.get(i + 1).is_some_and(|n| {
                        n.is_ascii_digit()
                            || ((*n == '+' || *n == '-') && chars.get(i + 2).is_some_and(char::is_ascii_digit))
                    });
                if point || exponent {
                    float = true;
                } else if !(ch.is_ascii_digit() || exponent_sign) {
                    break;
                }
                w.push(ch);
                advance(&mut i, &mut line, &mut col, ch);
            }
            if chars.get(i).is_some_and(|n| n.is_alphabetic() || *n == '_') {
                return Err(SqlError::at(tl, tc, format!("bad number {w}{}", chars[i])));
            }
            if float {
                match w.parse::<f64>() {
                    Ok(f) if f.is_finite() => Tok::Float(f),
                    Ok(_) => return Err(SqlError::at(tl, tc, format!("number {w} is out of range"))),
                    Err(_) => return Err(SqlError::at(tl, tc, format!("bad number {w}"))),
                }
            } else {
                Tok::Int(
                    w.parse()
                        .map_err(|_| SqlError::at(tl, tc, format!("number {w} is out of range")))?,
                )
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
        } else if let Some(sym) = SYMBOLS.iter().find(|s| starts_with(i, s)) {
            for ch in sym.chars() {
                advance(&mut i, &mut line, &mut col, ch);
            }
            Tok::Sym(sym)
        } else {
            return Err(SqlError::at(tl, tc, format!("unexpected character {c:?}")));
        };
        out.push(Token {
            tok,
            line: tl,
            col: tc,
            start,
            end: i,
        });
    }
    out.push(Token {
        tok: Tok::Eof,
        line,
        col,
        start: i,
        end: i,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn operators_numbers_and_comments() {
        assert_eq!(
            toks("a->>'b' #>> x::INTEGER<>1.5e3 -- c\n/* d */ 2"),
            vec![
                Tok::Word("a".into()),
                Tok::Sym("->>"),
                Tok::Str("b".into()),
                Tok::Sym("#>>"),
                Tok::Word("x".into()),
                Tok::Sym("::"),
                Tok::Word("INTEGER".into()),
                Tok::Sym("<>"),
                Tok::Float(1500.0),
                Tok::Int(2),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("a-1"),
            vec![Tok::Word("a".into()), Tok::Sym("-"), Tok::Int(1), Tok::Eof]
        );
        assert!(
            lex("99999999999999999999999")
                .unwrap_err()
                .message
                .contains("out of range")
        );
        assert!(lex("12abc").unwrap_err().message.contains("bad number"));
        assert!(lex("1e400").unwrap_err().message.contains("out of range"));
        assert!(lex("/* open").unwrap_err().message.contains("unterminated"));
    }
}
