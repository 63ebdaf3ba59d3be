//! Expressions. Precedence, loosest first, as PostgreSQL's and HStreamDB's: `OR`; `AND`;
//! `NOT`; `IS [NOT] NULL`; comparisons; `[NOT] BETWEEN`, `[NOT] IN`; the JSON operators
//! `-> ->> #> #>>`; `+ -`; `* / %`; unary `-`; `::` casts and `[…]` access.

use serde_json::{Map, Value};

use super::{Parser, RESERVED, signed};
use crate::SqlError;
use crate::eval::eval;
use crate::expr::{BinOp, Expr, Type, function};
use crate::lexer::{Tok, Token};

/// Operators, calls and parentheses one expression may hold: it bounds the depth of the tree,
/// so parsing, evaluating, printing and dropping it cannot exhaust the stack however hostile
/// the text.
pub const MAX_EXPRESSION_NODES: usize = 256;
/// How deep parentheses, calls, casts and IN lists may nest in one expression (each level is a
/// dozen frames of the parser).
pub const MAX_EXPRESSION_NESTING: usize = 32;

const AGGREGATES: &[&str] = &["count", "avg", "sum", "max", "min", "topk", "topkdistinct"];

impl Parser {
    /// An expression whose constant parts evaluate: a type error among constants is refused
    /// here, naming the expression, rather than on every record.
    pub(super) fn checked_expr(&mut self) -> Result<Expr, SqlError> {
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

fn has_column(e: &Expr) -> bool {
    matches!(e, Expr::Col(_)) || e.children().into_iter().any(has_column)
}

/// Evaluates every maximal constant part of `e`; the first error, as text.
fn check_constants(e: &Expr) -> Result<(), String> {
    if !has_column(e) {
        return eval(e, &Map::new()).map(|_| ()).map_err(|err| format!("{err}"));
    }
    e.children().into_iter().try_for_each(check_constants)
}
