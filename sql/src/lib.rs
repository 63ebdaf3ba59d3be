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
mod values;

pub use eval::{cast, eval};
pub use expr::{BinOp, Expr, FUNCTIONS, Func, Select, SelectItem, Type};
pub use parser::{Statement, complete, parse, parse_with_text};
pub use values::{EvalError, as_int, integral, to_text};

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
        let mut out = std::collections::BTreeSet::new();
        for item in &self.items {
            match item {
                SelectItem::Wildcard => return None,
                SelectItem::Expr { expr, .. } => expr.columns_into(&mut out),
            }
        }
        if let Some(c) = &self.condition {
            c.columns_into(&mut out);
        }
        Some(out)
    }

    /// Whether the query passes every record through unchanged (`SELECT * FROM s`).
    pub fn is_identity(&self) -> bool {
        self.condition.is_none() && self.items == [SelectItem::Wildcard]
    }
}
