//! Connector tasks with CDC sources over three nodes: twenty generators and ten PostgreSQL and
//! MariaDB sources under load, through a node killed and restarted (the cluster harness and
//! helpers are `cluster.rs`'s).

use std::time::{Duration, Instant};

use hstream_integration_tests::*;

use super::cluster::{Cluster, check_sequences, connector_nodes, loads, running_on, start_generators, wait_running_on};

/// Ten CDC sources, five PostgreSQL and five MariaDB, each capturing its own table under a load
/// of inserts, updates and deletes that runs from before their snapshots to the end.
struct CdcLoad {
    pg: hstream_integration_tests::pg::Postgres,
    db: hstream_integration_tests::mariadb::MariaDb,
    pg_load: std::process::Child,
    db_load: std::process::Child,
}

const CDC_EACH: usize = 5;

impl Drop for CdcLoad {
    /// A failed test leaves no load running (it ends with its database anyway).
    fn drop(&mut self) {
        for load in [&mut self.pg_load, &mut self.db_load] {
            let _ = load.kill();
            let _ = load.wait();
        }
    }
}

impl CdcLoad {
    /// Tables `o0`…`o4` in both databases with `rows` rows each, and the load started.
    fn start(rows: usize) -> CdcLoad {
        use hstream_integration_tests::mariadb::{DATABASE as MY, MariaDb};
        use hstream_integration_tests::pg::{DATABASE as PG, Postgres};
        let (pg, db) = (Postgres::start(), MariaDb::start());
        let mut pg_round = String::new();
        let mut db_round = String::new();
        for t in 0..CDC_EACH {
            super::postgres::orders_table(&pg, &format!("o{t}"));
            pg.psql(
                PG,
                &format!("INSERT INTO o{t} (id, name, amount) SELECT g, 'n' || g, g FROM generate_series(1, {rows}) g"),
            );
            super::mysql::orders_table(&db, &format!("o{t}"));
            db.sql(&format!(
                "INSERT INTO {MY}.o{t} (id, name, amount) SELECT seq, CONCAT('n', seq), seq FROM {MY}.seq_1_to_{rows}"
            ));
            // One round per table: a row inserted, one updated, one deleted.
            pg_round.push_str(&format!(
                "INSERT INTO o{t} (id, name, amount) VALUES (100000 + i, 'during', i); \
                 UPDATE o{t} SET name = 'upd' || i, amount = amount + 1 WHERE id = i * 7 + {t}; \
                 DELETE FROM o{t} WHERE id = i * 11 + {t}; "
            ));
            db_round.push_str(&format!(
                "INSERT INTO {MY}.o{t} (id, name, amount) VALUES (100000 + i, 'during', i); \
                 UPDATE {MY}.o{t} SET name = CONCAT('upd', i), amount = amount + 1 WHERE id = i * 7 + {t}; \
                 DELETE FROM {MY}.o{t} WHERE id = i * 11 + {t}; "
            ));
        }
        pg.psql(PG, "CREATE TABLE stop (x int)");
        db.sql(&format!("CREATE TABLE {MY}.stop (x INT)"));
        // Until a row is put in `stop` (or 30,000 rounds): one transaction per round.
        let pg_load = pg
            .psql_command(
                PG,
                &format!(
                    "DO $$ DECLARE i int := 0; BEGIN LOOP i := i + 1; {pg_round} COMMIT; \
                     EXIT WHEN i >= 30000 OR EXISTS (SELECT 1 FROM stop); PERFORM pg_sleep(0.01); END LOOP; END $$"
                ),
            )
            .spawn()
            .unwrap();
        let db_load = db
            .sql_command(&format!(
                "BEGIN NOT ATOMIC DECLARE i INT DEFAULT 0; \
                 WHILE i < 30000 AND NOT EXISTS (SELECT 1 FROM {MY}.stop) DO SET i = i + 1; \
                 START TRANSACTION; {db_round} COMMIT; DO SLEEP(0.01); END WHILE; END"
            ))
            .spawn()
            .unwrap();
        CdcLoad {
            pg,
            db,
            pg_load,
            db_load,
        }
    }

    /// Creates the sources `pg0`…`pg4` and `my0`…`my4` (Debezium envelopes) into streams
    /// `pgs0`…, `mys0`….
    async fn create_sources(&self, c: &Client) {
        for t in 0..CDC_EACH {
            let table = serde_json::json!({"table": format!("o{t}"), "format": "debezium"});
            let cfg = config_with(self.pg.connector_config(), &format!("pgs{t}"), table.clone());
            create_connector(&mut c.clone(), &format!("pg{t}"), "SOURCE", "postgresql", &cfg)
                .await
                .unwrap();
            let cfg = config_with(self.db.connector_config(), &format!("mys{t}"), table);
            create_connector(&mut c.clone(), &format!("my{t}"), "SOURCE", "mysql", &cfg)
                .await
                .unwrap();
        }
    }

    /// Waits until every source streams: five walsenders, five binlog readers.
    async fn wait_streaming(&self) {
        wait_until(Duration::from_secs(60), "ten CDC sources streaming", || async {
            self.pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'hstream-cdc' AND state = 'streaming'",
            ) == CDC_EACH.to_string()
                && self
                    .db
                    .sql("SELECT count(*) FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")
                    == CDC_EACH.to_string()
        })
        .await;
    }

    /// Stops the load, then waits until each stream folds to exactly its table; returns the
    /// rounds of the load and the records read.
    async fn stop_and_compare(mut self, c: &Client) -> (String, usize) {
        use hstream_integration_tests::mariadb::DATABASE as MY;
        use hstream_integration_tests::pg::DATABASE as PG;
        self.pg.psql(PG, "INSERT INTO stop VALUES (1)");
        self.db.sql(&format!("INSERT INTO {MY}.stop VALUES (1)"));
        assert!(self.pg_load.wait().unwrap().success(), "the PostgreSQL load failed");
        assert!(self.db_load.wait().unwrap().success(), "the MariaDB load failed");
        let rounds = format!(
            "{} PostgreSQL / {} MariaDB rounds",
            self.pg.psql(PG, "SELECT count(*) FROM o0 WHERE name = 'during'"),
            self.db
                .sql(&format!("SELECT count(*) FROM {MY}.o0 WHERE name = 'during'"))
        );
        let mut read = 0;
        for t in 0..CDC_EACH {
            let table = format!("o{t}");
            for (stream, want) in [
                (format!("pgs{t}"), super::postgres::table_state(&self.pg, &table)),
                (format!("mys{t}"), super::mysql::table_state(&self.db, &table)),
            ] {
                let equal = holds_within(Duration::from_secs(120), || {
                    let (mut c, stream, want) = (c.clone(), stream.clone(), want.clone());
                    async move {
                        try_read_json_stream(&mut c, &stream).await.is_ok_and(|records| {
                            super::postgres::stream_rows(&super::postgres::fold_debezium(&records)) == want
                        })
                    }
                })
                .await;
                let records = read_json_stream(&mut c.clone(), &stream).await;
                let got = super::postgres::stream_rows(&super::postgres::fold_debezium(&records));
                assert!(
                    equal,
                    "{stream}: {} keys folded, the table has {} rows; first difference: {:?}",
                    got.len(),
                    want.len(),
                    want.iter().find(|(k, v)| got.get(*k) != Some(v))
                );
                read += records.len();
            }
        }
        (rounds, read)
    }
}

/// Twenty generator sources and ten CDC sources (five PostgreSQL, five MariaDB, under load)
/// spread over three nodes within the bound (⌈1.25·30/3⌉ = 13 each); the node running the
/// most CDC sources (not the first) is SIGKILLed: its tasks run on the others within 10 s;
/// restarted: only what the bound requires moves back. Every CDC stream then folds to exactly
/// its table; every generator stream holds every sequence number, and restarts its sequence
/// only where its task moved: a task never ran twice at once (two copies would interleave two
/// sequences).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_tasks_with_cdc_move_off_a_killed_node_and_back_within_the_bound() {
    const GENERATORS: usize = 20;
    const TASKS: usize = GENERATORS + 2 * CDC_EACH;
    const BOUND: usize = 13;
    let cdc = CdcLoad::start(3000);
    let mut cluster = Cluster::start(&["--connector-retry-base-ms", "100", "--connector-retry-max-ms", "1000"]).await;
    let c1 = cluster.nodes[0].client().await;
    start_generators(&c1, "g", "gs", GENERATORS, 100).await;
    cdc.create_sources(&c1).await;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
    wait_running_on(&c1, TASKS, &addrs, "every task running").await;
    cdc.wait_streaming().await;
    let before = connector_nodes(&c1).await;
    let spread = loads(&before);
    assert!(spread.values().all(|&l| l <= BOUND), "over the bound: {spread:?}");

    // Kill the node with the most CDC sources that is not the first (whose client the test
    // keeps); the most tasks among equals.
    let is_cdc = |name: &str| name.starts_with("pg") || name.starts_with("my");
    let (victim, cdc_moved, moved) = (1..3)
        .map(|i| {
            let on = |cdc: bool| {
                before
                    .iter()
                    .filter(|(name, (n, _))| *n == addrs[i] && (!cdc || is_cdc(name)))
                    .count()
            };
            (i, on(true), on(false))
        })
        .max_by_key(|&(_, cdc, all)| (cdc, all))
        .unwrap();
    assert!(cdc_moved > 0, "no CDC source on nodes 2 and 3: {before:?}");
    let survivors: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, a)| a.clone())
        .collect();
    let killed = Instant::now();
    cluster.nodes[victim].kill();
    wait_running_on(&c1, TASKS, &survivors, "the killed node's tasks running elsewhere").await;
    let took_over = killed.elapsed();
    assert!(
        took_over < Duration::from_secs(10),
        "{moved} tasks ran elsewhere only after {took_over:?}"
    );
    let after_kill = connector_nodes(&c1).await;
    // Two members: ⌈1.25·30/2⌉ = 19 each at most.
    assert!(
        loads(&after_kill).values().all(|&l| l <= 19),
        "{:?}",
        loads(&after_kill)
    );

    // Back: the newcomer takes only the excess over the bound of three members.
    cluster.nodes[victim].restart();
    let back = cluster.nodes[victim].addr.to_string();
    let mut now_on = survivors.clone();
    now_on.push(back.clone());
    wait_until(Duration::from_secs(30), "the restarted node to take its share", || {
        let (c, on, back) = (c1.clone(), now_on.clone(), back.clone());
        async move {
            let placed = connector_nodes(&c).await;
            running_on(&placed, TASKS, &on)
                && loads(&placed).values().all(|&l| l <= BOUND)
                && loads(&placed).contains_key(&back)
        }
    })
    .await;
    let settled = connector_nodes(&c1).await;
    let moved_back = settled
        .iter()
        .filter(|(name, (n, _))| after_kill[*name].0 != *n)
        .count();
    let excess: usize = loads(&after_kill).values().map(|&l| l.saturating_sub(BOUND)).sum();
    assert_eq!(
        moved_back, excess,
        "moves on rejoin: {moved_back}, the bound required {excess}"
    );

    // The CDC streams end as their tables.
    let (rounds, cdc_records) = cdc.stop_and_compare(&c1).await;

    // Stop every generator where it runs and read every stream.
    let tasks: Vec<(String, String, usize)> = (0..GENERATORS)
        .map(|i| {
            let name = format!("g{i:02}");
            let moves = usize::from(before[&name].0 != after_kill[&name].0)
                + usize::from(after_kill[&name].0 != settled[&name].0);
            (name, format!("gs{i:02}"), moves)
        })
        .collect();
    let restarts_total = check_sequences(&c1, &tasks).await;
    println!(
        "connector failover: {moved} tasks of the killed node ({cdc_moved} CDC) ran elsewhere after {took_over:?}; on rejoin {moved_back} moved (bound {BOUND}); ten CDC streams equal to their tables ({cdc_records} records, {rounds}); {restarts_total} sequence restarts over {GENERATORS} generator streams"
    );
}
