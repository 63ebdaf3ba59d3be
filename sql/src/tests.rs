//! Statements, errors, and a table of expression cases (NULLs, missing fields, type
//! mismatches, nested JSON).

use serde_json::{Map, Value, json};

use crate::{Select, SelectItem, Statement, complete, eval, parse, parse_with_text};

#[test]
fn hstream_statements_parse() {
    let s = parse(
        "CREATE STREAM s1 WITH (REPLICATE = 1, SHARD_COUNT = 4, BACKLOG_DURATION = 60);
         show streams; SHOW CONNECTORS;
         CREATE SOURCE CONNECTOR src IF NOT EXIST FROM generator WITH (\"stream\" = 's1', rate = 10, \"keys\" = \"3\", low = -5);
         CREATE SINK CONNECTOR snk TO blackhole WITH (stream = 's1');
         PAUSE CONNECTOR src; RESUME CONNECTOR src; DROP CONNECTOR src IF EXISTS; DROP STREAM my-stream-2;
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
        json!({"stream": "s1", "rate": 10, "keys": "3", "low": -5})
    );
    assert_eq!(
        s[8],
        Statement::DropStream {
            name: "my-stream-2".into(),
            if_exists: false
        }
    );
    let Statement::Insert { row, .. } = &s[9] else { panic!() };
    assert_eq!(Value::Object(row.clone()), json!({"a": 1, "b": "it's"}));
    assert_eq!(
        s[10],
        Statement::Select(Select {
            items: vec![SelectItem::Wildcard],
            from: "s1".into(),
            condition: None
        })
    );
}

#[test]
fn query_statements_parse() {
    let s = parse_with_text(
        "SHOW QUERIES; TERMINATE QUERY q1; DROP QUERY q1 IF EXISTS; PAUSE QUERY q-2; RESUME QUERY q-2;
         CREATE STREAM hot AS SELECT id, temperature * 1.8 + 32 AS f FROM demo WHERE humidity > 70 WITH (REPLICATE = 3);
         INSERT INTO hot SELECT * FROM demo WHERE humidity > 70 EMIT CHANGES;",
    )
    .unwrap();
    assert_eq!(s[0].0, Statement::ShowQueries);
    assert_eq!(s[1].0, Statement::TerminateQuery("q1".into()));
    assert_eq!(
        s[2].0,
        Statement::DropQuery {
            name: "q1".into(),
            if_exists: true
        }
    );
    assert_eq!(s[3].0, Statement::PauseQuery("q-2".into()));
    let Statement::CreateStreamAs {
        name,
        select,
        replication,
        ..
    } = &s[5].0
    else {
        panic!("{:?}", s[5])
    };
    assert_eq!((name.as_str(), *replication, select.from.as_str()), ("hot", 3, "demo"));
    assert_eq!(
        select.items.iter().map(|i| i.name().unwrap()).collect::<Vec<_>>(),
        ["id", "f"]
    );
    assert!(s[5].1.starts_with("CREATE STREAM hot AS SELECT") && s[5].1.ends_with("(REPLICATE = 3);"));
    assert!(matches!(&s[6].0, Statement::InsertSelect { stream, .. } if stream == "hot"));
    assert_eq!(
        s[6].1,
        "INSERT INTO hot SELECT * FROM demo WHERE humidity > 70 EMIT CHANGES;"
    );
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
    // Queries: unsupported parts are named where they are.
    let cases = [
        ("SELECT * FROM demo;", 1, 19, "EMIT CHANGES"),
        (
            "SELECT * FROM demo WHERE humidity >> 70 EMIT CHANGES;",
            1,
            36,
            "expected an expression",
        ),
        ("SELECT COUNT(*) FROM demo EMIT CHANGES;", 1, 8, "aggregate"),
        ("SELECT a FROM demo GROUP BY a EMIT CHANGES;", 1, 20, "GROUP BY"),
        ("SELECT a FROM s1 JOIN s2 EMIT CHANGES;", 1, 18, "joins"),
        (
            "SELECT a FROM TUMBLE(s, INTERVAL 1 SECOND) EMIT CHANGES;",
            1,
            15,
            "windows",
        ),
        ("SELECT nosuch(a) FROM s EMIT CHANGES;", 1, 8, "unknown function"),
        ("SELECT ABS(a, b) FROM s EMIT CHANGES;", 1, 8, "ABS takes 1 argument"),
        (
            "SELECT a, b AS a FROM s EMIT CHANGES;",
            1,
            11,
            "two columns are named \"a\"",
        ),
        (
            "SELECT a FROM s WHERE a > 1 + 'x' EMIT CHANGES;",
            1,
            23,
            "+ needs numbers, got an integer and a string in (1 + 'x')",
        ),
        (
            "SELECT CAST('x' AS INTEGER) FROM s EMIT CHANGES;",
            1,
            8,
            "\"x\" is not an INTEGER",
        ),
        ("SELECT a::DATE FROM s EMIT CHANGES;", 1, 11, "DATE is not supported"),
        (
            "SELECT 9223372036854775807 + 1 FROM s EMIT CHANGES;",
            1,
            8,
            "integer overflow",
        ),
        ("SELECT s.a FROM s EMIT CHANGES;", 1, 9, "qualified names"),
        ("CREATE VIEW v AS SELECT * FROM s;", 1, 8, "views are not supported"),
    ];
    for (sql, line, col, msg) in cases {
        let e = parse(sql).unwrap_err();
        assert!(
            (e.line, e.col) == (line, col) && e.message.contains(msg),
            "{sql}: got {e}, want {line}:{col} {msg}"
        );
    }
}

/// Hostile expressions are refused at parse time, before they can exhaust the stack.
#[test]
fn hostile_expressions_are_bounded() {
    for (what, text) in [
        (
            "parentheses",
            format!("{}a{}", "(".repeat(100_000), ")".repeat(100_000)),
        ),
        ("a chain", vec!["a"; 100_000].join(" + ")),
        ("NOTs", format!("{}TRUE", "NOT ".repeat(100_000))),
        ("minuses", format!("{}1", "- ".repeat(100_000))),
        ("casts", format!("a{}", "::STRING".repeat(100_000))),
        ("array types", format!("a::INTEGER{}", "[]".repeat(100_000))),
        ("array casts", format!("CAST(a AS INTEGER{})", "[]".repeat(100_000))),
        ("calls", format!("{}a{}", "ABS(".repeat(100_000), ")".repeat(100_000))),
    ] {
        let e = parse(&format!("SELECT {text} FROM s EMIT CHANGES;")).unwrap_err();
        assert!(e.message.contains("too large"), "{what}: {e}");
    }
    // Within the bound, all is well (and evaluates).
    let q = select(&format!("{} AS v FROM s", vec!["a"; 200].join(" + ")));
    let SelectItem::Expr { expr, .. } = &q.items[0] else {
        panic!()
    };
    assert_eq!(eval(expr, &record(json!({"a": 1}))), Ok(json!(200)));
    let e = parse("SELECT 9223372036854775808 FROM s EMIT CHANGES;").unwrap_err();
    assert!(e.message.contains("out of INTEGER's range"), "{e}");
    let e = parse("SELECT 1e999 FROM s EMIT CHANGES;").unwrap_err();
    assert!(e.message.contains("out of range"), "{e}");
    assert_eq!(value_of("-9223372036854775808", &json!({})), Ok(json!(i64::MIN)));
}

#[test]
fn completeness_for_multi_line_input() {
    assert!(!complete("CREATE STREAM"));
    assert!(!complete("INSERT INTO s (a) VALUES ('x;"));
    assert!(complete("CREATE STREAM s;"));
    assert!(complete("SHOW STREAMS;\n"));
}

fn select(sql: &str) -> Select {
    match parse(&format!("SELECT {sql} EMIT CHANGES;")) {
        Ok(mut s) => match s.remove(0) {
            Statement::Select(q) => q,
            other => panic!("{other:?}"),
        },
        Err(e) => panic!("{sql}: {e}"),
    }
}

fn record(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!(),
    }
}

/// One expression over one record: the value, or the error's text.
/// A constant part that cannot be evaluated is refused at parse time: that error's text.
fn value_of(expr: &str, rec: &Value) -> Result<Value, String> {
    let q = match parse(&format!("SELECT {expr} AS v FROM s EMIT CHANGES;")) {
        Ok(mut s) => match s.remove(0) {
            Statement::Select(q) => q,
            other => panic!("{other:?}"),
        },
        Err(e) => return Err(e.to_string()),
    };
    let SelectItem::Expr { expr, .. } = &q.items[0] else {
        panic!()
    };
    eval(expr, &record(rec.clone())).map_err(|e| e.to_string())
}

#[test]
fn expression_cases() {
    let rec = json!({
        "i": 7, "f": 2.5, "whole": 70.0, "s": "Hello", "b": true, "n": null,
        "big": 9007199254740993u64, "neg": -3,
        "o": {"a": {"b": [10, 20, {"c": "deep"}]}, "k": "v"},
        "arr": [3, 1, 2, 1], "strs": ["x", "y"], "text": " pad "
    });
    let ok = |e: &str, want: Value| {
        assert_eq!(value_of(e, &rec), Ok(want.clone()), "{e}");
    };
    let err = |e: &str, want: &str| {
        let got = value_of(e, &rec);
        assert!(
            matches!(&got, Err(m) if m.contains(want)),
            "{e}: got {got:?}, want error {want:?}"
        );
    };
    // Arithmetic: INTEGER stays exact and checked; mixed is FLOAT.
    ok("i + 1", json!(8));
    ok("i * f", json!(17.5));
    ok("whole + 1", json!(71));
    ok("whole", json!(70));
    ok("f * 2 + 1", json!(6.0));
    ok("20 * 1.5 + 2", json!(32.0));
    ok("big - 1", json!(9007199254740992i64));
    ok("i / 2", json!(3));
    ok("i % 4", json!(3));
    ok("-neg", json!(3));
    ok("7 - -3", json!(10));
    ok("i-1", json!(6));
    err("i / 0", "division by zero");
    err("9223372036854775807 + i", "integer overflow");
    err("s + 1", "+ needs numbers, got a string and an integer");
    err("-s", "- needs a number");
    // NULLs and missing fields.
    ok("missing", Value::Null);
    ok("missing + 1", Value::Null);
    ok("missing > 70", Value::Null);
    ok("missing = 70", json!(false));
    ok("missing = NULL", json!(true));
    ok("n <> NULL", json!(false));
    ok("missing IS NULL", json!(true));
    ok("i IS NOT NULL", json!(true));
    ok("NOT missing", Value::Null);
    ok("b AND missing", Value::Null);
    ok("TO_UPPER(missing)", Value::Null);
    ok("IFNULL(missing, 'dflt')", json!("dflt"));
    ok("IFNULL(s, 'dflt')", json!("Hello"));
    ok("NULLIF(i, 7)", Value::Null);
    ok("NULLIF(i, 8)", json!(7));
    // Comparisons.
    ok("i > 5 AND f < 3", json!(true));
    ok("i = 7.0", json!(true));
    ok("whole >= 70", json!(true));
    ok("s = 'Hello'", json!(true));
    ok("s < 'World'", json!(true));
    ok("i BETWEEN 1 AND 10", json!(true));
    ok("i NOT BETWEEN 1 AND 10", json!(false));
    ok("i BETWEEN SYMMETRIC 10 AND 1", json!(true));
    ok("i IN (1, 7)", json!(true));
    ok("s NOT IN ('a', 'b')", json!(true));
    ok("arr = arr", json!(true));
    err("s > 1", "> cannot compare a string with an integer");
    err("s = 1", "= cannot compare a string with an integer");
    err("b AND i", "AND needs a boolean, got an integer");
    err("i IN ('x')", "IN cannot compare");
    // Nested JSON.
    ok("o->'k'", json!("v"));
    ok("o->'a'->'b'->2->>'c'", json!("deep"));
    ok("o->'a'->'b'->-1", json!({"c": "deep"}));
    ok("o->'nope'->'x'", Value::Null);
    ok("o#>'{a,b,1}'", json!(20));
    ok("o#>>'{a,b,2,c}'", json!("deep"));
    ok("o->'a'->>'b'", json!("[10,20,{\"c\":\"deep\"}]"));
    ok("s->'a'", Value::Null);
    // JSON operators bind looser than arithmetic (as in PostgreSQL and HStreamDB).
    ok("o->'a'->'b'->0 + 1", json!(20));
    ok("(o->'a'->'b'->0) + 1", json!(11));
    ok("o->'k' = 'v'", json!(true));
    err("o#>5", "#> needs a path");
    ok("arr[0]", json!(3));
    ok("arr[-1]", json!(1));
    ok("arr[1:3]", json!([1, 2]));
    ok("s[1:]", json!("ello"));
    ok("arr[9]", Value::Null);
    // Casts.
    ok("CAST(f AS INTEGER)", json!(3));
    ok("'42'::INTEGER + 1", json!(43));
    ok("i::STRING", json!("7"));
    ok("'{\"x\": [1]}'::JSONB->'x'->0", json!(1));
    ok("'[1, \"2\"]'::INTEGER[]", json!([1, 2]));
    ok("'yes'::BOOLEAN", json!(true));
    err("s::INTEGER", "\"Hello\" is not an INTEGER");
    err("o::INTEGER", "cannot cast an object to INTEGER");
    // Functions.
    ok("ABS(neg)", json!(3));
    ok("CEIL(f)", json!(3));
    ok("FLOOR(f)", json!(2));
    ok("ROUND(f)", json!(3));
    ok("SIGN(neg)", json!(-1));
    ok("SQRT(16)", json!(4.0));
    err("SQRT(-1)", "not a finite number");
    err("LOG(s)", "LOG needs a number, got a string");
    ok("IS_INT(i)", json!(true));
    ok("IS_INT(whole)", json!(true));
    ok("IS_FLOAT(f)", json!(true));
    ok("IS_NUM(s)", json!(false));
    ok("IS_STR(missing)", json!(false));
    ok("IS_MAP(o)", json!(true));
    ok("IS_ARRAY(arr)", json!(true));
    ok("IS_BOOL(b)", json!(true));
    ok("TO_STR(f)", json!("2.5"));
    ok("TO_STR(arr)", json!("[3,1,2,1]"));
    ok("TO_LOWER(s)", json!("hello"));
    ok("TRIM(text)", json!("pad"));
    ok("LEFT_TRIM(text)", json!("pad "));
    ok("RIGHT_TRIM(text)", json!(" pad"));
    ok("REVERSE(s)", json!("olleH"));
    ok("STRLEN('héllo')", json!(5));
    err("STRLEN(i)", "STRLEN needs a string, got an integer");
    ok("SPLIT('a,b,c', ',')", json!(["a", "b", "c"]));
    ok("CHUNKSOF(2, 'abcde')", json!(["ab", "cd", "e"]));
    ok("TAKE(2, s)", json!("He"));
    ok("TAKEEND(s, 2)", json!("lo"));
    ok("DROP(2, s)", json!("llo"));
    ok("DROPEND(2, s)", json!("Hel"));
    err("TAKE(-1, s)", "count of zero or more");
    ok("ARRAY_CONTAIN(arr, 2)", json!(true));
    ok("ARRAY_DISTINCT(arr)", json!([3, 1, 2]));
    ok("ARRAY_EXCEPT(arr, '[1]'::JSONB)", json!([3, 2]));
    ok("ARRAY_LENGTH(arr)", json!(4));
    ok("ARRAY_REMOVE(arr, 1)", json!([3, 2]));
    ok("ARRAY_JOIN(strs, '-')", json!("x-y"));
    ok("ARRAY_MAX(arr)", json!(3));
    ok("ARRAY_MIN(arr)", json!(1));
    ok("ARRAY_SORT(arr)", json!([1, 1, 2, 3]));
    err("ARRAY_SORT('[1, \"a\"]'::JSONB)", "got number and string");
    err("ARRAY_SORT('[[1], [\"a\"]]'::JSONB)", "got array");
    ok(
        "ARRAY_SORT('[3, null, 1.5, 9007199254740993, 9007199254740992.0, 2]'::JSONB)",
        json!([1.5, 2, 3, 9007199254740992.0, 9007199254740993i64, null]),
    );
    err("ARRAY_LENGTH(s)", "needs an array");
}

#[test]
fn select_filters_and_projects() {
    let q = select("id, temperature * 1.8 + 32 AS f, meta->>'site' AS site FROM demo WHERE humidity > 70");
    let hit = record(json!({"id": 1, "temperature": 20, "humidity": 80, "meta": {"site": "a"}}));
    assert_eq!(
        q.apply(&hit).unwrap(),
        Some(record(json!({"id": 1, "f": 68.0, "site": "a"})))
    );
    assert_eq!(q.apply(&record(json!({"id": 2, "humidity": 70}))).unwrap(), None);
    assert_eq!(
        q.apply(&record(json!({"id": 3}))).unwrap(),
        None,
        "a missing field filters, never fails"
    );
    let e = q.apply(&record(json!({"humidity": "wet"}))).unwrap_err();
    assert!(e.to_string().contains("(humidity > 70)"), "{e}");
    let star = select("*, 1 AS one FROM demo");
    assert_eq!(
        star.apply(&record(json!({"a": 1}))).unwrap(),
        Some(record(json!({"a": 1, "one": 1})))
    );
    assert!(select("* FROM demo").is_identity());
    assert_eq!(select("* FROM demo WHERE a > 1").columns(), None);
    assert_eq!(
        q.columns().map(|c| c.into_iter().collect::<Vec<_>>()),
        Some(vec![
            "humidity".to_owned(),
            "id".to_owned(),
            "meta".to_owned(),
            "temperature".to_owned()
        ])
    );
    let unnamed = select("humidity + 1 FROM demo");
    assert_eq!(unnamed.items[0].name().unwrap(), "(humidity + 1)");
    let e = select("a FROM s WHERE a").apply(&record(json!({"a": 1}))).unwrap_err();
    assert!(e.to_string().contains("WHERE needs a boolean"), "{e}");
}
