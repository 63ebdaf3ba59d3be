//! HStreamDB's scalar functions (SQL-v1 grammar, without the date ones). Every function of a
//! NULL argument is NULL, except the type tests (FALSE), IFNULL and NULLIF; an argument of the
//! wrong type is an error naming the call.

use std::cmp::Ordering;

use serde_json::Value;

use crate::expr::Expr;
use crate::values::{EvalError, as_int, compare, equal, fail, float, to_text, type_name, whole};

fn number(name: &str, v: &Value, at: &Expr) -> Result<f64, EvalError> {
    match v.as_f64() {
        Some(f) if v.is_number() => Ok(f),
        _ => fail(at, format!("{name} needs a number, got {}", type_name(v))),
    }
}

fn text<'a>(name: &str, v: &'a Value, at: &Expr) -> Result<&'a str, EvalError> {
    match v {
        Value::String(s) => Ok(s),
        other => fail(at, format!("{name} needs a string, got {}", type_name(other))),
    }
}

fn array<'a>(name: &str, v: &'a Value, at: &Expr) -> Result<&'a Vec<Value>, EvalError> {
    match v {
        Value::Array(a) => Ok(a),
        other => fail(at, format!("{name} needs an array, got {}", type_name(other))),
    }
}

/// An integral float as an INTEGER when it fits, else the float.
fn integral(f: f64, at: &Expr) -> Result<Value, EvalError> {
    match whole(f) {
        Some(i) => Ok(Value::from(i)),
        None => float(f, at),
    }
}

/// The count and the string of TAKE, DROP, CHUNKSOF…, given in either order.
fn count_and_text<'a>(name: &str, a: &'a Value, b: &'a Value, at: &Expr) -> Result<(usize, &'a str), EvalError> {
    let (n, s) = match (a, b) {
        (Value::String(s), n) | (n, Value::String(s)) => (n, s.as_str()),
        _ => return fail(at, format!("{name} needs a count and a string")),
    };
    match as_int(n) {
        Some(n) if n >= 0 => Ok((n as usize, s)),
        _ => fail(at, format!("{name} needs a count of zero or more, got {}", to_text(n))),
    }
}

fn dedup(items: impl IntoIterator<Item = Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for v in items {
        if !out.iter().any(|o| same(o, &v)) {
            out.push(v);
        }
    }
    out
}

/// Equality for array operations: NULL equals NULL, values of different types differ.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        _ => equal(a, b).unwrap_or(false),
    }
}

fn extreme(name: &str, items: &[Value], want: Ordering, at: &Expr) -> Result<Value, EvalError> {
    let mut best: Option<&Value> = None;
    for v in items.iter().filter(|v| !v.is_null()) {
        best = match best {
            None => Some(v),
            Some(b) => match compare(v, b) {
                Some(o) if o == want => Some(v),
                Some(_) => Some(b),
                None => {
                    return fail(
                        at,
                        format!("{name} cannot compare {} with {}", type_name(v), type_name(b)),
                    );
                }
            },
        };
    }
    Ok(best.cloned().unwrap_or(Value::Null))
}

fn type_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A total order of NULLs (last) and scalars of one kind: numbers by value, exact integers
/// breaking ties among numbers a double cannot tell apart.
fn sort_order(x: &Value, y: &Value) -> Ordering {
    match (x, y) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Greater,
        (_, Value::Null) => Ordering::Less,
        (Value::Number(_), Value::Number(_)) => {
            let key = |v: &Value| (v.as_f64().unwrap_or(0.0), as_int(v).map_or(i128::MIN, i128::from));
            let ((fx, ix), (fy, iy)) = (key(x), key(y));
            fx.total_cmp(&fy).then(ix.cmp(&iy))
        }
        (Value::String(p), Value::String(q)) => p.cmp(q),
        (Value::Bool(p), Value::Bool(q)) => p.cmp(q),
        _ => Ordering::Equal,
    }
}

pub fn call(name: &str, args: Vec<Value>, at: &Expr) -> Result<Value, EvalError> {
    // Functions that look at NULL themselves.
    match name {
        "IS_INT" => return Ok(Value::Bool(as_int(&args[0]).is_some())),
        "IS_FLOAT" => return Ok(Value::Bool(args[0].is_number() && as_int(&args[0]).is_none())),
        "IS_NUM" => return Ok(Value::Bool(args[0].is_number())),
        "IS_BOOL" => return Ok(Value::Bool(args[0].is_boolean())),
        "IS_STR" => return Ok(Value::Bool(args[0].is_string())),
        "IS_MAP" => return Ok(Value::Bool(args[0].is_object())),
        "IS_ARRAY" => return Ok(Value::Bool(args[0].is_array())),
        "IFNULL" => {
            let mut args = args;
            let b = args.pop().unwrap_or(Value::Null);
            let a = args.pop().unwrap_or(Value::Null);
            return Ok(if a.is_null() { b } else { a });
        }
        "NULLIF" => {
            return Ok(match (&args[0], &args[1]) {
                (Value::Null, _) => Value::Null,
                (_, Value::Null) => args[0].clone(),
                (a, b) => match equal(a, b) {
                    Some(true) => Value::Null,
                    Some(false) => a.clone(),
                    None => {
                        return fail(
                            at,
                            format!("NULLIF cannot compare {} with {}", type_name(a), type_name(b)),
                        );
                    }
                },
            });
        }
        _ => {}
    }
    if args.iter().any(Value::is_null) {
        return Ok(Value::Null);
    }
    let a = &args[0];
    let math = |f: fn(f64) -> f64| -> Result<Value, EvalError> { float(f(number(name, a, at)?), at) };
    match name {
        "ABS" => match as_int(a) {
            Some(i) => match i.checked_abs() {
                Some(n) => Ok(Value::from(n)),
                None => fail(at, "integer overflow"),
            },
            None => math(f64::abs),
        },
        "CEIL" => integral(number(name, a, at)?.ceil(), at),
        "FLOOR" => integral(number(name, a, at)?.floor(), at),
        "ROUND" => integral(number(name, a, at)?.round(), at),
        "SIGN" => {
            let f = number(name, a, at)?;
            Ok(Value::from(if f > 0.0 {
                1
            } else if f < 0.0 {
                -1
            } else {
                0
            }))
        }
        "SQRT" => math(f64::sqrt),
        "LOG" => math(f64::ln),
        "LOG2" => math(f64::log2),
        "LOG10" => math(f64::log10),
        "EXP" => math(f64::exp),
        "SIN" => math(f64::sin),
        "SINH" => math(f64::sinh),
        "ASIN" => math(f64::asin),
        "ASINH" => math(f64::asinh),
        "COS" => math(f64::cos),
        "COSH" => math(f64::cosh),
        "ACOS" => math(f64::acos),
        "ACOSH" => math(f64::acosh),
        "TAN" => math(f64::tan),
        "TANH" => math(f64::tanh),
        "ATAN" => math(f64::atan),
        "ATANH" => math(f64::atanh),
        "TO_STR" => Ok(Value::String(to_text(a))),
        "TO_LOWER" => Ok(Value::String(text(name, a, at)?.to_lowercase())),
        "TO_UPPER" => Ok(Value::String(text(name, a, at)?.to_uppercase())),
        "TRIM" => Ok(Value::String(text(name, a, at)?.trim().to_owned())),
        "LEFT_TRIM" => Ok(Value::String(text(name, a, at)?.trim_start().to_owned())),
        "RIGHT_TRIM" => Ok(Value::String(text(name, a, at)?.trim_end().to_owned())),
        "REVERSE" => Ok(Value::String(text(name, a, at)?.chars().rev().collect())),
        "STRLEN" => Ok(Value::from(text(name, a, at)?.chars().count() as u64)),
        "SPLIT" => {
            let (s, sep) = (text(name, a, at)?, text(name, &args[1], at)?);
            if sep.is_empty() {
                return fail(at, "SPLIT needs a non-empty separator");
            }
            Ok(Value::Array(
                s.split(sep).map(|p| Value::String(p.to_owned())).collect(),
            ))
        }
        "CHUNKSOF" => {
            let (n, s) = count_and_text(name, a, &args[1], at)?;
            if n == 0 {
                return fail(at, "CHUNKSOF needs a chunk size of one or more");
            }
            let chars: Vec<char> = s.chars().collect();
            Ok(Value::Array(
                chars.chunks(n).map(|c| Value::String(c.iter().collect())).collect(),
            ))
        }
        "TAKE" | "TAKEEND" | "DROP" | "DROPEND" => {
            let (n, s) = count_and_text(name, a, &args[1], at)?;
            let chars: Vec<char> = s.chars().collect();
            let k = n.min(chars.len());
            let part = match name {
                "TAKE" => &chars[..k],
                "TAKEEND" => &chars[chars.len() - k..],
                "DROP" => &chars[k..],
                _ => &chars[..chars.len() - k],
            };
            Ok(Value::String(part.iter().collect()))
        }
        "ARRAY_CONTAIN" => Ok(Value::Bool(array(name, a, at)?.iter().any(|x| same(x, &args[1])))),
        "ARRAY_DISTINCT" => Ok(Value::Array(dedup(array(name, a, at)?.iter().cloned()))),
        "ARRAY_EXCEPT" => {
            let other = array(name, &args[1], at)?;
            Ok(Value::Array(dedup(
                array(name, a, at)?
                    .iter()
                    .filter(|x| !other.iter().any(|y| same(x, y)))
                    .cloned(),
            )))
        }
        "ARRAY_INTERSECT" => {
            let other = array(name, &args[1], at)?;
            Ok(Value::Array(dedup(
                array(name, a, at)?
                    .iter()
                    .filter(|x| other.iter().any(|y| same(x, y)))
                    .cloned(),
            )))
        }
        "ARRAY_UNION" => Ok(Value::Array(dedup(
            array(name, a, at)?.iter().chain(array(name, &args[1], at)?).cloned(),
        ))),
        "ARRAY_REMOVE" => Ok(Value::Array(
            array(name, a, at)?
                .iter()
                .filter(|x| !same(x, &args[1]))
                .cloned()
                .collect(),
        )),
        "ARRAY_LENGTH" => Ok(Value::from(array(name, a, at)?.len() as u64)),
        "ARRAY_JOIN" => {
            let sep = match args.get(1) {
                Some(s) => text(name, s, at)?,
                None => ",",
            };
            let parts: Vec<String> = array(name, a, at)?
                .iter()
                .filter(|x| !x.is_null())
                .map(to_text)
                .collect();
            Ok(Value::String(parts.join(sep)))
        }
        "ARRAY_MAX" => extreme(name, array(name, a, at)?, Ordering::Greater, at),
        "ARRAY_MIN" => extreme(name, array(name, a, at)?, Ordering::Less, at),
        "ARRAY_SORT" => {
            let mut items = array(name, a, at)?.clone();
            // One kind of scalar (NULLs aside), so the order is total and sorting cannot fail.
            let kinds: std::collections::BTreeSet<&str> =
                items.iter().filter(|v| !v.is_null()).map(type_kind).collect();
            if kinds.len() > 1 || kinds.contains("array") || kinds.contains("object") {
                return fail(
                    at,
                    format!(
                        "ARRAY_SORT sorts numbers, strings or booleans of one kind, got {}",
                        kinds.into_iter().collect::<Vec<_>>().join(" and ")
                    ),
                );
            }
            items.sort_by(sort_order);
            Ok(Value::Array(items))
        }
        other => fail(at, format!("unknown function {other}")),
    }
}
