//! `hstream-bench`: benchmarks that print our figures beside the physical limit or a peer,
//! measured in the same run on the same disk. Run through `scripts/bench.sh [name]`.

mod airbyte;
mod append;
mod cdc;
mod cluster;
mod connectors;
mod jetstream;
mod kafka;
mod metastore;
mod mqtt;
mod mysql_cdc;
mod pg_cdc;
mod queries;
mod startup;
mod subscribe;
mod wasm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hstream-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Option<Bench>,
}

#[derive(Subcommand)]
enum Bench {
    /// Appends of 1 KiB records over gRPC from concurrent writers, fsync always vs interval,
    /// beside the disk's sequential write rate (dd).
    Append(append::Args),
    /// Append-to-delivery through one subscription: throughput beside ReadStream, and latency
    /// percentiles at a fixed rate.
    Subscribe(subscribe::Args),
    /// generator -> stream -> blackhole at full speed: records/s and server CPU per record.
    Connectors(connectors::Args),
    /// PostgreSQL CDC (1M rows: 5 big + 50k one-row transactions) into a durable stream, beside
    /// pg_recvlogical draining the same WAL to a file.
    PgCdc(pg_cdc::Args),
    /// MySQL/MariaDB CDC (the same 1M rows) into a durable stream, beside mariadb-binlog decoding
    /// the same binlog to text.
    MysqlCdc(mysql_cdc::Args),
    /// QoS 1 messages through Mosquitto into a durable stream by the mqtt source, beside
    /// mosquitto_sub taking the same messages from the same broker.
    Mqtt(mqtt::Args),
    /// The kafka source and sink beside a bare rdkafka consumer and producer moving the same
    /// records through the same (mock) broker.
    Kafka(kafka::Args),
    /// source-hardcoded-records into a durable stream by the airbyte source, beside the bare
    /// connector into `wc -l` and PyAirbyte into its DuckDB cache.
    Airbyte(airbyte::Args),
    /// The field-filter WASM transform beside the same filter written natively, in process.
    Wasm(wasm::Args),
    /// A persistent filter + projection query over 1M JSON records, beside the bare
    /// subscription read of the same stream.
    Queries(queries::Args),
    /// Start-up time, RSS and open files over 1 GB, 10 GB and 10,000 streams / 100,000 shards.
    Startup(startup::Args),
    /// MetaStore operations per second (create stream, commit progress, connector checkpoint),
    /// embedded SQLite beside etcd.
    Metastore(metastore::Args),
    /// Appends on the JetStream store (one server R1, a three-node cluster R3) beside a bare
    /// async-nats publisher doing the same, and beside the local store.
    Jetstream(append::Args),
    /// Three nodes on one etcd and one JetStream server: lookups per second beside Echo, and
    /// the time from kill -9 to every moved connector task running, beside gossip's detection.
    Cluster(cluster::Args),
    /// Every benchmark with its defaults.
    All,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.bench.unwrap_or(Bench::All) {
        Bench::Append(args) => rt.block_on(append::run(args)),
        Bench::Subscribe(args) => rt.block_on(subscribe::run(args)),
        Bench::Connectors(args) => rt.block_on(connectors::run(args)),
        Bench::PgCdc(args) => rt.block_on(pg_cdc::run(args)),
        Bench::MysqlCdc(args) => rt.block_on(mysql_cdc::run(args)),
        Bench::Mqtt(args) => rt.block_on(mqtt::run(args)),
        Bench::Kafka(args) => rt.block_on(kafka::run(args)),
        Bench::Airbyte(args) => rt.block_on(airbyte::run(args)),
        Bench::Wasm(args) => rt.block_on(wasm::run(args)),
        Bench::Queries(args) => rt.block_on(queries::run(args)),
        Bench::Startup(args) => rt.block_on(startup::run(args)),
        Bench::Metastore(args) => rt.block_on(metastore::run(args)),
        Bench::Jetstream(args) => rt.block_on(jetstream::run(args)),
        Bench::Cluster(args) => rt.block_on(cluster::run(args)),
        Bench::All => rt.block_on(async {
            append::run(append::Args::default_args()).await?;
            println!();
            subscribe::run(subscribe::Args::default_args()).await?;
            println!();
            connectors::run(connectors::Args::default_args()).await?;
            println!();
            pg_cdc::run(pg_cdc::Args::default_args()).await?;
            println!();
            mysql_cdc::run(mysql_cdc::Args::default_args()).await?;
            println!();
            mqtt::run(mqtt::Args::default_args()).await?;
            println!();
            kafka::run(kafka::Args::default_args()).await?;
            println!();
            airbyte::run(airbyte::Args::default_args()).await?;
            println!();
            wasm::run(wasm::Args::default_args()).await?;
            println!();
            queries::run(queries::Args::default_args()).await?;
            println!();
            startup::run(startup::Args::default_args()).await?;
            println!();
            metastore::run(metastore::Args::default_args()).await?;
            println!();
            jetstream::run(append::Args::default_args()).await?;
            println!();
            cluster::run(cluster::Args::default_args()).await
        }),
    }
}
