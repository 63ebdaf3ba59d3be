//! Snapshots of the MySQL/MariaDB source beyond the first: `always` at every start, a stored
//! position purged while the task was down (`when_needed` and `initial`), and incremental
//! snapshots of a table that joins the capture later, through kill -9s (the core source and
//! sink: `mysql.rs`).

use std::time::Duration;

use hstream_integration_tests::mariadb::{DATABASE, MariaDb};
use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::{Value, json};

use super::mysql::{
    FAST_RETRY, create, orders_table, records, source_config, stream_rows, table_state, wait_streaming,
};

/// A load on `table` (keys 1..=`rows`) until a row is put into `stop`: one insert past the
/// keys, one update and one delete inside them per round, `sleep` seconds apart; the inserted
/// keys count the rounds (2000000 + round).
fn churn(db: &MariaDb, table: &str, rows: u64, sleep: f64) -> std::process::Child {
    db.sql_command(&format!(
        "BEGIN NOT ATOMIC DECLARE i INT DEFAULT 0; \
         WHILE NOT EXISTS (SELECT 1 FROM {DATABASE}.stop) DO SET i = i + 1; \
           INSERT INTO {DATABASE}.{table} (id, name, amount) VALUES (2000000 + i, 'during', i); \
           UPDATE {DATABASE}.{table} SET name = CONCAT('upd', i), amount = amount + 1 WHERE id = (i * 7919) % {rows} + 1; \
           DELETE FROM {DATABASE}.{table} WHERE id = (i * 104729) % {rows} + 1; \
           DO SLEEP({sleep}); END WHILE; END"
    ))
    .spawn()
    .unwrap()
}

/// snapshotMode=always takes the snapshot again at every start, then streams from the stored
/// position: rows deleted while the server was down leave the stream too (counted: two
/// snapshots of exactly the rows the table had, and the ten deletes). when_needed is refused
/// by name: the mysql source cannot tell a purged position in advance yet.
#[tokio::test]
async fn mysql_snapshot_mode_always_replays_what_changed_while_down() {
    let db = MariaDb::start();
    orders_table(&db, "alw");
    db.sql(&format!(
        "INSERT INTO {DATABASE}.alw (id, name, amount) SELECT seq, 'a', seq FROM {DATABASE}.seq_1_to_1000"
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = source_config(
        &db,
        "alw_cdc",
        json!({"table": "alw", "format": "debezium", "snapshotMode": "always"}),
    );
    create(&mut c, "alw", "SOURCE", &cfg).await.unwrap();
    let fold = |r: &[(String, Value)]| super::postgres::stream_rows(&super::postgres::fold_debezium(r));
    let db_ref = &db;
    let equal = |c: Client| async move {
        let want = table_state(db_ref, "alw");
        holds_within(Duration::from_secs(60), || {
            let (c, want) = (c.clone(), want.clone());
            async move { fold(&records(&c, "alw_cdc").await) == want }
        })
        .await
    };
    assert!(equal(c.clone()).await, "the first snapshot");
    wait_streaming(&db, 1).await;

    server.terminate();
    db.sql(&format!(
        "UPDATE {DATABASE}.alw SET name = 'b', amount = amount + 1 WHERE id <= 20; DELETE FROM {DATABASE}.alw WHERE id > 990; \
         INSERT INTO {DATABASE}.alw (id, name, amount) SELECT seq, 'c', seq FROM {DATABASE}.seq_2001_to_2005"
    ));
    server.restart();
    let c = server.client().await;
    assert!(equal(c.clone()).await, "after the restart");
    let recs = records(&c, "alw_cdc").await;
    let count = |op: &str| recs.iter().filter(|(_, r)| r["op"] == op).count();
    assert_eq!(count("r"), 1000 + 995, "two snapshots");
    assert_eq!(
        count("d"),
        10,
        "the deletes made while down, streamed after the new snapshot"
    );
    wait_connector_status(&c, "alw", "RUNNING").await;
}

/// A table that joins the capture later is copied in key chunks while the binlog streams, under
/// a load that changes it throughout, through two kill -9s in the copy: the stream folds to
/// both tables, and the copy went on from its last chunk each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_table_added_later_is_copied_in_chunks_through_two_kills() {
    const ROWS: u64 = 300_000;
    const CHUNK: u64 = 2048;
    let db = MariaDb::start();
    orders_table(&db, "first");
    orders_table(&db, "big");
    db.sql(&format!(
        "INSERT INTO {DATABASE}.first (id, name, amount) SELECT 10000000 + seq, 'f', seq FROM {DATABASE}.seq_1_to_100; \
         INSERT INTO {DATABASE}.big (id, name, amount) SELECT seq, 's', seq FROM {DATABASE}.seq_1_to_{ROWS}; \
         CREATE TABLE {DATABASE}.stop (x int);"
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = source_config(
        &db,
        "inc",
        json!({"tables": ["first"], "format": "debezium", "incrementalSnapshotChunkSize": CHUNK}),
    );
    create(&mut c, "inc", "SOURCE", &cfg).await.unwrap();
    wait_streaming(&db, 1).await;
    let mut load = churn(&db, "big", ROWS, 0.03);
    c.alter_connector_config(pb::AlterConnectorConfigRequest {
        name: "inc".into(),
        config: json!({"tables": ["first", "big"]}).to_string(),
    })
    .await
    .unwrap();
    let copied = |c: Client| async move {
        let report = connector_report(&c, "inc").await;
        let p = report["progress"].as_str()?.to_owned();
        p.strip_prefix(&format!("incremental snapshot {DATABASE}.big: "))?
            .split(' ')
            .next()?
            .parse::<u64>()
            .ok()
    };
    for kill in 1..=2 {
        let probe = c.clone();
        wait_until(
            Duration::from_secs(120),
            &format!("kill {kill}: a quarter copied in this run"),
            || {
                let probe = probe.clone();
                async move { copied(probe).await.is_some_and(|n| n >= ROWS / 4) }
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
            // Once the copy is complete, the progress line goes back to the binlog position.
            connector_report(&probe, "inc").await["progress"]
                .as_str()
                .is_some_and(|p| {
                    p.contains(".big: done") || p == "incremental snapshots complete" || p.starts_with("streaming at")
                })
        }
    })
    .await;
    db.sql(&format!("INSERT INTO {DATABASE}.stop VALUES (1)"));
    assert!(load.wait().unwrap().success());
    let mut want = table_state(&db, "big");
    want.extend(table_state(&db, "first"));
    let fold = |records: &[(String, Value)]| stream_rows(&super::postgres::fold_debezium(records));
    let ok = holds_within(Duration::from_secs(120), || {
        let probe = c.clone();
        let want = want.clone();
        async move { fold(&records(&probe, "inc").await) == want }
    })
    .await;
    let all = records(&c, "inc").await;
    let got = fold(&all);
    let differ: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(*v)).take(5).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).take(5).collect();
    assert!(
        ok,
        "stream {} keys ≠ tables {} rows: {differ:?}, extra {extra:?}",
        got.len(),
        want.len()
    );
    let reads = all
        .iter()
        .filter(|(_, r)| r["op"] == "r" && r["source"]["table"] == "big")
        .count() as u64;
    let streamed = all
        .iter()
        .filter(|(_, r)| r["op"] != "r" && r["source"]["table"] == "big")
        .count();
    assert!(
        reads <= ROWS + 2 * 16 * CHUNK,
        "{reads} reads of {ROWS} rows: the copy started over"
    );
    assert!(streamed > 0, "the load was streamed meanwhile");
    eprintln!("mysql incremental snapshot: {reads} reads of {ROWS} rows, {streamed} streamed changes");
}

/// A stored position the binlog no longer holds (purged while the task was down) is found
/// before anything is copied: `initial` fails naming it and the way out; `when_needed` takes a
/// new snapshot. While the position is held, `when_needed` resumes without one.
#[tokio::test]
async fn mysql_purged_position_fails_initial_and_resnapshots_when_needed() {
    let db = MariaDb::start();
    for t in ["ini", "whn"] {
        orders_table(&db, t);
        db.sql(&format!(
            "INSERT INTO {DATABASE}.{t} (id, name, amount) SELECT seq, 'a', seq FROM {DATABASE}.seq_1_to_1000"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    for (name, mode) in [("ini", "initial"), ("whn", "when_needed")] {
        let cfg = source_config(
            &db,
            &format!("{name}_cdc"),
            json!({"table": name, "format": "debezium", "snapshotMode": mode}),
        );
        create(&mut c, name, "SOURCE", &cfg).await.unwrap();
    }
    let fold = |r: &[(String, Value)]| super::postgres::stream_rows(&super::postgres::fold_debezium(r));
    let db_ref = &db;
    let equal = |c: Client, t: &'static str| async move {
        let want = table_state(db_ref, t);
        holds_within(Duration::from_secs(60), || {
            let (c, want) = (c.clone(), want.clone());
            async move { fold(&records(&c, &format!("{t}_cdc")).await) == want }
        })
        .await
    };
    for t in ["ini", "whn"] {
        assert!(equal(c.clone(), t).await, "{t}: the first snapshot");
    }
    let reads = |recs: &[(String, Value)]| recs.iter().filter(|(_, r)| r["op"] == "r").count();
    // A restart with the position held: when_needed streams on, no second snapshot.
    server.terminate();
    db.sql(&format!("UPDATE {DATABASE}.whn SET name = 'b' WHERE id <= 10"));
    server.restart();
    c = server.client().await;
    assert!(equal(c.clone(), "whn").await, "after a restart");
    assert_eq!(
        reads(&records(&c, "whn_cdc").await),
        1000,
        "no snapshot while the position is held"
    );

    // Down while the binlog holding both positions is purged.
    server.terminate();
    db.sql(&format!(
        "UPDATE {DATABASE}.whn SET name = 'c' WHERE id <= 20; DELETE FROM {DATABASE}.whn WHERE id > 990; \
         FLUSH BINARY LOGS;"
    ));
    // A binlog a reader still has open is not purged: wait for the readers to go.
    wait_streaming(&db, 0).await;
    let newest = db
        .sql("SHOW BINARY LOGS")
        .lines()
        .last()
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_owned();
    // Nor one InnoDB has not checkpointed yet: flush its log until the purge takes.
    wait_until(Duration::from_secs(30), "the older binlogs purged", || async {
        db.sql(&format!("FLUSH ENGINE LOGS; PURGE BINARY LOGS TO '{newest}'"));
        db.sql("SHOW BINARY LOGS").lines().count() == 1
    })
    .await;
    server.restart();
    let c = server.client().await;
    wait_status(&c, "ini", "FAILED", Duration::from_secs(60)).await;
    let report = connector_report(&c, "ini").await.to_string();
    assert!(
        report.contains("no longer holds the stored position") && report.contains("when_needed"),
        "initial with a purged position: {report}"
    );
    // when_needed: a new snapshot (990 rows); the ten rows deleted while the position was lost
    // stay in the stream (as with Debezium).
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "when_needed's second snapshot", || {
        let probe = probe.clone();
        async move { reads(&records(&probe, "whn_cdc").await) == 1000 + 990 }
    })
    .await;
    let mut want = table_state(&db, "whn");
    for id in 991..=1000 {
        want.insert(json!({"id": id as f64}).to_string(), ("a".into(), format!("{id}.00")));
    }
    assert_eq!(fold(&records(&c, "whn_cdc").await), want);
    wait_connector_status(&c, "whn", "RUNNING").await;
}

/// Rows inserted into the signal table steer incremental snapshots as Debezium's do: an
/// `execute-snapshot` (a table pattern) copies the captured table again in chunks while a load
/// changes it, ending equal to the table; an `execute-snapshot` stopped by a `stop-snapshot` in
/// the same transaction copies nothing; a malformed signal is ignored. The signal table's rows
/// never reach the stream. Counted: the second copy holds each row the table had once.
#[tokio::test]
async fn mysql_signal_rows_start_and_stop_incremental_snapshots() {
    const N: u64 = 20_000;
    let db = MariaDb::start();
    orders_table(&db, "orders");
    db.sql(&format!(
        "INSERT INTO {DATABASE}.orders (id, name, amount) SELECT seq, 's', seq FROM {DATABASE}.seq_1_to_{N}; \
         CREATE TABLE {DATABASE}.dbz_signal (id VARCHAR(42) PRIMARY KEY, type VARCHAR(32) NOT NULL, data VARCHAR(2048), \
           created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)); \
         CREATE TABLE {DATABASE}.stop (x int);"
    ));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = source_config(
        &db,
        "sig",
        json!({"tables": ["orders"], "format": "debezium", "signalDataCollection": "dbz_signal",
               "incrementalSnapshotChunkSize": 500}),
    );
    create(&mut c, "sig", "SOURCE", &cfg).await.unwrap();
    wait_streaming(&db, 1).await;
    let reads = |records: &[(String, Value)]| records.iter().filter(|(_, r)| r["op"] == "r").count() as u64;
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "the initial snapshot", || {
        let probe = probe.clone();
        async move { reads(&records(&probe, "sig").await) == N }
    })
    .await;
    // Asked for and withdrawn in one transaction: nothing is copied (a marker row after it
    // shows the stream has passed it).
    db.sql(&format!(
        "INSERT INTO {DATABASE}.dbz_signal (id, type, data) VALUES ('bad', 'execute-snapshot', '{{\"data-collections\": 5}}'); \
         BEGIN; \
         INSERT INTO {DATABASE}.dbz_signal (id, type, data) VALUES ('s-0', 'execute-snapshot', '{{\"data-collections\": [\"{DATABASE}.orders\"]}}'); \
         INSERT INTO {DATABASE}.dbz_signal (id, type, data) VALUES ('s-0-stop', 'stop-snapshot', '{{\"type\": \"incremental\"}}'); \
         COMMIT; \
         INSERT INTO {DATABASE}.orders (id, name, amount) VALUES (1999999, 'marker', 0);"
    ));
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the marker row", || {
        let probe = probe.clone();
        async move {
            records(&probe, "sig")
                .await
                .iter()
                .any(|(_, r)| r["after"]["name"] == "marker")
        }
    })
    .await;
    assert_eq!(
        reads(&records(&c, "sig").await),
        N,
        "a withdrawn snapshot copies nothing"
    );
    let mut load = churn(&db, "orders", N, 0.01);
    // Asked for while paused: it waits, in the offset, until resumed.
    db.sql(&format!(
        "BEGIN; INSERT INTO {DATABASE}.dbz_signal (id, type, data) VALUES ('p-1', 'pause-snapshot', NULL); \
         INSERT INTO {DATABASE}.dbz_signal (id, type, data) VALUES ('s-1', 'execute-snapshot', \
         '{{\"data-collections\": [\"[a-z_]+\\\\\\\\.ORDERS\"], \"type\": \"incremental\"}}'); COMMIT;"
    ));
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the paused snapshot in the offset", || {
        let probe = probe.clone();
        async move {
            let inc = &connector_report(&probe, "sig").await["offset"]["incremental"];
            inc["paused"] == true && inc["pending"] == json!([[DATABASE, "orders"]])
        }
    })
    .await;
    // Resumed through the REST API (written to the signal table for the task to read).
    let (code, body) = http(
        server.http,
        "POST",
        "/connectors/sig/signals",
        Some(&json!({"type": "resume-snapshot"})),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    // The queue leaves the offset once the copy is complete.
    let probe = c.clone();
    wait_until(Duration::from_secs(120), "the signalled snapshot to finish", || {
        let probe = probe.clone();
        async move {
            let offset = connector_report(&probe, "sig").await["offset"].clone();
            offset.is_object() && offset.get("incremental").is_none()
        }
    })
    .await;
    db.sql(&format!("INSERT INTO {DATABASE}.stop VALUES (1)"));
    assert!(load.wait().unwrap().success());
    let want = table_state(&db, "orders");
    let fold = |r: &[(String, Value)]| super::postgres::stream_rows(&super::postgres::fold_debezium(r));
    let ok = holds_within(Duration::from_secs(60), || {
        let probe = c.clone();
        let want = want.clone();
        async move { fold(&records(&probe, "sig").await) == want }
    })
    .await;
    let all = records(&c, "sig").await;
    let got = fold(&all);
    let differ: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(*v)).take(5).collect();
    assert!(
        ok,
        "stream ≠ table: {differ:?}, {} keys vs {} rows",
        got.len(),
        want.len()
    );
    // The load's iterations bound how far the table moved during the copy.
    let loops: u64 = db
        .sql(&format!("SELECT max(id) - 2000000 FROM {DATABASE}.orders"))
        .parse()
        .unwrap();
    let second = reads(&all) - N;
    assert!(
        second + loops >= N && second <= N + 1 + loops,
        "second copy: {second} reads of a table of {N} rows changed by {loops} iterations"
    );
    assert!(
        all.iter().all(|(_, r)| r["source"]["table"] == "orders"),
        "only the captured table's changes are in the stream"
    );
    eprintln!("signalled snapshot: {second} reads while {loops} load iterations ran");
}

/// Killed as the first copied rows become durable: the snapshot's position was checkpointed
/// before any row went out, so the restart copies again and replays the changes since that
/// position (the deletes made while the server was down included), in `initial` and in
/// `initial_only` alike (which then completes only once it has caught up). Asserted first: no
/// record is ever in the stream before a checkpoint is.
#[tokio::test]
async fn mysql_kill_at_the_first_copied_rows_replays_from_the_checkpointed_position() {
    const N: u64 = 200_000;
    let db = MariaDb::start();
    for t in ["ini", "only"] {
        orders_table(&db, t);
        db.sql(&format!(
            "INSERT INTO {DATABASE}.{t} (id, name, amount) SELECT seq, 's', seq FROM {DATABASE}.seq_1_to_{N}"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    for (t, mode) in [("ini", "initial"), ("only", "initial_only")] {
        let mut c = server.client().await;
        let stream = format!("{t}_cdc");
        let cfg = source_config(
            &db,
            &stream,
            json!({"table": t, "format": "debezium", "snapshotMode": mode}),
        );
        create(&mut c, t, "SOURCE", &cfg).await.unwrap();
        // The first rows in the stream: the checkpoint is already there.
        let probe = c.clone();
        wait_until(Duration::from_secs(60), "the first copied rows", || {
            let probe = probe.clone();
            let stream = stream.clone();
            async move { !records(&probe, &stream).await.is_empty() }
        })
        .await;
        let report = connector_report(&c, t).await;
        assert_eq!(report["offset"]["snapshotDone"], false, "{mode}: {report}");
        server.kill();
        db.sql(&format!(
            "DELETE FROM {DATABASE}.{t} WHERE id <= 10; UPDATE {DATABASE}.{t} SET name = 'down' WHERE id BETWEEN 11 AND 20"
        ));
        server.restart();
        let c = server.client().await;
        if mode == "initial_only" {
            wait_connector_status(&c, t, "COMPLETED").await;
        }
        let want = table_state(&db, t);
        let fold = |r: &[(String, Value)]| super::postgres::stream_rows(&super::postgres::fold_debezium(r));
        let ok = holds_within(Duration::from_secs(120), || {
            let probe = c.clone();
            let want = want.clone();
            let stream = stream.clone();
            async move { fold(&records(&probe, &stream).await) == want }
        })
        .await;
        let got = fold(&records(&c, &stream).await);
        let differ: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(*v)).take(5).collect();
        let back: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).take(5).collect();
        assert!(
            ok,
            "{mode}: stale {differ:?}, deleted rows still in the stream {back:?}"
        );
    }
}
