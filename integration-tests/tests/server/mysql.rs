//! The MySQL/MariaDB CDC source and the MySQL sink against a throw-away MariaDB (ROW binlog,
//! GTIDs): snapshot + streaming equal to the table, the type matrix (snapshot and binlog decode
//! alike), DDL mid-stream, SIGKILL mid-load, a MariaDB restart, the round trip through the sink,
//! and `check` errors.

use std::collections::BTreeMap;
use std::time::Duration;

use hstream_integration_tests::mariadb::{CDC_PASSWORD, DATABASE, MariaDb};
use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::{Value, json};
use tonic::Code;

pub(super) const FAST_RETRY: &[&str] = &["--connector-retry-base-ms", "50", "--connector-retry-max-ms", "500"];

#[test]
fn mariadb_harness_has_a_row_binlog_with_gtids_on_its_own_port() {
    let mut db = MariaDb::start();
    assert_ne!(db.port, 3306, "the machine's own server is left alone");
    assert_eq!(
        db.sql("SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata"),
        "1\tROW\tFULL\tFULL"
    );
    db.sql("CREATE TABLE app.t (id int PRIMARY KEY); INSERT INTO app.t VALUES (1), (2)");
    let gtid = db.sql("SELECT @@gtid_binlog_pos");
    assert!(gtid.starts_with("0-1-"), "GTIDs of domain 0, server 1: {gtid:?}");
    // The CDC account: over TCP with its password, allowed to read the binlog.
    let out = db.cdc_sql("SHOW GRANTS");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let grants = String::from_utf8_lossy(&out.stdout);
    assert!(
        grants.contains("REPLICATION SLAVE") && grants.contains("BINLOG MONITOR"),
        "{grants}"
    );
    // A clean restart keeps the rows and the binlog position.
    db.restart();
    assert_eq!(db.sql("SELECT count(*) FROM app.t"), "2");
    assert_eq!(db.sql("SELECT @@gtid_binlog_pos"), gtid);
}

pub(super) fn source_config(db: &MariaDb, stream: &str, extra: Value) -> Value {
    config_with(db.connector_config(), stream, extra)
}

pub(super) async fn create(
    c: &mut Client,
    name: &str,
    kind: &str,
    config: &Value,
) -> Result<pb::Connector, tonic::Status> {
    create_connector(c, name, kind, "mysql", config).await
}

/// `id name amount` rows of a table, as `{"id": n}` key JSON → (name, amount).
pub(super) fn table_state(db: &MariaDb, table: &str) -> BTreeMap<String, (String, String)> {
    db.sql(&format!("SELECT id, name, amount FROM {DATABASE}.{table} ORDER BY id"))
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                json!({"id": f[0].parse::<f64>().unwrap()}).to_string(),
                (f[1].to_owned(), f[2].to_owned()),
            )
        })
        .collect()
}

pub(super) fn stream_rows(state: &BTreeMap<String, Value>) -> BTreeMap<String, (String, String)> {
    state
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (
                    v["name"].as_str().unwrap_or("").to_owned(),
                    v["amount"].as_str().unwrap_or("NULL").to_owned(),
                ),
            )
        })
        .collect()
}

async fn wait_for_state(c: &Client, stream: &str, db: &MariaDb, table: &str, within: Duration) {
    let want = table_state(db, table);
    let probe = c.clone();
    let ok = holds_within(within, || {
        let mut c = probe.clone();
        let want = want.clone();
        let stream = stream.to_owned();
        async move { stream_rows(&fold_changes(&read_json_stream(&mut c, &stream).await)) == want }
    })
    .await;
    if !ok {
        let got = stream_rows(&fold_changes(&read_json_stream(&mut c.clone(), stream).await));
        let diff: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .take(3)
            .map(|(k, v)| (k.clone(), v.clone(), got.get(k).cloned()))
            .collect();
        panic!(
            "the stream's final state ({} keys) differs from the table ({} rows), e.g. {diff:?}",
            got.len(),
            want.len()
        );
    }
}

/// Waits until `n` binlog readers are connected, so changes made from now on reach them.
pub(super) async fn wait_streaming(db: &MariaDb, n: usize) {
    wait_until(
        Duration::from_secs(30),
        "the source to read the binlog",
        || async move {
            db.sql("SELECT count(*) FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")
                == n.to_string()
        },
    )
    .await;
}

pub(super) fn orders_table(db: &MariaDb, table: &str) {
    db.sql(&format!(
        "CREATE TABLE {DATABASE}.{table} (id BIGINT PRIMARY KEY, name VARCHAR(64) NOT NULL, amount DECIMAL(12,2), \
         payload TEXT, updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
    ));
}

pub(super) async fn records(c: &Client, stream: &str) -> Vec<(String, Value)> {
    read_json_stream(&mut c.clone(), stream).await
}

pub(super) async fn wait_records(c: &Client, stream: &str, n: usize) -> Vec<(String, Value)> {
    let probe = c.clone();
    wait_until(Duration::from_secs(60), &format!("{n} records in {stream}"), || {
        let probe = probe.clone();
        async move { records(&probe, stream).await.len() >= n }
    })
    .await;
    records(c, stream).await
}

#[tokio::test]
async fn mysql_snapshot_and_streaming_end_as_the_table() {
    let db = MariaDb::start();
    orders_table(&db, "orders");
    db.sql(&format!(
        "INSERT INTO {DATABASE}.orders (id, name, amount) SELECT seq, CONCAT('n', seq), seq * 1.5 FROM {DATABASE}.seq_1_to_20000"
    ));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    // Changes run while the connector takes its snapshot and starts streaming.
    let mut load = db
        .sql_command(&format!(
            "BEGIN NOT ATOMIC FOR i IN 1..300 DO \
               INSERT INTO {DATABASE}.orders (id, name, amount) VALUES (100000 + i, 'during', i); \
               UPDATE {DATABASE}.orders SET name = CONCAT('upd', i), amount = amount + 1 WHERE id = i * 7; \
               DELETE FROM {DATABASE}.orders WHERE id = i * 11; \
             END FOR; END"
        ))
        .spawn()
        .unwrap();
    create(
        &mut c,
        "mysrc",
        "SOURCE",
        &source_config(&db, "orders_cdc", json!({"table": "orders"})),
    )
    .await
    .unwrap();
    assert!(load.wait().unwrap().success());
    // And after: an update that changes the key, and a delete of a snapshot row.
    db.sql(&format!(
        "UPDATE {DATABASE}.orders SET id = 500000 WHERE id = 2; DELETE FROM {DATABASE}.orders WHERE id = 3; \
         INSERT INTO {DATABASE}.orders (id, name, amount) VALUES (600000, 'after', 99.99)"
    ));
    wait_for_state(&c, "orders_cdc", &db, "orders", Duration::from_secs(120)).await;
    let recs = records(&c, "orders_cdc").await;
    // The HStream IO shape, the partition key being the primary key.
    let (key, first) = &recs[0];
    assert_eq!(first["key"]["id"].as_f64().map(|f| f.to_string()), Some(key.clone()));
    assert!(first["value"]["updated_at"].as_str().unwrap().contains('T'), "{first}");

    // A snapshot-only connector completes, and the CLI shows what it did.
    create(
        &mut c,
        "snap",
        "SOURCE",
        &source_config(
            &db,
            "orders_snap",
            json!({"table": "orders", "snapshotMode": "initial_only"}),
        ),
    )
    .await
    .unwrap();
    wait_connector_status(&c, "snap", "COMPLETED").await;
    let rows = db.sql(&format!("SELECT count(*) FROM {DATABASE}.orders"));
    assert_eq!(records(&c, "orders_snap").await.len().to_string(), rows);
    let out = tokio::process::Command::new(workspace_bin("hstream"))
        .args([
            "--port",
            &server.addr.port().to_string(),
            "connector",
            "describe",
            "snap",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("snapshot done: 1 tables, {rows} rows")) && text.contains("COMPLETED"),
        "{text}"
    );
}

const TYPES_DDL: &str = "CREATE TABLE app.types (id INT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, \
    mi MEDIUMINT, mu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED, dec1 DECIMAL(30,10), \
    dec2 DECIMAL(5,2), f FLOAT, d DOUBLE, c CHAR(3), vc VARCHAR(20), lat VARCHAR(10) CHARACTER SET latin1, t TEXT, \
    b BLOB, bin BINARY(4), vb VARBINARY(8), j JSON, dt DATE, tm TIME, tm3 TIME(3), dtm DATETIME, dtm6 DATETIME(6), \
    ts TIMESTAMP(3) NULL, e ENUM('sad','ok','happy'), s SET('a','b','c'), bt1 BIT(1), bt BIT(12), y YEAR, n INT NULL)";

fn types_row(id: u32) -> String {
    format!(
        "SET NAMES utf8mb4; SET time_zone = '+00:00'; INSERT INTO app.types VALUES ({id}, -128, 255, -32768, -8388608, \
         16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615, \
         12345678901234567890.0123456789, -1.05, 1.1, 2.25, 'ab', 'héllo \"q\"', 'café', 'long text', 0x00FF10, 'ab', \
         0x0102, '{{\"a\": [1, 2], \"b\": {{\"c\": null}}, \"n\": [12345678901234567890, -9007199254740993, 0.1000000000000000055511151231257827]}}', '2024-02-29', '-838:59:59', '13:14:15.500', \
         '2024-01-02 03:04:05', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123', 'happy', 'a,c', b'1', \
         b'101010101010', 2024, NULL)"
    )
}

#[tokio::test]
async fn mysql_type_matrix_snapshot_and_binlog_alike_with_ddl_mid_stream() {
    let db = MariaDb::start();
    db.sql(TYPES_DDL);
    // Row 1 comes from the snapshot, row 2 from the binlog: both must read the same.
    db.sql(&types_row(1));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    create(
        &mut c,
        "types",
        "SOURCE",
        &source_config(&db, "types_cdc", json!({"table": "types"})),
    )
    .await
    .unwrap();
    create(
        &mut c,
        "dbz",
        "SOURCE",
        &source_config(
            &db,
            "types_dbz",
            json!({"table": "types", "format": "debezium", "snapshotMode": "never", "serverId": 4242}),
        ),
    )
    .await
    .unwrap();
    wait_streaming(&db, 2).await;
    db.sql(&types_row(2));
    // A column added mid-stream shows from the next change on.
    db.sql(
        "ALTER TABLE app.types ADD COLUMN extra VARCHAR(5) DEFAULT 'x'; INSERT INTO app.types (id) VALUES (3); \
         UPDATE app.types SET i = 7 WHERE id = 3; DELETE FROM app.types WHERE id = 3;",
    );
    let recs = wait_records(&c, "types_cdc", 5).await;
    assert_eq!(recs.len(), 5, "{recs:?}");
    let want = json!({
        "ti": -128.0, "tu": 255.0, "si": -32768.0, "mi": -8388608.0, "mu": 16777215.0, "i": -2147483648.0,
        "iu": 4294967295.0, "bi": "-9223372036854775808", "bu": "18446744073709551615",
        "dec1": "12345678901234567890.0123456789", "dec2": "-1.05", "f": 1.1, "d": 2.25, "c": "ab",
        "vc": "héllo \"q\"", "lat": "café", "t": "long text", "b": "AP8Q", "bin": "YWIAAA==", "vb": "AQI=",
        "j": "{\"a\": [1, 2], \"b\": {\"c\": null}, \"n\": [12345678901234567890, -9007199254740993, 0.1000000000000000055511151231257827]}", "dt": "2024-02-29", "tm": "-838:59:59", "tm3": "13:14:15.500",
        "dtm": "2024-01-02T03:04:05", "dtm6": "2024-01-02T03:04:05.123456", "ts": "2024-01-02T03:04:05.123Z",
        "e": "happy", "s": "a,c", "bt1": true, "bt": 2730.0, "y": 2024.0, "n": null,
    });
    for (n, (_, r)) in recs[..2].iter().enumerate() {
        let v = &r["value"];
        for (k, w) in want.as_object().unwrap() {
            assert_eq!(
                &v[k],
                w,
                "column {k} of row {} ({})",
                n + 1,
                if n == 0 { "snapshot" } else { "binlog" }
            );
        }
        assert_eq!(r["key"], json!({"id": (n + 1) as f64}));
    }
    assert_eq!(recs[2].1["value"]["extra"], "x", "{}", recs[2].1);
    assert_eq!(recs[3].1["value"]["i"], 7.0);
    assert_eq!(recs[4].1, json!({"key": {"id": 3.0}, "value": null}));

    // The Debezium envelope of the same changes.
    let dbz = wait_records(&c, "types_dbz", 4).await;
    let ops: Vec<&str> = dbz.iter().map(|(_, r)| r["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["c", "c", "u", "d"]);
    let upd = &dbz[2].1;
    assert_eq!((&upd["before"]["i"], &upd["after"]["i"]), (&Value::Null, &json!(7.0)));
    assert_eq!(upd["before"]["extra"], "x");
    let src = &upd["source"];
    assert_eq!(
        (src["db"].as_str(), src["table"].as_str()),
        (Some(DATABASE), Some("types"))
    );
    assert!(src["gtid"].as_str().is_some_and(|g| g.starts_with("0-1-")), "{src}");
    assert!(
        src["file"].as_str().is_some_and(|f| f.starts_with("mysql-bin.")),
        "{src}"
    );
    assert_eq!(dbz[3].1["after"], Value::Null);
}

#[tokio::test]
async fn mysql_sigkill_mid_load_loses_no_committed_row() {
    const ROWS: u64 = 200_000;
    let db = MariaDb::start();
    orders_table(&db, "orders");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    create(
        &mut c,
        "mysrc",
        "SOURCE",
        &source_config(&db, "orders_cdc", json!({"table": "orders"})),
    )
    .await
    .unwrap();
    wait_streaming(&db, 1).await;
    // 200 transactions of 1,000 rows.
    let mut load = db
        .sql_command(&format!(
            "BEGIN NOT ATOMIC FOR b IN 0..199 DO \
               INSERT INTO {DATABASE}.orders (id, name, amount, payload) \
               SELECT b * 1000 + seq, 'n', seq, REPEAT('p', 100) FROM {DATABASE}.seq_1_to_1000; \
             END FOR; END"
        ))
        .spawn()
        .unwrap();
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "part of the load in the stream", || {
        let probe = probe.clone();
        async move { records(&probe, "orders_cdc").await.len() >= 20_000 }
    })
    .await;
    server.kill();
    server.restart();
    let c = server.client().await;
    assert!(load.wait().unwrap().success());
    assert_eq!(
        db.sql(&format!("SELECT count(*) FROM {DATABASE}.orders")),
        ROWS.to_string()
    );
    let probe = c.clone();
    wait_until(Duration::from_secs(120), "every committed row in the stream", || {
        let probe = probe.clone();
        async move {
            let ids: std::collections::BTreeSet<u64> = records(&probe, "orders_cdc")
                .await
                .iter()
                .filter_map(|(_, r)| r["value"]["id"].as_f64())
                .map(|f| f as u64)
                .collect();
            ids.len() as u64 == ROWS && ids.first() == Some(&1) && ids.last() == Some(&ROWS)
        }
    })
    .await;
}

#[tokio::test]
async fn mariadb_restart_mid_stream_resumes_from_the_checkpoint() {
    restart_mid_stream_resumes("gtid").await;
}

/// By file and position, the stored file name is the server's own: the artificial ROTATE's
/// checksum is not part of it (it used to be, and the resume failed with "Could not find first
/// log file name").
#[tokio::test]
async fn mariadb_restart_mid_stream_resumes_by_file_and_position() {
    restart_mid_stream_resumes("file").await;
}

async fn restart_mid_stream_resumes(position_mode: &str) {
    let mut db = MariaDb::start();
    orders_table(&db, "orders");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let c = server.client().await;
    // Created the way users do, from the SQL shell.
    let sql = format!(
        "CREATE SOURCE CONNECTOR mysrc FROM mysql WITH (host = '127.0.0.1', port = {}, user = 'cdc', \
         password = '{CDC_PASSWORD}', database = '{DATABASE}', table = 'orders', stream = 'orders_cdc', \
         positionMode = '{position_mode}');",
        db.port
    );
    let out = tokio::process::Command::new(workspace_bin("hstream"))
        .args(["--port", &server.addr.port().to_string(), "sql", "-e", &sql])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    db.sql(&format!(
        "INSERT INTO {DATABASE}.orders (id, name, amount) SELECT seq, 'a', seq FROM {DATABASE}.seq_1_to_1000"
    ));
    wait_for_state(&c, "orders_cdc", &db, "orders", Duration::from_secs(60)).await;
    // The checkpoint names a binlog file the server lists (it once carried the artificial
    // ROTATE's checksum bytes after the name).
    let files = db.sql("SHOW BINARY LOGS");
    let end: f64 = db
        .sql("SHOW MASTER STATUS")
        .split('\t')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "a checkpoint at the binlog's end", || {
        let probe = probe.clone();
        async move { connector_report(&probe, "mysrc").await["offset"]["pos"].as_f64() == Some(end) }
    })
    .await;
    let offset = connector_report(&c, "mysrc").await["offset"].clone();
    let file = offset["file"].as_str().unwrap_or_default().to_owned();
    assert!(
        !file.is_empty() && files.lines().any(|l| l.split('\t').next() == Some(file.as_str())),
        "checkpointed file {file:?} is not one of the server's binlogs:\n{files}"
    );
    db.restart();
    db.sql(&format!(
        "INSERT INTO {DATABASE}.orders (id, name, amount) SELECT seq, 'b', seq FROM {DATABASE}.seq_1001_to_2000; \
         UPDATE {DATABASE}.orders SET name = 'c' WHERE id <= 10"
    ));
    wait_for_state(&c, "orders_cdc", &db, "orders", Duration::from_secs(60)).await;
    let recs = records(&c, "orders_cdc").await;
    // Resumed from the checkpoint: nothing before the restart was sent twice.
    let inserts_of_a = recs.iter().filter(|(_, r)| r["value"]["name"] == "a").count();
    assert_eq!(inserts_of_a, 1000, "rows streamed before the restart arrive once");
    wait_connector_status(&c, "mysrc", "RUNNING").await;
}

#[tokio::test]
async fn mysql_round_trip_through_the_sink_reproduces_the_table() {
    let db = MariaDb::start();
    let ddl = "(id BIGINT PRIMARY KEY, name VARCHAR(20), amount DECIMAL(12,2), ok BOOL, at TIMESTAMP(6) NULL, \
               dtm DATETIME(3), d DATE, doc JSON, bin VARBINARY(16), e ENUM('x','y','z'), s SET('p','q'), bt BIT(8), \
               f DOUBLE, lat VARCHAR(10) CHARACTER SET latin1, tm TIME)";
    db.sql(&format!("CREATE TABLE app.src {ddl}; CREATE TABLE app.dst {ddl};"));
    db.sql(
        "SET NAMES utf8mb4; INSERT INTO app.src SELECT seq, CONCAT('n', seq), seq / 3, seq % 2 = 0, \
           TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE, TIMESTAMP'2024-01-01 00:00:00.5' + INTERVAL seq SECOND, \
           DATE'2024-01-01' + INTERVAL seq DAY, JSON_OBJECT('g', seq, 'l', JSON_ARRAY(seq, 'x')), UNHEX(MD5(seq)), \
           ELT(1 + seq % 3, 'x', 'y', 'z'), IF(seq % 2 = 0, 'p,q', 'q'), seq % 256, seq / 7, 'déjà', \
           SEC_TO_TIME(seq * 7) FROM app.seq_1_to_2000",
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    create(
        &mut c,
        "src",
        "SOURCE",
        &source_config(&db, "rt", json!({"table": "src"})),
    )
    .await
    .unwrap();
    let mut sink = db.connector_config();
    sink["stream"] = json!("rt");
    sink["table"] = json!("dst");
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the stream", || {
        let mut c = probe.clone();
        async move { c.get_stream(pb::GetStreamRequest { name: "rt".into() }).await.is_ok() }
    })
    .await;
    create(&mut c, "dst", "SINK", &sink).await.unwrap();
    db.sql(
        "UPDATE app.src SET name = 'changed', ok = NULL WHERE id % 10 = 0; \
         DELETE FROM app.src WHERE id % 7 = 0; \
         UPDATE app.src SET amount = amount + 1 WHERE id % 5 = 0; \
         UPDATE app.src SET id = id + 100000 WHERE id = 1; \
         UPDATE app.src SET doc = '{\"n\": [12345678901234567890, -9007199254740993, 0.1000000000000000055511151231257827]}' \
           WHERE id = 3;",
    );
    let dump = |t: &str| {
        db.sql(&format!(
            "SELECT id, name, amount, ok, at, dtm, d, JSON_COMPACT(doc), HEX(bin), e, s, bt + 0, f, lat, tm \
             FROM app.{t} ORDER BY id"
        ))
    };
    let want = dump("src");
    if !holds_within(Duration::from_secs(120), || {
        let equal = dump("dst") == want;
        async move { equal }
    })
    .await
    {
        let got = dump("dst");
        let first = want.lines().zip(got.lines()).find(|(a, b)| a != b);
        panic!(
            "dst differs from src ({} vs {} rows); first difference:\n{first:?}",
            want.lines().count(),
            got.lines().count()
        );
    }
}

#[tokio::test]
async fn mysql_bad_configs_fail_check_with_a_clear_message() {
    let db = MariaDb::start();
    orders_table(&db, "orders");
    let no_binlog = MariaDb::start_with(&["--skip-log-bin"]);
    orders_table(&no_binlog, "orders");
    db.sql(
        "CREATE USER 'weak'@'127.0.0.1' IDENTIFIED BY 'weak-Pw-1'; \
         GRANT SELECT ON app.* TO 'weak'@'127.0.0.1'; GRANT BINLOG MONITOR ON *.* TO 'weak'@'127.0.0.1';",
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let expect_failure = async |c: &mut Client, kind: &str, cfg: Value, mention: &str| {
        let e = create(c, "bad", kind, &cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{cfg}: {e:?}");
        let msg = error_message(&e);
        assert!(msg.contains(mention), "{mention}: {msg}");
        for secret in ["wrong-pw", CDC_PASSWORD, "weak-Pw-1"] {
            assert!(!msg.contains(secret), "{msg}");
        }
    };
    let cases = [
        (
            source_config(&db, "s", json!({"table": "orders", "password": "wrong-pw"})),
            "password",
        ),
        (source_config(&db, "s", json!({"table": "missing"})), "table: table"),
        (
            source_config(&db, "s", json!({"tables": ["orders", "nope"]})),
            "tables: table",
        ),
        (
            source_config(&db, "s", json!({"table": "orders", "database": "nodb"})),
            "database",
        ),
        (source_config(&no_binlog, "s", json!({"table": "orders"})), "log_bin"),
        (
            source_config(
                &db,
                "s",
                json!({"table": "orders", "user": "weak", "password": "weak-Pw-1"}),
            ),
            "REPLICATION SLAVE",
        ),
    ];
    for (cfg, mention) in cases {
        expect_failure(&mut c, "SOURCE", cfg, mention).await;
    }
    // Settings that make the binlog useless for CDC.
    for (set, mention) in [
        ("SET GLOBAL binlog_format = 'STATEMENT'", "binlog_format=ROW"),
        ("SET GLOBAL binlog_row_image = 'MINIMAL'", "binlog_row_image=FULL"),
        // Rows would be decoded against today's columns, not those they were written with.
        ("SET GLOBAL binlog_row_metadata = 'MINIMAL'", "binlog_row_metadata=FULL"),
    ] {
        db.sql(set);
        expect_failure(
            &mut c,
            "SOURCE",
            source_config(&db, "s", json!({"table": "orders"})),
            mention,
        )
        .await;
        db.sql(
            "SET GLOBAL binlog_format = 'ROW'; SET GLOBAL binlog_row_image = 'FULL'; \
             SET GLOBAL binlog_row_metadata = 'FULL'",
        );
    }
    let mut sink = db.connector_config();
    sink["stream"] = json!("s");
    sink["table"] = json!("nope");
    expect_failure(&mut c, "SINK", sink.clone(), "table:").await;
    db.sql("CREATE TABLE app.nokey (a int)");
    sink["table"] = json!("nokey");
    expect_failure(&mut c, "SINK", sink, "no primary key").await;
    // With the settings restored, the same source passes its check.
    create(
        &mut c,
        "good",
        "SOURCE",
        &source_config(&db, "s", json!({"table": "orders"})),
    )
    .await
    .unwrap();
}
