//! HStreamDB's SQL (v1 grammar subset, see `docs/reference/sql.md`): the statements the shell
//! and the server execute, the expressions of stateless queries, and their evaluation over JSON
//! records.
//!
//! Guarantees: parsing is separate from execution, so a malformed script executes nothing; a
//! parse error names the line, column and token; an expression whose constant part cannot be
//! evaluated (`1 + 'a'`, `CAST('x' AS INTEGER)`) is refused at parse time naming the expression;
//! evaluating an expression over a record never panics and never changes a value silently
//! (overflow, a non-finite result or a comparison of unrelated types is an [`EvalError`]).

mod eval;
mod expr;
mod functions;
mod lexer;
mod parser;
#[cfg(test)]
mod tests;

pub use eval::{EvalError, as_int, cast, eval, integral, to_text};
pub use expr::{BinOp, Expr, FUNCTIONS, Func, Select, SelectItem, Type};
pub use parser::{Statement, complete, parse, parse_with_text};

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

impl Select {
    /// Applies the query to one record: `Ok(None)` when the WHERE condition is not TRUE (FALSE
    /// or NULL), else the projected record.
    pub fn apply(
        &self,
        record: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, EvalError> {
        if let Some(c) = &self.condition {
            match eval(c, record)? {
                serde_json::Value::Bool(true) => {}
                serde_json::Value::Bool(false) | serde_json::Value::Null => return Ok(None),
                other => {
                    return Err(EvalError {
                        expr: c.to_string(),
                        message: format!("WHERE needs a boolean, got {other}"),
                    });
                }
            }
        }
        let mut out = serde_json::Map::new();
        for item in &self.items {
            match item {
                SelectItem::Wildcard => out.extend(record.iter().map(|(k, v)| (k.clone(), v.clone()))),
                SelectItem::Expr { expr, .. } => {
                    let name = item.name().unwrap_or_default();
                    out.insert(name, eval(expr, record)?);
                }
            }
        }
        Ok(Some(out))
    }

    /// The top-level fields of a record the query reads; `None` when it reads them all (`*`).
    pub fn columns(&self) -> Option<std::collections::BTreeSet<String>> {
        fn walk(e: &Expr, out: &mut std::collections::BTreeSet<String>) {
            match e {
                Expr::Lit(_) => {}
                Expr::Col(c) => {
                    out.insert(c.clone());
                }
                Expr::Not(x) | Expr::Neg(x) | Expr::Cast(x, _) | Expr::Index(x, _) | Expr::Slice(x, _, _) => {
                    walk(x, out)
                }
                Expr::IsNull { expr, .. } => walk(expr, out),
                Expr::Bin(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Expr::Between { expr, low, high, .. } => {
                    walk(expr, out);
                    walk(low, out);
                    walk(high, out);
                }
                Expr::In { expr, list, .. } => {
                    walk(expr, out);
                    list.iter().for_each(|x| walk(x, out));
                }
                Expr::Call(_, args) => args.iter().for_each(|x| walk(x, out)),
            }
        }
        let mut out = std::collections::BTreeSet::new();
        for item in &self.items {
            match item {
                SelectItem::Wildcard => return None,
                SelectItem::Expr { expr, .. } => walk(expr, &mut out),
            }
        }
        if let Some(c) = &self.condition {
            walk(c, &mut out);
        }
        Some(out)
    }

    /// Whether the query passes every record through unchanged (`SELECT * FROM s`).
    pub fn is_identity(&self) -> bool {
        self.condition.is_none() && self.items == [SelectItem::Wildcard]
    }
}
