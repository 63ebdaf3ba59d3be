//! Evaluation of expressions over one JSON record, with HStreamDB's semantics:
//!
//! - A field the record lacks is NULL, never an error.
//! - Numbers are INTEGER when integral and within 64 bits, FLOAT otherwise; INTEGER arithmetic
//!   is checked (an overflow is an error, never a wrapped value), mixed arithmetic is FLOAT, and a
//!   result that is not a finite number is an error.
//! - `=` and `<>` treat NULL as a value (`NULL = NULL` is TRUE, `1 = NULL` FALSE); ordering
//!   comparisons, arithmetic, `AND`, `OR`, `NOT` and functions of a NULL are NULL (as
//!   HStreamDB's engine computes them).
//! - Values of different types (other than INTEGER and FLOAT) do not compare: that is an error
//!   for the record, never a silent FALSE.
//! - JSON access (`->`, `->>`, `#>`, `#>>`) on a value without that field or element is NULL.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::expr::{BinOp, Expr, Type};
use crate::values::{EvalError, as_int, compare, equal, fail, float, integral, to_text, type_name, whole};

fn arith(op: BinOp, a: &Value, b: &Value, at: &Expr) -> Result<Value, EvalError> {
    if !a.is_number() || !b.is_number() {
        return fail(
            at,
            format!(
                "{} needs numbers, got {} and {}",
                op.symbol(),
                type_name(a),
                type_name(b)
            ),
        );
    }
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        let r = match op {
            BinOp::Add => x.checked_add(y),
            BinOp::Sub => x.checked_sub(y),
            BinOp::Mul => x.checked_mul(y),
            BinOp::Div | BinOp::Mod if y == 0 => return fail(at, "division by zero"),
            BinOp::Div => x.checked_div(y),
            _ => x.checked_rem(y),
        };
        return match r {
            Some(r) => Ok(Value::from(r)),
            None => fail(at, "integer overflow"),
        };
    }
    let (x, y) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
    let r = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div | BinOp::Mod if y == 0.0 => return fail(at, "division by zero"),
        BinOp::Div => x / y,
        _ => x % y,
    };
    float(r, at)
}

/// A JSON path given as an array of keys and indexes, or as PostgreSQL's text form `{a,b,0}`.
fn path_of(v: &Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) => Some(a.clone()),
        Value::String(s) => {
            let inner = s.trim().strip_prefix('{')?.strip_suffix('}')?;
            if inner.trim().is_empty() {
                return Some(Vec::new());
            }
            Some(inner.split(',').map(|p| Value::String(p.trim().to_owned())).collect())
        }
        _ => None,
    }
}

/// One step of JSON access: an object's field or an array's element (a negative index counts
/// from the end); NULL when there is none.
fn step(v: &Value, key: &Value) -> Value {
    match (v, key) {
        (Value::Object(o), Value::String(k)) => o.get(k).cloned().unwrap_or(Value::Null),
        (Value::Array(a), k) => {
            let i = match k {
                Value::String(s) => s.parse::<i64>().ok(),
                other => as_int(other),
            };
            match i {
                Some(i) if i < 0 => a.len().checked_sub(i.unsigned_abs() as usize).and_then(|i| a.get(i)),
                Some(i) => a.get(i as usize),
                None => None,
            }
            .cloned()
            .unwrap_or(Value::Null)
        }
        _ => Value::Null,
    }
}

fn as_text_or_null(v: Value) -> Value {
    match v {
        Value::Null => Value::Null,
        Value::String(s) => Value::String(s),
        other => Value::String(other.to_string()),
    }
}

fn truth(v: &Value, at: &Expr, what: &str) -> Result<Option<bool>, EvalError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => fail(at, format!("{what} needs a boolean, got {}", type_name(other))),
    }
}

/// Evaluates `expr` over `record` (a record's fields by name).
pub fn eval(expr: &Expr, record: &Map<String, Value>) -> Result<Value, EvalError> {
    match expr {
        Expr::Lit(v) => Ok(v.clone()),
        Expr::Col(c) => Ok(record.get(c).map_or(Value::Null, integral)),
        Expr::Not(e) => Ok(match truth(&eval(e, record)?, expr, "NOT")? {
            Some(b) => Value::Bool(!b),
            None => Value::Null,
        }),
        Expr::Neg(e) => {
            let v = eval(e, record)?;
            match v {
                Value::Null => Ok(Value::Null),
                Value::Number(_) => match as_int(&v) {
                    Some(i) => match i.checked_neg() {
                        Some(n) => Ok(Value::from(n)),
                        None => fail(expr, "integer overflow"),
                    },
                    None => float(-v.as_f64().unwrap_or(f64::NAN), expr),
                },
                other => fail(expr, format!("- needs a number, got {}", type_name(&other))),
            }
        }
        Expr::Bin(op, a, b) => {
            let (x, y) = (eval(a, record)?, eval(b, record)?);
            binary(*op, &x, &y, expr)
        }
        Expr::IsNull { expr: e, negated } => Ok(Value::Bool(eval(e, record)?.is_null() != *negated)),
        Expr::Between {
            expr: e,
            low,
            high,
            negated,
            symmetric,
        } => {
            let (v, mut lo, mut hi) = (eval(e, record)?, eval(low, record)?, eval(high, record)?);
            if v.is_null() || lo.is_null() || hi.is_null() {
                return Ok(Value::Null);
            }
            let order = |p: &Value, q: &Value| match compare(p, q) {
                Some(o) => Ok(o),
                None => fail(
                    expr,
                    format!("BETWEEN cannot compare {} with {}", type_name(p), type_name(q)),
                ),
            };
            if *symmetric && order(&lo, &hi)? == Ordering::Greater {
                std::mem::swap(&mut lo, &mut hi);
            }
            let inside = order(&v, &lo)? != Ordering::Less && order(&v, &hi)? != Ordering::Greater;
            Ok(Value::Bool(inside != *negated))
        }
        Expr::In { expr: e, list, negated } => {
            let v = eval(e, record)?;
            if v.is_null() {
                return Ok(Value::Null);
            }
            for item in list {
                let w = eval(item, record)?;
                if w.is_null() {
                    continue;
                }
                match equal(&v, &w) {
                    Some(true) => return Ok(Value::Bool(!*negated)),
                    Some(false) => {}
                    None => {
                        return fail(
                            expr,
                            format!("IN cannot compare {} with {}", type_name(&v), type_name(&w)),
                        );
                    }
                }
            }
            Ok(Value::Bool(*negated))
        }
        Expr::Cast(e, t) => cast(eval(e, record)?, t, expr),
        Expr::Index(e, i) => Ok(match eval(e, record)? {
            v @ Value::Array(_) => step(&v, &Value::from(*i)),
            _ => Value::Null,
        }),
        Expr::Slice(e, from, to) => {
            let v = eval(e, record)?;
            let bounds = |len: usize| {
                let at = |x: i64| {
                    if x < 0 {
                        len.saturating_sub(x.unsigned_abs() as usize)
                    } else {
                        (x as usize).min(len)
                    }
                };
                let lo = from.map_or(0, at);
                let hi = to.map_or(len, at);
                (lo, hi.max(lo))
            };
            Ok(match v {
                Value::Array(a) => {
                    let (lo, hi) = bounds(a.len());
                    Value::Array(a[lo..hi].to_vec())
                }
                Value::String(s) => {
                    let chars: Vec<char> = s.chars().collect();
                    let (lo, hi) = bounds(chars.len());
                    Value::String(chars[lo..hi].iter().collect())
                }
                _ => Value::Null,
            })
        }
        Expr::Call(f, args) => {
            let values = args.iter().map(|a| eval(a, record)).collect::<Result<Vec<_>, _>>()?;
            crate::functions::call(f.name, values, expr)
        }
    }
}

fn binary(op: BinOp, x: &Value, y: &Value, at: &Expr) -> Result<Value, EvalError> {
    match op {
        BinOp::And | BinOp::Or => {
            let (p, q) = (truth(x, at, op.symbol())?, truth(y, at, op.symbol())?);
            Ok(match (p, q) {
                (Some(p), Some(q)) => Value::Bool(if op == BinOp::And { p && q } else { p || q }),
                _ => Value::Null,
            })
        }
        BinOp::Eq | BinOp::NotEq => {
            let same = match (x, y) {
                (Value::Null, Value::Null) => true,
                (Value::Null, _) | (_, Value::Null) => false,
                _ => match equal(x, y) {
                    Some(s) => s,
                    None => {
                        return fail(
                            at,
                            format!("{} cannot compare {} with {}", op.symbol(), type_name(x), type_name(y)),
                        );
                    }
                },
            };
            Ok(Value::Bool(same == (op == BinOp::Eq)))
        }
        BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq => {
            if x.is_null() || y.is_null() {
                return Ok(Value::Null);
            }
            let Some(o) = compare(x, y) else {
                return fail(
                    at,
                    format!("{} cannot compare {} with {}", op.symbol(), type_name(x), type_name(y)),
                );
            };
            Ok(Value::Bool(match op {
                BinOp::Lt => o == Ordering::Less,
                BinOp::LtEq => o != Ordering::Greater,
                BinOp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            }))
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => {
            if x.is_null() || y.is_null() {
                return Ok(Value::Null);
            }
            arith(op, x, y, at)
        }
        BinOp::Field => Ok(step(x, y)),
        BinOp::FieldText => Ok(as_text_or_null(step(x, y))),
        BinOp::Path | BinOp::PathText => {
            if y.is_null() {
                return Ok(Value::Null);
            }
            let Some(path) = path_of(y) else {
                return fail(
                    at,
                    format!(
                        "{} needs a path (an array, or text like '{{a,b}}'), got {}",
                        op.symbol(),
                        type_name(y)
                    ),
                );
            };
            let mut v = x.clone();
            for key in &path {
                v = step(&v, key);
            }
            Ok(if op == BinOp::PathText { as_text_or_null(v) } else { v })
        }
    }
}

/// `CAST(v AS t)`.
pub fn cast(v: Value, t: &Type, at: &Expr) -> Result<Value, EvalError> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let refuse = |v: &Value| fail(at, format!("cannot cast {} to {t}", type_name(v)));
    match t {
        Type::Integer => match &v {
            Value::Number(_) => match as_int(&v) {
                Some(i) => Ok(Value::from(i)),
                None => match whole(v.as_f64().unwrap_or(f64::NAN).round()) {
                    Some(i) => Ok(Value::from(i)),
                    None => fail(at, "the number is out of INTEGER's range"),
                },
            },
            Value::String(s) => match s.trim().parse::<i64>() {
                Ok(i) => Ok(Value::from(i)),
                Err(_) => fail(at, format!("{s:?} is not an INTEGER")),
            },
            Value::Bool(b) => Ok(Value::from(i64::from(*b))),
            other => refuse(other),
        },
        Type::Float => match &v {
            Value::Number(n) => float(n.as_f64().unwrap_or(f64::NAN), at),
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(f) => float(f, at),
                Err(_) => fail(at, format!("{s:?} is not a FLOAT")),
            },
            other => refuse(other),
        },
        Type::Boolean => match &v {
            Value::Bool(_) => Ok(v),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "on" | "1" => Ok(Value::Bool(true)),
                "false" | "f" | "no" | "n" | "off" | "0" => Ok(Value::Bool(false)),
                _ => fail(at, format!("{s:?} is not a BOOLEAN")),
            },
            Value::Number(_) => match as_int(&v) {
                Some(0) => Ok(Value::Bool(false)),
                Some(1) => Ok(Value::Bool(true)),
                _ => refuse(&v),
            },
            other => refuse(other),
        },
        Type::String => Ok(Value::String(to_text(&v))),
        Type::Jsonb => match v {
            Value::String(s) => match serde_json::from_str::<Value>(&s) {
                Ok(j) => Ok(j),
                Err(e) => fail(at, format!("the text is not JSON ({e})")),
            },
            other => Ok(other),
        },
        Type::Array(inner) => {
            let items = match v {
                Value::Array(a) => a,
                Value::String(s) => match serde_json::from_str::<Value>(&s) {
                    Ok(Value::Array(a)) => a,
                    _ => return fail(at, format!("{s:?} is not a JSON array")),
                },
                other => return refuse(&other),
            };
            items
                .into_iter()
                .map(|x| cast(x, inner, at))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
    }
}
