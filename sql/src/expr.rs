//! Value expressions: what a SELECT item, a WHERE condition or a function argument is, and how
//! they print back as SQL (the name of an unaliased column, and how errors name an expression).

use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    /// `->`: a field (or array element) as JSON.
    Field,
    /// `->>`: a field (or array element) as text.
    FieldText,
    /// `#>`: the value at a path (an array of keys/indexes, or `'{a,b}'` text) as JSON.
    Path,
    /// `#>>`: the value at a path as text.
    PathText,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "OR",
            BinOp::And => "AND",
            BinOp::Eq => "=",
            BinOp::NotEq => "<>",
            BinOp::Lt => "<",
            BinOp::LtEq => "<=",
            BinOp::Gt => ">",
            BinOp::GtEq => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Field => "->",
            BinOp::FieldText => "->>",
            BinOp::Path => "#>",
            BinOp::PathText => "#>>",
        }
    }
}

/// The types a value can be cast to (`CAST(x AS t)`, `x::t`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Integer,
    Float,
    Boolean,
    String,
    Jsonb,
    Array(Box<Type>),
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Integer => f.write_str("INTEGER"),
            Type::Float => f.write_str("FLOAT"),
            Type::Boolean => f.write_str("BOOLEAN"),
            Type::String => f.write_str("STRING"),
            Type::Jsonb => f.write_str("JSONB"),
            Type::Array(t) => write!(f, "{t}[]"),
        }
    }
}

/// A scalar function: its SQL name and how many arguments it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Func {
    pub name: &'static str,
    pub min_args: usize,
    pub max_args: usize,
}

/// HStreamDB's scalar functions (SQL-v1 grammar), minus the date ones.
pub const FUNCTIONS: &[Func] = &[
    f("ABS", 1, 1),
    f("CEIL", 1, 1),
    f("FLOOR", 1, 1),
    f("ROUND", 1, 1),
    f("SIGN", 1, 1),
    f("SQRT", 1, 1),
    f("LOG", 1, 1),
    f("LOG2", 1, 1),
    f("LOG10", 1, 1),
    f("EXP", 1, 1),
    f("SIN", 1, 1),
    f("SINH", 1, 1),
    f("ASIN", 1, 1),
    f("ASINH", 1, 1),
    f("COS", 1, 1),
    f("COSH", 1, 1),
    f("ACOS", 1, 1),
    f("ACOSH", 1, 1),
    f("TAN", 1, 1),
    f("TANH", 1, 1),
    f("ATAN", 1, 1),
    f("ATANH", 1, 1),
    f("IS_INT", 1, 1),
    f("IS_FLOAT", 1, 1),
    f("IS_NUM", 1, 1),
    f("IS_BOOL", 1, 1),
    f("IS_STR", 1, 1),
    f("IS_MAP", 1, 1),
    f("IS_ARRAY", 1, 1),
    f("TO_STR", 1, 1),
    f("TO_LOWER", 1, 1),
    f("TO_UPPER", 1, 1),
    f("TRIM", 1, 1),
    f("LEFT_TRIM", 1, 1),
    f("RIGHT_TRIM", 1, 1),
    f("REVERSE", 1, 1),
    f("STRLEN", 1, 1),
    f("IFNULL", 2, 2),
    f("NULLIF", 2, 2),
    f("SPLIT", 2, 2),
    f("CHUNKSOF", 2, 2),
    f("TAKE", 2, 2),
    f("TAKEEND", 2, 2),
    f("DROP", 2, 2),
    f("DROPEND", 2, 2),
    f("ARRAY_CONTAIN", 2, 2),
    f("ARRAY_DISTINCT", 1, 1),
    f("ARRAY_EXCEPT", 2, 2),
    f("ARRAY_INTERSECT", 2, 2),
    f("ARRAY_LENGTH", 1, 1),
    f("ARRAY_REMOVE", 2, 2),
    f("ARRAY_UNION", 2, 2),
    f("ARRAY_JOIN", 1, 2),
    f("ARRAY_MAX", 1, 1),
    f("ARRAY_MIN", 1, 1),
    f("ARRAY_SORT", 1, 1),
];

const fn f(name: &'static str, min_args: usize, max_args: usize) -> Func {
    Func {
        name,
        min_args,
        max_args,
    }
}

pub fn function(name: &str) -> Option<Func> {
    FUNCTIONS.iter().copied().find(|f| f.name.eq_ignore_ascii_case(name))
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A constant (number, string, boolean or NULL).
    Lit(Value),
    /// A field of the record (a missing one is NULL).
    Col(String),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
        symmetric: bool,
    },
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Cast(Box<Expr>, Type),
    /// `a[i]`: an array element (negative counts from the end).
    Index(Box<Expr>, i64),
    /// `a[i:j]`: elements `i..j` of an array or characters of a string.
    Slice(Box<Expr>, Option<i64>, Option<i64>),
    Call(Func, Vec<Expr>),
}

impl Expr {
    /// The expressions this one is made of, in order.
    pub fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Lit(_) | Expr::Col(_) => Vec::new(),
            Expr::Not(x) | Expr::Neg(x) | Expr::Cast(x, _) | Expr::Index(x, _) | Expr::Slice(x, _, _) => vec![x],
            Expr::IsNull { expr, .. } => vec![expr],
            Expr::Bin(_, a, b) => vec![a, b],
            Expr::Between { expr, low, high, .. } => vec![expr, low, high],
            Expr::In { expr, list, .. } => std::iter::once(&**expr).chain(list).collect(),
            Expr::Call(_, args) => args.iter().collect(),
        }
    }

    /// Adds the record fields this expression reads to `out`.
    pub fn columns_into(&self, out: &mut std::collections::BTreeSet<String>) {
        match self {
            Expr::Col(c) => {
                out.insert(c.clone());
            }
            e => e.children().into_iter().for_each(|x| x.columns_into(out)),
        }
    }
}

fn quote_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Lit(Value::String(s)) => write!(f, "'{}'", s.replace('\'', "''")),
            Expr::Lit(Value::Null) => f.write_str("NULL"),
            Expr::Lit(Value::Bool(b)) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
            Expr::Lit(v) => write!(f, "{v}"),
            Expr::Col(c) => f.write_str(&quote_ident(c)),
            Expr::Not(e) => write!(f, "NOT {e}"),
            Expr::Neg(e) => write!(f, "-{e}"),
            Expr::Bin(op, a, b) => match op {
                BinOp::Field | BinOp::FieldText | BinOp::Path | BinOp::PathText => {
                    write!(f, "{a}{}{b}", op.symbol())
                }
                _ => write!(f, "({a} {} {b})", op.symbol()),
            },
            Expr::IsNull { expr, negated } => {
                write!(f, "{expr} IS {}NULL", if *negated { "NOT " } else { "" })
            }
            Expr::Between {
                expr,
                low,
                high,
                negated,
                symmetric,
            } => write!(
                f,
                "{expr} {}BETWEEN {}{low} AND {high}",
                if *negated { "NOT " } else { "" },
                if *symmetric { "SYMMETRIC " } else { "" }
            ),
            Expr::In { expr, list, negated } => {
                let items: Vec<String> = list.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{expr} {}IN ({})",
                    if *negated { "NOT " } else { "" },
                    items.join(", ")
                )
            }
            Expr::Cast(e, t) => write!(f, "CAST({e} AS {t})"),
            Expr::Index(e, i) => write!(f, "{e}[{i}]"),
            Expr::Slice(e, a, b) => {
                let show = |x: &Option<i64>| x.map(|v| v.to_string()).unwrap_or_default();
                write!(f, "{e}[{}:{}]", show(a), show(b))
            }
            Expr::Call(func, args) => {
                let args: Vec<String> = args.iter().map(ToString::to_string).collect();
                write!(f, "{}({})", func.name, args.join(", "))
            }
        }
    }
}

/// One item of a SELECT list.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    /// `*`: every field of the record.
    Wildcard,
    Expr {
        expr: Expr,
        alias: Option<String>,
    },
}

impl SelectItem {
    /// The output field's name: the alias, a column's own name, or the expression's text.
    pub fn name(&self) -> Option<String> {
        match self {
            SelectItem::Wildcard => None,
            SelectItem::Expr { alias: Some(a), .. } => Some(a.clone()),
            SelectItem::Expr { expr: Expr::Col(c), .. } => Some(c.clone()),
            SelectItem::Expr { expr, .. } => Some(expr.to_string()),
        }
    }
}

/// `SELECT items FROM stream [WHERE condition]`: a stateless query over one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    pub items: Vec<SelectItem>,
    pub from: String,
    pub condition: Option<Expr>,
}
