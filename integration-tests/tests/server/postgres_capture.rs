//! What the PostgreSQL CDC source captures and how it is shaped: schema changes, streamed
//! transactions and Debezium envelopes, only the configured tables (and the publication kept
//! in step), a streamed transaction over the memory budget, partitioned tables, and sinks
//! routing each source table to its own (the core source and sink: `postgres.rs`).

use std::time::Duration;

use hstream_integration_tests::pg::{DATABASE, Postgres};
use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::{Value, json};

use super::mysql::wait_records;
use super::mysql_capture::two_transactions;
use super::postgres::{
    FAST_RETRY, create, fold_debezium, orders_table, source_config, stream_rows, table_state, wait_streaming,
};

#[tokio::test]
async fn pg_schema_changes_streamed_transactions_and_debezium_envelopes() {
    // A small decoding memory makes PostgreSQL stream big transactions while in progress.
    let pg = Postgres::start_with(&["logical_decoding_work_mem = '64kB'"]);
    pg.psql(
        DATABASE,
        "CREATE TABLE t (id int PRIMARY KEY, a text); ALTER TABLE t OWNER TO cdc;",
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = source_config(
        &pg,
        "dbz",
        json!({"table": "t", "format": "debezium", "streaming": true, "snapshotMode": "never"}),
    );
    create(&mut c, "dbz", "SOURCE", &cfg).await.unwrap();
    wait_streaming(&pg).await;
    pg.psql(DATABASE, "INSERT INTO t VALUES (1, 'one')");
    pg.psql(DATABASE, "ALTER TABLE t ADD COLUMN b int DEFAULT 5");
    pg.psql(
        DATABASE,
        "INSERT INTO t VALUES (2, 'two', 7); UPDATE t SET a = 'uno' WHERE id = 1; DELETE FROM t WHERE id = 2",
    );
    // A big transaction rolled back (with a subtransaction) and a big one committed: both are
    // streamed while in progress; only the committed one may appear.
    let out = pg.psql_output(
        DATABASE,
        "BEGIN; INSERT INTO t SELECT g, 'rolled back', 0 FROM generate_series(1000, 6000) g; ROLLBACK;",
    );
    assert!(out.status.success());
    pg.psql(
        DATABASE,
        "BEGIN; INSERT INTO t SELECT g, 'big', 1 FROM generate_series(10000, 15000) g; \
         SAVEPOINT s; INSERT INTO t SELECT g, 'sub aborted', 2 FROM generate_series(20000, 21000) g; ROLLBACK TO s; \
         INSERT INTO t VALUES (30000, 'after savepoint', 3); COMMIT;",
    );
    pg.psql(DATABASE, "ALTER TABLE t DROP COLUMN a; INSERT INTO t VALUES (3, 9)");
    let expected = 4 + 5001 + 1 + 1;
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "every committed change", || {
        let mut c = probe.clone();
        async move { read_json_stream(&mut c, "dbz").await.len() >= expected }
    })
    .await;
    let records: Vec<Value> = read_json_stream(&mut c, "dbz")
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(records.len(), expected);
    let ops: Vec<&str> = records.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(&ops[..4], &["c", "c", "u", "d"]);
    assert_eq!(records[0]["after"], json!({"id": 1.0, "a": "one"}));
    assert_eq!(records[0]["before"], Value::Null);
    // The added column appears from the next change on.
    assert_eq!(records[1]["after"], json!({"id": 2.0, "a": "two", "b": 7.0}));
    assert_eq!(records[2]["after"]["a"], "uno");
    assert_eq!(records[3]["before"]["id"], 2.0);
    assert_eq!(records[3]["after"], Value::Null);
    let src = &records[0]["source"];
    assert_eq!(
        (src["table"].as_str(), src["schema"].as_str(), src["db"].as_str()),
        (Some("t"), Some("public"), Some(DATABASE))
    );
    assert!(
        src["lsn"].as_f64().unwrap() > 0.0 && src["txId"].as_f64().unwrap() > 0.0,
        "{src}"
    );
    let big: Vec<&Value> = records[4..].iter().map(|r| &r["after"]).collect();
    assert!(
        big.iter().all(|a| a["a"] != "rolled back" && a["a"] != "sub aborted"),
        "aborted rows leaked"
    );
    assert_eq!(big.iter().filter(|a| a["a"] == "big").count(), 5001);
    assert_eq!(big[5001]["a"], "after savepoint");
    // The dropped column is gone from the last change.
    assert_eq!(records[expected - 1]["after"], json!({"id": 3.0, "b": 9.0}));
    // The big transactions really were streamed while in progress.
    let streamed: u64 = pg
        .psql(
            "postgres",
            "SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots",
        )
        .parse()
        .unwrap();
    assert!(
        streamed >= 2,
        "expected streamed transactions, pg_stat_replication_slots says {streamed}"
    );
}

/// Waits until `n` CDC walsenders stream.
pub(super) async fn wait_streaming_n(pg: &Postgres, n: usize) {
    wait_until(
        Duration::from_secs(30),
        &format!("{n} sources to stream"),
        || async move {
            pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'hstream-cdc' AND state = 'streaming'",
        ) == n.to_string()
        },
    )
    .await;
}

/// Tables of a publication, `schema.table` sorted and comma separated.
fn publication_tables(pg: &Postgres, publication: &str) -> String {
    pg.psql(
        DATABASE,
        &format!(
            "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY schemaname, tablename) \
             FROM pg_publication_tables WHERE pubname = '{publication}'"
        ),
    )
}

/// A publication that also holds another table (one shared with someone else, or ours with a
/// table since removed from `tables`) must not bring that table's changes into the stream, in
/// either record format; our own publication follows `tables` both ways, a shared one is never
/// narrowed.
#[tokio::test]
async fn pg_captures_only_the_configured_tables() {
    let pg = Postgres::start();
    orders_table(&pg, "orders");
    pg.psql(
        DATABASE,
        "CREATE TABLE other (x int PRIMARY KEY, y text); ALTER TABLE other OWNER TO cdc; \
         CREATE PUBLICATION shared FOR TABLE orders, other;",
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    // A shared publication, HStream IO's record format.
    create(
        &mut c,
        "shared",
        "SOURCE",
        &source_config(
            &pg,
            "shared_cdc",
            json!({"table": "orders", "publicationName": "shared"}),
        ),
    )
    .await
    .unwrap();
    // Our own publication, first with both tables, then with one (the connector re-created).
    let both = source_config(
        &pg,
        "mine",
        json!({"tables": ["orders", "other"], "format": "debezium"}),
    );
    create(&mut c, "mine", "SOURCE", &both).await.unwrap();
    wait_streaming_n(&pg, 2).await;
    assert_eq!(publication_tables(&pg, "hstream_mine"), "public.orders,public.other");
    c.delete_connector(pb::DeleteConnectorRequest { name: "mine".into() })
        .await
        .unwrap();
    wait_streaming_n(&pg, 1).await;
    let one = source_config(&pg, "mine", json!({"tables": ["orders"], "format": "debezium"}));
    create(&mut c, "mine2", "SOURCE", &one).await.unwrap();
    wait_streaming_n(&pg, 2).await;
    assert_eq!(publication_tables(&pg, "hstream_mine"), "public.orders");
    assert_eq!(
        publication_tables(&pg, "shared"),
        "public.orders,public.other",
        "a publication someone else made is never narrowed"
    );
    // Our publication no longer has `other`; the test puts it back, as a user's ALTER would,
    // so that the stream filter alone is what keeps its changes out.
    pg.psql(DATABASE, "ALTER PUBLICATION hstream_mine ADD TABLE other");
    pg.psql(
        DATABASE,
        "INSERT INTO other SELECT g, 'o' FROM generate_series(1, 50) g; \
         UPDATE other SET y = 'p' WHERE x <= 10; DELETE FROM other WHERE x > 40; TRUNCATE other; \
         BEGIN; INSERT INTO other VALUES (100, 'mixed'); INSERT INTO orders (id, name) VALUES (1, 'mixed'); COMMIT; \
         INSERT INTO orders (id, name) VALUES (2, 'marker')",
    );
    // Both markers arrive after every change of `other` was decoded (WAL order).
    for stream in ["shared_cdc", "mine"] {
        let probe = c.clone();
        wait_until(Duration::from_secs(30), &format!("the marker in {stream}"), || {
            let mut probe = probe.clone();
            async move {
                read_json_stream(&mut probe, stream)
                    .await
                    .iter()
                    .any(|(_, r)| r["value"]["name"] == "marker" || r["after"]["name"] == "marker")
            }
        })
        .await;
    }
    let hstream = read_json_stream(&mut c, "shared_cdc").await;
    let names: Vec<&str> = hstream
        .iter()
        .filter_map(|(_, r)| r["value"]["name"].as_str())
        .collect();
    assert_eq!(names, ["mixed", "marker"], "only the orders rows: {hstream:?}");
    let debezium = read_json_stream(&mut c, "mine").await;
    let tables: Vec<&str> = debezium
        .iter()
        .map(|(_, r)| r["source"]["table"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(tables, ["orders", "orders"], "only the orders rows: {debezium:?}");
}

/// Waits until the Debezium envelopes of `stream` fold to `table`'s rows.
async fn wait_for_debezium_state(c: &Client, stream: &str, pg: &Postgres, table: &str) {
    let want = table_state(pg, table);
    let probe = c.clone();
    wait_until(
        Duration::from_secs(30),
        "the stream's final state to equal the table",
        || {
            let mut probe = probe.clone();
            let want = want.clone();
            async move { stream_rows(&fold_debezium(&read_json_stream(&mut probe, stream).await)) == want }
        },
    )
    .await;
}

/// A transaction streamed while in progress that is larger than the connector's memory budget
/// goes to disk until it commits: the server's peak memory grows by the append pipeline's
/// bound, not by the transaction, and every committed row arrives once, in order, none of a
/// rolled-back subtransaction.
#[tokio::test]
async fn pg_streamed_transaction_over_the_memory_budget_spills_to_disk() {
    const ROWS: usize = 100_000;
    let pg = Postgres::start_with(&["logical_decoding_work_mem = '64kB'"]);
    pg.psql(
        DATABASE,
        "CREATE TABLE big (id int PRIMARY KEY, pad text); ALTER TABLE big OWNER TO cdc;",
    );
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("server.log");
    let server = Server::start_logged(dir.path(), FAST_RETRY, &log, "info");
    let mut c = server.client().await;
    let cfg = source_config(
        &pg,
        "big",
        json!({"table": "big", "streaming": true, "streamingMemoryBytes": 1 << 20, "snapshotMode": "never"}),
    );
    create(&mut c, "big", "SOURCE", &cfg).await.unwrap();
    wait_streaming(&pg).await;
    let before = server.peak_rss_kib();
    // About 55 MB of records in one transaction, 1 MiB of budget.
    pg.psql(
        DATABASE,
        &format!(
            "BEGIN; INSERT INTO big SELECT g, repeat('p', 500) FROM generate_series(1, {ROWS}) g; \
             SAVEPOINT s; INSERT INTO big SELECT g, 'sub aborted' FROM generate_series(200001, 200500) g; \
             ROLLBACK TO s; INSERT INTO big VALUES (300000, 'last'); COMMIT; \
             INSERT INTO big VALUES (400000, 'marker');"
        ),
    );
    // Waited for by the connector's count, not by reading the stream (a read of it all would
    // cost the server memory of its own).
    let probe = c.clone();
    wait_until(Duration::from_secs(120), "every committed row", || {
        let probe = probe.clone();
        async move {
            connector_report(&probe, "big").await["deliveredRecords"]
                .as_f64()
                .unwrap_or(0.0)
                >= (ROWS + 2) as f64
        }
    })
    .await;
    let grew_mib = server.peak_rss_kib().saturating_sub(before) / 1024;
    let ids: Vec<u64> = read_json_stream(&mut c, "big")
        .await
        .iter()
        .map(|(_, r)| r["value"]["id"].as_f64().unwrap() as u64)
        .collect();
    let want: Vec<u64> = (1..=ROWS as u64).chain([300_000, 400_000]).collect();
    assert!(
        ids == want,
        "{} records, first differences {:?}",
        ids.len(),
        ids.iter().zip(&want).find(|(a, b)| a != b)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("spilled to a temporary file"),
        "the transaction was not spilled"
    );
    // Spilled, the peak grows by what the append pipeline holds (16 batches of 4,096 records:
    // about 80 MiB here); held in memory, this transaction made it grow by 244 MiB.
    assert!(
        grew_mib < 150,
        "peak memory grew by {grew_mib} MiB: the transaction was held in memory"
    );
}

/// A partitioned table is captured by its name: changes of its partitions (which pgoutput
/// sends under the partition's own name) reach the stream as the table's own (as the snapshot
/// reports its rows, so a sink routes both to one table), and the publication's membership
/// (one entry for the parent) is not taken as a change of tables at every start.
#[tokio::test]
async fn pg_partitioned_table_changes_reach_the_stream() {
    let pg = Postgres::start();
    pg.psql(
        DATABASE,
        "CREATE TABLE parts (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2)) PARTITION BY RANGE (id); \
         CREATE TABLE parts_low PARTITION OF parts FOR VALUES FROM (0) TO (1000); \
         CREATE TABLE parts_high PARTITION OF parts FOR VALUES FROM (1000) TO (MAXVALUE); \
         ALTER TABLE parts OWNER TO cdc; ALTER TABLE parts_low OWNER TO cdc; ALTER TABLE parts_high OWNER TO cdc; \
         INSERT INTO parts VALUES (1, 'snap', 1), (2000, 'snap', 2);",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    create(
        &mut c,
        "parts",
        "SOURCE",
        &source_config(&pg, "parts_cdc", json!({"table": "parts", "format": "debezium"})),
    )
    .await
    .unwrap();
    wait_streaming(&pg).await;
    pg.psql(
        DATABASE,
        "INSERT INTO parts VALUES (5, 'low', 5), (5000, 'high', 6); UPDATE parts SET name = 'moved' WHERE id = 1; \
         DELETE FROM parts WHERE id = 2000;",
    );
    wait_for_debezium_state(&c, "parts_cdc", &pg, "parts").await;
    // A restart finds the publication as it left it.
    server.terminate();
    server.restart();
    let c = server.client().await;
    wait_streaming(&pg).await;
    pg.psql(DATABASE, "INSERT INTO parts VALUES (6, 'after restart', 7)");
    wait_for_debezium_state(&c, "parts_cdc", &pg, "parts").await;
    let records = read_json_stream(&mut c.clone(), "parts_cdc").await;
    let tables: std::collections::BTreeSet<&str> = records
        .iter()
        .filter_map(|(_, r)| r["source"]["table"].as_str())
        .collect();
    assert_eq!(
        tables.into_iter().collect::<Vec<_>>(),
        ["parts"],
        "partitions' changes are the table's"
    );
    assert_eq!(
        pg.psql(
            DATABASE,
            "SELECT string_agg(c.relname, ',') FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid \
             JOIN pg_publication p ON p.oid = r.prpubid WHERE p.pubname = 'hstream_parts_cdc'"
        ),
        "parts"
    );
}

/// Changes of several tables in one stream, in either record format, go to a table each
/// (`tableNameFormat`), truncates included, to the right table only; a sink with one fixed
/// `table` refuses a stream of two tables instead of mixing their rows.
#[tokio::test]
async fn pg_sinks_route_each_source_table_to_its_own_table() {
    let pg = Postgres::start();
    for t in ["a", "b", "a_copy", "b_copy", "a_dbz", "b_dbz", "mixed"] {
        orders_table(&pg, t);
    }
    pg.psql(
        DATABASE,
        "INSERT INTO a (id, name, amount) SELECT g, 'a', g FROM generate_series(1, 100) g; \
         INSERT INTO b (id, name, amount) SELECT g, 'b', g FROM generate_series(1, 100) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    for (name, format) in [("multi", "hstream"), ("multi_dbz", "debezium")] {
        let cfg = source_config(&pg, name, json!({"tables": ["a", "b"], "format": format}));
        create(&mut c, name, "SOURCE", &cfg).await.unwrap();
    }
    wait_streaming_n(&pg, 2).await;
    let sink = |stream: &str, extra: Value| {
        let mut s = pg.connector_config();
        s["stream"] = json!(stream);
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    };
    create(
        &mut c,
        "copy",
        "SINK",
        &sink("multi", json!({"tableNameFormat": "${table}_copy"})),
    )
    .await
    .unwrap();
    create(
        &mut c,
        "dbz",
        "SINK",
        &sink("multi_dbz", json!({"tableNameFormat": "${schema}.${table}_dbz"})),
    )
    .await
    .unwrap();
    create(&mut c, "mixed", "SINK", &sink("multi", json!({"table": "mixed"})))
        .await
        .unwrap();
    pg.psql(
        DATABASE,
        "UPDATE a SET name = 'a2' WHERE id <= 10; DELETE FROM b WHERE id > 90; TRUNCATE a; \
         INSERT INTO a (id, name, amount) VALUES (500, 'after truncate', 1); INSERT INTO b (id, name) VALUES (600, 'b new');",
    );
    let dump = |t: &str| pg.psql(DATABASE, &format!("SELECT id, name, amount FROM {t} ORDER BY id"));
    for (src, dst) in [("a", "a_copy"), ("b", "b_copy"), ("a", "a_dbz"), ("b", "b_dbz")] {
        wait_until(Duration::from_secs(60), &format!("{dst} to equal {src}"), || async {
            dump(src) == dump(dst)
        })
        .await;
    }
    assert_eq!(pg.psql(DATABASE, "SELECT count(*) FROM a"), "1", "a was truncated");
    assert_eq!(
        pg.psql(DATABASE, "SELECT count(*) FROM b_copy"),
        "91",
        "b's copy was not truncated"
    );
    // One fixed table for a stream of two tables: a clear failure, not mixed rows.
    wait_connector_status(&c, "mixed", "FAILED").await;
    let report = connector_report(&c, "mixed").await;
    let error = report["lastError"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("tableNameFormat") && error.contains(".a") && error.contains(".b"),
        "{error}"
    );
}

/// The hex SHA-256 of `salt` followed by `value` (what a hashed column shows).
pub(super) fn salted_sha256(salt: &str, value: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{salt}{value}").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Tables chosen by pattern (include less exclude, tables of other schemas left alone), and
/// per column: left out, masked, hashed; in the snapshot and in streaming alike, each change
/// once. Rules on key columns and patterns that match nothing are refused by name.
#[tokio::test]
async fn pg_table_patterns_and_column_rules() {
    let pg = Postgres::start();
    pg.psql(
        DATABASE,
        "CREATE SCHEMA shop AUTHORIZATION cdc; \
         CREATE TABLE shop.orders_2024 (id int PRIMARY KEY, v text); \
         CREATE TABLE shop.orders_2025 (id int PRIMARY KEY, v text); \
         CREATE TABLE shop.orders_archive (id int PRIMARY KEY, v text); \
         CREATE TABLE shop.customers (id int PRIMARY KEY, name text, email text, card text, password text); \
         CREATE TABLE public.orders_2024 (id int PRIMARY KEY, v text); \
         ALTER TABLE shop.orders_2024 OWNER TO cdc; ALTER TABLE shop.orders_2025 OWNER TO cdc; \
         ALTER TABLE shop.orders_archive OWNER TO cdc; ALTER TABLE shop.customers OWNER TO cdc; \
         ALTER TABLE public.orders_2024 OWNER TO cdc;",
    );
    let load = |from: i32| {
        pg.psql(
            DATABASE,
            &format!(
                "INSERT INTO shop.orders_2024 SELECT g, 'a' || g FROM generate_series({from}, {from} + 9) g; \
                 INSERT INTO shop.orders_2025 SELECT g, 'b' || g FROM generate_series({from}, {from} + 9) g; \
                 INSERT INTO shop.orders_archive SELECT g, 'x' || g FROM generate_series({from}, {from} + 9) g; \
                 INSERT INTO public.orders_2024 SELECT g, 'p' || g FROM generate_series({from}, {from} + 9) g; \
                 INSERT INTO shop.customers SELECT g, 'n' || g, 'user' || g || '@example.com', \
                   CASE WHEN g % 2 = 0 THEN '4111-' || g END, 'pw' || g FROM generate_series({from}, {from} + 9) g;"
            ),
        )
    };
    load(1);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let rules = json!({
        "format": "debezium",
        "tableIncludeList": ["shop\\.orders_.*", "SHOP\\.customers"],
        "tableExcludeList": [".*_archive"],
        "columnExcludeList": ["shop\\.customers\\.password"],
        "columnMaskList": ["shop\\.customers\\.card"],
        "columnMaskChars": 4,
        "columnHashList": ["shop\\.customers\\.email"],
        "columnHashSalt": "pepper-9",
    });
    // Refusals first.
    for (extra, mention) in [
        (
            json!({"columnExcludeList": ["shop\\.customers\\.id"]}),
            "columnExcludeList: shop.customers.id is a key column",
        ),
        (
            json!({"tableIncludeList": ["nothing\\..*"]}),
            "tableIncludeList: no table",
        ),
        (
            json!({"tableIncludeList": ["shop\\.(orders"]}),
            "tableIncludeList: \"shop\\\\.(orders\"",
        ),
        (json!({"columnHashSalt": null}), "columnHashSalt"),
    ] {
        let mut cfg = source_config(&pg, "sel", rules.clone());
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                cfg.as_object_mut().unwrap().remove(k);
            } else {
                cfg[k] = v.clone();
            }
        }
        let e = create(&mut c, "bad", "SOURCE", &cfg).await.unwrap_err();
        let msg = error_message(&e);
        assert!(msg.contains(mention), "{mention:?} not in {msg}");
    }
    create(&mut c, "sel", "SOURCE", &source_config(&pg, "sel", rules))
        .await
        .unwrap();
    wait_streaming(&pg).await;
    load(11);
    pg.psql(
        DATABASE,
        "UPDATE shop.customers SET email = 'new@example.com', card = NULL WHERE id = 2",
    );
    // 20 rows in each of three tables, and the update.
    let expected = 3 * 20 + 1;
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "every change of the chosen tables", || {
        let mut c = probe.clone();
        async move { read_json_stream(&mut c, "sel").await.len() >= expected }
    })
    .await;
    let records: Vec<Value> = read_json_stream(&mut c, "sel")
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(records.len(), expected, "each change once, nothing else");
    let mut per_table = std::collections::BTreeMap::<String, usize>::new();
    for r in &records {
        let t = format!(
            "{}.{}",
            r["source"]["schema"].as_str().unwrap(),
            r["source"]["table"].as_str().unwrap()
        );
        *per_table.entry(t).or_default() += 1;
    }
    assert_eq!(
        per_table,
        [
            ("shop.customers".to_owned(), 21),
            ("shop.orders_2024".to_owned(), 20),
            ("shop.orders_2025".to_owned(), 20)
        ]
        .into_iter()
        .collect()
    );
    for r in records.iter().filter(|r| r["source"]["table"] == "customers") {
        let after = r["after"].as_object().unwrap();
        let id = after["id"].as_f64().unwrap() as i64;
        assert!(!after.contains_key("password"), "{r}");
        assert_eq!(after["name"], format!("n{id}"));
        let email = if r["op"] == "u" {
            "new@example.com".to_owned()
        } else {
            format!("user{id}@example.com")
        };
        assert_eq!(after["email"], salted_sha256("pepper-9", &email), "{r}");
        let card = if id % 2 == 0 && r["op"] != "u" {
            json!("****")
        } else {
            Value::Null
        };
        assert_eq!(after["card"], card, "{r}");
    }
}

/// Heartbeat records (Debezium's heartbeat topic): while the captured table is idle and other
/// tables change, heartbeats keep coming to their own stream, each with a position that moves
/// on; the change stream holds only changes. A heartbeat stream named like the change stream,
/// or not a stream name, is refused naming the option.
#[tokio::test]
async fn pg_heartbeat_records_show_the_position_while_tables_are_idle() {
    let pg = Postgres::start();
    orders_table(&pg, "orders");
    pg.psql(DATABASE, "CREATE TABLE other (id serial PRIMARY KEY, v text)");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    for (hb, why) in [("orders_cdc", "must differ from stream"), ("9hb", "a stream name")] {
        let cfg = source_config(&pg, "orders_cdc", json!({"table": "orders", "heartbeatStream": hb}));
        let e = create(&mut c, "bad", "SOURCE", &cfg).await.unwrap_err();
        assert!(
            e.message().contains("heartbeatStream") && e.message().contains(why),
            "{}",
            e.message()
        );
    }
    let cfg = source_config(
        &pg,
        "orders_cdc",
        json!({"table": "orders", "heartbeatStream": "orders_hb", "heartbeatIntervalMs": 200}),
    );
    create(&mut c, "hb", "SOURCE", &cfg).await.unwrap();
    wait_streaming(&pg).await;
    let lsn = |r: &Value| r["source"]["lsn"].as_f64().unwrap_or(0.0);
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "three heartbeats", || {
        let mut probe = probe.clone();
        async move { read_json_stream(&mut probe, "orders_hb").await.len() >= 3 }
    })
    .await;
    let first = read_json_stream(&mut c, "orders_hb").await;
    for (key, r) in &first {
        assert_eq!(key, "orders_cdc");
        assert_eq!(r["serverName"], "orders_cdc", "{r}");
        assert!(r["ts_ms"].as_f64().is_some_and(|t| t > 1.6e12), "{r}");
        assert!(lsn(r) > 0.0, "{r}");
    }
    let start = lsn(&first[first.len() - 1].1);
    // Only another table changes: the captured one stays idle, the position moves on.
    pg.psql(
        DATABASE,
        "INSERT INTO other (v) SELECT 'x' FROM generate_series(1, 1000)",
    );
    let probe = c.clone();
    wait_until(
        Duration::from_secs(30),
        "a heartbeat past the other table's changes",
        || {
            let mut probe = probe.clone();
            async move {
                read_json_stream(&mut probe, "orders_hb")
                    .await
                    .iter()
                    .any(|(_, r)| lsn(r) > start)
            }
        },
    )
    .await;
    let beats = read_json_stream(&mut c, "orders_hb").await;
    assert!(
        beats
            .windows(2)
            .all(|w| lsn(&w[0].1) <= lsn(&w[1].1) && w[0].1["ts_ms"].as_f64() <= w[1].1["ts_ms"].as_f64()),
        "heartbeats in order"
    );
    pg.psql(DATABASE, "INSERT INTO orders (id, name, amount) VALUES (1, 'a', 1)");
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the change", || {
        let mut probe = probe.clone();
        async move { !read_json_stream(&mut probe, "orders_cdc").await.is_empty() }
    })
    .await;
    let changes = read_json_stream(&mut c, "orders_cdc").await;
    assert_eq!(changes.len(), 1, "only the change in the change stream: {changes:?}");
}

/// Debezium's transaction metadata: each transaction that changed captured tables gets a BEGIN
/// and an END record in the transaction stream (the END counting its changes per table), and
/// each change record's envelope says its transaction and its place in it. A transaction of an
/// uncaptured table gets none. Refused together with streaming=true, naming the option.
#[tokio::test]
async fn pg_transaction_metadata_counts_each_transactions_changes() {
    let pg = Postgres::start();
    orders_table(&pg, "a");
    orders_table(&pg, "b");
    pg.psql(DATABASE, "CREATE TABLE other (id int PRIMARY KEY)");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let with = |extra: Value| {
        let mut v = json!({"tables": ["a", "b"], "format": "debezium", "provideTransactionMetadata": true});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        source_config(&pg, "tx_cdc", v)
    };
    let e = create(&mut c, "bad", "SOURCE", &with(json!({"streaming": true})))
        .await
        .unwrap_err();
    assert!(e.message().contains("provideTransactionMetadata"), "{}", e.message());
    create(&mut c, "tx", "SOURCE", &with(json!({}))).await.unwrap();
    wait_streaming(&pg).await;
    pg.psql(
        DATABASE,
        "BEGIN; INSERT INTO a (id, name, amount) VALUES (1, 'x', 1), (2, 'y', 2); \
         INSERT INTO b (id, name, amount) VALUES (1, 'z', 3); UPDATE a SET name = 'u' WHERE id = 1; COMMIT; \
         INSERT INTO other VALUES (1); \
         INSERT INTO b (id, name, amount) VALUES (2, 'w', 4);",
    );
    let changes = wait_records(&c, "tx_cdc", 5).await;
    let txs = wait_records(&c, "tx_cdc_transaction", 4).await;
    let (id1, id2) = two_transactions(&changes, &txs);
    assert!(id1.contains(':') && id1 != id2, "{id1} {id2}");
    assert_eq!(
        txs[1].1["data_collections"],
        json!([{"data_collection": "public.a", "event_count": 3.0}, {"data_collection": "public.b", "event_count": 1.0}])
    );
    assert_eq!(
        txs[3].1["data_collections"],
        json!([{"data_collection": "public.b", "event_count": 1.0}])
    );
}
