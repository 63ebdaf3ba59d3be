//! Snapshots of the PostgreSQL source beyond the first: `always` and `when_needed` (a slot
//! dropped or invalidated while the task was down), and incremental snapshots of a table that
//! joins the capture later, copied in key chunks while streaming goes on, under a load that
//! changes it throughout, through kill -9s in the middle of the copy.

use std::time::Duration;

use hstream_integration_tests::pg::{DATABASE, Postgres};
use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::{Value, json};

use super::postgres::{
    FAST_RETRY, create, fold_debezium, orders_table, source_config, stream_rows, table_state,
    wait_debezium_equals_table, wait_streaming,
};

const ROWS: u64 = 1_000_000;
const CHUNK: u64 = 4096;

/// Rows of this run's incremental snapshot so far, from the task's progress line.
async fn copied(c: &Client, name: &str) -> Option<u64> {
    let report = connector_report(c, name).await;
    let p = report["progress"].as_str()?;
    let rest = p.strip_prefix("incremental snapshot public.big: ")?;
    rest.split(' ').next()?.parse().ok()
}

// Several workers: decoding a million records must not starve the client's connection (the
// server drops a connection that leaves its keepalive pings unanswered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_table_added_later_is_copied_in_chunks_through_two_kills() {
    let pg = Postgres::start();
    orders_table(&pg, "first");
    orders_table(&pg, "big");
    pg.psql(
        DATABASE,
        &format!(
            "INSERT INTO first (id, name, amount) SELECT g, 'f', g FROM generate_series(10000001, 10000100) g; \
             INSERT INTO big (id, name, amount) SELECT g, 's', g FROM generate_series(1, {ROWS}) g; \
             CREATE TABLE stop (x int);"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = source_config(
        &pg,
        "inc",
        json!({"tables": ["first"], "format": "debezium", "incrementalSnapshotChunkSize": CHUNK}),
    );
    create(&mut c, "inc", "SOURCE", &cfg).await.unwrap();
    wait_streaming(&pg).await;
    // About 100 changes a second to the big table from now to the end: inserts past the copied
    // range, updates and deletes inside it.
    let mut load = pg
        .psql_command(
            DATABASE,
            &format!(
                "DO $$ DECLARE i int := 0; BEGIN LOOP i := i + 1; \
                   INSERT INTO big (id, name, amount) VALUES (2000000 + i, 'during', i); \
                   UPDATE big SET name = 'upd' || i, amount = amount + 1 WHERE id = (i * 7919) % {ROWS} + 1; \
                   DELETE FROM big WHERE id = (i * 104729) % {ROWS} + 1; \
                   COMMIT; EXIT WHEN EXISTS (SELECT 1 FROM stop); PERFORM pg_sleep(0.03); END LOOP; END $$"
            ),
        )
        .spawn()
        .unwrap();
    // The table joins the capture.
    c.alter_connector_config(pb::AlterConnectorConfigRequest {
        name: "inc".into(),
        config: json!({"tables": ["first", "big"]}).to_string(),
    })
    .await
    .unwrap();
    // Killed twice while copying: once a quarter is in, once more after another quarter.
    for (kill, at) in [(1, ROWS / 4), (2, ROWS / 4)] {
        let probe = c.clone();
        wait_until(
            Duration::from_secs(120),
            &format!("kill {kill}: {at} rows copied in this run"),
            || {
                let probe = probe.clone();
                async move { copied(&probe, "inc").await.is_some_and(|n| n >= at) }
            },
        )
        .await;
        server.kill();
        server.restart();
        c = server.client().await;
    }
    let probe = c.clone();
    wait_until(Duration::from_secs(300), "the incremental snapshot to finish", || {
        let probe = probe.clone();
        async move {
            let report = connector_report(&probe, "inc").await;
            report["progress"]
                .as_str()
                .is_some_and(|p| p.contains("public.big: done") || p == "incremental snapshots complete")
        }
    })
    .await;
    pg.psql(DATABASE, "INSERT INTO stop VALUES (1)");
    assert!(load.wait().unwrap().success());
    let changes: u64 = pg
        .psql(DATABASE, "SELECT count(*) FROM big WHERE name <> 's'")
        .parse()
        .unwrap();
    // Both tables, folded, equal the stream (their keys do not overlap).
    let mut want = table_state(&pg, "big");
    want.extend(table_state(&pg, "first"));
    let ok = holds_within(Duration::from_secs(120), || {
        let mut probe = c.clone();
        let want = want.clone();
        async move { stream_rows(&fold_debezium(&read_json_stream(&mut probe, "inc").await)) == want }
    })
    .await;
    let records = read_json_stream(&mut c, "inc").await;
    let got = stream_rows(&fold_debezium(&records));
    if !ok {
        let missing = want
            .keys()
            .filter(|k| !got.contains_key(*k))
            .take(5)
            .collect::<Vec<_>>();
        let extra = got
            .keys()
            .filter(|k| !want.contains_key(*k))
            .take(5)
            .collect::<Vec<_>>();
        let differ = want
            .iter()
            .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
            .take(5)
            .collect::<Vec<_>>();
        panic!(
            "stream {} keys ≠ tables {} rows; missing {missing:?}, extra {extra:?}, differing {differ:?}",
            got.len(),
            want.len()
        );
    }
    // Resumed from the last chunk, not from the start: the copy's reads of the big table are the
    // table once, plus at most the chunks in flight at each kill.
    let reads = records
        .iter()
        .filter(|(_, r)| r["op"] == "r" && r["source"]["table"] == "big")
        .count() as u64;
    assert!(
        reads >= ROWS - 10 * changes && reads <= ROWS + 2 * 16 * CHUNK,
        "{reads} reads of {ROWS} rows"
    );
    let streamed = records
        .iter()
        .filter(|(_, r)| r["op"] != "r" && r["source"]["table"] == "big")
        .count();
    assert!(streamed > 0, "the load was streamed meanwhile");
    eprintln!(
        "incremental snapshot: {reads} reads of {ROWS} rows, {streamed} streamed changes, {changes} rows changed"
    );
}

/// Changes committed while a chunk is being read (after its snapshot, before its watermark) are
/// newer than the chunk's rows: the chunk must not bring the old rows back. The chunk's read is
/// held at a gate (a row security policy waiting on an advisory lock) after its snapshot was
/// taken; updates, deletes and key changes commit meanwhile; then the gate opens.
#[tokio::test]
async fn pg_changes_made_while_a_chunk_is_read_win_over_the_chunk() {
    use super::postgres_crashes::{Gate, gated, wait_at_gate_as};
    let pg = Postgres::start();
    orders_table(&pg, "first");
    orders_table(&pg, "small");
    pg.psql(
        DATABASE,
        "INSERT INTO first (id, name, amount) SELECT g, 'f', g FROM generate_series(10000001, 10000010) g; \
         INSERT INTO small (id, name, amount) SELECT g, 's', g FROM generate_series(1, 1000) g;",
    );
    gated(&pg, "small");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = source_config(
        &pg,
        "win",
        json!({"tables": ["first"], "format": "debezium", "incrementalSnapshotChunkSize": 600}),
    );
    create(&mut c, "win", "SOURCE", &cfg).await.unwrap();
    wait_streaming(&pg).await;
    let gate = Gate::close(&pg);
    c.alter_connector_config(pb::AlterConnectorConfigRequest {
        name: "win".into(),
        config: json!({"tables": ["first", "small"]}).to_string(),
    })
    .await
    .unwrap();
    // The first chunk (rows 1..600) has its snapshot and waits at the gate.
    wait_at_gate_as(&pg, "hstream-cdc-catalog").await;
    pg.psql(
        DATABASE,
        "UPDATE small SET name = 'changed' WHERE id <= 100; \
         DELETE FROM small WHERE id BETWEEN 101 AND 200; \
         UPDATE small SET id = id + 5000 WHERE id BETWEEN 201 AND 210; \
         UPDATE small SET name = 'late' WHERE id > 900;",
    );
    gate.open();
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "the incremental snapshot to finish", || {
        let probe = probe.clone();
        async move {
            connector_report(&probe, "win").await["progress"]
                .as_str()
                .is_some_and(|p| p.contains("public.small: done") || p == "incremental snapshots complete")
        }
    })
    .await;
    let mut want = table_state(&pg, "small");
    want.extend(table_state(&pg, "first"));
    let ok = holds_within(Duration::from_secs(30), || {
        let mut probe = c.clone();
        let want = want.clone();
        async move { stream_rows(&fold_debezium(&read_json_stream(&mut probe, "win").await)) == want }
    })
    .await;
    let records = read_json_stream(&mut c, "win").await;
    let got = stream_rows(&fold_debezium(&records));
    let stale: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(*v)).take(5).collect();
    let back: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).take(5).collect();
    assert!(ok, "stale rows {stale:?}, rows back from the dead {back:?}");
    // Each row once from the copy, but the 210 of the first chunk the changes made newer than it;
    // the 10 moved keys are read by the second chunk.
    let reads = records
        .iter()
        .filter(|(_, r)| r["op"] == "r" && r["source"]["table"] == "small")
        .count();
    assert_eq!(
        reads,
        1000 - 210 + 10,
        "the chunk left out exactly the rows changed while it was read"
    );
}

/// snapshotMode=always takes the snapshot again at every start and then streams from the
/// stored position, so rows deleted while the server was down leave the stream too;
/// when_needed takes a new snapshot only when the stored position is gone (its slot dropped
/// while the server was down), where initial would fail. Counted: each snapshot's `r` records
/// are exactly the rows the table had then.
#[tokio::test]
async fn pg_snapshot_modes_always_and_when_needed() {
    let pg = Postgres::start();
    for t in ["alw", "whn"] {
        orders_table(&pg, t);
        pg.psql(
            DATABASE,
            &format!("INSERT INTO {t} (id, name, amount) SELECT g, 'a', g FROM generate_series(1, 1000) g"),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    for (name, table, mode) in [("alw", "alw", "always"), ("whn", "whn", "when_needed")] {
        let cfg = source_config(
            &pg,
            &format!("{name}_cdc"),
            json!({"table": table, "format": "debezium", "snapshotMode": mode}),
        );
        create(&mut c, name, "SOURCE", &cfg).await.unwrap();
    }
    for t in ["alw", "whn"] {
        wait_debezium_equals_table(&c, &format!("{t}_cdc"), &pg, t, Duration::from_secs(60)).await;
    }

    // Down: rows change, some go; when_needed's slot is dropped.
    server.terminate();
    for t in ["alw", "whn"] {
        pg.psql(
            DATABASE,
            &format!(
                "UPDATE {t} SET name = 'b', amount = amount + 1 WHERE id <= 20; DELETE FROM {t} WHERE id > 990; \
                 INSERT INTO {t} (id, name, amount) SELECT g, 'c', g FROM generate_series(2001, 2005) g"
            ),
        );
    }
    wait_until(Duration::from_secs(30), "the slots released", || async {
        pg.psql("postgres", "SELECT count(*) FROM pg_replication_slots WHERE active") == "0"
    })
    .await;
    pg.psql("postgres", "SELECT pg_drop_replication_slot('hstream_whn_cdc')");
    server.restart();
    let c = server.client().await;
    let snapshot_rows = |records: &[(String, Value)]| records.iter().filter(|(_, r)| r["op"] == "r").count();
    // always: a second snapshot (995 rows), then the changes since the stored position,
    // deletes included (the first snapshot's rows 991..1000 leave the stream).
    let records = wait_debezium_equals_table(&c, "alw_cdc", &pg, "alw", Duration::from_secs(60)).await;
    assert_eq!(snapshot_rows(&records), 1000 + 995, "two snapshots");
    let deletes = records.iter().filter(|(_, r)| r["op"] == "d").count();
    assert_eq!(
        deletes, 10,
        "the deletes made while down, streamed after the new snapshot"
    );
    // when_needed: its slot was gone, so a new snapshot (995 rows). The rows deleted while the
    // position was lost stay in the stream (as with Debezium): the table plus those ten.
    let wait_second_snapshot = holds_within(Duration::from_secs(60), || {
        let mut probe = c.clone();
        async move {
            try_read_json_stream(&mut probe, "whn_cdc")
                .await
                .is_ok_and(|r| snapshot_rows(&r) == 1000 + 995)
        }
    })
    .await;
    let records = read_json_stream(&mut c.clone(), "whn_cdc").await;
    assert!(
        wait_second_snapshot,
        "when_needed: {} snapshot rows",
        snapshot_rows(&records)
    );
    let mut want = table_state(&pg, "whn");
    for id in 991..=1000 {
        want.insert(json!({"id": id as f64}).to_string(), ("a".into(), format!("{id}.00")));
    }
    assert_eq!(stream_rows(&fold_debezium(&records)), want);
    for name in ["alw", "whn"] {
        assert_eq!(connector_status(&c, name).await, "RUNNING", "{name}");
    }
}

/// A slot invalidated while the task was down (the server removed WAL it still needed, past
/// `max_slot_wal_keep_size`): `initial` fails naming the slot and the way out; `when_needed`
/// takes a new snapshot over a new slot. While its slot is intact, `when_needed` resumes without
/// a new snapshot.
#[tokio::test]
async fn pg_invalidated_slot_fails_initial_and_resnapshots_when_needed() {
    let pg = Postgres::start_with(&["max_slot_wal_keep_size = '1MB'", "wal_keep_size = 0"]);
    for t in ["ini", "whn"] {
        orders_table(&pg, t);
        pg.psql(
            DATABASE,
            &format!("INSERT INTO {t} (id, name, amount) SELECT g, 'a', g FROM generate_series(1, 1000) g"),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    for (name, mode) in [("ini", "initial"), ("whn", "when_needed")] {
        let cfg = source_config(
            &pg,
            &format!("{name}_cdc"),
            json!({"table": name, "format": "debezium", "snapshotMode": mode}),
        );
        create(&mut c, name, "SOURCE", &cfg).await.unwrap();
    }
    for t in ["ini", "whn"] {
        wait_debezium_equals_table(&c, &format!("{t}_cdc"), &pg, t, Duration::from_secs(60)).await;
    }
    let snapshot_rows = |records: &[(String, Value)]| records.iter().filter(|(_, r)| r["op"] == "r").count();
    // A restart with the slot intact: when_needed streams on, no second snapshot.
    server.terminate();
    pg.psql(DATABASE, "UPDATE whn SET name = 'b' WHERE id <= 10");
    server.restart();
    c = server.client().await;
    let records = wait_debezium_equals_table(&c, "whn_cdc", &pg, "whn", Duration::from_secs(60)).await;
    assert_eq!(snapshot_rows(&records), 1000, "no snapshot while the slot is intact");

    // Down while the server writes far more WAL than the slots may keep.
    server.terminate();
    wait_until(Duration::from_secs(30), "the slots released", || async {
        pg.psql("postgres", "SELECT count(*) FROM pg_replication_slots WHERE active") == "0"
    })
    .await;
    pg.psql(
        DATABASE,
        "UPDATE whn SET name = 'c' WHERE id <= 20; DELETE FROM whn WHERE id > 990; \
         CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 150000) g;",
    );
    wait_until(Duration::from_secs(60), "both slots invalidated", || async {
        pg.psql("postgres", "SELECT pg_switch_wal(); CHECKPOINT;");
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE wal_status = 'lost'",
        ) == "2"
    })
    .await;
    server.restart();
    let c = server.client().await;
    wait_status(&c, "ini", "FAILED", Duration::from_secs(60)).await;
    let report = connector_report(&c, "ini").await;
    let error = report["error"]
        .as_str()
        .or(report["lastError"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        report.to_string().contains("was invalidated") && report.to_string().contains("when_needed"),
        "initial with an invalidated slot: {report} {error}"
    );
    // when_needed: a new snapshot (990 rows) over a new slot; the ten rows deleted while the
    // position was lost stay in the stream (as with Debezium).
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "when_needed's second snapshot", || {
        let mut probe = probe.clone();
        async move {
            try_read_json_stream(&mut probe, "whn_cdc")
                .await
                .is_ok_and(|r| snapshot_rows(&r) == 1000 + 990)
        }
    })
    .await;
    let records = read_json_stream(&mut c.clone(), "whn_cdc").await;
    let mut want = table_state(&pg, "whn");
    for id in 991..=1000 {
        want.insert(json!({"id": id as f64}).to_string(), ("a".into(), format!("{id}.00")));
    }
    assert_eq!(stream_rows(&fold_debezium(&records)), want);
    assert_eq!(connector_status(&c, "whn").await, "RUNNING");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'hstream_whn_cdc'"
        ),
        "reserved",
        "a new slot"
    );
}

/// A row inserted into the signal table (Debezium's `execute-snapshot`) snapshots a captured table
/// again while streaming goes on. Just before the signal, a transaction changed a row of it and
/// committed, but a synchronous standby that never answers keeps the commit invisible: the
/// stream already has the change, and a chunk read now would bring the old row back after it.
/// The chunk waits (read again) until the commit shows. Counted: the second copy is the table
/// once; the signal table's rows and a malformed signal never reach the stream.
#[tokio::test]
async fn pg_signal_row_snapshots_a_table_again_and_waits_for_an_invisible_commit() {
    const N: u64 = 3000;
    let pg = Postgres::start();
    orders_table(&pg, "orders");
    pg.psql(
        DATABASE,
        &format!(
            "INSERT INTO orders (id, name, amount) SELECT g, 's', g FROM generate_series(1, {N}) g; \
             CREATE TABLE dbz_signal (id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2048)); \
             ALTER TABLE dbz_signal OWNER TO cdc;"
        ),
    );
    // Every session commits locally unless it asks for the (phantom) standby.
    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {DATABASE} SET synchronous_commit = local"),
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = source_config(
        &pg,
        "sig",
        json!({"tables": ["orders"], "format": "debezium", "signalDataCollection": "public.dbz_signal",
               "incrementalSnapshotChunkSize": 500}),
    );
    create(&mut c, "sig", "SOURCE", &cfg).await.unwrap();
    wait_streaming(&pg).await;
    let reads = |records: &[(String, Value)]| records.iter().filter(|(_, r)| r["op"] == "r").count() as u64;
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "the initial snapshot", || {
        let mut probe = probe.clone();
        async move { reads(&read_json_stream(&mut probe, "sig").await) == N }
    })
    .await;
    pg.psql(
        DATABASE,
        "INSERT INTO dbz_signal VALUES ('bad-1', 'execute-snapshot', 'not json'); \
         INSERT INTO dbz_signal VALUES ('bad-2', 'execute-snapshot', '{\"data-collections\": [\"public.orders\"], \"type\": \"blocking\"}');",
    );
    // The signal's transaction takes its xid first and waits at a gate, so that the held
    // transaction's xid is higher: a snapshot then has it at or past its xmax, not in its list
    // of transactions in progress.
    let gate = super::postgres_crashes::Gate::close(&pg);
    let mut signal = pg
        .psql_command(
            DATABASE,
            r#"BEGIN; SET LOCAL synchronous_commit = local;
               INSERT INTO dbz_signal VALUES ('s-1', 'execute-snapshot', '{"data-collections": ["public\\.orders"], "type": "incremental"}');
               SELECT pg_advisory_lock_shared(4242); COMMIT;"#,
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pgr = &pg;
    wait_until(
        Duration::from_secs(10),
        "the signal's transaction at the gate",
        || async move {
            pgr.psql(
                "postgres",
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted",
            ) == "1"
        },
    )
    .await;
    // A commit held invisible: decoded and streamed, not yet seen by new snapshots.
    pg.psql("postgres", "ALTER SYSTEM SET synchronous_standby_names = 'phantom'");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    let mut held = pg
        .psql_command(
            DATABASE,
            "SET synchronous_commit = on; UPDATE orders SET name = 'held' WHERE id = 7",
        )
        .spawn()
        .unwrap();
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the held update in the stream", || {
        let mut probe = probe.clone();
        async move {
            read_json_stream(&mut probe, "sig")
                .await
                .iter()
                .any(|(_, r)| r["op"] == "u" && r["after"]["name"] == "held")
        }
    })
    .await;
    assert_eq!(
        pg.psql(DATABASE, "SELECT name FROM orders WHERE id = 7"),
        "s",
        "the update is not visible yet"
    );
    gate.open();
    assert!(signal.wait().unwrap().success());
    let probe = c.clone();
    wait_until(
        Duration::from_secs(30),
        "the chunk to wait for the invisible commit",
        || {
            let probe = probe.clone();
            async move {
                // Waiting, with the queue checkpointed.
                let r = connector_report(&probe, "sig").await;
                r["progress"].as_str().is_some_and(|p| p.contains("not visible yet"))
                    && r["offset"]["incremental"]["pending"] == json!([["public", "orders"]])
            }
        },
    )
    .await;
    pg.psql("postgres", "ALTER SYSTEM RESET synchronous_standby_names");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    assert!(held.wait().unwrap().success());
    let probe = c.clone();
    // The queue leaves the offset once the copy is complete.
    wait_until(Duration::from_secs(60), "the signalled snapshot to finish", || {
        let probe = probe.clone();
        async move {
            let offset = connector_report(&probe, "sig").await["offset"].clone();
            offset.is_object() && offset.get("incremental").is_none()
        }
    })
    .await;
    let want = table_state(&pg, "orders");
    let ok = holds_within(Duration::from_secs(30), || {
        let mut probe = c.clone();
        let want = want.clone();
        async move { stream_rows(&fold_debezium(&read_json_stream(&mut probe, "sig").await)) == want }
    })
    .await;
    let records = read_json_stream(&mut c, "sig").await;
    let got = stream_rows(&fold_debezium(&records));
    assert!(
        ok,
        "row 7: stream {:?}, table {:?}",
        got.get(r#"{"id":7.0}"#),
        want.get(r#"{"id":7.0}"#)
    );
    assert_eq!(
        reads(&records),
        2 * N,
        "the table copied twice: at the start and on the signal"
    );
    assert!(
        records.iter().all(|(_, r)| r["source"]["table"] == "orders"),
        "only the captured table's changes are in the stream"
    );
    // The same through the REST API: written to the signal table, read back by the task. A
    // malformed signal is refused before anything is written.
    let rest = server.http;
    let signal = |body: Value| async move { http(rest, "POST", "/connectors/sig/signals", Some(&body)).await };
    let (code, body) = signal(json!({"type": "execute-snapshot", "data": {"data-collections": 5}})).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("data-collections"), "{body}");
    let (code, body) =
        signal(json!({"type": "execute-snapshot", "data": {"data-collections": ["public.orders"]}})).await;
    assert_eq!(code, 202, "{body}");
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "a third copy, asked for over REST", || {
        let mut probe = probe.clone();
        async move { reads(&read_json_stream(&mut probe, "sig").await) == 3 * N }
    })
    .await;
    assert_eq!(
        pg.psql(DATABASE, "SELECT count(*) FROM dbz_signal WHERE id LIKE 'rest-%'"),
        "1",
        "only the valid signal was written"
    );
    // The database down: the signal cannot be written, and the answer says try again (503),
    // not that the request was wrong.
    pg.stop();
    let (code, body) =
        signal(json!({"type": "execute-snapshot", "data": {"data-collections": ["public.orders"]}})).await;
    assert_eq!(code, 503, "{body}");
}
