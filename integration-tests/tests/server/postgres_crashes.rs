//! The PostgreSQL CDC source killed (SIGKILL) around its snapshot: at the slot's creation,
//! inside the snapshot (held at a known place by an advisory-lock gate), inside an initial_only
//! snapshot, and at the hand-off under load. The stream must end equal to the tables.

use std::time::Duration;

use hstream_integration_tests::pg::{DATABASE, Postgres};
use hstream_integration_tests::*;
use serde_json::{Value, json};

use super::postgres::{
    FAST_RETRY, assert_updates_in_commit_order, create, orders_table, source_config, stream_rows, table_state,
    wait_debezium_equals_table, wait_for_state, wait_streaming,
};

/// A session holding advisory lock 4242 until it ends; the `gated` tables' rows cannot be read
/// by the connector meanwhile (a row security policy waits for the lock), so a snapshot stops
/// at a known place.
pub(super) struct Gate(std::process::Child);

impl Gate {
    pub(super) fn close(pg: &Postgres) -> Gate {
        use std::io::Write;
        let mut child = pg
            .psql_command(DATABASE, "SELECT 1")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(b"SELECT pg_advisory_lock(4242);\n").unwrap();
        stdin.flush().unwrap();
        let gate = Gate(child);
        let held = holds_within_blocking(Duration::from_secs(10), || {
            pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND granted",
            ) == "1"
        });
        assert!(held, "the gate's lock was not taken");
        gate
    }

    pub(super) fn open(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes `table` readable by the connector only while the gate is open.
pub(super) fn gated(pg: &Postgres, table: &str) {
    pg.psql(
        DATABASE,
        &format!(
            "CREATE OR REPLACE FUNCTION gate() RETURNS boolean LANGUAGE plpgsql VOLATILE AS \
             $$ BEGIN PERFORM pg_advisory_lock_shared(4242); PERFORM pg_advisory_unlock_shared(4242); RETURN true; END $$; \
             ALTER TABLE {table} ENABLE ROW LEVEL SECURITY; ALTER TABLE {table} FORCE ROW LEVEL SECURITY; \
             CREATE POLICY gate ON {table} USING (gate());"
        ),
    );
}

/// Waits until the connector's snapshot waits at the gate.
async fn wait_at_gate(pg: &Postgres) {
    wait_at_gate_as(pg, "hstream-cdc-snapshot").await
}

/// Waits until the connector's session `application` waits at the gate.
pub(super) async fn wait_at_gate_as(pg: &Postgres, application: &str) {
    wait_until(
        Duration::from_secs(60),
        "the snapshot to wait at the gate",
        || async move {
            pg.psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application}' \
                     AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                ),
            ) == "1"
        },
    )
    .await;
}

/// Creates source `name` (writing to stream `name`, its last table gated) and kills the server
/// once its snapshot waits at the gate with the first table's `first_rows` in the stream (all
/// but the last fetch, held until the next shows whether it is the last); applies `changes`
/// while the server is down, opens the gate and restarts the server.
async fn kill_inside_snapshot(
    pg: &Postgres,
    server: &mut Server,
    name: &str,
    cfg: Value,
    first_rows: usize,
    changes: &str,
) -> Client {
    let gate = Gate::close(pg);
    let mut c = server.client().await;
    create(&mut c, name, "SOURCE", &cfg).await.unwrap();
    wait_at_gate(pg).await;
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "the first table's rows in the stream", || {
        let probe = probe.clone();
        async move { count_stream_records(&probe, name).await >= first_rows.saturating_sub(4096) }
    })
    .await;
    server.kill();
    pg.psql(DATABASE, changes);
    gate.open();
    server.restart();
    server.client().await
}

/// kill -9 at the slot's creation (slot made, no row sent) and inside the snapshot (one table's
/// rows durable, the next table's not), with rows changed and deleted before the restart: the
/// restarted task takes its snapshot again over the same slot, and the stream ends equal to
/// the tables. (It used to make a new slot, and rows deleted in between stayed in the stream.)
#[tokio::test]
async fn pg_kill_during_slot_creation_and_snapshot_ends_equal_to_the_tables() {
    let pg = Postgres::start();
    for t in ["early", "plain", "late"] {
        orders_table(&pg, t);
    }
    pg.psql(
        DATABASE,
        "INSERT INTO early (id, name, amount) SELECT g, 'e', g FROM generate_series(1, 5000) g; \
         INSERT INTO plain (id, name, amount) SELECT g, 'p', g FROM generate_series(1, 20000) g; \
         INSERT INTO late (id, name, amount) SELECT 100000 + g, 'l', g FROM generate_series(1, 1000) g;",
    );
    gated(&pg, "early");
    gated(&pg, "late");
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("server.log");
    let mut server = Server::start_logged(dir.path(), FAST_RETRY, &log, "info");
    let mut c = server.client().await;

    // 1. At the slot's creation: the slot exists, its checkpoint is written, no row went out.
    let gate = Gate::close(&pg);
    create(
        &mut c,
        "at_slot",
        "SOURCE",
        &source_config(&pg, "at_slot", json!({"table": "early"})),
    )
    .await
    .unwrap();
    wait_at_gate(&pg).await;
    assert_eq!(count_stream_records(&c, "at_slot").await, 0);
    server.kill();
    pg.psql(
        DATABASE,
        "DELETE FROM early WHERE id <= 300; UPDATE early SET name = 'u' WHERE id BETWEEN 301 AND 600; \
         INSERT INTO early (id, name, amount) SELECT 10000 + g, 'n', g FROM generate_series(1, 300) g;",
    );
    gate.open();
    server.restart();
    let c = server.client().await;
    wait_for_state(&c, "at_slot", &pg, "early", Duration::from_secs(60)).await;

    // 2. Inside the snapshot: `plain` is in the stream, `late` waits at the gate.
    let cfg = source_config(&pg, "mid", json!({"tables": ["plain", "late"]}));
    let c = kill_inside_snapshot(
        &pg,
        &mut server,
        "mid",
        cfg,
        20000,
        "DELETE FROM plain WHERE id <= 500; UPDATE plain SET name = 'u', amount = 0 WHERE id BETWEEN 501 AND 1000; \
         DELETE FROM late WHERE id <= 100100;",
    )
    .await;
    let mut want = table_state(&pg, "plain");
    want.extend(table_state(&pg, "late"));
    let probe = c.clone();
    let ok = holds_within(Duration::from_secs(60), || {
        let mut probe = probe.clone();
        let want = want.clone();
        async move { stream_rows(&fold_changes(&read_json_stream(&mut probe, "mid").await)) == want }
    })
    .await;
    let got = stream_rows(&fold_changes(&read_json_stream(&mut c.clone(), "mid").await));
    let stale: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).take(5).collect();
    assert!(
        ok,
        "stream ≠ tables: {} keys vs {} rows; stale e.g. {stale:?}",
        got.len(),
        want.len()
    );

    // 3. initial_only, inside the snapshot: taken again, it streams up to the new snapshot's
    // end, completes and drops its slot.
    orders_table(&pg, "once");
    orders_table(&pg, "once_late");
    pg.psql(
        DATABASE,
        "INSERT INTO once (id, name, amount) SELECT g, 'o', g FROM generate_series(1, 10000) g; \
         INSERT INTO once_late (id, name, amount) SELECT 100000 + g, 'l', g FROM generate_series(1, 100) g;",
    );
    gated(&pg, "once_late");
    let cfg = source_config(
        &pg,
        "once",
        json!({"tables": ["once", "once_late"], "snapshotMode": "initial_only"}),
    );
    let c = kill_inside_snapshot(
        &pg,
        &mut server,
        "once",
        cfg,
        10000,
        "DELETE FROM once WHERE id <= 400; UPDATE once SET name = 'u' WHERE id BETWEEN 401 AND 800;",
    )
    .await;
    wait_connector_status(&c, "once", "COMPLETED").await;
    let mut want = table_state(&pg, "once");
    want.extend(table_state(&pg, "once_late"));
    let got = stream_rows(&fold_changes(&read_json_stream(&mut c.clone(), "once").await));
    assert!(
        got == want,
        "initial_only: stream {} keys ≠ tables {} rows",
        got.len(),
        want.len()
    );

    // The scenario happened: each restarted task took its snapshot again over the same slot.
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("snapshot taken again over its slot").count(),
        3,
        "every restart resumed over its slot"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots"
        ),
        "hstream_at_slot,hstream_mid",
        "the completed initial_only run dropped its slot"
    );
}

/// kill -9 at the hand-off from snapshot to streaming, under a load that provably overlaps
/// the snapshot (it runs before the slot is made and after the snapshot is done): every
/// change committed is in the stream afterwards, each key's changes in commit order.
#[tokio::test]
async fn pg_kill_at_the_hand_off_under_load_ends_equal_to_the_table() {
    let pg = Postgres::start();
    orders_table(&pg, "orders");
    pg.psql(
        DATABASE,
        "INSERT INTO orders (id, name, amount) SELECT g, 's', g FROM generate_series(1, 30000) g; \
         CREATE TABLE stop (x int);",
    );
    // Until told to stop: insert a row, update one, delete one, one transaction each round.
    let mut load = pg
        .psql_command(
            DATABASE,
            "DO $$ DECLARE i int := 0; BEGIN LOOP i := i + 1; \
               INSERT INTO orders (id, name, amount) VALUES (100000 + i, 'during', i); \
               UPDATE orders SET name = 'upd' || i, amount = amount + 1 WHERE id = i * 7; \
               DELETE FROM orders WHERE id = i * 11; \
               COMMIT; EXIT WHEN EXISTS (SELECT 1 FROM stop); PERFORM pg_sleep(0.002); END LOOP; END $$",
        )
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "the load to run", || async {
        pg.psql(DATABASE, "SELECT count(*) > 20 FROM orders WHERE name = 'during'") == "t"
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let cfg = source_config(&pg, "orders_cdc", json!({"table": "orders", "format": "debezium"}));
    create(&mut c, "pgsrc", "SOURCE", &cfg).await.unwrap();
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "the snapshot to finish", || {
        let probe = probe.clone();
        async move {
            connector_report(&probe, "pgsrc").await["progress"]
                .as_str()
                .is_some_and(|p| p.starts_with("snapshot done") || p.starts_with("streaming"))
        }
    })
    .await;
    server.kill();
    server.restart();
    let c = server.client().await;
    // The load goes on while the restarted task streams, then stops.
    wait_streaming(&pg).await;
    let probe = c.clone();
    wait_until(Duration::from_secs(60), "streamed changes of the load", || {
        let mut probe = probe.clone();
        async move {
            read_json_stream(&mut probe, "orders_cdc")
                .await
                .iter()
                .filter(|(_, r)| r["op"] == "c")
                .count()
                > 50
        }
    })
    .await;
    pg.psql(DATABASE, "INSERT INTO stop VALUES (1)");
    assert!(load.wait().unwrap().success());
    let records = wait_debezium_equals_table(&c, "orders_cdc", &pg, "orders", Duration::from_secs(60)).await;
    // The load overlapped the snapshot: some of its rows were read by the snapshot, later ones
    // were streamed.
    let during = |op: &str| {
        records
            .iter()
            .filter(|(_, r)| r["op"] == op && r["after"]["name"] == "during")
            .count()
    };
    assert!(
        during("r") > 0 && during("c") > 0,
        "snapshot {} / streamed {}",
        during("r"),
        during("c")
    );
    assert_updates_in_commit_order(&records);
}
