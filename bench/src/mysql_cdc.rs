//! MySQL/MariaDB CDC: the workload of `docs/reference/cdc.md` (950k rows in 5 transactions,
//! then 50k one-row transactions) in a binlog file of its own, decoded by `mariadb-binlog
//! --read-from-remote-server` (rows decoded to text, into a file) and by our `mysql` source into
//! a durable stream (fsync=always), in the same run, from the same file and position.

use std::time::Instant;

use hstream_integration_tests::Server;
use hstream_integration_tests::mariadb::{CDC_PASSWORD, CDC_USER, DATABASE, MariaDb};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Rows inserted by the big transactions (split over 5).
    #[arg(long, default_value_t = 950_000)]
    bulk_rows: u64,
    /// One-row transactions after them.
    #[arg(long, default_value_t = 50_000)]
    single_txns: u64,
}

impl Args {
    pub fn default_args() -> Args {
        Args {
            bulk_rows: 950_000,
            single_txns: 50_000,
        }
    }
}

fn master_status(db: &MariaDb) -> (String, u64) {
    let s = db.sql("SHOW MASTER STATUS");
    let f: Vec<&str> = s.split('\t').collect();
    (f[0].to_owned(), f[1].parse().unwrap_or(4))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let total = args.bulk_rows + args.single_txns;
    println!(
        "mysql-cdc (MariaDB): {} rows in 5 transactions + {} one-row transactions, ROW binlog",
        args.bulk_rows, args.single_txns
    );
    let db = &MariaDb::start();
    db.sql(&format!(
        "CREATE TABLE {DATABASE}.orders (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, name TEXT NOT NULL, \
         amount DECIMAL(12,2), payload TEXT, updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)); \
         FLUSH BINARY LOGS"
    ));
    let (file, start) = master_status(db);
    let t = Instant::now();
    let per_txn = args.bulk_rows / 5;
    for _ in 0..5 {
        db.sql(&format!(
            "INSERT INTO {DATABASE}.orders (name, amount, payload) SELECT CONCAT('name-', seq), seq % 100000 / 100, \
             REPEAT(MD5(seq), 3) FROM {DATABASE}.seq_1_to_{per_txn}"
        ));
    }
    let single = db
        .sql_command(&format!(
            "BEGIN NOT ATOMIC FOR i IN 1..{} DO \
             INSERT INTO {DATABASE}.orders (name, amount, payload) VALUES ('one', 1.5, REPEAT('x', 96)); END FOR; END",
            args.single_txns
        ))
        .status()?;
    anyhow::ensure!(single.success(), "the one-row load failed");
    let (end_file, end) = master_status(db);
    anyhow::ensure!(end_file == file, "the load spans binlog files {file}..{end_file}");
    let rows: u64 = db.sql(&format!("SELECT count(*) FROM {DATABASE}.orders")).parse()?;
    let id_sum: f64 = db.sql(&format!("SELECT sum(id) FROM {DATABASE}.orders")).parse()?;
    anyhow::ensure!(rows == per_txn * 5 + args.single_txns, "loaded {rows} rows");
    println!(
        "  loaded in {:.1} s; {file} {start}..{end} ({:.1} MB of binlog)",
        t.elapsed().as_secs_f64(),
        (end - start) as f64 / 1e6
    );

    // The peer: mariadb-binlog reading the file from the server, rows decoded to text.
    let out_dir = hstream_integration_tests::repo_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let out = tempfile::NamedTempFile::new_in(&out_dir)?;
    let script = format!(
        "mariadb-binlog --no-defaults --read-from-remote-server -h127.0.0.1 -P{} -u{CDC_USER} -p{CDC_PASSWORD} \
         -v --base64-output=decode-rows --start-position={start} --stop-position={end} {file} > {} && times",
        db.port,
        out.path().display()
    );
    let t = Instant::now();
    let o = std::process::Command::new("bash").arg("-c").arg(&script).output()?;
    let peer_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        o.status.success(),
        "mariadb-binlog: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let times = String::from_utf8_lossy(&o.stdout);
    let peer_cpu = times.lines().nth(1).map(crate::cdc::parse_times).unwrap_or(0.0);
    let peer_bytes = std::fs::metadata(out.path()).map(|m| m.len()).unwrap_or(0);
    drop(out);

    // Ours: the mysql source into a durable stream, from the same file and position.
    let data = tempfile::tempdir_in(&out_dir)?;
    let server = Server::start(data.path(), &["--fsync", "always"]);
    let mut c = server.client().await;
    let mut config = db.connector_config();
    config["stream"] = "orders".into();
    config["table"] = "orders".into();
    config["snapshotMode"] = "never".into();
    config["positionMode"] = "file".into();
    config["startFile"] = file.clone().into();
    config["startPosition"] = start.into();
    let cpu0 = server.cpu_seconds();
    let ours_secs = crate::cdc::drain_source(&mut c, "mysql", &config, total).await?;
    let ours_cpu = server.cpu_seconds() - cpu0;
    let records = hstream_integration_tests::read_json_stream(&mut c, "orders").await;
    let sum: f64 = records.iter().filter_map(|(_, r)| r["value"]["id"].as_f64()).sum();
    anyhow::ensure!(records.len() as u64 == total, "stream has {} records", records.len());
    anyhow::ensure!(sum == id_sum, "id sum {sum} != {id_sum}");
    drop(server);

    let peer_rate = total as f64 / peer_secs;
    let ours_rate = total as f64 / ours_secs;
    let us = |cpu: f64| cpu * 1e6 / total as f64;
    println!(
        "  mariadb-binlog -> text  : {peer_secs:6.2} s  {peer_rate:9.0} rows/s  client CPU {:.2} us/row  ({:.0} MB of text)",
        us(peer_cpu),
        peer_bytes as f64 / 1e6
    );
    println!(
        "  hstream mysql           : {ours_secs:6.2} s  {ours_rate:9.0} rows/s  server CPU {:.2} us/row  (durable stream, fsync=always)",
        us(ours_cpu)
    );
    println!(
        "  ratio ours/mariadb-binlog: {:.2}x rows/s, {:.2}x CPU per row; checked {} rows, id sum ok",
        ours_rate / peer_rate,
        ours_cpu / peer_cpu.max(1e-9),
        records.len()
    );
    Ok(())
}
