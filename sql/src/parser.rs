//! The recursive-descent parser of statements and expressions (decision 007, grown for queries
//! in decision 031). Expression precedence, loosest first, as PostgreSQL's and HStreamDB's:
//! `OR`; `AND`; `NOT`; `IS [NOT] NULL`; comparisons; `[NOT] BETWEEN`, `[NOT] IN`; the JSON
//! operators `-> ->> #> #>>`; `+ -`; `* / %`; unary `-`; `::` casts and `[…]` access.

use serde_json::{Map, Value};

use crate::SqlError;
use crate::eval::eval;
use crate::expr::{BinOp, Expr, Select, SelectItem, Type, function};
use crate::lexer::{Tok, Token, lex};

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    CreateStream {
        name: String,
        replication: u32,
        shards: u32,
        backlog_secs: u32,
    },
    /// `CREATE STREAM s AS SELECT …`: a persistent query into a new stream.
    CreateStreamAs {
        name: String,
        select: Select,
        replication: u32,
        shards: u32,
        backlog_secs: u32,
    },
    ShowStreams,
    ShowConnectors,
    ShowSubscriptions,
    ShowNodes,
    ShowQueries,
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
    /// `INSERT INTO s SELECT …`: a persistent query into an existing stream.
    InsertSelect {
        stream: String,
        select: Select,
    },
    /// `SELECT … EMIT CHANGES`: a push query.
    Select(Select),
    TerminateQuery(String),
    PauseQuery(String),
    ResumeQuery(String),
    DropQuery {
        name: String,
        if_exists: bool,
    },
}

/// Operators, calls and parentheses one expression may hold: it bounds the depth of the tree,
/// so parsing, evaluating, printing and dropping it cannot exhaust the stack however hostile
/// the text.
pub const MAX_EXPRESSION_NODES: usize = 256;
/// How deep parentheses, calls, casts and IN lists may nest in one expression (each level is a
/// dozen frames of the parser).
pub const MAX_EXPRESSION_NESTING: usize = 32;

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    /// Nodes of the expression being parsed (see [`MAX_EXPRESSION_NODES`]).
    nodes: usize,
    /// Expressions being parsed inside one another (see [`MAX_EXPRESSION_NESTING`]).
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

const AGGREGATES: &[&str] = &["count", "avg", "sum", "max", "min", "topk", "topkdistinct"];

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

    fn statement(&mut self) -> Result<Statement, SqlError> {
        if self.eat_kw("create") {
            if self.eat_kw("stream") {
                return self.create_stream();
            }
            if self.is_kw("view") {
                return self.error("STREAM, SOURCE or SINK (views are not supported)");
            }
            let kind = if self.eat_kw("source") {
                "SOURCE"
            } else if self.eat_kw("sink") {
                "SINK"
            } else {
                return self.error("STREAM, SOURCE or SINK");
            };
            self.kw("connector")?;
            let name = self.name("a connector name")?;
            let mut if_not_exist = false;
            if self.eat_kw("if") {
                self.kw("not")?;
                self.kw("exist")?;
                if_not_exist = true;
            }
            self.kw(if kind == "SOURCE" { "from" } else { "to" })?;
            let target = self.name("a connector type")?;
            let mut options = Map::new();
            if self.eat_kw("if") {
                self.kw("not")?;
                self.kw("exist")?;
                if_not_exist = true;
            }
            self.kw("with")?;
            self.sym("(")?;
            loop {
                let key = self.name("an option name")?;
                self.sym("=")?;
                options.insert(key, self.constant()?);
                if self.eat_sym(",") {
                    continue;
                }
                break;
            }
            self.sym(")")?;
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
            } else if self.eat_kw("queries") {
                Ok(Statement::ShowQueries)
            } else {
                self.error("STREAMS, CONNECTORS, QUERIES, SUBSCRIPTIONS or NODES")
            };
        }
        if self.eat_kw("drop") {
            let what = if self.eat_kw("stream") {
                "stream"
            } else if self.eat_kw("connector") {
                "connector"
            } else if self.eat_kw("query") {
                "query"
            } else {
                return self.error("STREAM, CONNECTOR or QUERY");
            };
            let name = self.name("a name")?;
            let if_exists = if self.eat_kw("if") {
                self.kw("exists")?;
                true
            } else {
                false
            };
            return Ok(match what {
                "stream" => Statement::DropStream { name, if_exists },
                "connector" => Statement::DropConnector { name, if_exists },
                _ => Statement::DropQuery { name, if_exists },
            });
        }
        if self.eat_kw("pause") {
            return if self.eat_kw("connector") {
                Ok(Statement::PauseConnector(self.name("a connector name")?))
            } else if self.eat_kw("query") {
                Ok(Statement::PauseQuery(self.name("a query name")?))
            } else {
                self.error("CONNECTOR or QUERY")
            };
        }
        if self.eat_kw("resume") {
            return if self.eat_kw("connector") {
                Ok(Statement::ResumeConnector(self.name("a connector name")?))
            } else if self.eat_kw("query") {
                Ok(Statement::ResumeQuery(self.name("a query name")?))
            } else {
                self.error("CONNECTOR or QUERY")
            };
        }
        if self.eat_kw("terminate") {
            self.kw("query")?;
            return Ok(Statement::TerminateQuery(self.name("a query name")?));
        }
        if self.eat_kw("insert") {
            self.kw("into")?;
            let stream = self.name("a stream name")?;
            if self.eat_kw("select") {
                let select = self.select()?;
                self.optional_emit_changes()?;
                return Ok(Statement::InsertSelect { stream, select });
            }
            self.sym("(")?;
            let mut cols = vec![self.column("a column name")?];
            while self.eat_sym(",") {
                cols.push(self.column("a column name")?);
            }
            self.sym(")")?;
            self.kw("values")?;
            self.sym("(")?;
            let at = self.peek().clone();
            let mut vals = vec![self.constant()?];
            while self.eat_sym(",") {
                vals.push(self.constant()?);
            }
            self.sym(")")?;
            if cols.len() != vals.len() {
                return Self::error_at(&at, format!("{} columns but {} values", cols.len(), vals.len()));
            }
            return Ok(Statement::Insert {
                stream,
                row: cols.into_iter().zip(vals).collect(),
            });
        }
        if self.eat_kw("select") {
            let select = self.select()?;
            if !self.is_kw("emit") {
                return self.error("EMIT CHANGES (a SELECT without it reads a view, and views are not supported)");
            }
            self.optional_emit_changes()?;
            return Ok(Statement::Select(select));
        }
        self.error("a statement (CREATE, SHOW, DROP, PAUSE, RESUME, TERMINATE, INSERT or SELECT)")
    }

    fn optional_emit_changes(&mut self) -> Result<(), SqlError> {
        if self.eat_kw("emit") {
            self.kw("changes")?;
        }
        Ok(())
    }

    fn stream_options(&mut self) -> Result<(u32, u32, u32), SqlError> {
        let (mut replication, mut shards, mut backlog_secs) = (1, 1, 0);
        if self.eat_kw("with") {
            self.sym("(")?;
            loop {
                let at = self.peek().clone();
                let key = self.name("REPLICATE, SHARD_COUNT or BACKLOG_DURATION")?;
                self.sym("=")?;
                match key.to_ascii_uppercase().as_str() {
                    "REPLICATE" => replication = self.int("a replication factor")?,
                    "SHARD_COUNT" => shards = self.int("a shard count")?,
                    "BACKLOG_DURATION" => backlog_secs = self.int("a backlog duration in seconds")?,
                    _ => return Self::error_at(&at, format!("unknown stream option {key:?}")),
                }
                if self.eat_sym(",") {
                    continue;
                }
                break;
            }
            self.sym(")")?;
        }
        Ok((replication, shards, backlog_secs))
    }

    fn create_stream(&mut self) -> Result<Statement, SqlError> {
        let name = self.name("a stream name")?;
        if self.eat_kw("as") {
            self.kw("select")?;
            let select = self.select()?;
            self.optional_emit_changes()?;
            let (replication, shards, backlog_secs) = self.stream_options()?;
            return Ok(Statement::CreateStreamAs {
                name,
                select,
                replication,
                shards,
                backlog_secs,
            });
        }
        let (replication, shards, backlog_secs) = self.stream_options()?;
        Ok(Statement::CreateStream {
            name,
            replication,
            shards,
            backlog_secs,
        })
    }

    /// The rest of a SELECT after its keyword.
    fn select(&mut self) -> Result<Select, SqlError> {
        let mut items = Vec::new();
        let mut names: Vec<String> = Vec::new();
        loop {
            let at = self.peek().clone();
            let item = if self.eat_sym("*") {
                SelectItem::Wildcard
            } else {
                let expr = self.checked_expr()?;
                let alias = if self.eat_kw("as") {
                    Some(self.column("an alias")?)
                } else {
                    None
                };
                SelectItem::Expr { expr, alias }
            };
            if let Some(n) = item.name() {
                if names.contains(&n) {
                    return Self::error_at(&at, format!("two columns are named {n:?}: give one an alias (AS)"));
                }
                names.push(n);
            }
            items.push(item);
            if !self.eat_sym(",") {
                break;
            }
        }
        self.kw("from")?;
        let at = self.peek().clone();
        if matches!(&at.tok, Tok::Word(w) if ["tumble", "hop", "session"].contains(&w.to_ascii_lowercase().as_str()))
            && self.peek_at(1).tok == Tok::Sym("(")
        {
            return Self::error_at(&at, "windows (TUMBLE, HOP, SESSION) are not supported yet".into());
        }
        if at.tok == Tok::Sym("(") {
            return Self::error_at(&at, "subqueries are not supported yet".into());
        }
        let from = self.name("a stream name")?;
        for join in ["join", "cross", "inner", "left", "right", "full", "natural"] {
            if self.is_kw(join) {
                let t = self.peek().clone();
                return Self::error_at(&t, "joins are not supported yet".into());
            }
        }
        if self.is_sym(",") {
            let t = self.peek().clone();
            return Self::error_at(&t, "a query reads one stream (joins are not supported yet)".into());
        }
        let condition = if self.eat_kw("where") {
            Some(self.checked_expr()?)
        } else {
            None
        };
        if self.is_kw("group") || self.is_kw("having") {
            let t = self.peek().clone();
            return Self::error_at(&t, "GROUP BY and HAVING (aggregation) are not supported yet".into());
        }
        Ok(Select { items, from, condition })
    }

    /// An expression whose constant parts evaluate: a type error among constants is refused
    /// here, naming the expression, rather than on every record.
    fn checked_expr(&mut self) -> Result<Expr, SqlError> {
        self.nodes = 0;
        self.nesting = 0;
        let at = self.peek().clone();
        let e = self.expr()?;
        check_constants(&e).map_err(|m| SqlError::at(at.line, at.col, m))?;
        Ok(e)
    }

    /// Counts one more node of the expression; errs past [`MAX_EXPRESSION_NODES`].
    fn grow(&mut self) -> Result<(), SqlError> {
        self.nodes += 1;
        if self.nodes > MAX_EXPRESSION_NODES {
            let t = self.peek().clone();
            return Self::error_at(
                &t,
                format!(
                    "the expression is too large: more than {MAX_EXPRESSION_NODES} operators, calls and parentheses"
                ),
            );
        }
        Ok(())
    }

    pub(crate) fn expr(&mut self) -> Result<Expr, SqlError> {
        self.nesting += 1;
        if self.nesting > MAX_EXPRESSION_NESTING {
            let t = self.peek().clone();
            return Self::error_at(
                &t,
                format!("the expression is too large: nested more than {MAX_EXPRESSION_NESTING} deep"),
            );
        }
        let e = self.or();
        self.nesting -= 1;
        e
    }

    fn or(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.and()?;
        while self.eat_kw("or") {
            self.grow()?;
            left = Expr::Bin(BinOp::Or, Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.not()?;
        while self.eat_kw("and") {
            self.grow()?;
            left = Expr::Bin(BinOp::And, Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, SqlError> {
        if self.eat_kw("not") {
            self.grow()?;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.is_null()
    }

    fn is_null(&mut self) -> Result<Expr, SqlError> {
        let mut e = self.comparison()?;
        while self.eat_kw("is") {
            self.grow()?;
            let negated = self.eat_kw("not");
            self.kw("null")?;
            e = Expr::IsNull {
                expr: Box::new(e),
                negated,
            };
        }
        Ok(e)
    }

    fn comparison(&mut self) -> Result<Expr, SqlError> {
        let left = self.predicate()?;
        let op = match &self.peek().tok {
            Tok::Sym("=") => BinOp::Eq,
            Tok::Sym("<>") | Tok::Sym("!=") => BinOp::NotEq,
            Tok::Sym("<") => BinOp::Lt,
            Tok::Sym("<=") => BinOp::LtEq,
            Tok::Sym(">") => BinOp::Gt,
            Tok::Sym(">=") => BinOp::GtEq,
            _ => return Ok(left),
        };
        self.next();
        self.grow()?;
        let right = self.predicate()?;
        Ok(Expr::Bin(op, Box::new(left), Box::new(right)))
    }

    fn predicate(&mut self) -> Result<Expr, SqlError> {
        let e = self.json()?;
        let negated = self.is_kw("not")
            && matches!(&self.peek_at(1).tok, Tok::Word(w) if w.eq_ignore_ascii_case("between") || w.eq_ignore_ascii_case("in"));
        if negated {
            self.next();
        }
        if self.eat_kw("between") {
            self.grow()?;
            let symmetric = self.eat_kw("symmetric");
            let low = self.json()?;
            self.kw("and")?;
            let high = self.json()?;
            return Ok(Expr::Between {
                expr: Box::new(e),
                low: Box::new(low),
                high: Box::new(high),
                negated,
                symmetric,
            });
        }
        if self.eat_kw("in") {
            self.grow()?;
            self.sym("(")?;
            let mut list = vec![self.expr()?];
            while self.eat_sym(",") {
                list.push(self.expr()?);
            }
            self.sym(")")?;
            return Ok(Expr::In {
                expr: Box::new(e),
                list,
                negated,
            });
        }
        Ok(e)
    }

    fn json(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.additive()?;
        loop {
            let op = match &self.peek().tok {
                Tok::Sym("->") => BinOp::Field,
                Tok::Sym("->>") => BinOp::FieldText,
                Tok::Sym("#>") => BinOp::Path,
                Tok::Sym("#>>") => BinOp::PathText,
                _ => return Ok(left),
            };
            self.next();
            self.grow()?;
            left = Expr::Bin(op, Box::new(left), Box::new(self.additive()?));
        }
    }

    fn additive(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = match &self.peek().tok {
                Tok::Sym("+") => BinOp::Add,
                Tok::Sym("-") => BinOp::Sub,
                _ => return Ok(left),
            };
            self.next();
            self.grow()?;
            left = Expr::Bin(op, Box::new(left), Box::new(self.multiplicative()?));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.unary()?;
        loop {
            let op = match &self.peek().tok {
                Tok::Sym("*") => BinOp::Mul,
                Tok::Sym("/") => BinOp::Div,
                Tok::Sym("%") => BinOp::Mod,
                _ => return Ok(left),
            };
            self.next();
            self.grow()?;
            left = Expr::Bin(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, SqlError> {
        if self.eat_sym("-") {
            // A negative literal is a constant (so -9223372036854775808 fits).
            if let Tok::Int(i) = self.peek().tok
                && !matches!(self.peek_at(1).tok, Tok::Sym("::") | Tok::Sym("["))
            {
                let t = self.next();
                return match signed(i, true) {
                    Some(v) => Ok(Expr::Lit(v)),
                    None => Self::error_at(&t, format!("number -{i} is out of range")),
                };
            }
            self.grow()?;
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat_sym("+") {
            self.grow()?;
            return self.unary();
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, SqlError> {
        let mut e = self.primary()?;
        loop {
            if self.is_sym("::") || self.is_sym("[") {
                self.grow()?;
            }
            if self.eat_sym("::") {
                e = Expr::Cast(Box::new(e), self.data_type()?);
            } else if self.eat_sym("[") {
                let from = self.opt_index()?;
                if self.eat_sym(":") {
                    let to = self.opt_index()?;
                    self.sym("]")?;
                    e = Expr::Slice(Box::new(e), from, to);
                } else {
                    let Some(i) = from else {
                        return self.error("an index");
                    };
                    self.sym("]")?;
                    e = Expr::Index(Box::new(e), i);
                }
            } else {
                return Ok(e);
            }
        }
    }

    fn opt_index(&mut self) -> Result<Option<i64>, SqlError> {
        let negative = self.eat_sym("-");
        match self.peek().tok {
            Tok::Int(i) => {
                let t = self.next();
                match signed(i, negative).and_then(|v| v.as_i64()) {
                    Some(v) => Ok(Some(v)),
                    None => Self::error_at(&t, format!("index {i} is out of range")),
                }
            }
            _ if negative => self.error("an index"),
            _ => Ok(None),
        }
    }

    fn data_type(&mut self) -> Result<Type, SqlError> {
        let t = self.peek().clone();
        let Tok::Word(w) = &t.tok else {
            return self.error("a type (INTEGER, FLOAT, BOOLEAN, STRING or JSONB)");
        };
        let mut ty = match w.to_ascii_uppercase().as_str() {
            "INTEGER" | "INT" | "BIGINT" => Type::Integer,
            "FLOAT" | "DOUBLE" | "REAL" | "NUMERIC" => Type::Float,
            "BOOLEAN" | "BOOL" => Type::Boolean,
            "STRING" | "TEXT" | "VARCHAR" => Type::String,
            "JSONB" | "JSON" => Type::Jsonb,
            "BYTEA" | "DATE" | "TIME" | "TIMESTAMP" | "INTERVAL" => {
                return Self::error_at(&t, format!("type {w} is not supported yet"));
            }
            _ => return self.error("a type (INTEGER, FLOAT, BOOLEAN, STRING or JSONB)"),
        };
        self.next();
        while self.is_sym("[") && self.peek_at(1).tok == Tok::Sym("]") {
            // Each dimension is a level of the type: counted like an operator.
            self.grow()?;
            self.next();
            self.next();
            ty = Type::Array(Box::new(ty));
        }
        Ok(ty)
    }

    fn primary(&mut self) -> Result<Expr, SqlError> {
        let t = self.peek().clone();
        match &t.tok {
            Tok::Int(i) if *i > i64::MAX as u64 => Self::error_at(
                &t,
                format!("number {i} is out of INTEGER's range (64 bits); write it as a FLOAT ({i}.0)"),
            ),
            Tok::Int(i) => {
                self.next();
                Ok(Expr::Lit(Value::from(*i)))
            }
            Tok::Float(f) => {
                self.next();
                Ok(Expr::Lit(
                    serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
                ))
            }
            Tok::Str(s) => {
                self.next();
                Ok(Expr::Lit(Value::String(s.clone())))
            }
            Tok::Quoted(q) => {
                self.next();
                Ok(Expr::Col(q.clone()))
            }
            Tok::Sym("(") => {
                self.next();
                self.grow()?;
                let e = self.expr()?;
                self.sym(")")?;
                Ok(e)
            }
            Tok::Word(w) => {
                let lower = w.to_ascii_lowercase();
                match lower.as_str() {
                    "true" | "false" => {
                        self.next();
                        return Ok(Expr::Lit(Value::Bool(lower == "true")));
                    }
                    "null" => {
                        self.next();
                        return Ok(Expr::Lit(Value::Null));
                    }
                    "cast" if self.peek_at(1).tok == Tok::Sym("(") => {
                        self.next();
                        self.next();
                        self.grow()?;
                        let e = self.expr()?;
                        self.kw("as")?;
                        let ty = self.data_type()?;
                        self.sym(")")?;
                        return Ok(Expr::Cast(Box::new(e), ty));
                    }
                    "date" | "time" | "timestamp" | "interval"
                        if matches!(self.peek_at(1).tok, Tok::Str(_) | Tok::Int(_)) =>
                    {
                        return Self::error_at(&t, format!("{} values are not supported yet", w.to_ascii_uppercase()));
                    }
                    _ => {}
                }
                if self.peek_at(1).tok == Tok::Sym("(") {
                    return self.call(&t, w);
                }
                if self.peek_at(1).tok == Tok::Sym(".") {
                    let dot = self.peek_at(1).clone();
                    return Self::error_at(
                        &dot,
                        "qualified names (stream.column) are not supported: name the column alone".into(),
                    );
                }
                if RESERVED.contains(&lower.as_str()) {
                    return self.error("an expression");
                }
                self.next();
                Ok(Expr::Col(w.clone()))
            }
            _ => self.error("an expression"),
        }
    }

    fn call(&mut self, at: &Token, name: &str) -> Result<Expr, SqlError> {
        let lower = name.to_ascii_lowercase();
        if AGGREGATES.contains(&lower.as_str()) {
            return Self::error_at(
                at,
                format!(
                    "{} is an aggregate: GROUP BY and windows are not supported yet",
                    name.to_ascii_uppercase()
                ),
            );
        }
        if lower == "datetostring" || lower == "stringtodate" {
            return Self::error_at(at, format!("{} is not supported yet", name.to_ascii_uppercase()));
        }
        let Some(func) = function(name) else {
            return Self::error_at(at, format!("unknown function {name:?}"));
        };
        self.next();
        self.grow()?;
        self.sym("(")?;
        let mut args = Vec::new();
        if !self.is_sym(")") {
            args.push(self.expr()?);
            while self.eat_sym(",") {
                args.push(self.expr()?);
            }
        }
        self.sym(")")?;
        if args.len() < func.min_args || args.len() > func.max_args {
            let want = if func.min_args == func.max_args {
                format!("{}", func.min_args)
            } else {
                format!("{} or {}", func.min_args, func.max_args)
            };
            return Self::error_at(
                at,
                format!("{} takes {want} argument(s), got {}", func.name, args.len()),
            );
        }
        Ok(Expr::Call(func, args))
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

fn has_column(e: &Expr) -> bool {
    match e {
        Expr::Lit(_) => false,
        Expr::Col(_) => true,
        Expr::Not(x) | Expr::Neg(x) | Expr::Cast(x, _) | Expr::Index(x, _) | Expr::Slice(x, _, _) => has_column(x),
        Expr::IsNull { expr, .. } => has_column(expr),
        Expr::Bin(_, a, b) => has_column(a) || has_column(b),
        Expr::Between { expr, low, high, .. } => has_column(expr) || has_column(low) || has_column(high),
        Expr::In { expr, list, .. } => has_column(expr) || list.iter().any(has_column),
        Expr::Call(_, args) => args.iter().any(has_column),
    }
}

/// Evaluates every maximal constant part of `e`; the first error, as text.
fn check_constants(e: &Expr) -> Result<(), String> {
    if !has_column(e) {
        return eval(e, &Map::new()).map(|_| ()).map_err(|err| format!("{err}"));
    }
    match e {
        Expr::Lit(_) | Expr::Col(_) => Ok(()),
        Expr::Not(x) | Expr::Neg(x) | Expr::Cast(x, _) | Expr::Index(x, _) | Expr::Slice(x, _, _) => check_constants(x),
        Expr::IsNull { expr, .. } => check_constants(expr),
        Expr::Bin(_, a, b) => check_constants(a).and(check_constants(b)),
        Expr::Between { expr, low, high, .. } => check_constants(expr)
            .and(check_constants(low))
            .and(check_constants(high)),
        Expr::In { expr, list, .. } => list.iter().try_for_each(check_constants).and(check_constants(expr)),
        Expr::Call(_, args) => args.iter().try_for_each(check_constants),
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
