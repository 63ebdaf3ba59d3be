//! HStreamDB's SQL, the statements the shell executes (v1 grammar subset, see
//! `docs/reference/hstream-io.md`, "SQL for connectors" and "Shell statements"). Parsing is
//! separate from execution: a malformed script executes nothing, and its error names the line,
//! column and token.

mod lexer;

use lexer::{Tok, Token, lex};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}, column {col}: {message}")]
pub struct SqlError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl SqlError {
    fn at(line: usize, col: usize, message: String) -> Self {
        SqlError { line, col, message }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    CreateStream {
        name: String,
        replication: u32,
        shards: u32,
        backlog_secs: u32,
    },
    ShowStreams,
    ShowConnectors,
    ShowSubscriptions,
    ShowNodes,
    DropStream {
        name: String,
        if_exists: bool,
    },
    CreateConnector {
        name: String,
        kind: &'static str,
        target: String,
        options: Map<String, Value>,
        if_not_exist: bool,
    },
    PauseConnector(String),
    ResumeConnector(String),
    DropConnector {
        name: String,
        if_exists: bool,
    },
    Insert {
        stream: String,
        row: Map<String, Value>,
    },
    SelectEmitChanges {
        stream: String,
    },
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("{w:?}"),
        Tok::Quoted(q) => format!("\"{q}\""),
        Tok::Str(s) => format!("'{s}'"),
        Tok::Int(i) => i.to_string(),
        Tok::Float(f) => f.to_string(),
        Tok::Sym(c) => format!("{c:?}"),
        Tok::Semi => "';'".into(),
        Tok::Eof => "the end of input".into(),
    }
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.toks[self.pos]
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

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn kw(&mut self, kw: &str) -> Result<(), SqlError> {
        if self.is_kw(kw) {
            self.next();
            Ok(())
        } else {
            self.error(kw)
        }
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.is_kw(kw);
        if yes {
            self.next();
        }
        yes
    }

    fn sym(&mut self, c: char) -> Result<(), SqlError> {
        if self.peek().tok == Tok::Sym(c) {
            self.next();
            Ok(())
        } else {
            self.error(&format!("'{c}'"))
        }
    }

    fn ident(&mut self, what: &str) -> Result<String, SqlError> {
        match &self.peek().tok {
            Tok::Word(w) => {
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
            Tok::Int(i) if i >= 0 && i <= u32::MAX as i64 => {
                self.next();
                Ok(i as u32)
            }
            _ => self.error(what),
        }
    }

    /// A constant: single-quoted string (canonical), double-quoted string (lenient), number,
    /// boolean or NULL.
    fn constant(&mut self) -> Result<Value, SqlError> {
        let v = match &self.peek().tok {
            Tok::Str(s) | Tok::Quoted(s) => Value::String(s.clone()),
            Tok::Int(i) => Value::from(*i),
            Tok::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Tok::Word(w) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Tok::Word(w) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Tok::Word(w) if w.eq_ignore_ascii_case("null") => Value::Null,
            _ => return self.error("a constant (a 'string', a number, TRUE, FALSE or NULL)"),
        };
        self.next();
        Ok(v)
    }

    fn statement(&mut self) -> Result<Statement, SqlError> {
        if self.eat_kw("create") {
            if self.eat_kw("stream") {
                return self.create_stream();
            }
            let kind = if self.eat_kw("source") {
                "SOURCE"
            } else if self.eat_kw("sink") {
                "SINK"
            } else {
                return self.error("STREAM, SOURCE or SINK");
            };
            self.kw("connector")?;
            let name = self.ident("a connector name")?;
            let mut if_not_exist = false;
            if self.eat_kw("if") {
                self.kw("not")?;
                self.kw("exist")?;
                if_not_exist = true;
            }
            self.kw(if kind == "SOURCE" { "from" } else { "to" })?;
            let target = self.ident("a connector type")?;
            let mut options = Map::new();
            if self.eat_kw("if") {
                self.kw("not")?;
                self.kw("exist")?;
                if_not_exist = true;
            }
            self.kw("with")?;
            self.sym('(')?;
            loop {
                let key = self.ident("an option name")?;
                self.sym('=')?;
                options.insert(key, self.constant()?);
                if self.peek().tok == Tok::Sym(',') {
                    self.next();
                    continue;
                }
                break;
            }
            self.sym(')')?;
            return Ok(Statement::CreateConnector {
                name,
                kind,
                target,
                options,
                if_not_exist,
            });
        }
        if self.eat_kw("show") {
            return if self.eat_kw("streams") {
                Ok(Statement::ShowStreams)
            } else if self.eat_kw("connectors") {
                Ok(Statement::ShowConnectors)
            } else if self.eat_kw("subscriptions") {
                Ok(Statement::ShowSubscriptions)
            } else if self.eat_kw("nodes") {
                Ok(Statement::ShowNodes)
            } else {
                self.error("STREAMS, CONNECTORS, SUBSCRIPTIONS or NODES")
            };
        }
        if self.eat_kw("drop") {
            let is_stream = if self.eat_kw("stream") {
                true
            } else if self.eat_kw("connector") {
                false
            } else {
                return self.error("STREAM or CONNECTOR");
            };
            let name = self.ident("a name")?;
            let if_exists = if self.eat_kw("if") {
                self.kw("exists")?;
                true
            } else {
                false
            };
            return Ok(if is_stream {
                Statement::DropStream { name, if_exists }
            } else {
                Statement::DropConnector { name, if_exists }
            });
        }
        if self.eat_kw("pause") {
            self.kw("connector")?;
            return Ok(Statement::PauseConnector(self.ident("a connector name")?));
        }
        if self.eat_kw("resume") {
            self.kw("connector")?;
            return Ok(Statement::ResumeConnector(self.ident("a connector name")?));
        }
        if self.eat_kw("insert") {
            self.kw("into")?;
            let stream = self.ident("a stream name")?;
            self.sym('(')?;
            let mut cols = vec![self.ident("a column name")?];
            while self.peek().tok == Tok::Sym(',') {
                self.next();
                cols.push(self.ident("a column name")?);
            }
            self.sym(')')?;
            self.kw("values")?;
            self.sym('(')?;
            let at = self.peek().clone();
            let mut vals = vec![self.constant()?];
            while self.peek().tok == Tok::Sym(',') {
                self.next();
                vals.push(self.constant()?);
            }
            self.sym(')')?;
            if cols.len() != vals.len() {
                return Err(SqlError::at(
                    at.line,
                    at.col,
                    format!("{} columns but {} values", cols.len(), vals.len()),
                ));
            }
            return Ok(Statement::Insert {
                stream,
                row: cols.into_iter().zip(vals).collect(),
            });
        }
        if self.eat_kw("select") {
            self.sym('*')?;
            self.kw("from")?;
            let stream = self.ident("a stream name")?;
            self.kw("emit")?;
            self.kw("changes")?;
            return Ok(Statement::SelectEmitChanges { stream });
        }
        self.error("a statement (CREATE, SHOW, DROP, PAUSE, RESUME, INSERT or SELECT)")
    }

    fn create_stream(&mut self) -> Result<Statement, SqlError> {
        let name = self.ident("a stream name")?;
        let (mut replication, mut shards, mut backlog_secs) = (1, 1, 0);
        if self.eat_kw("with") {
            self.sym('(')?;
            loop {
                let key = self.ident("REPLICATE, SHARD_COUNT or BACKLOG_DURATION")?;
                self.sym('=')?;
                match key.to_ascii_uppercase().as_str() {
                    "REPLICATE" => replication = self.int("a replication factor")?,
                    "SHARD_COUNT" => shards = self.int("a shard count")?,
                    "BACKLOG_DURATION" => backlog_secs = self.int("a backlog duration in seconds")?,
                    _ => {
                        let t = &self.toks[self.pos - 2];
                        return Err(SqlError::at(t.line, t.col, format!("unknown stream option {key:?}")));
                    }
                }
                if self.peek().tok == Tok::Sym(',') {
                    self.next();
                    continue;
                }
                break;
            }
            self.sym(')')?;
        }
        Ok(Statement::CreateStream {
            name,
            replication,
            shards,
            backlog_secs,
        })
    }
}

/// Parses a script of `;`-terminated statements. Nothing is returned unless all of it parses.
pub fn parse(src: &str) -> Result<Vec<Statement>, SqlError> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
    };
    let mut out = Vec::new();
    loop {
        while p.peek().tok == Tok::Semi {
            p.next();
        }
        if p.peek().tok == Tok::Eof {
            return Ok(out);
        }
        out.push(p.statement()?);
        if p.peek().tok != Tok::Semi {
            return p.error("';'");
        }
    }
}

/// Whether `src` holds at least one complete statement and nothing unterminated after it (for
/// the shell's multi-line input): quotes are closed and the last token is `;`.
pub fn complete(src: &str) -> bool {
    match lex(src) {
        Ok(toks) => toks.len() >= 2 && toks[toks.len() - 2].tok == Tok::Semi,
        Err(e) => !e.message.starts_with("unterminated"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hstream_statements_parse() {
        let s = parse(
            "CREATE STREAM s1 WITH (REPLICATE = 1, SHARD_COUNT = 4, BACKLOG_DURATION = 60);
             show streams; SHOW CONNECTORS;
             CREATE SOURCE CONNECTOR src IF NOT EXIST FROM generator WITH (\"stream\" = 's1', rate = 10, \"keys\" = \"3\");
             CREATE SINK CONNECTOR snk TO blackhole WITH (stream = 's1');
             PAUSE CONNECTOR src; RESUME CONNECTOR src; DROP CONNECTOR src IF EXISTS; DROP STREAM s1;
             INSERT INTO s1 (a, \"b\") VALUES (1, 'it''s');
             SELECT * FROM s1 EMIT CHANGES;",
        )
        .unwrap();
        assert_eq!(
            s[0],
            Statement::CreateStream {
                name: "s1".into(),
                replication: 1,
                shards: 4,
                backlog_secs: 60
            }
        );
        assert_eq!(s[1], Statement::ShowStreams);
        let Statement::CreateConnector {
            kind,
            target,
            options,
            if_not_exist,
            ..
        } = &s[3]
        else {
            panic!("{:?}", s[3])
        };
        assert_eq!((*kind, target.as_str(), *if_not_exist), ("SOURCE", "generator", true));
        assert_eq!(
            Value::Object(options.clone()),
            json!({"stream": "s1", "rate": 10, "keys": "3"})
        );
        assert_eq!(
            s[8],
            Statement::DropStream {
                name: "s1".into(),
                if_exists: false
            }
        );
        let Statement::Insert { row, .. } = &s[9] else { panic!() };
        assert_eq!(Value::Object(row.clone()), json!({"a": 1, "b": "it's"}));
        assert_eq!(s[10], Statement::SelectEmitChanges { stream: "s1".into() });
    }

    #[test]
    fn errors_point_at_the_token() {
        let e = parse("SHOW STREAMS;\nCREATE STREEM x;").unwrap_err();
        assert_eq!((e.line, e.col), (2, 8));
        assert!(e.message.contains("\"STREEM\""), "{e}");
        let e = parse("INSERT INTO s (a, b) VALUES (1);").unwrap_err();
        assert!(e.message.contains("2 columns but 1 values"), "{e}");
        let e = parse("CREATE SOURCE CONNECTOR c FROM g WITH (x = y);").unwrap_err();
        assert_eq!(e.col, 44);
        let e = parse("SHOW STREAMS").unwrap_err();
        assert!(e.message.contains("expected ';'"), "{e}");
        let e = parse("INSERT INTO s (a) VALUES ('oops);").unwrap_err();
        assert!(e.message.contains("unterminated"), "{e}");
    }

    #[test]
    fn completeness_for_multi_line_input() {
        assert!(!complete("CREATE STREAM"));
        assert!(!complete("INSERT INTO s (a) VALUES ('x;"));
        assert!(complete("CREATE STREAM s;"));
        assert!(complete("SHOW STREAMS;\n"));
    }
}
