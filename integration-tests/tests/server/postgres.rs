//! The PostgreSQL CDC source and sink against a throw-away PostgreSQL (wal_level=logical):
//! snapshot + streaming equal to the table, the type matrix, SIGKILL mid-load, a PostgreSQL
//! restart, the round trip through the sink, `check` errors, heartbeats, slot clean-up and
//! secrets, and the helpers the other PostgreSQL suites share (what is captured and how:
//! `postgres_capture.rs`; kills around the snapshot: `postgres_crashes.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use hstream_integration_tests::pg::{DATABASE, Postgres};
use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::{Value, json};
use tonic::Code;

pub(super) const FAST_RETRY: &[&str] = &["--connector-retry-base-ms", "50", "--connector-retry-max-ms", "500"];

pub(super) fn source_config(pg: &Postgres, stream: &str, extra: Value) -> Value {
    config_with(pg.connector_config(), stream, extra)
}

pub(super) async fn create(
    c: &mut Client,
    name: &str,
    kind: &str,
    config: &Value,
) -> Result<pb::Connector, tonic::Status> {
    create_connector(c, name, kind, "postgresql", config).await
}

/// `id|name|amount` rows of a table, as `{"id": n}` key JSON → (name, amount).
pub(super) fn table_state(pg: &Postgres, table: &str) -> BTreeMap<String, (String, String)> {
    pg.psql(DATABASE, &format!("SELECT id, name, amount FROM {table} ORDER BY id"))
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
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
                    v["amount"].as_str().unwrap_or("").to_owned(),
                ),
            )
        })
        .collect()
}

pub(super) async fn wait_for_state(c: &Client, stream: &str, pg: &Postgres, table: &str, within: Duration) {
    let want = table_state(pg, table);
    let probe = c.clone();
    wait_until(within, "the stream's final state to equal the table", || {
        let mut c = probe.clone();
        let want = want.clone();
        let stream = stream.to_owned();
        async move { stream_rows(&fold_changes(&read_json_stream(&mut c, &stream).await)) == want }
    })
    .await;
}

/// Waits until the Debezium-format `stream` folds to exactly `table` (a read refused for a
/// while, as during a store's failover, counts as not yet) and returns its records; fails
/// naming both sizes otherwise.
pub(super) async fn wait_debezium_equals_table(
    c: &Client,
    stream: &str,
    pg: &Postgres,
    table: &str,
    within: Duration,
) -> Vec<(String, Value)> {
    let want = table_state(pg, table);
    let ok = holds_within(within, || {
        let mut probe = c.clone();
        let want = want.clone();
        async move {
            try_read_json_stream(&mut probe, stream)
                .await
                .is_ok_and(|records| stream_rows(&fold_debezium(&records)) == want)
        }
    })
    .await;
    let records = read_json_stream(&mut c.clone(), stream).await;
    assert!(
        ok,
        "stream {} keys ≠ table {} rows",
        fold_debezium(&records).len(),
        want.len()
    );
    records
}

/// Per key, streamed updates come in commit order: a key's `amount` never goes back (it is
/// equal when an update is sent again after a restart, at-least-once). Returns the keys
/// updated and the updates seen.
pub(super) fn assert_updates_in_commit_order(records: &[(String, Value)]) -> (usize, usize) {
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    let mut updates = 0;
    for (key, r) in records.iter().filter(|(_, r)| r["op"] == "u") {
        updates += 1;
        let amount: f64 = r["after"]["amount"].as_str().unwrap().parse().unwrap();
        if let Some(prev) = last.insert(key.clone(), amount) {
            assert!(amount >= prev, "key {key}: update to {amount} after {prev}");
        }
    }
    (last.len(), updates)
}

/// Waits until a source streams (its walsender is past slot creation and snapshot), so changes
/// made from now on are decoded by it.
pub(super) async fn wait_streaming(pg: &Postgres) {
    wait_until(Duration::from_secs(30), "the source to stream", || async move {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'hstream-cdc' AND state = 'streaming'",
        ) == "1"
    })
    .await;
}

pub(super) fn orders_table(pg: &Postgres, table: &str) {
    pg.psql(
        DATABASE,
        &format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2), \
             payload text, updated_at timestamptz NOT NULL DEFAULT now()); \
             ALTER TABLE {table} OWNER TO cdc;"
        ),
    );
}

#[tokio::test]
async fn pg_snapshot_and_streaming_end_as_the_table() {
    let pg = Postgres::start();
    orders_table(&pg, "orders");
    pg.psql(
        DATABASE,
        "INSERT INTO orders (id, name, amount) SELECT g, 'n' || g, g * 1.5 FROM generate_series(1, 20000) g",
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    // Changes run while the connector takes its snapshot and starts streaming.
    let mut load = pg
        .psql_command(
            DATABASE,
            "DO $$ BEGIN FOR i IN 1..300 LOOP \
               INSERT INTO orders (id, name, amount) VALUES (100000 + i, 'during', i); \
               UPDATE orders SET name = 'upd' || i, amount = amount + 1 WHERE id = i * 7; \
               DELETE FROM orders WHERE id = i * 11; \
               COMMIT; END LOOP; END $$",
        )
        .spawn()
        .unwrap();
    create(
        &mut c,
        "pgsrc",
        "SOURCE",
        &source_config(&pg, "orders_cdc", json!({"table": "orders"})),
    )
    .await
    .unwrap();
    assert!(load.wait().unwrap().success());
    // And after: an update that changes the key, and a delete of a snapshot row.
    pg.psql(
        DATABASE,
        "UPDATE orders SET id = 500000 WHERE id = 2; DELETE FROM orders WHERE id = 3; \
         INSERT INTO orders (id, name, amount) VALUES (600000, 'after', 99.99)",
    );
    wait_for_state(&c, "orders_cdc", &pg, "orders", Duration::from_secs(120)).await;
    let records = read_json_stream(&mut c, "orders_cdc").await;
    // The HStream IO shape, the partition key being the primary key.
    let (key, first) = &records[0];
    assert_eq!(first["key"]["id"].as_f64().map(|f| f.to_string()), Some(key.clone()));
    assert!(first["value"]["updated_at"].as_str().unwrap().ends_with('Z'), "{first}");
    let report = c
        .get_connector(pb::GetConnectorRequest { name: "pgsrc".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.status, "RUNNING");

    // A snapshot-only connector completes, and the CLI shows what it did.
    create(
        &mut c,
        "snap",
        "SOURCE",
        &source_config(
            &pg,
            "orders_snap",
            json!({"table": "orders", "snapshotMode": "initial_only", "slotName": "snap"}),
        ),
    )
    .await
    .unwrap();
    wait_connector_status(&c, "snap", "COMPLETED").await;
    let rows = pg.psql(DATABASE, "SELECT count(*) FROM orders");
    assert_eq!(read_json_stream(&mut c, "orders_snap").await.len().to_string(), rows);
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
    // Its slot was dropped once the snapshot was complete: only the streaming connector's remains.
    wait_until(Duration::from_secs(30), "the snapshot-only slot to go", || {
        let pg = &pg;
        async move {
            pg.psql(
                "postgres",
                "SELECT string_agg(slot_name, ',') FROM pg_replication_slots",
            ) == "hstream_orders_cdc"
        }
    })
    .await;
}

#[tokio::test]
async fn pg_type_matrix() {
    let pg = Postgres::start();
    pg.psql(
        DATABASE,
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
         CREATE TABLE types (id int PRIMARY KEY, i2 smallint, i4 int, i8 bigint, big8 bigint, num numeric(30,10), \
           f4 real, f8 double precision, fnan double precision, b bool, t text, vc varchar(10), ch char(3), \
           by bytea, u uuid, j json, jb jsonb, d date, tm time, ts timestamp, tstz timestamptz, \
           ai int[], at text[], a2 int[][], m mood, am mood[], \
           iv interval, mo money, ttz timetz, ip inet, cid cidr, mac macaddr, nnan numeric, ninf numeric, \
           bt bit(3), vb varbit(8), pt point, ln line, ls lseg, bx box, pa path, pg polygon, ci circle, \
           amo money[], abx box[], apt point[], aiv interval[], big text); \
         ALTER TABLE types ALTER COLUMN big SET STORAGE EXTERNAL; \
         ALTER TABLE types OWNER TO cdc;",
    );
    // A server whose sessions print dates, times and intervals its own way by default: the
    // source's session settings must win.
    pg.psql(
        "postgres",
        &format!(
            "ALTER DATABASE {DATABASE} SET DateStyle = 'SQL, DMY'; \
             ALTER DATABASE {DATABASE} SET IntervalStyle = 'postgres_verbose'; \
             ALTER DATABASE {DATABASE} SET TimeZone = 'Asia/Kolkata'; \
             ALTER DATABASE {DATABASE} SET extra_float_digits = -3;"
        ),
    );
    // The same values through the snapshot (row 100) and through streaming (row 1).
    let row = |id: u32| {
        format!(
            "INSERT INTO types VALUES ({id}, -32768, 2147483647, 9007199254740992, 9223372036854775807, \
               12345678901234567890.0123456789, 1.5, 2.25, 'NaN', true, 'héllo \"q\"', 'vc', 'ab', '\\x00ff10', \
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"a\": [1, 2], \"n\": 12345678901234567890}}', \
               '{{\"b\": {{\"c\": null}}, \"n\": [-9007199254740993, 0.1000000000000000055511151231257827, 123456789012345678901234567890]}}', \
               '2024-02-29', '13:14:15.5', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+02', '{{1,NULL,3}}', \
               '{{\"x y\",\"q\\\"z\",NULL}}', '{{{{1,2}},{{3,4}}}}', 'happy', '{{sad,ok}}', \
               '1 year 2 months 3 days 04:05:06.5', '-92233720368547758.08', '13:14:15.5+02', '192.168.1.5/24', \
               '10.0.0.0/8', '08:00:2b:01:02:03', 'NaN', 'Infinity', B'101', B'1101', '(1.5,2)', '{{1,-1,0}}', \
               '[(0,0),(1,1)]', '(2,2),(0,0)', '[(0,0),(1,1),(2,0)]', '((0,0),(1,1),(1,0))', '<(0,0),5>', \
               '{{1.5,-2}}', ARRAY['(1,1),(0,0)'::box, '(3,3),(2,2)'], '{{\"(1,2)\",\"(3,4)\"}}', \
               ARRAY['1 day'::interval, '-1 hour'], repeat(md5('x'), 400));"
        )
    };
    pg.psql(DATABASE, &row(100));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    create(
        &mut c,
        "types",
        "SOURCE",
        &source_config(&pg, "types_cdc", json!({"table": "types"})),
    )
    .await
    .unwrap();
    wait_streaming(&pg).await;
    pg.psql(
        DATABASE,
        &format!(
            "{} UPDATE types SET i4 = 7 WHERE id = 1; INSERT INTO types (id) VALUES (2); DELETE FROM types WHERE id = 2;",
            row(1)
        ),
    );
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "five change records", || {
        let mut c = probe.clone();
        async move { read_json_stream(&mut c, "types_cdc").await.len() >= 5 }
    })
    .await;
    let records = read_json_stream(&mut c, "types_cdc").await;
    assert_eq!(records.len(), 5, "{records:?}");
    let want = json!({
        "i2": -32768.0, "i4": 2147483647.0, "i8": 9007199254740992.0,
        "big8": "9223372036854775807", "num": "12345678901234567890.0123456789",
        "f4": 1.5, "f8": 2.25, "fnan": "NaN", "b": true, "t": "héllo \"q\"", "vc": "vc", "ch": "ab ",
        "by": "AP8Q", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        // JSON documents are their exact text: no number passes through a double.
        "j": "{\"a\": [1, 2], \"n\": 12345678901234567890}",
        "jb": "{\"b\": {\"c\": null}, \"n\": [-9007199254740993, 0.1000000000000000055511151231257827, 123456789012345678901234567890]}",
        "d": "2024-02-29", "tm": "13:14:15.5",
        "ts": "2024-01-02T03:04:05.123456", "tstz": "2024-01-02T01:04:05Z",
        "ai": [1.0, null, 3.0], "at": ["x y", "q\"z", null], "a2": [[1.0, 2.0], [3.0, 4.0]],
        "m": "happy", "am": ["sad", "ok"],
    });
    let more = json!({
        // Session settings make these texts the same whatever the server's configuration.
        "iv": "P1Y2M3DT4H5M6.5S", "mo": "-92233720368547758.08", "ttz": "13:14:15.5+02:00",
        "ip": "192.168.1.5/24", "cid": "10.0.0.0/8", "mac": "08:00:2b:01:02:03",
        "nnan": "NaN", "ninf": "Infinity", "bt": "101", "vb": "1101",
        "pt": "(1.5,2)", "ln": "{1,-1,0}", "ls": "[(0,0),(1,1)]", "bx": "(2,2),(0,0)",
        "pa": "[(0,0),(1,1),(2,0)]", "pg": "((0,0),(1,1),(1,0))", "ci": "<(0,0),5>",
        "amo": ["1.50", "-2.00"], "abx": "{(1,1),(0,0);(3,3),(2,2)}", "apt": ["(1,2)", "(3,4)"],
        "aiv": ["P1D", "PT-1H"],
    });
    let mut want = want;
    want.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
    for (n, path) in [(0, "snapshot"), (1, "streaming")] {
        let v = &records[n].1["value"];
        for (k, w) in want.as_object().unwrap() {
            assert_eq!(&v[k], w, "column {k} ({path})");
        }
        assert_eq!(
            v["big"].as_str().map(str::len),
            Some(12800),
            "the TOASTed text arrives whole ({path})"
        );
    }
    assert_eq!(records[0].1["value"]["id"], 100.0);
    // The update left the TOASTed column unchanged: it is absent, not null.
    let upd = &records[2].1["value"];
    assert_eq!(upd["i4"], 7.0);
    assert!(upd.get("big").is_none(), "unchanged TOAST must be left out, got {upd}");
    assert_eq!(records[3].1["value"]["big"], Value::Null, "a real NULL stays null");
    assert_eq!(records[4].1, json!({"key": {"id": 2.0}, "value": null}));
}

#[tokio::test]
async fn pg_sigkill_mid_load_loses_no_committed_row() {
    const ROWS: u64 = 200_000;
    let pg = Postgres::start();
    orders_table(&pg, "orders");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    create(
        &mut c,
        "pgsrc",
        "SOURCE",
        &source_config(&pg, "orders_cdc", json!({"table": "orders"})),
    )
    .await
    .unwrap();
    wait_streaming(&pg).await;
    // 200 transactions of 1,000 rows.
    let mut load = pg
        .psql_command(
            DATABASE,
            "DO $$ BEGIN FOR b IN 0..199 LOOP \
               INSERT INTO orders (id, name, amount, payload) \
               SELECT b * 1000 + g, 'n', g, repeat('p', 100) FROM generate_series(1, 1000) g; \
               COMMIT; END LOOP; END $$",
        )
        .spawn()
        .unwrap();
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "part of the load in the stream", || {
        let mut c = probe.clone();
        async move { read_json_stream(&mut c, "orders_cdc").await.len() >= 20_000 }
    })
    .await;
    server.kill();
    server.restart();
    let c = server.client().await;
    assert!(load.wait().unwrap().success());
    assert_eq!(pg.psql(DATABASE, "SELECT count(*) FROM orders"), ROWS.to_string());
    let probe = c.clone();
    wait_until(Duration::from_secs(120), "every committed row in the stream", || {
        let mut c = probe.clone();
        async move {
            let ids: std::collections::BTreeSet<u64> = read_json_stream(&mut c, "orders_cdc")
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
async fn pg_restart_mid_stream_resumes_from_the_checkpoint() {
    let pg = Postgres::start();
    orders_table(&pg, "orders");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    // Created the way users do, from the SQL shell.
    let sql = format!(
        "CREATE SOURCE CONNECTOR pgsrc FROM postgresql WITH (host = '127.0.0.1', port = {}, user = 'cdc', \
         password = '{}', database = '{DATABASE}', table = 'orders', stream = 'orders_cdc');",
        pg.port,
        pg::CDC_PASSWORD
    );
    let out = tokio::process::Command::new(workspace_bin("hstream"))
        .args(["--port", &server.addr.port().to_string(), "sql", "-e", &sql])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pg.psql(
        DATABASE,
        "INSERT INTO orders (id, name, amount) SELECT g, 'a', g FROM generate_series(1, 1000) g",
    );
    wait_for_state(&c, "orders_cdc", &pg, "orders", Duration::from_secs(60)).await;
    pg.restart();
    pg.psql(
        DATABASE,
        "INSERT INTO orders (id, name, amount) SELECT g, 'b', g FROM generate_series(1001, 2000) g; \
         UPDATE orders SET name = 'c' WHERE id <= 10",
    );
    wait_for_state(&c, "orders_cdc", &pg, "orders", Duration::from_secs(60)).await;
    let records = read_json_stream(&mut c, "orders_cdc").await;
    // Resumed from the checkpoint: nothing before the restart was sent twice.
    let inserts_of_a = records.iter().filter(|(_, r)| r["value"]["name"] == "a").count();
    assert_eq!(inserts_of_a, 1000, "rows streamed before the restart arrive once");
    let conn = c
        .get_connector(pb::GetConnectorRequest { name: "pgsrc".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(conn.status, "RUNNING");
}

#[tokio::test]
async fn pg_round_trip_through_the_sink_reproduces_the_table() {
    let pg = Postgres::start();
    let ddl = "(id bigint PRIMARY KEY, name text, amount numeric(12,2), ok bool, at timestamptz, \
               doc jsonb, bin bytea, tags text[], n int[], u uuid, big text)";
    pg.psql(
        DATABASE,
        &format!("CREATE TABLE src {ddl}; ALTER TABLE src OWNER TO cdc; CREATE TABLE dst {ddl}; ALTER TABLE dst OWNER TO cdc;"),
    );
    pg.psql(
        DATABASE,
        "INSERT INTO src SELECT g, 'n' || g, g / 3.0, g % 2 = 0, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute', \
           jsonb_build_object('g', g, 'l', jsonb_build_array(g, 'x')), decode(md5(g::text), 'hex'), \
           ARRAY['a' || g, 'b,c'], ARRAY[g, g + 1], md5(g::text)::uuid, repeat(md5(g::text), 100) \
         FROM generate_series(1, 2000) g",
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    create(
        &mut c,
        "src",
        "SOURCE",
        &source_config(&pg, "rt", json!({"table": "src"})),
    )
    .await
    .unwrap();
    let mut sink = pg.connector_config();
    sink["stream"] = json!("rt");
    sink["table"] = json!("dst");
    // The stream exists once the source has started.
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the stream", || {
        let mut c = probe.clone();
        async move { c.get_stream(pb::GetStreamRequest { name: "rt".into() }).await.is_ok() }
    })
    .await;
    create(&mut c, "dst", "SINK", &sink).await.unwrap();
    pg.psql(
        DATABASE,
        "UPDATE src SET name = 'changed', ok = NULL WHERE id % 10 = 0; \
         DELETE FROM src WHERE id % 7 = 0; \
         UPDATE src SET amount = amount + 1 WHERE id % 5 = 0; \
         UPDATE src SET id = id + 100000 WHERE id = 1; \
         UPDATE src SET doc = '{\"n\": [123456789012345678901234567890, -9007199254740993, 0.1000000000000000055511151231257827]}' \
           WHERE id = 3;",
    );
    let dump = |t: &str| pg.psql(DATABASE, &format!("SELECT * FROM {t} ORDER BY id"));
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
async fn pg_bad_configs_fail_check_with_a_clear_message() {
    let pg = Postgres::start();
    orders_table(&pg, "orders");
    let replica = Postgres::start_with(&["wal_level = replica"]);
    orders_table(&replica, "orders");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let cases = [
        (
            source_config(&pg, "s", json!({"table": "orders", "password": "wrong-pw"})),
            "password",
        ),
        (source_config(&pg, "s", json!({"table": "missing"})), "table: relation"),
        (
            source_config(&pg, "s", json!({"tables": ["orders", "nope"]})),
            "tables: relation",
        ),
        (
            source_config(&pg, "s", json!({"table": "orders", "database": "nodb"})),
            "database",
        ),
        (
            source_config(&replica, "s", json!({"table": "orders"})),
            "wal_level=logical",
        ),
        (
            source_config(
                &pg,
                "s",
                json!({"table": "orders", "publicationName": "nopub", "publicationAutocreate": false}),
            ),
            "publicationName",
        ),
    ];
    for (cfg, mention) in cases {
        let e = create(&mut c, "bad", "SOURCE", &cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{cfg}: {e:?}");
        let msg = error_message(&e);
        assert!(msg.contains(mention), "{mention}: {msg}");
        assert!(!msg.contains("wrong-pw") && !msg.contains(pg::CDC_PASSWORD), "{msg}");
    }
    let mut sink = pg.connector_config();
    sink["stream"] = json!("s");
    sink["table"] = json!("nope");
    let e = create(&mut c, "bad", "SINK", &sink).await.unwrap_err();
    assert!(error_message(&e).contains("table: relation"), "{}", error_message(&e));
    pg.psql(DATABASE, "CREATE TABLE nokey (a int); ALTER TABLE nokey OWNER TO cdc;");
    sink["table"] = json!("nokey");
    let e = create(&mut c, "bad", "SINK", &sink).await.unwrap_err();
    assert!(error_message(&e).contains("no primary key"), "{}", error_message(&e));
}

#[tokio::test]
async fn pg_idle_slot_advances_and_delete_drops_the_slot() {
    let pg = Postgres::start();
    orders_table(&pg, "orders");
    pg.psql(DATABASE, "CREATE TABLE other (x int); ALTER TABLE other OWNER TO cdc;");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = source_config(&pg, "idle", json!({"table": "orders", "heartbeatIntervalMs": 200}));
    create(&mut c, "idle", "SOURCE", &cfg).await.unwrap();
    let confirmed = |pg: &Postgres| {
        pg.psql(
            "postgres",
            "SELECT coalesce(confirmed_flush_lsn - '0/0'::pg_lsn, 0)::int8 FROM pg_replication_slots WHERE slot_name = 'hstream_idle'",
        )
        .parse::<i64>()
        .unwrap_or(0)
    };
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the slot", || {
        let _ = &probe;
        let pg = &pg;
        async move { confirmed(pg) > 0 }
    })
    .await;
    // Much WAL on a table the connector does not capture: the slot must not hold it back.
    pg.psql(DATABASE, "INSERT INTO other SELECT generate_series(1, 100000)");
    let wal_end: i64 = pg
        .psql("postgres", "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8")
        .parse()
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the idle slot's confirmed position to pass the load",
        || {
            let pg = &pg;
            async move { confirmed(pg) >= wal_end }
        },
    )
    .await;
    assert!(read_json_stream(&mut c, "idle").await.is_empty());
    c.delete_connector(pb::DeleteConnectorRequest { name: "idle".into() })
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "the slot to be dropped", || {
        let pg = &pg;
        async move { pg.psql("postgres", "SELECT count(*) FROM pg_replication_slots") == "0" }
    })
    .await;
}

#[tokio::test]
async fn pg_password_never_shows_in_responses_or_logs() {
    const WRONG: &str = "Wr0ng-Secret-77";
    let pg = Postgres::start();
    orders_table(&pg, "orders");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let log = dir.path().join("server.log");
    let server = Server::start_logged(&data, FAST_RETRY, &log, "debug");
    let mut c = server.client().await;
    create(
        &mut c,
        "pgsrc",
        "SOURCE",
        &source_config(&pg, "orders_cdc", json!({"table": "orders"})),
    )
    .await
    .unwrap();
    pg.psql(DATABASE, "INSERT INTO orders (id, name) VALUES (1, 'x')");
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the first change", || {
        let mut c = probe.clone();
        async move { !read_json_stream(&mut c, "orders_cdc").await.is_empty() }
    })
    .await;
    // A wrong password: the task fails, saying why, without either password.
    c.alter_connector_config(pb::AlterConnectorConfigRequest {
        name: "pgsrc".into(),
        config: json!({"password": WRONG}).to_string(),
    })
    .await
    .unwrap();
    wait_connector_status(&c, "pgsrc", "FAILED").await;
    let got = c
        .get_connector(pb::GetConnectorRequest { name: "pgsrc".into() })
        .await
        .unwrap()
        .into_inner();
    let mut seen = vec![format!("{got:?}")];
    assert!(seen[0].contains("password: authentication failed"), "{}", seen[0]);
    seen.push(format!(
        "{:?}",
        c.list_connectors(pb::ListConnectorsRequest {})
            .await
            .unwrap()
            .into_inner()
    ));
    seen.push(format!(
        "{:?}",
        c.get_connector_logs(pb::GetConnectorLogsRequest {
            name: "pgsrc".into(),
            begin: 0,
            count: 100,
        })
        .await
        .unwrap()
        .into_inner()
    ));
    for path in [
        "/connectors/pgsrc",
        "/connectors/pgsrc/status",
        "/connectors/pgsrc/config",
    ] {
        seen.push(http(server.http, "GET", path, None).await.1.to_string());
    }
    let cli = tokio::process::Command::new(workspace_bin("hstream"))
        .args(["--port", &server.addr.port().to_string(), "connector", "list"])
        .output()
        .await
        .unwrap();
    seen.push(String::from_utf8_lossy(&cli.stdout).into_owned());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("pgsrc"), "the log is the server's: {logged}");
    seen.push(logged);
    for text in &seen {
        assert!(
            !text.contains(pg::CDC_PASSWORD) && !text.contains(WRONG),
            "a password leaked: {text}"
        );
    }
}

/// Debezium envelopes folded into `{"id": n}` key JSON → the row after (absent once deleted).
pub(super) fn fold_debezium(records: &[(String, Value)]) -> BTreeMap<String, Value> {
    let mut state = BTreeMap::new();
    for (_, r) in records {
        let image = if r["op"] == "d" { &r["before"] } else { &r["after"] };
        let Some(id) = image["id"].as_f64() else { continue };
        let key = json!({ "id": id }).to_string();
        if r["op"] == "d" {
            state.remove(&key);
        } else {
            state.insert(key, r["after"].clone());
        }
    }
    state
}
