//! A throw-away PostgreSQL for tests: `initdb` into a temporary directory, `wal_level=logical`,
//! started with `pg_ctl` on a free port (never the machine's own 5432), stopped and removed on
//! drop. When the tests run as root, the server runs as the `postgres` user (PostgreSQL refuses
//! root).
//!
//! Roles: `postgres` (superuser, password `postgres`) and `cdc` (LOGIN REPLICATION, password
//! [`CDC_PASSWORD`]), owner of database `app`. Host connections use SCRAM, so a wrong password is
//! refused as it would be in production.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const CDC_USER: &str = "cdc";
pub const CDC_PASSWORD: &str = "cdc-Secret-9f1";
pub const DATABASE: &str = "app";
/// The role that logs in by client certificate on a server with [`Postgres::enable_tls`]: the
/// CN of [`crate::tls::TestCa`]'s client certificate.
pub const CERT_USER: &str = "hstream-client";

/// Directory of the newest installed PostgreSQL's server binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("HSTREAM_TEST_PG_BIN") {
        return PathBuf::from(d);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql (scripts/test.sh installs them)")
}

pub struct Postgres {
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
}

impl Postgres {
    /// Initialises and starts a server with logical decoding on.
    pub fn start() -> Postgres {
        Self::start_with(&[])
    }

    /// As [`start`](Self::start), with extra `postgresql.conf` lines.
    pub fn start_with(conf: &[&str]) -> Postgres {
        let bin = bin_dir();
        let owner = crate::service_account("postgres");
        let dir = tempfile::Builder::new()
            .prefix("hstream-pg")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, "postgres\n").expect("pwfile");
        if let Some((uid, gid)) = owner {
            for p in [dir.path(), &data, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
            }
        }
        let mut pg = Postgres {
            _dir: dir,
            data,
            port: 0,
            bin,
            owner,
        };
        let out = pg
            .command("initdb")
            .args(["-D"])
            .arg(&pg.data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut settings = vec![
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("unix_socket_directories = '{}'", pg.data.display()),
            "wal_level = logical".into(),
            "max_wal_senders = 10".into(),
            "max_replication_slots = 10".into(),
            "fsync = off".into(),
            "full_page_writes = off".into(),
            "max_wal_size = 4GB".into(),
            "shared_buffers = 128MB".into(),
        ];
        settings.extend(conf.iter().map(|s| s.to_string()));
        let conf_path = pg.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("read conf");
        text.push('\n');
        text.push_str(&settings.join("\n"));
        text.push('\n');
        std::fs::write(&conf_path, text).expect("write conf");
        // A free port may be taken between the probe and the server's bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = crate::free_port();
            let out = pg.ctl(&["start", "-w", "-t", "60", "-o", &format!("-p {}", pg.port)]);
            if out.status.success() {
                pg.setup();
                return pg;
            }
            last = std::fs::read_to_string(pg.data.join("log")).unwrap_or_default();
        }
        panic!("PostgreSQL did not start: {last}");
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        c.env_remove("PGPORT").env_remove("PGHOST");
        c
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("log"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl")
    }

    fn setup(&self) {
        self.psql(
            "postgres",
            &format!("CREATE ROLE {CDC_USER} LOGIN REPLICATION PASSWORD '{CDC_PASSWORD}'"),
        );
        self.psql("postgres", &format!("CREATE DATABASE {DATABASE} OWNER {CDC_USER}"));
    }

    /// Runs SQL as the superuser over the Unix socket; returns unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_output(db, sql);
        assert!(
            out.status.success(),
            "psql failed: {}\n{sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Like [`psql`](Self::psql) without the assertion.
    pub fn psql_output(&self, db: &str, sql: &str) -> Output {
        self.psql_command(db, sql).output().expect("run psql")
    }

    /// A psql command (e.g. to run a load in the background).
    pub fn psql_command(&self, db: &str, sql: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.arg("-h")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null());
        c
    }

    /// Stops the server (fast shutdown) and starts it again on the same port.
    pub fn restart(&self) {
        let out = self.ctl(&[
            "restart",
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "-o",
            &format!("-p {}", self.port),
        ]);
        assert!(
            out.status.success(),
            "pg_ctl restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&self) {
        let out = self.ctl(&["stop", "-m", "fast", "-w"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn start_again(&self) {
        let out = self.ctl(&["start", "-w", "-t", "60", "-o", &format!("-p {}", self.port)]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Turns TLS on with `ca`'s server certificate and restarts: over TCP only encrypted
    /// connections are let in, on 127.0.0.1 and 127.0.0.2 (an address the certificate does not
    /// name). The role [`CERT_USER`] (the client certificate's CN, a member of `cdc`, with
    /// REPLICATION) logs in by its certificate, every other role by password.
    pub fn enable_tls(&self, ca: &crate::tls::TestCa) {
        for (from, to) in [
            (&ca.server_cert, "server.crt"),
            (&ca.server_key, "server.key"),
            (&ca.ca, "root.crt"),
        ] {
            let dest = self.data.join(to);
            std::fs::copy(from, &dest).expect("copy certificate");
            std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).expect("chown");
            }
        }
        let conf_path = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("read conf");
        text.push_str(
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n\
             listen_addresses = '127.0.0.1,127.0.0.2'\n",
        );
        std::fs::write(&conf_path, text).expect("write conf");
        std::fs::write(
            self.data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 hostssl all \"{CERT_USER}\" 127.0.0.0/8 cert\n\
                 hostssl all all 127.0.0.0/8 scram-sha-256\n\
                 hostnossl all all 127.0.0.0/8 reject\n"
            ),
        )
        .expect("write pg_hba.conf");
        self.psql(
            "postgres",
            &format!("CREATE ROLE \"{CERT_USER}\" LOGIN REPLICATION IN ROLE {CDC_USER}"),
        );
        self.restart();
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Connector options reaching this server as the `cdc` role over TCP.
    pub fn connector_config(&self) -> serde_json::Value {
        serde_json::json!({
            "host": "127.0.0.1",
            "port": self.port,
            "user": CDC_USER,
            "password": CDC_PASSWORD,
            "database": DATABASE,
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop", "-m", "immediate", "-w"]);
    }
}
