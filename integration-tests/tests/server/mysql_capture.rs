//! What the MySQL/MariaDB CDC source captures and how it is shaped beyond the core source and
//! sink (`mysql.rs`): sinks routing each source table to its own, table patterns and column
//! rules, heartbeat records and transaction metadata.

use std::collections::BTreeMap;
use std::time::Duration;

use hstream_integration_tests::mariadb::{DATABASE, MariaDb};
use hstream_integration_tests::*;
use serde_json::{Value, json};

use super::mysql::{FAST_RETRY, create, orders_table, records, source_config, wait_records, wait_streaming};

/// Checks the transaction metadata of two transactions: changes 0..4 (tables A, A, B, A) in the
/// first, change 4 in the second; each envelope's orders, and BEGIN/END of each in turn.
/// Returns the two ids.
pub(super) fn two_transactions(changes: &[(String, Value)], txs: &[(String, Value)]) -> (String, String) {
    assert_eq!((changes.len(), txs.len()), (5, 4), "{txs:?}");
    let block = |i: usize| changes[i].1["transaction"].clone();
    let id = |i: usize| block(i)["id"].as_str().unwrap().to_owned();
    let (id1, id2) = (id(0), id(4));
    assert!((0..4).all(|i| id(i) == id1), "one id for the first transaction");
    let orders: Vec<(f64, f64)> = (0..5)
        .map(|i| {
            (
                block(i)["total_order"].as_f64().unwrap(),
                block(i)["data_collection_order"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(orders, [(1.0, 1.0), (2.0, 2.0), (3.0, 1.0), (4.0, 3.0), (1.0, 1.0)]);
    let status: Vec<(&str, &str)> = txs
        .iter()
        .map(|(_, r)| (r["status"].as_str().unwrap(), r["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        status,
        [
            ("BEGIN", id1.as_str()),
            ("END", id1.as_str()),
            ("BEGIN", id2.as_str()),
            ("END", id2.as_str())
        ]
    );
    assert_eq!(txs[0].1["event_count"], Value::Null);
    assert_eq!(txs[1].1["event_count"], 4.0);
    (id1, id2)
}

/// Changes of two tables in one stream go to a table each (`tableNameFormat`), a truncate only
/// to its own table's copy.
#[tokio::test]
async fn mysql_sink_routes_each_source_table_to_its_own_table() {
    let db = MariaDb::start();
    for t in ["a", "b", "a_copy", "b_copy"] {
        orders_table(&db, t);
    }
    db.sql(&format!(
        "INSERT INTO {DATABASE}.a (id, name, amount) SELECT seq, 'a', seq FROM {DATABASE}.seq_1_to_100; \
         INSERT INTO {DATABASE}.b (id, name, amount) SELECT seq, 'b', seq FROM {DATABASE}.seq_1_to_100;"
    ));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    create(
        &mut c,
        "multi",
        "SOURCE",
        &source_config(&db, "multi", json!({"tables": ["a", "b"]})),
    )
    .await
    .unwrap();
    wait_streaming(&db, 1).await;
    let mut sink = db.connector_config();
    sink["stream"] = json!("multi");
    sink["tableNameFormat"] = json!("${table}_copy");
    create(&mut c, "copy", "SINK", &sink).await.unwrap();
    db.sql(&format!(
        "UPDATE {DATABASE}.a SET name = 'a2' WHERE id <= 10; DELETE FROM {DATABASE}.b WHERE id > 90; \
         TRUNCATE TABLE {DATABASE}.a; INSERT INTO {DATABASE}.a (id, name, amount) VALUES (500, 'after', 1); \
         INSERT INTO {DATABASE}.b (id, name) VALUES (600, 'b new');"
    ));
    let dump = |t: &str| db.sql(&format!("SELECT id, name, amount FROM {DATABASE}.{t} ORDER BY id"));
    for (src, dst) in [("a", "a_copy"), ("b", "b_copy")] {
        wait_until(Duration::from_secs(60), &format!("{dst} to equal {src}"), || async {
            dump(src) == dump(dst)
        })
        .await;
    }
    assert_eq!(db.sql(&format!("SELECT count(*) FROM {DATABASE}.b_copy")), "91");
}

/// Tables chosen by pattern less the excluded ones, and per column: left out, masked, hashed;
/// in the snapshot and in the binlog alike, each change once. A rule on a key column is
/// refused by name.
#[tokio::test]
async fn mysql_table_patterns_and_column_rules() {
    let db = MariaDb::start();
    db.sql(&format!(
        "CREATE TABLE {DATABASE}.orders_2024 (id int PRIMARY KEY, v text); \
         CREATE TABLE {DATABASE}.orders_2025 (id int PRIMARY KEY, v text); \
         CREATE TABLE {DATABASE}.orders_archive (id int PRIMARY KEY, v text); \
         CREATE TABLE {DATABASE}.customers (id int PRIMARY KEY, name text, email text, card text, password text);"
    ));
    let load = |from: u32| {
        db.sql(&format!(
            "INSERT INTO {DATABASE}.orders_2024 SELECT seq, CONCAT('a', seq) FROM {DATABASE}.seq_{from}_to_{to}; \
             INSERT INTO {DATABASE}.orders_2025 SELECT seq, CONCAT('b', seq) FROM {DATABASE}.seq_{from}_to_{to}; \
             INSERT INTO {DATABASE}.orders_archive SELECT seq, CONCAT('x', seq) FROM {DATABASE}.seq_{from}_to_{to}; \
             INSERT INTO {DATABASE}.customers SELECT seq, CONCAT('n', seq), CONCAT('user', seq, '@example.com'), \
               IF(seq % 2 = 0, CONCAT('4111-', seq), NULL), CONCAT('pw', seq) FROM {DATABASE}.seq_{from}_to_{to};",
            to = from + 9
        ));
    };
    load(1);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let rules = json!({
        "format": "debezium",
        "tableIncludeList": [format!("{DATABASE}\\.orders_.*"), format!("{DATABASE}\\.CUSTOMERS")],
        "tableExcludeList": [".*_archive"],
        "columnExcludeList": [".*\\.customers\\.password"],
        "columnMaskList": [".*\\.customers\\.card"],
        "columnHashList": [".*\\.customers\\.email"],
        "columnHashSalt": "pepper-9",
    });
    let mut bad = source_config(&db, "sel", rules.clone());
    bad["columnMaskList"] = json!([".*\\.customers\\.id"]);
    let e = create(&mut c, "bad", "SOURCE", &bad).await.unwrap_err();
    assert!(
        error_message(&e).contains("columnMaskList: app.customers.id is a key column"),
        "{}",
        error_message(&e)
    );
    create(&mut c, "sel", "SOURCE", &source_config(&db, "sel", rules))
        .await
        .unwrap();
    wait_streaming(&db, 1).await;
    load(11);
    db.sql(&format!(
        "UPDATE {DATABASE}.customers SET email = 'new@example.com', card = NULL WHERE id = 2"
    ));
    let expected = 3 * 20 + 1;
    let records: Vec<Value> = wait_records(&c, "sel", expected)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(records.len(), expected, "each change once, nothing else");
    let mut per_table = BTreeMap::<String, usize>::new();
    for r in &records {
        *per_table
            .entry(r["source"]["table"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        per_table,
        [
            ("customers".to_owned(), 21),
            ("orders_2024".to_owned(), 20),
            ("orders_2025".to_owned(), 20)
        ]
        .into_iter()
        .collect()
    );
    for r in records.iter().filter(|r| r["source"]["table"] == "customers") {
        for image in [&r["before"], &r["after"]].into_iter().filter(|i| !i.is_null()) {
            let row = image.as_object().unwrap();
            let id = row["id"].as_f64().unwrap() as i64;
            assert!(!row.contains_key("password"), "{r}");
            assert_eq!(row["name"], format!("n{id}"));
            let updated = r["op"] == "u" && std::ptr::eq(image, &r["after"]);
            let email = if updated {
                "new@example.com".to_owned()
            } else {
                format!("user{id}@example.com")
            };
            assert_eq!(
                row["email"],
                super::postgres_capture::salted_sha256("pepper-9", &email),
                "{r}"
            );
            let card = if id % 2 == 0 && !updated {
                json!("********")
            } else {
                Value::Null
            };
            assert_eq!(row["card"], card, "{r}");
        }
    }
}

/// Heartbeat records on MariaDB: while the captured table is idle and another table changes,
/// heartbeats keep coming to their own stream with a binlog position that moves on; the change
/// stream holds only changes.
#[tokio::test]
async fn mysql_heartbeat_records_show_the_position_while_tables_are_idle() {
    let db = MariaDb::start();
    orders_table(&db, "hbo");
    db.sql(&format!(
        "CREATE TABLE {DATABASE}.other (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT)"
    ));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = source_config(
        &db,
        "hbo_cdc",
        json!({"table": "hbo", "heartbeatStream": "hbo_hb", "heartbeatIntervalMs": 200}),
    );
    create(&mut c, "hb", "SOURCE", &cfg).await.unwrap();
    wait_streaming(&db, 1).await;
    let pos = |r: &Value| {
        (
            r["source"]["file"].as_str().unwrap_or("").to_owned(),
            r["source"]["pos"].as_f64().unwrap_or(0.0),
        )
    };
    let first = wait_records(&c, "hbo_hb", 3).await;
    for (key, r) in &first {
        assert_eq!(key, "hbo_cdc");
        assert_eq!(r["serverName"], "hbo_cdc", "{r}");
        assert!(r["source"]["gtid"].is_string() && pos(r).1 > 0.0, "{r}");
    }
    let start = pos(&first[first.len() - 1].1);
    db.sql(&format!("INSERT INTO {DATABASE}.other (v) VALUES ('x'), ('y')"));
    let probe = c.clone();
    wait_until(
        Duration::from_secs(30),
        "a heartbeat past the other table's change",
        || {
            let probe = probe.clone();
            let start = start.clone();
            async move { records(&probe, "hbo_hb").await.iter().any(|(_, r)| pos(r) > start) }
        },
    )
    .await;
    db.sql(&format!(
        "INSERT INTO {DATABASE}.hbo (id, name, amount) VALUES (1, 'a', 1)"
    ));
    let changes = wait_records(&c, "hbo_cdc", 1).await;
    assert_eq!(changes.len(), 1, "only the change in the change stream: {changes:?}");
}

/// Transaction metadata on MariaDB: BEGIN/END records per transaction that changed captured
/// tables, ids by GTID, and each change's place in its transaction in Debezium's envelope.
#[tokio::test]
async fn mysql_transaction_metadata_counts_each_transactions_changes() {
    let db = MariaDb::start();
    orders_table(&db, "ta");
    orders_table(&db, "tb");
    db.sql(&format!("CREATE TABLE {DATABASE}.other (id INT PRIMARY KEY)"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = source_config(
        &db,
        "mtx",
        json!({"tables": ["ta", "tb"], "format": "debezium", "provideTransactionMetadata": true,
               "transactionStream": "mtx_tx"}),
    );
    create(&mut c, "mtx", "SOURCE", &cfg).await.unwrap();
    wait_streaming(&db, 1).await;
    db.sql(&format!(
        "BEGIN; INSERT INTO {DATABASE}.ta (id, name, amount) VALUES (1, 'x', 1), (2, 'y', 2); \
         INSERT INTO {DATABASE}.tb (id, name, amount) VALUES (1, 'z', 3); \
         UPDATE {DATABASE}.ta SET name = 'u' WHERE id = 1; COMMIT; \
         INSERT INTO {DATABASE}.other VALUES (1); \
         INSERT INTO {DATABASE}.tb (id, name, amount) VALUES (2, 'w', 4);"
    ));
    let changes = wait_records(&c, "mtx", 5).await;
    let txs = wait_records(&c, "mtx_tx", 4).await;
    let (id1, id2) = two_transactions(&changes, &txs);
    // MariaDB GTIDs: domain-server-sequence.
    assert!(id1.split('-').count() == 3 && id1 != id2, "{id1} {id2}");
    assert_eq!(
        txs[1].1["data_collections"],
        json!([{"data_collection": format!("{DATABASE}.ta"), "event_count": 3.0},
               {"data_collection": format!("{DATABASE}.tb"), "event_count": 1.0}])
    );
}
