//! Server settings: command-line flags over an `hstream.yaml` file over defaults.
//!
//! Every flag (except `--config` itself) has a key of the same name in the file's `hserver`
//! section, e.g. `--data-dir` and `hserver.data-dir`; a test holds the two sets equal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::meta::EtcdOptions;
use crate::secret::Secret;
use crate::store::jetstream::NatsOptions;
use crate::store::{FsyncPolicy, StoreOptions};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Parser, Serialize, Deserialize)]
#[command(
    name = "hstream-server",
    version,
    about = "Stream server speaking HStreamDB's HStreamApi"
)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Flags {
    /// Path of an hstream.yaml; its `hserver` section takes the same keys as these flags.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id in the cluster [default: 1]
    #[arg(long)]
    pub server_id: Option<u32>,
    /// Address the gRPC listener binds [default: 0.0.0.0]
    #[arg(long)]
    pub bind_address: Option<String>,
    /// gRPC port (HStreamApi); 0 picks a free one [default: 6570]
    #[arg(long)]
    pub port: Option<u16>,
    /// Port of the REST API [default: 6580]
    #[arg(long)]
    pub http_port: Option<u16>,
    /// Host clients are told to connect to (DescribeCluster, lookups) [default: 127.0.0.1]
    #[arg(long)]
    pub advertised_address: Option<String>,
    /// Directory for the log store and the embedded metastore [default: ./hstream-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// MetaStore location: sqlite://<path>, or etcd://host:port[,host:port...][/prefix] (prefix
    /// default /hstream) [default: sqlite://<data-dir>/meta.db]
    #[arg(long)]
    pub metastore_uri: Option<String>,
    /// TLS to etcd: PEM file of the CA that signed etcd's certificates (endpoints are then
    /// reached over https)
    #[arg(long)]
    pub metastore_ca_file: Option<PathBuf>,
    /// TLS to etcd: PEM client certificate, for etcd's --client-cert-auth (with
    /// --metastore-key-file)
    #[arg(long)]
    pub metastore_cert_file: Option<PathBuf>,
    /// TLS to etcd: PEM private key of --metastore-cert-file
    #[arg(long)]
    pub metastore_key_file: Option<PathBuf>,
    /// etcd user (etcd's auth); the password comes from --metastore-password-file or the
    /// environment variable HSTREAM_METASTORE_PASSWORD, never from the command line
    #[arg(long)]
    pub metastore_user: Option<String>,
    /// File holding the etcd user's password (one line)
    #[arg(long)]
    pub metastore_password_file: Option<PathBuf>,
    /// Where streams' records live: the local segment store in --data-dir (the default), or
    /// NATS JetStream, nats://host:port[,host:port...][/prefix] (prefix default HSTREAM; the
    /// servers' max_payload must hold --max-record-size)
    #[arg(long)]
    pub store: Option<String>,
    /// TLS to NATS: PEM file of the CA that signed the servers' certificates
    #[arg(long)]
    pub store_ca_file: Option<PathBuf>,
    /// NATS user; the password comes from --store-password-file or HSTREAM_STORE_PASSWORD
    #[arg(long)]
    pub store_user: Option<String>,
    /// File holding the NATS user's password (one line)
    #[arg(long)]
    pub store_password_file: Option<PathBuf>,
    /// UDP port of the cluster's gossip (SWIM membership; HStreamDB's --internal-port); unset,
    /// the node runs alone
    #[arg(long, alias = "internal-port")]
    pub gossip_port: Option<u16>,
    /// Gossip addresses (host:port) of nodes to join the cluster through, comma-separated;
    /// any may be down or be this node
    #[arg(long)]
    pub seed_nodes: Option<String>,
    /// How far above an even share a node's subscriptions and connector tasks may go, in
    /// percent (ε of consistent hashing with bounded loads) [default: 25]
    #[arg(long)]
    pub placement_slack: Option<u32>,
    /// Fewest replicas a stream gets on the JetStream store, whatever CreateStream asked for
    /// (clients, SQL and connectors ask for 1 unless told): an operator's floor; the stream's
    /// replicationFactor records what it got [default: 1]
    #[arg(long)]
    pub min_replication_factor: Option<u32>,
    /// Copy the metastore (--metastore-uri) into this one and exit, e.g. the embedded SQLite
    /// into etcd://… before running on etcd; stop the server first; a copy that stopped
    /// half-way can be run again, a finished one is refused
    #[arg(long)]
    #[serde(skip)]
    pub copy_metastore_to: Option<String>,
    /// Largest accepted encoded BatchedRecord, in bytes [default: 1048576]
    #[arg(long)]
    pub max_record_size: Option<usize>,
    /// Most records one appended batch may hold [default: 100000]
    #[arg(long)]
    pub max_batch_records: Option<u32>,
    /// Start even if the data directory holds shard directories the metastore never handed out,
    /// moving them to <data-dir>/quarantine/ (never deleted) [default: false]
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub quarantine_unknown_shards: Option<bool>,
    /// HTTP/2 ping interval on client connections (also the TCP keepalive time), in ms; a
    /// client that vanished is noticed within interval + timeout [default: 10000]
    #[arg(long)]
    pub grpc_keepalive_interval_ms: Option<u64>,
    /// How long a ping may go unanswered before the connection is dropped, in ms [default: 10000]
    #[arg(long)]
    pub grpc_keepalive_timeout_ms: Option<u64>,
    /// Log filter, e.g. info or hstream_server=debug [default: info]
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log line format on stderr: text or json (one JSON object per line) [default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// When appends are fsynced: always (before the ack), interval, never [default: always]
    #[arg(long, value_enum)]
    pub fsync: Option<FsyncPolicy>,
    /// Fsync period under `--fsync interval`, in ms [default: 100]
    #[arg(long)]
    pub fsync_interval_ms: Option<u64>,
    /// Size at which a shard's segment file is sealed and a new one begun [default: 268435456]
    #[arg(long)]
    pub segment_bytes: Option<u64>,
    /// Group-commit writer threads [default: 2]
    #[arg(long)]
    pub writer_threads: Option<usize>,
    /// How often stream retention (backlogDuration) is applied, in ms [default: 1000]
    #[arg(long)]
    pub retention_interval_ms: Option<u64>,
    /// First wait before restarting a connector task that failed retryably, in ms [default: 1000]
    #[arg(long)]
    pub connector_retry_base_ms: Option<u64>,
    /// Longest wait between restarts of a failing connector task, in ms [default: 60000]
    #[arg(long)]
    pub connector_retry_max_ms: Option<u64>,
}

/// Largest `max-record-size` accepted: a batch must fit one store entry.
pub const MAX_RECORD_SIZE: usize = 32 << 20;

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    hserver: Option<Flags>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server_id: u32,
    pub bind_address: String,
    pub port: u16,
    pub http_port: u16,
    pub advertised_address: String,
    pub data_dir: PathBuf,
    pub metastore_uri: String,
    /// How to reach an etcd metastore: TLS files, user and password (shown masked).
    pub etcd: EtcdOptions,
    /// `--store`: JetStream's URI, or `None` for the local store.
    pub store_uri: Option<String>,
    /// How to reach NATS (shown masked).
    pub nats: NatsOptions,
    /// `--min-replication-factor`: the fewest replicas a new stream gets.
    pub min_replication_factor: u32,
    /// `--gossip-port`: the cluster's gossip, or `None` to run alone.
    pub gossip_port: Option<u16>,
    /// `--seed-nodes`, split.
    pub seed_nodes: Vec<String>,
    /// `--placement-slack`: ε of the placement, in percent.
    pub placement_slack_percent: u32,
    /// `--copy-metastore-to`: copy the metastore there and exit instead of serving.
    pub copy_metastore_to: Option<String>,
    pub max_record_size: usize,
    pub max_batch_records: u32,
    pub quarantine_unknown_shards: bool,
    pub grpc_keepalive_interval: Duration,
    pub grpc_keepalive_timeout: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub store: StoreOptions,
    pub retention_interval: Duration,
    pub connector_retry_base: Duration,
    pub connector_retry_max: Duration,
}

impl Settings {
    /// Reads the config file named by `--config` (if any) and lays the flags over it.
    pub fn resolve(flags: Flags) -> anyhow::Result<Settings> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => Flags::default(),
        };
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("hstream-data"));
        let metastore_uri = flags
            .metastore_uri
            .or(file.metastore_uri)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("meta.db").display()));
        let etcd = etcd_options(
            flags.metastore_ca_file.or(file.metastore_ca_file),
            flags.metastore_cert_file.or(file.metastore_cert_file),
            flags.metastore_key_file.or(file.metastore_key_file),
            flags.metastore_user.or(file.metastore_user),
            flags.metastore_password_file.or(file.metastore_password_file),
            std::env::var("HSTREAM_METASTORE_PASSWORD").ok(),
        )?;
        let store_uri = flags.store.or(file.store).filter(|s| s != "local");
        let nats = nats_options(
            flags.store_ca_file.or(file.store_ca_file),
            flags.store_user.or(file.store_user),
            flags.store_password_file.or(file.store_password_file),
            std::env::var("HSTREAM_STORE_PASSWORD").ok(),
        )?;
        let defaults = StoreOptions::default();
        let store = StoreOptions {
            segment_bytes: flags
                .segment_bytes
                .or(file.segment_bytes)
                .unwrap_or(defaults.segment_bytes),
            fsync: flags.fsync.or(file.fsync).unwrap_or(defaults.fsync),
            fsync_interval: flags
                .fsync_interval_ms
                .or(file.fsync_interval_ms)
                .map(Duration::from_millis)
                .unwrap_or(defaults.fsync_interval),
            writer_threads: flags
                .writer_threads
                .or(file.writer_threads)
                .unwrap_or(defaults.writer_threads),
            ..defaults
        };
        let server_id = flags.server_id.or(file.server_id);
        let gossip_port = flags.gossip_port.or(file.gossip_port);
        anyhow::ensure!(
            server_id.is_some() || gossip_port.is_none(),
            "--gossip-port needs an explicit --server-id: every node of a cluster has its own"
        );
        let settings = Settings {
            server_id: server_id.unwrap_or(1),
            bind_address: flags
                .bind_address
                .or(file.bind_address)
                .unwrap_or_else(|| "0.0.0.0".into()),
            port: flags.port.or(file.port).unwrap_or(6570),
            http_port: flags.http_port.or(file.http_port).unwrap_or(6580),
            advertised_address: flags
                .advertised_address
                .or(file.advertised_address)
                .unwrap_or_else(|| "127.0.0.1".into()),
            data_dir,
            metastore_uri,
            etcd,
            store_uri,
            nats,
            min_replication_factor: flags
                .min_replication_factor
                .or(file.min_replication_factor)
                .unwrap_or(1),
            gossip_port,
            seed_nodes: flags
                .seed_nodes
                .or(file.seed_nodes)
                .map(|s| {
                    s.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            placement_slack_percent: flags
                .placement_slack
                .or(file.placement_slack)
                .unwrap_or(crate::cluster::placement::DEFAULT_SLACK_PERCENT),
            copy_metastore_to: flags.copy_metastore_to,
            max_record_size: flags.max_record_size.or(file.max_record_size).unwrap_or(1 << 20),
            max_batch_records: flags
                .max_batch_records
                .or(file.max_batch_records)
                .unwrap_or(crate::batch::DEFAULT_MAX_BATCH_RECORDS),
            quarantine_unknown_shards: flags
                .quarantine_unknown_shards
                .or(file.quarantine_unknown_shards)
                .unwrap_or(false),
            grpc_keepalive_interval: Duration::from_millis(
                flags
                    .grpc_keepalive_interval_ms
                    .or(file.grpc_keepalive_interval_ms)
                    .unwrap_or(10_000),
            ),
            grpc_keepalive_timeout: Duration::from_millis(
                flags
                    .grpc_keepalive_timeout_ms
                    .or(file.grpc_keepalive_timeout_ms)
                    .unwrap_or(10_000),
            ),
            log_level: flags.log_level.or(file.log_level).unwrap_or_else(|| "info".into()),
            log_format: flags.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            store,
            retention_interval: Duration::from_millis(
                flags
                    .retention_interval_ms
                    .or(file.retention_interval_ms)
                    .unwrap_or(1000),
            ),
            connector_retry_base: Duration::from_millis(
                flags
                    .connector_retry_base_ms
                    .or(file.connector_retry_base_ms)
                    .unwrap_or(1000),
            ),
            connector_retry_max: Duration::from_millis(
                flags
                    .connector_retry_max_ms
                    .or(file.connector_retry_max_ms)
                    .unwrap_or(60_000),
            ),
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        // Never echoed: what precedes '@' may be a password.
        for (flag, uri) in [
            ("--metastore-uri", Some(self.metastore_uri.as_str())),
            ("--store", self.store_uri.as_deref()),
        ] {
            if let Some(uri) = uri
                && (uri.starts_with("etcd://") || uri.starts_with("nats://"))
                && uri
                    .split("://")
                    .nth(1)
                    .is_some_and(|rest| rest.split('/').next().is_some_and(|a| a.contains('@')))
            {
                anyhow::bail!(
                    "{flag} cannot carry credentials (user:password@): give them with their own settings \
                     (--metastore-user/--store-user and a password file or environment variable)"
                );
            }
        }
        anyhow::ensure!(
            self.seed_nodes.is_empty() || self.gossip_port.is_some(),
            "--seed-nodes needs --gossip-port (the port this node gossips on)"
        );
        for seed in &self.seed_nodes {
            anyhow::ensure!(
                seed.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                "--seed-nodes: {seed:?} is not host:port"
            );
        }
        anyhow::ensure!(
            self.min_replication_factor >= 1,
            "min-replication-factor must be at least 1"
        );
        anyhow::ensure!(
            self.min_replication_factor == 1 || self.store_uri.is_some(),
            "min-replication-factor {} needs a replicated store (--store nats://…): the local store keeps one copy \
             on this machine's disk",
            self.min_replication_factor
        );
        anyhow::ensure!(
            (1024..=MAX_RECORD_SIZE).contains(&self.max_record_size),
            "max-record-size must be between 1024 and {MAX_RECORD_SIZE} bytes (a batch is one store entry), got {}",
            self.max_record_size
        );
        anyhow::ensure!(self.max_batch_records >= 1, "max-batch-records must be at least 1");
        anyhow::ensure!(
            self.grpc_keepalive_interval >= Duration::from_millis(100)
                && self.grpc_keepalive_timeout >= Duration::from_millis(100),
            "grpc-keepalive-interval-ms and grpc-keepalive-timeout-ms must be at least 100"
        );
        anyhow::ensure!(self.store.segment_bytes >= 4096, "segment-bytes must be at least 4096");
        anyhow::ensure!(self.store.writer_threads >= 1, "writer-threads must be at least 1");
        anyhow::ensure!(
            !self.store.fsync_interval.is_zero(),
            "fsync-interval-ms must be positive"
        );
        anyhow::ensure!(
            !self.retention_interval.is_zero(),
            "retention-interval-ms must be positive"
        );
        Ok(())
    }
}

/// The etcd connection settings; the password from its file (first line) or, without one,
/// the environment.
fn etcd_options(
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
) -> anyhow::Result<EtcdOptions> {
    let password = match password_file {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading --metastore-password-file {}", path.display()))?;
            Some(text.lines().next().unwrap_or_default().to_owned())
        }
        None => password_env,
    };
    if password.is_some() && user.is_none() {
        anyhow::bail!(
            "a metastore password is set (--metastore-password-file or HSTREAM_METASTORE_PASSWORD) but --metastore-user is not"
        );
    }
    if user.is_some() && password.is_none() {
        anyhow::bail!("--metastore-user needs a password: --metastore-password-file or HSTREAM_METASTORE_PASSWORD");
    }
    Ok(EtcdOptions {
        timeout: None,
        ca_file,
        cert_file,
        key_file,
        user,
        password: password.map(Secret),
    })
}

/// The NATS connection settings; the password from its file (first line) or the environment.
fn nats_options(
    ca_file: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
) -> anyhow::Result<NatsOptions> {
    let password = match password_file {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading --store-password-file {}", path.display()))?;
            Some(text.lines().next().unwrap_or_default().to_owned())
        }
        None => password_env.filter(|_| user.is_some()),
    };
    if user.is_some() && password.is_none() {
        anyhow::bail!("--store-user needs a password: --store-password-file or HSTREAM_STORE_PASSWORD");
    }
    if password.is_some() && user.is_none() {
        anyhow::bail!("--store-password-file is set but --store-user is not");
    }
    Ok(NatsOptions {
        ca_file,
        user,
        password: password.map(Secret),
        ..Default::default()
    })
}

fn read_file(path: &Path) -> anyhow::Result<Flags> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    let file: ConfigFile =
        serde_norway::from_str(&text).with_context(|| format!("config file {} is invalid", path.display()))?;
    Ok(file.hserver.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::collections::BTreeSet;

    /// Credentials in a metastore or store URI are refused, without repeating them.
    #[test]
    fn credentials_in_uris_are_refused_unechoed() {
        for (metastore, store) in [
            (Some("etcd://u:s3cret@h:2379/p"), None),
            (None, Some("nats://u:s3cret@h:4222/p")),
        ] {
            let flags = Flags {
                metastore_uri: metastore.map(Into::into),
                store: store.map(Into::into),
                ..Flags::default()
            };
            let err = Settings::resolve(flags).unwrap_err().to_string();
            assert!(
                err.contains("cannot carry credentials") && !err.contains("s3cret"),
                "{err}"
            );
        }
    }

    /// The etcd password comes from its file and never shows in the settings' Debug; a user
    /// without a password, or a password without a user, is refused naming what is missing.
    #[test]
    fn the_etcd_password_is_read_from_its_file_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret-pw\n").unwrap();
        let flags = Flags {
            metastore_user: Some("hstream".into()),
            metastore_password_file: Some(file.clone()),
            ..Flags::default()
        };
        let s = Settings::resolve(flags).unwrap();
        assert_eq!(s.etcd.password.as_ref().map(|p| p.0.as_str()), Some("s3cret-pw"));
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret") && shown.contains("hstream"), "{shown}");
        let err = etcd_options(None, None, None, Some("u".into()), None, None).unwrap_err();
        assert!(err.to_string().contains("HSTREAM_METASTORE_PASSWORD"), "{err}");
        let err = etcd_options(None, None, None, None, Some(file), None).unwrap_err();
        assert!(err.to_string().contains("--metastore-user"), "{err}");
        let from_env = etcd_options(None, None, None, Some("u".into()), None, Some("env-pw".into())).unwrap();
        assert_eq!(from_env.password.map(|p| p.0), Some("env-pw".into()));
    }

    fn full() -> Flags {
        Flags {
            config: None,
            server_id: Some(3),
            bind_address: Some("127.0.0.2".into()),
            port: Some(7000),
            http_port: Some(7001),
            advertised_address: Some("h1".into()),
            data_dir: Some("/d".into()),
            metastore_uri: Some("sqlite:///m.db".into()),
            metastore_ca_file: Some("/ca.pem".into()),
            metastore_cert_file: Some("/client.pem".into()),
            metastore_key_file: Some("/client.key".into()),
            metastore_user: None,
            metastore_password_file: None,
            store: Some("nats://n1:4222/p".into()),
            store_ca_file: Some("/nats-ca.pem".into()),
            store_user: None,
            store_password_file: None,
            min_replication_factor: Some(3),
            gossip_port: Some(6571),
            seed_nodes: Some("h1:6571,h2:6571".into()),
            placement_slack: Some(10),
            copy_metastore_to: None,
            max_record_size: Some(2048),
            max_batch_records: Some(10),
            quarantine_unknown_shards: Some(true),
            grpc_keepalive_interval_ms: Some(1000),
            grpc_keepalive_timeout_ms: Some(2000),
            log_level: Some("debug".into()),
            log_format: Some(LogFormat::Json),
            fsync: Some(FsyncPolicy::Interval),
            fsync_interval_ms: Some(5),
            segment_bytes: Some(8192),
            writer_threads: Some(3),
            retention_interval_ms: Some(50),
            connector_retry_base_ms: Some(10),
            connector_retry_max_ms: Some(100),
        }
    }

    #[test]
    fn every_flag_has_a_config_key() {
        let keys: BTreeSet<String> = match serde_norway::to_value(full()).unwrap() {
            serde_norway::Value::Mapping(m) => m.keys().map(|k| k.as_str().unwrap().to_owned()).collect(),
            _ => unreachable!(),
        };
        let flags: BTreeSet<String> = Flags::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            // Where the settings come from, and a one-shot action: not settings themselves.
            .filter(|l| l != "config" && l != "copy-metastore-to")
            .collect();
        assert_eq!(keys, flags);
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hstream.yaml");
        std::fs::write(
            &path,
            "hserver:\n  port: 7100\n  data-dir: /from-file\n  fsync: never\nhstore:\n  log-level: x\n",
        )
        .unwrap();
        let s = Settings::resolve(Flags::parse_from([
            "hstream-server",
            "--config",
            path.to_str().unwrap(),
            "--port",
            "7200",
        ]))
        .unwrap();
        assert_eq!(s.port, 7200);
        assert_eq!(s.data_dir, PathBuf::from("/from-file"));
        assert_eq!(s.store.fsync, FsyncPolicy::Never);
        assert_eq!(s.metastore_uri, "sqlite:///from-file/meta.db");
        let all = Settings::resolve(Flags { config: None, ..full() }).unwrap();
        assert_eq!(all.store.writer_threads, 3);
    }

    #[test]
    fn switches_take_no_value() {
        let s = Settings::resolve(Flags::parse_from(["hstream-server", "--quarantine-unknown-shards"])).unwrap();
        assert!(s.quarantine_unknown_shards);
        let s = Settings::resolve(Flags::parse_from(["hstream-server"])).unwrap();
        assert!(!s.quarantine_unknown_shards);
        assert_eq!(s.max_batch_records, crate::batch::DEFAULT_MAX_BATCH_RECORDS);
    }

    /// A batch the store could not hold would fail as INTERNAL after passing validation: such
    /// a limit is refused at start instead.
    #[test]
    fn max_record_size_is_bounded_by_the_store_entry() {
        let err = Settings::resolve(Flags::parse_from(["hstream-server", "--max-record-size", "1073741824"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max-record-size must be between 1024 and 33554432"),
            "{err}"
        );
        const { assert!(MAX_RECORD_SIZE <= crate::store::MAX_PAYLOAD_LEN) };
        Settings::resolve(Flags::parse_from(["hstream-server", "--max-record-size", "33554432"])).unwrap();
    }

    /// Seeds need a gossip port to be joined from, and each must be host:port; the internal
    /// port of HStreamDB's flags is the gossip port.
    #[test]
    fn seed_nodes_are_checked() {
        let flags = |extra: &[&str]| Flags::parse_from(["hstream-server"].iter().chain(extra));
        let err = Settings::resolve(flags(&["--seed-nodes", "h1:6571"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--seed-nodes needs --gossip-port"), "{err}");
        let err = Settings::resolve(flags(&["--gossip-port", "6571"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--gossip-port needs an explicit --server-id"), "{err}");
        let flags = |extra: &[&str]| Flags::parse_from(["hstream-server", "--server-id", "2"].iter().chain(extra));
        let err = Settings::resolve(flags(&["--gossip-port", "6571", "--seed-nodes", "h1:6571,h2"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#""h2" is not host:port"#), "{err}");
        let s = Settings::resolve(flags(&["--internal-port", "6571", "--seed-nodes", "h1:6571, h2:6572"])).unwrap();
        assert_eq!(s.gossip_port, Some(6571));
        assert_eq!(s.seed_nodes, ["h1:6571", "h2:6572"]);
    }

    /// A replication floor is for a replicated store; on the local store (one copy) it is
    /// refused at start rather than recorded as a promise nobody keeps.
    #[test]
    fn min_replication_factor_needs_a_replicated_store() {
        let flags = |extra: &[&str]| Flags::parse_from(["hstream-server"].iter().chain(extra));
        let err = Settings::resolve(flags(&["--min-replication-factor", "3"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("min-replication-factor 3 needs a replicated store"),
            "{err}"
        );
        let err = Settings::resolve(flags(&["--min-replication-factor", "0"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("min-replication-factor must be at least 1"), "{err}");
        let s = Settings::resolve(flags(&["--store", "nats://n1:4222", "--min-replication-factor", "3"])).unwrap();
        assert_eq!(s.min_replication_factor, 3);
        assert_eq!(Settings::resolve(flags(&[])).unwrap().min_replication_factor, 1);
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hstream.yaml");
        std::fs::write(&path, "hserver:\n  prot: 1\n").unwrap();
        let err = Settings::resolve(Flags {
            config: Some(path),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("prot"), "{err:#}");
    }
}
