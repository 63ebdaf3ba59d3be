//! Exactly-once appends from sources (decision 035): the server killed (-9) ten times at
//! random moments while a source loads, and every record it emitted is in its stream once,
//! counted record by record (a folded final state would hide a repeat).

use std::collections::BTreeMap;
use std::time::Duration;

use hstream_integration_tests::pg::{DATABASE, Postgres};
use hstream_integration_tests::*;
use serde_json::json;

const KILLS: usize = 10;

/// Waits from 150 ms up to about a second, differently each time (a seed from the clock,
/// printed so that a failing run can be told apart).
struct Pauses(u64);

impl Pauses {
    fn new() -> Pauses {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        println!("kill pauses seeded with {seed}");
        Pauses(seed)
    }

    fn next(&mut self) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(150 + self.0 % 900)
    }
}

/// Kills the server `KILLS` times, each after a random pause once it serves again, each while
/// `loading` (asked of the running server) says the load goes on; returns the client of the
/// last start.
async fn kill_at_random(server: &mut Server, mut loading: impl AsyncFnMut(&Client) -> bool) -> Client {
    let mut pauses = Pauses::new();
    for kill in 0..KILLS {
        let c = server.client().await;
        tokio::time::sleep(pauses.next()).await;
        assert!(
            loading(&c).await,
            "the load ended before kill {}: make it longer",
            kill + 1
        );
        server.kill();
        server.restart();
    }
    server.client().await
}

/// Whether a connector is not COMPLETED yet (a task that finished stays so after restarts).
async fn not_completed(c: &Client, name: &str) -> bool {
    connector_status(c, name).await != "COMPLETED"
}

/// How many times each value of `ns` is there.
fn counts(ns: impl IntoIterator<Item = u64>) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for n in ns {
        *out.entry(n).or_default() += 1;
    }
    out
}

fn assert_each_once(counts: &BTreeMap<u64, usize>, want: u64) {
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(twice.is_empty(), "records stored more than once: {twice:?}");
    let missing: Vec<u64> = (0..want).filter(|n| !counts.contains_key(n)).take(5).collect();
    assert!(missing.is_empty(), "records missing: {missing:?}");
    assert_eq!(counts.len() as u64, want);
}

/// Waits until the CDC stream holds an insert of every id 0..`rows`, then checks each is there
/// once and nothing else is.
async fn assert_inserts_once(c: &Client, stream: &str, rows: u64) {
    let ids = |records: &[(String, serde_json::Value)]| {
        counts(
            records
                .iter()
                .map(|(_, r)| r["value"]["id"].as_f64().expect("an insert") as u64),
        )
    };
    wait_until(
        Duration::from_secs(180),
        "every committed row in the stream",
        || async {
            let mut probe = c.clone();
            ids(&read_json_stream(&mut probe, stream).await).len() as u64 == rows
        },
    )
    .await;
    let mut probe = c.clone();
    let records = read_json_stream(&mut probe, stream).await;
    assert_each_once(&ids(&records), rows);
    assert_eq!(records.len() as u64, rows, "every change once, none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_records_are_stored_once_through_ten_kills() {
    const N: u64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let cfg = json!({"stream": "eo", "rate": 12_000, "keys": 4, "batchSize": 100, "count": N});
    create_connector(&mut c, "g", "SOURCE", "generator", &cfg)
        .await
        .unwrap();
    let c = kill_at_random(&mut server, async |c| not_completed(c, "g").await).await;
    wait_status(&c, "g", "COMPLETED", Duration::from_secs(120)).await;
    let mut probe = c.clone();
    let records = super::connectors::generated(&mut probe, "eo").await;
    assert_eq!(records.len() as u64, N, "every record once, none twice");
    assert_each_once(&counts(records.iter().map(|r| r.2)), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_changes_are_stored_once_through_ten_kills() {
    const ROWS: u64 = 200_000;
    let pg = Postgres::start();
    super::postgres::orders_table(&pg, "orders");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), super::postgres::FAST_RETRY);
    let mut c = server.client().await;
    let cfg = config_with(pg.connector_config(), "orders_cdc", json!({"table": "orders"}));
    create_connector(&mut c, "pgsrc", "SOURCE", "postgresql", &cfg)
        .await
        .unwrap();
    super::postgres::wait_streaming(&pg).await;
    // 400 transactions of 500 rows, paced so that the kills fall across the whole load.
    let mut load = pg
        .psql_command(
            DATABASE,
            "DO $$ BEGIN FOR b IN 0..399 LOOP \
               INSERT INTO orders (id, name, amount, payload) \
               SELECT b * 500 + g - 1, 'n', g, repeat('p', 100) FROM generate_series(1, 500) g; \
               COMMIT; PERFORM pg_sleep(0.05); END LOOP; END $$",
        )
        .spawn()
        .unwrap();
    let c = kill_at_random(&mut server, async |_| load.try_wait().unwrap().is_none()).await;
    assert!(load.wait().unwrap().success());
    assert_eq!(pg.psql(DATABASE, "SELECT count(*) FROM orders"), ROWS.to_string());
    assert_inserts_once(&c, "orders_cdc", ROWS).await;
}

/// An Airbyte source (records between STATEs come again from the last stored STATE): each
/// record once through ten kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airbyte_records_are_stored_once_through_ten_kills() {
    let count = 300_000u64;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), super::airbyte::FAST_RETRY);
    let mut c = server.client().await;
    let config = json!({"command": super::airbyte::script("airbyte_fake_source.py"),
        "config": {"count": count, "state_every": 1000, "state_sleep": 0.04}, "stream_prefix": "eo_"});
    create_connector(&mut c, "ab", "SOURCE", "airbyte", &config)
        .await
        .unwrap();
    wait_until(super::airbyte::SLOW, "the first records", || async {
        connector_report(&c, "ab").await["offset"]["records"].as_f64() > Some(0.0)
    })
    .await;
    let c = kill_at_random(&mut server, async |c| not_completed(c, "ab").await).await;
    wait_status(&c, "ab", "COMPLETED", super::airbyte::SLOW).await;
    let mut reader = c.clone();
    let got = super::airbyte::ids(&mut reader, "eo_events").await;
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "records stored more than once: {twice:?}");
    assert_eq!(got.len() as u64, count, "every record");
    assert_eq!(got.values().sum::<usize>() as u64, count, "every record once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_changes_are_stored_once_through_ten_kills() {
    const ROWS: u64 = 200_000;
    use hstream_integration_tests::mariadb::{DATABASE as MY, MariaDb};
    let db = MariaDb::start();
    super::mysql::orders_table(&db, "orders");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), super::mysql::FAST_RETRY);
    let mut c = server.client().await;
    let cfg = config_with(db.connector_config(), "orders_cdc", json!({"table": "orders"}));
    create_connector(&mut c, "mysrc", "SOURCE", "mysql", &cfg)
        .await
        .unwrap();
    super::mysql::wait_streaming(&db, 1).await;
    // 400 transactions of 500 rows, paced so that the kills fall across the whole load.
    let mut load = db
        .sql_command(&format!(
            "BEGIN NOT ATOMIC FOR b IN 0..399 DO \
               INSERT INTO {MY}.orders (id, name, amount, payload) \
               SELECT b * 500 + seq - 1, 'n', seq, REPEAT('p', 100) FROM {MY}.seq_1_to_500; \
               DO SLEEP(0.05); \
             END FOR; END"
        ))
        .spawn()
        .unwrap();
    let c = kill_at_random(&mut server, async |_| load.try_wait().unwrap().is_none()).await;
    assert!(load.wait().unwrap().success());
    assert_eq!(db.sql(&format!("SELECT count(*) FROM {MY}.orders")), ROWS.to_string());
    assert_inserts_once(&c, "orders_cdc", ROWS).await;
}
