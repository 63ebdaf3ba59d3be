//! Values as the evaluator sees them: the INTEGER/FLOAT reading of JSON numbers, text, equality
//! and order, and the error an evaluation ends with. Shared by `eval.rs` and `functions.rs`.

use std::cmp::Ordering;

use serde_json::{Number, Value};

use crate::expr::Expr;

/// Why an expression could not be evaluated for a record: names the expression.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} in {expr}")]
pub struct EvalError {
    pub expr: String,
    pub message: String,
}

/// An [`EvalError`] naming `expr`.
pub(crate) fn fail<T>(expr: &Expr, message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError {
        expr: expr.to_string(),
        message: message.into(),
    })
}

/// A number as an INTEGER, when it is one.
pub fn as_int(v: &Value) -> Option<i64> {
    v.as_number()?.as_i64()
}

/// A whole `f` within 64 bits, as an integer.
pub(crate) fn whole(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f)).then_some(f as i64)
}

/// A value read from a record: HStreamDB's JSON records carry every number as a double, and a
/// whole one within 64 bits is an INTEGER (as HStreamDB reads them); nested values likewise.
/// A FLOAT computed by an expression stays one (`20 * 1.8` is 36.0) until it is stored
/// in a record.
pub fn integral(v: &Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => match whole(n.as_f64().unwrap_or(f64::NAN)) {
            Some(i) => Value::from(i),
            None => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(integral).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), integral(x))).collect()),
        other => other.clone(),
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NULL",
        Value::Bool(_) => "a boolean",
        Value::Number(_) if as_int(v).is_some() => "an integer",
        Value::Number(_) => "a float",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn float(f: f64, at: &Expr) -> Result<Value, EvalError> {
    match Number::from_f64(f) {
        Some(n) => Ok(Value::Number(n)),
        None => fail(at, "the result is not a finite number"),
    }
}

/// A value's text: strings as they are, everything else as JSON (integral numbers without a
/// fraction).
pub fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(_) => match as_int(v) {
            Some(i) => i.to_string(),
            None => v.to_string(),
        },
        other => other.to_string(),
    }
}

/// Equality of two non-NULL values; `None` when their types do not compare.
pub(crate) fn equal(a: &Value, b: &Value) -> Option<bool> {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => Some(compare(a, b)? == Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => Some(x == y),
        (Value::String(x), Value::String(y)) => Some(x == y),
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(false);
            }
            for (p, q) in x.iter().zip(y) {
                let same = match (p, q) {
                    (Value::Null, Value::Null) => true,
                    (Value::Null, _) | (_, Value::Null) => false,
                    _ => equal(p, q)?,
                };
                if !same {
                    return Some(false);
                }
            }
            Some(true)
        }
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                return Some(false);
            }
            for (k, p) in x {
                let Some(q) = y.get(k) else { return Some(false) };
                let same = match (p, q) {
                    (Value::Null, Value::Null) => true,
                    (Value::Null, _) | (_, Value::Null) => false,
                    _ => equal(p, q).unwrap_or(false),
                };
                if !same {
                    return Some(false);
                }
            }
            Some(true)
        }
        _ => None,
    }
}

/// Order of two non-NULL values; `None` when their types do not order.
pub(crate) fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => match (as_int(a), as_int(b)) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
        },
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                match compare(p, q)? {
                    Ordering::Equal => {}
                    o => return Some(o),
                }
            }
            Some(x.len().cmp(&y.len()))
        }
        _ => None,
    }
}
