//! A throw-away MariaDB for tests: `mariadb-install-db` into a temporary directory, `mariadbd`
//! with a ROW binlog (full row images and metadata) and GTIDs, on a free port (never the
//! machine's own 3306) and its own socket; killed and removed on drop. When the tests run as
//! root, the server runs as the `mysql` user.
//!
//! Accounts: `root` over the socket without a password, and `cdc`@`localhost`/`127.0.0.1` with
//! [`CDC_PASSWORD`] and the grants a CDC reader needs (SELECT, RELOAD, SHOW DATABASES, LOCK
//! TABLES, REPLICATION SLAVE, BINLOG MONITOR). Database [`DATABASE`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const CDC_USER: &str = "cdc";
pub const CDC_PASSWORD: &str = "cdc-Maria-7c2";
pub const DATABASE: &str = "app";
/// The account that logs in by client certificate on a server from [`MariaDb::start_tls`]
/// (`REQUIRE SUBJECT` of [`crate::tls::TestCa`]'s client certificate, no password).
pub const CERT_USER: &str = "hstream-client";

pub struct MariaDb {
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    child: Option<Child>,
    user: Option<String>,
    extra: Vec<String>,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        Self::start_with(&[])
    }

    /// As [`start`](Self::start), with extra `mariadbd` options (e.g. `--binlog-format=STATEMENT`).
    pub fn start_with(extra: &[&str]) -> MariaDb {
        let dir = tempfile::Builder::new()
            .prefix("hstream-maria")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        let owner = crate::service_account("mysql");
        let user = owner.map(|_| "mysql".to_owned());
        if let Some((uid, gid)) = owner {
            for p in [dir.path(), data.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
            }
        }
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if let Some(u) = &user {
            install.arg(format!("--user={u}"));
        }
        // Its own temporary directory: concurrent installs collide in a shared /tmp.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).expect("chown");
        }
        install.arg(format!("--tmpdir={}", tmp.display())).env("TMPDIR", &tmp);
        let out = install.output().expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = dir.path().join("sock");
        let mut db = MariaDb {
            _dir: dir,
            data,
            socket,
            port: 0,
            child: None,
            user,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // A free port may be taken between the probe and the bind: try a few.
        for _ in 0..5 {
            db.port = crate::free_port();
            if db.spawn() {
                db.setup();
                return db;
            }
        }
        panic!("MariaDB did not start: {}", db.error_log());
    }

    /// A server with TLS from `ca`'s server certificate, refusing unencrypted TCP connections
    /// (`require_secure_transport`), listening on 127.0.0.1 and 127.0.0.2 (an address the
    /// certificate does not name), with [`CERT_USER`] logging in by certificate. `ca`'s
    /// directory and files are made readable to the server's account (test keys only).
    pub fn start_tls(ca: &crate::tls::TestCa) -> MariaDb {
        use std::os::unix::fs::PermissionsExt;
        let dir = ca.ca.parent().expect("CA directory");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for f in [&ca.ca, &ca.server_cert, &ca.server_key] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let db = Self::start_with(&[
            &format!("--ssl-ca={}", ca.ca.display()),
            &format!("--ssl-cert={}", ca.server_cert.display()),
            &format!("--ssl-key={}", ca.server_key.display()),
            "--require-secure-transport=ON",
            "--bind-address=127.0.0.1,127.0.0.2",
        ]);
        db.sql(&format!(
            "CREATE USER '{CERT_USER}'@'127.0.0.%' REQUIRE SUBJECT '/CN={CERT_USER}'; \
             GRANT SELECT, RELOAD, SHOW DATABASES, LOCK TABLES, REPLICATION SLAVE, BINLOG MONITOR \
             ON *.* TO '{CERT_USER}'@'127.0.0.%'; GRANT ALL ON {DATABASE}.* TO '{CERT_USER}'@'127.0.0.%';"
        ));
        db
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.data.join("error.log")).unwrap_or_default()
    }

    /// Starts `mariadbd` and waits until it answers; false if it exited first.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data.display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--port={}", self.port))
            .arg(format!(
                "--tmpdir={}",
                self.data.parent().expect("parent").join("tmp").display()
            ))
            .args([
                "--bind-address=127.0.0.1",
                "--log-bin=mysql-bin",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--server-id=1",
                "--innodb-flush-log-at-trx-commit=2",
                "--sync-binlog=0",
            ])
            .arg(format!("--log-error={}", self.data.join("error.log").display()))
            .arg(format!("--pid-file={}", self.data.join("mariadbd.pid").display()))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(u) = &self.user {
            cmd.arg(format!("--user={u}"));
        }
        let mut child = cmd.spawn().expect("spawn mariadbd");
        let mut exited = false;
        let answered = crate::holds_within_blocking(Duration::from_secs(60), || {
            exited = matches!(child.try_wait(), Ok(Some(_)));
            exited || self.root_sql("SELECT 1").status.success()
        });
        assert!(answered, "MariaDB not ready in 60 s: {}", self.error_log());
        if exited {
            return false;
        }
        self.child = Some(child);
        true
    }

    fn setup(&self) {
        let mut sql = format!("CREATE DATABASE {DATABASE};");
        for host in ["localhost", "127.0.0.1"] {
            sql.push_str(&format!(
                "CREATE USER '{CDC_USER}'@'{host}' IDENTIFIED BY '{CDC_PASSWORD}'; \
                 GRANT SELECT, RELOAD, SHOW DATABASES, LOCK TABLES, REPLICATION SLAVE, BINLOG MONITOR \
                 ON *.* TO '{CDC_USER}'@'{host}'; GRANT ALL ON {DATABASE}.* TO '{CDC_USER}'@'{host}';"
            ));
        }
        self.sql(&sql);
    }

    fn root_sql(&self, sql: &str) -> Output {
        Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb")
    }

    /// A `mariadb` client running one statement `sql` as root (a compound `BEGIN NOT ATOMIC …
    /// END` may hold `;`), to spawn (e.g. a load running meanwhile).
    pub fn sql_command(&self, sql: &str) -> Command {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "-N", "-B", "--delimiter=$$", "-e", sql])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    }

    /// Runs SQL as root; returns tab-separated rows without headers.
    pub fn sql(&self, sql: &str) -> String {
        let out = self.root_sql(sql);
        assert!(
            out.status.success(),
            "mariadb failed: {}\n{sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs SQL as the `cdc` account over TCP (what a connector does).
    pub fn cdc_sql(&self, sql: &str) -> Output {
        Command::new("mariadb")
            .arg("--no-defaults")
            .args(["-h127.0.0.1", &format!("-P{}", self.port), &format!("-u{CDC_USER}")])
            .arg(format!("-p{CDC_PASSWORD}"))
            .args(["-N", "-B", "-e", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb")
    }

    /// Stops the server cleanly and starts it again on the same port.
    pub fn restart(&mut self) {
        self.sql("SHUTDOWN");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        assert!(self.spawn(), "MariaDB did not restart: {}", self.error_log());
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Connector options reaching this server as the `cdc` account over TCP.
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

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
