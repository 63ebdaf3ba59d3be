//! PostgreSQL CDC: the workload of `docs/reference/cdc.md` (950k rows in 5 transactions, then
//! 50k one-row transactions) drained by `pg_recvlogical` (pgoutput, proto_version 1, to a file)
//! and by our `postgresql` source into a durable stream (fsync=always), in the same run, from
//! clones of one slot created before the load — so both decode exactly the same WAL.

use std::time::{Duration, Instant};

use hstream_integration_tests::pg::{DATABASE, Postgres};
use hstream_integration_tests::{Server, read_json_stream};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Rows inserted by the big transactions (split over 5).
    #[arg(long, default_value_t = 950_000)]
    bulk_rows: u64,
    /// One-row transactions after them.
    #[arg(long, default_value_t = 50_000)]
    single_txns: u64,
    /// How both clients reach PostgreSQL: the Unix socket, TCP to 127.0.0.1, or each in turn.
    #[arg(long, value_enum, default_value_t = Transport::Both)]
    transport: Transport,
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum Transport {
    Unix,
    Tcp,
    Both,
}

impl Args {
    pub fn default_args() -> Args {
        Args {
            bulk_rows: 950_000,
            single_txns: 50_000,
            transport: Transport::Both,
        }
    }
}

/// CPU seconds of the server's exited children (walsenders among them), from the postmaster's
/// cutime + cstime.
fn reaped_cpu(pg: &Postgres) -> f64 {
    let pid = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).unwrap_or_default();
    let pid = pid.lines().next().unwrap_or("0").trim().to_owned();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<f64> = after.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // After the command name: state is field 3; cutime and cstime are fields 16 and 17.
    let ticks = f.get(12).copied().unwrap_or(0.0) + f.get(13).copied().unwrap_or(0.0);
    ticks / 100.0
}

/// Waits until no walsender is left and the postmaster has counted their CPU.
async fn walsenders_gone(pg: &Postgres) {
    for _ in 0..200 {
        if pg.psql("postgres", "SELECT count(*) FROM pg_stat_replication") == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let total = args.bulk_rows + args.single_txns;
    println!(
        "pg-cdc: {} rows in 5 transactions + {} one-row transactions, pgoutput proto 1",
        args.bulk_rows, args.single_txns
    );
    let pg = &Postgres::start();
    pg.psql(
        DATABASE,
        "CREATE TABLE orders (id bigserial PRIMARY KEY, name text NOT NULL, amount numeric(12,2), \
         payload text, updated_at timestamptz NOT NULL DEFAULT now()); \
         ALTER TABLE orders OWNER TO cdc; CREATE PUBLICATION bench_pub FOR TABLE orders;",
    );
    pg.psql(DATABASE, "SELECT pg_create_logical_replication_slot('tpl', 'pgoutput')");
    // The one-row transactions need not wait for their commit's flush to be loaded quickly.
    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {DATABASE} SET synchronous_commit = off"),
    );
    let t = Instant::now();
    let per_txn = args.bulk_rows / 5;
    for _ in 0..5 {
        pg.psql(
            DATABASE,
            &format!(
                "INSERT INTO orders (name, amount, payload) SELECT 'name-' || g, g % 100000 / 100.0, \
                 repeat(md5(g::text), 3) FROM generate_series(1, {per_txn}) g"
            ),
        );
    }
    pg.psql(
        DATABASE,
        &format!(
            "DO $$ BEGIN FOR i IN 1..{} LOOP \
             INSERT INTO orders (name, amount, payload) VALUES ('one', 1.5, repeat('x', 96)); COMMIT; END LOOP; END $$",
            args.single_txns
        ),
    );
    let end_lsn = pg.psql(DATABASE, "SELECT pg_current_wal_lsn()");
    let rows: u64 = pg.psql(DATABASE, "SELECT count(*) FROM orders").parse()?;
    let id_sum: f64 = pg.psql(DATABASE, "SELECT sum(id) FROM orders").parse()?;
    anyhow::ensure!(rows == per_txn * 5 + args.single_txns, "loaded {rows} rows");
    println!("  loaded in {:.1} s; WAL end {end_lsn}", t.elapsed().as_secs_f64());

    for tcp in match args.transport {
        Transport::Unix => vec![false],
        Transport::Tcp => vec![true],
        Transport::Both => vec![false, true],
    } {
        println!("  over {}:", if tcp { "TCP (127.0.0.1)" } else { "the Unix socket" });
        compare(pg, tcp, &end_lsn, total, id_sum).await?;
    }
    snapshots(pg, rows, id_sum).await?;
    Ok(())
}

/// The same table copied three ways over TCP, in the same run: `COPY … TO STDOUT` by psql into
/// a file (the peer: the server's own fastest export), our initial snapshot (one pass in the
/// slot's exported snapshot) and our incremental snapshot (key chunks of 4096 with their
/// watermarks, while streaming), both into a durable stream.
async fn snapshots(pg: &Postgres, rows: u64, id_sum: f64) -> anyhow::Result<()> {
    println!("  snapshots of the {rows}-row table over TCP:");
    let bin = hstream_integration_tests::pg::bin_dir();
    let psql = bin.join("psql");
    let out = tempfile::NamedTempFile::new()?;
    let script = format!(
        "PGPASSWORD={} {} -h 127.0.0.1 -p {} -U {} -d {DATABASE} -X -q -c \"\\copy orders TO '{}'\" && times",
        hstream_integration_tests::pg::CDC_PASSWORD,
        psql.display(),
        pg.port,
        hstream_integration_tests::pg::CDC_USER,
        out.path().display()
    );
    let t = Instant::now();
    let o = std::process::Command::new("bash").arg("-c").arg(&script).output()?;
    let copy_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        o.status.success(),
        "psql \\copy: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(out);
    pg.psql(
        DATABASE,
        "CREATE TABLE seed (id int PRIMARY KEY); ALTER TABLE seed OWNER TO cdc; INSERT INTO seed VALUES (1)",
    );

    let dir = hstream_integration_tests::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let mut rates = Vec::new();
    for (name, incremental) in [
        ("initial snapshot (one pass)", false),
        ("incremental (chunks of 4096)", true),
    ] {
        let data = tempfile::tempdir_in(&dir)?;
        let server = Server::start(data.path(), &["--fsync", "always"]);
        let mut c = server.client().await;
        let mut config = pg.connector_config();
        config["stream"] = "snap".into();
        config["format"] = "debezium".into();
        config["slotName"] = "snap".into();
        config["incrementalSnapshotChunkSize"] = 4096.into();
        let secs = if incremental {
            // Streaming first (one seed row), then the table joins the capture.
            config["tables"] = serde_json::json!(["seed"]);
            crate::cdc::drain_source(&mut c, "postgresql", &config, 1).await?;
            let t = Instant::now();
            c.alter_connector_config(hstream_proto::AlterConnectorConfigRequest {
                name: "cdc".into(),
                config: serde_json::json!({"tables": ["seed", "orders"]}).to_string(),
            })
            .await?;
            loop {
                let conn = c
                    .get_connector(hstream_proto::GetConnectorRequest { name: "cdc".into() })
                    .await?
                    .into_inner();
                if crate::cdc::delivered(&conn) >= (rows + 1) as f64 {
                    break t.elapsed().as_secs_f64();
                }
                anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "timed out");
                // A benchmark's progress probe, not a test's synchronisation.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            config["table"] = "orders".into();
            config["snapshotMode"] = "initial_only".into();
            crate::cdc::drain_source(&mut c, "postgresql", &config, rows).await?
        };
        let records = read_json_stream(&mut c, "snap").await;
        let sum: f64 = records
            .iter()
            .filter(|(_, r)| r["source"]["table"] == "orders")
            .filter_map(|(_, r)| r["after"]["id"].as_f64())
            .sum();
        anyhow::ensure!(sum == id_sum, "{name}: id sum {sum} != {id_sum}");
        drop(server);
        walsenders_gone(pg).await;
        let _ = pg.psql_output(DATABASE, "SELECT pg_drop_replication_slot('snap')");
        let rate = rows as f64 / secs;
        println!("  {name:<29}: {secs:6.2} s  {rate:9.0} rows/s  (durable stream, fsync=always)");
        rates.push(rate);
    }
    let copy_rate = rows as f64 / copy_secs;
    println!("  psql \\copy -> file           : {copy_secs:6.2} s  {copy_rate:9.0} rows/s");
    println!(
        "  ratios: initial {:.2}x and incremental {:.2}x of \\copy; incremental/initial {:.2}x",
        rates[0] / copy_rate,
        rates[1] / copy_rate,
        rates[1] / rates[0]
    );
    Ok(())
}

/// Drains the same WAL with pg_recvlogical and with our source, over one transport, and prints
/// both with the ratio.
async fn compare(pg: &Postgres, tcp: bool, end_lsn: &str, total: u64, id_sum: f64) -> anyhow::Result<()> {
    // The peer: pg_recvlogical into a file.
    pg.psql(DATABASE, "SELECT pg_copy_logical_replication_slot('tpl', 'peer')");
    let out = tempfile::NamedTempFile::new()?;
    let out_path = out.path().to_owned();
    drop(out);
    let bin = hstream_integration_tests::pg::bin_dir();
    let recv = bin.join("pg_recvlogical");
    let recv = if recv.exists() { recv } else { "pg_recvlogical".into() };
    let host = if tcp {
        "127.0.0.1".to_owned()
    } else {
        pg.data_dir().display().to_string()
    };
    let script = format!(
        "PGPASSWORD={} {} -h {host} -p {} -U {} -d {DATABASE} --slot=peer --start --endpos={end_lsn} --no-loop \
         -f {} -o proto_version=1 -o publication_names=bench_pub && times",
        hstream_integration_tests::pg::CDC_PASSWORD,
        recv.display(),
        pg.port,
        hstream_integration_tests::pg::CDC_USER,
        out_path.display()
    );
    let ws0 = reaped_cpu(pg);
    let t = Instant::now();
    let o = std::process::Command::new("bash").arg("-c").arg(&script).output()?;
    let peer_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        o.status.success(),
        "pg_recvlogical: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let times = String::from_utf8_lossy(&o.stdout);
    let peer_cpu = times.lines().nth(1).map(crate::cdc::parse_times).unwrap_or(0.0);
    let peer_bytes = std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&out_path);
    walsenders_gone(pg).await;
    let peer_ws = reaped_cpu(pg) - ws0;
    pg.psql(DATABASE, "SELECT pg_drop_replication_slot('peer')");

    // Ours: the postgresql source into a durable stream.
    pg.psql(DATABASE, "SELECT pg_copy_logical_replication_slot('tpl', 'ours')");
    let dir = hstream_integration_tests::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let data = tempfile::tempdir_in(&dir)?;
    let server = Server::start(data.path(), &["--fsync", "always"]);
    let mut c = server.client().await;
    let mut config = pg.connector_config();
    config["stream"] = "orders".into();
    config["table"] = "orders".into();
    config["slotName"] = "ours".into();
    config["publicationName"] = "bench_pub".into();
    config["publicationAutocreate"] = false.into();
    config["snapshotMode"] = "never".into();
    config["host"] = host.clone().into();
    let ws0 = reaped_cpu(pg);
    let cpu0 = server.cpu_seconds();
    let ours_secs = crate::cdc::drain_source(&mut c, "postgresql", &config, total).await?;
    let ours_cpu = server.cpu_seconds() - cpu0;
    // Check: every row, once, with the right ids.
    let records = read_json_stream(&mut c, "orders").await;
    let sum: f64 = records.iter().filter_map(|(_, r)| r["value"]["id"].as_f64()).sum();
    anyhow::ensure!(records.len() as u64 == total, "stream has {} records", records.len());
    anyhow::ensure!(sum == id_sum, "id sum {sum} != {id_sum}");
    drop(server);
    walsenders_gone(pg).await;
    let ours_ws = reaped_cpu(pg) - ws0;
    pg.psql(DATABASE, "SELECT pg_drop_replication_slot('ours')");

    let peer_rate = total as f64 / peer_secs;
    let ours_rate = total as f64 / ours_secs;
    let us = |cpu: f64| cpu * 1e6 / total as f64;
    println!(
        "  pg_recvlogical -> file : {peer_secs:6.2} s  {peer_rate:9.0} rows/s  client CPU {:.2} us/row  walsender {:.2} us/row  ({:.0} MB)",
        us(peer_cpu),
        us(peer_ws),
        peer_bytes as f64 / 1e6
    );
    println!(
        "  hstream postgresql     : {ours_secs:6.2} s  {ours_rate:9.0} rows/s  server CPU {:.2} us/row  walsender {:.2} us/row  (durable stream, fsync=always)",
        us(ours_cpu),
        us(ours_ws)
    );
    println!(
        "  ratio ours/pg_recvlogical: {:.2}x rows/s, {:.2}x CPU per row; checked {} rows, id sum ok",
        ours_rate / peer_rate,
        ours_cpu / peer_cpu.max(1e-9),
        records.len()
    );
    Ok(())
}
