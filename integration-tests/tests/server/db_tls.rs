//! TLS to the databases: the PostgreSQL and MySQL/MariaDB sources and sinks against throw-away
//! servers that let in only encrypted TCP connections, with a CA the test makes. Each mode
//! checks what it promises (the chain, the host name), a client certificate logs in, and every
//! refusal names the option to fix.

use std::time::Duration;

use hstream_integration_tests::tls::TestCa;
use hstream_integration_tests::*;
use serde_json::{Value, json};
use tonic::Code;

const FAST_RETRY: &[&str] = &["--connector-retry-base-ms", "50", "--connector-retry-max-ms", "500"];

fn with(base: &Value, extra: Value) -> Value {
    let mut v = base.clone();
    for (k, x) in extra.as_object().expect("object") {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    v
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Creating a connector with `config` fails its check, and the message holds every `mention`.
async fn refused(c: &mut Client, family: &str, kind: &str, config: &Value, mentions: &[&str]) {
    let e = create_connector(c, "bad", kind, family, config)
        .await
        .expect_err(&format!("{config} should be refused"));
    // A config refused as such (InvalidArgument) or by its check against the server.
    assert!(
        matches!(e.code(), Code::FailedPrecondition | Code::InvalidArgument),
        "{config}: {e:?}"
    );
    let msg = error_message(&e);
    for m in mentions {
        assert!(
            msg.to_lowercase().contains(&m.to_lowercase()),
            "{config}: {m:?} not in {msg}"
        );
    }
}

#[tokio::test]
async fn pg_source_and_sinks_over_tls_check_what_each_sslmode_promises() {
    use hstream_integration_tests::pg::{CERT_USER, DATABASE, Postgres};
    let dir = tempfile::tempdir().unwrap();
    for d in ["ca", "other", "server"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let ca = TestCa::make(&dir.path().join("ca"));
    let other = TestCa::make(&dir.path().join("other"));
    let pg = Postgres::start();
    pg.enable_tls(&ca);
    let ddl = "(id bigint PRIMARY KEY, name text, amount numeric(12,2))";
    pg.psql(
        DATABASE,
        &format!(
            "CREATE TABLE src {ddl}; CREATE TABLE dst {ddl}; CREATE TABLE dst2 {ddl}; CREATE TABLE dst3 {ddl}; \
             ALTER TABLE src OWNER TO cdc; ALTER TABLE dst OWNER TO cdc; ALTER TABLE dst2 OWNER TO cdc; \
             ALTER TABLE dst3 OWNER TO cdc; \
             INSERT INTO src SELECT g, 'n' || g, g / 4.0 FROM generate_series(1, 500) g"
        ),
    );
    let server = Server::start(&dir.path().join("server"), FAST_RETRY);
    let mut c = server.client().await;
    let base = with(&pg.connector_config(), json!({"stream": "tls", "table": "src"}));

    // Refusals, each naming what to fix.
    let cases = [
        (json!({"sslmode": "disable"}), vec!["no encryption"]),
        (
            json!({"sslmode": "verify-full", "sslrootcert": path(&other.ca)}),
            vec!["sslmode: verify-full refused", "certificate"],
        ),
        (
            json!({"sslmode": "verify-full", "sslrootcert": path(&ca.ca), "host": "127.0.0.2"}),
            vec!["sslmode: verify-full refused", "name"],
        ),
        (
            json!({"sslmode": "verify-ca", "sslrootcert": "/nonexistent/ca.pem"}),
            vec!["sslrootcert"],
        ),
        (json!({"sslcert": path(&ca.client_cert)}), vec!["sslkey"]),
        (
            json!({"user": CERT_USER, "password": null, "sslmode": "require"}),
            vec!["certificate"],
        ),
    ];
    for (extra, mentions) in &cases {
        refused(&mut c, "postgresql", "SOURCE", &with(&base, extra.clone()), mentions).await;
    }
    let sink_base = with(&pg.connector_config(), json!({"stream": "tls", "table": "dst"}));
    refused(
        &mut c,
        "postgresql",
        "SINK",
        &with(
            &sink_base,
            json!({"sslmode": "verify-full", "sslrootcert": path(&other.ca)}),
        ),
        &["sslmode: verify-full refused"],
    )
    .await;
    refused(
        &mut c,
        "postgresql",
        "SINK",
        &with(&sink_base, json!({"sslmode": "disable"})),
        &["no encryption"],
    )
    .await;

    // The source logs in by its client certificate and checks the server's chain and name; one
    // sink checks the chain only (at an address the certificate does not name), the other
    // takes the default (prefer: encrypted since the server offers it).
    let source = with(
        &base,
        json!({"user": CERT_USER, "password": null, "sslmode": "verify-full", "sslrootcert": path(&ca.ca),
               "sslcert": path(&ca.client_cert), "sslkey": path(&ca.client_key)}),
    );
    create_connector(&mut c, "src", "SOURCE", "postgresql", &source)
        .await
        .unwrap();
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the stream", || {
        let mut c = probe.clone();
        async move {
            c.get_stream(hstream_proto::GetStreamRequest { name: "tls".into() })
                .await
                .is_ok()
        }
    })
    .await;
    let sink = with(
        &sink_base,
        json!({"sslmode": "verify-ca", "sslrootcert": path(&ca.ca), "host": "127.0.0.2"}),
    );
    create_connector(&mut c, "dst", "SINK", "postgresql", &sink)
        .await
        .unwrap();
    create_connector(
        &mut c,
        "dst2",
        "SINK",
        "postgresql",
        &with(&sink_base, json!({"table": "dst2"})),
    )
    .await
    .unwrap();
    // Over the Unix socket the default (prefer) stays plain, as with libpq.
    let socket = with(
        &sink_base,
        json!({"table": "dst3", "host": pg.data_dir().to_str().unwrap()}),
    );
    create_connector(&mut c, "dst3", "SINK", "postgresql", &socket)
        .await
        .unwrap();
    pg.psql(
        DATABASE,
        "UPDATE src SET name = 'changed' WHERE id % 10 = 0; DELETE FROM src WHERE id % 7 = 0; \
         INSERT INTO src SELECT g, 'late', 1 FROM generate_series(1001, 1100) g",
    );
    let dump = |t: &str| pg.psql(DATABASE, &format!("SELECT * FROM {t} ORDER BY id"));
    for t in ["dst", "dst2", "dst3"] {
        wait_until(Duration::from_secs(60), &format!("{t} to equal src"), || {
            let equal = dump(t) == dump("src");
            async move { equal }
        })
        .await;
    }
    // Every TCP session of ours is encrypted (the server lets in nothing else over TCP anyway).
    let sessions = pg.psql(
        "postgres",
        "SELECT a.application_name, s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name LIKE 'hstream%' AND a.client_addr IS NOT NULL ORDER BY 1",
    );
    assert!(
        sessions.contains("hstream-cdc|t") && sessions.contains("hstream-sink|t") && !sessions.contains("|f"),
        "{sessions}"
    );
}

#[tokio::test]
async fn mysql_source_and_sinks_over_tls_check_what_each_ssl_mode_promises() {
    use hstream_integration_tests::mariadb::{CERT_USER, DATABASE, MariaDb};
    let dir = tempfile::tempdir().unwrap();
    for d in ["ca", "other", "server"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let ca = TestCa::make(&dir.path().join("ca"));
    let other = TestCa::make(&dir.path().join("other"));
    let db = MariaDb::start_tls(&ca);
    db.sql(&format!(
        "CREATE TABLE {DATABASE}.src (id bigint PRIMARY KEY, name varchar(64), amount decimal(12,2)); \
         CREATE TABLE {DATABASE}.dst LIKE {DATABASE}.src; CREATE TABLE {DATABASE}.dst2 LIKE {DATABASE}.src; \
         INSERT INTO {DATABASE}.src SELECT seq, CONCAT('n', seq), seq / 4 FROM {DATABASE}.seq_1_to_500"
    ));
    let server = Server::start(&dir.path().join("server"), FAST_RETRY);
    let mut c = server.client().await;
    let base = with(&db.connector_config(), json!({"stream": "tls", "table": "src"}));

    let cases = [
        // MariaDB answers a plain connection under require_secure_transport with "access denied".
        (json!({"sslMode": "disabled"}), vec!["access denied", "sslMode"]),
        (
            json!({"sslMode": "verify_identity", "sslCa": path(&other.ca)}),
            vec!["sslMode: verify_identity refused"],
        ),
        (
            json!({"sslMode": "verify_identity", "sslCa": path(&ca.ca), "host": "127.0.0.2"}),
            vec!["sslMode: verify_identity refused", "name"],
        ),
        (
            json!({"sslMode": "verify_ca", "sslCa": "/nonexistent/ca.pem"}),
            vec!["sslCa"],
        ),
        // mysql_async 0.37 checks the name even when told not to (its check looks for an error
        // text rustls 0.23 no longer prints): verify_ca is verify_identity on MySQL for now, as
        // the README says. Stricter, never looser; this case shows when that changes.
        (
            json!({"sslMode": "verify_ca", "sslCa": path(&ca.ca), "host": "127.0.0.2"}),
            vec!["sslMode: verify_ca refused", "name"],
        ),
        (json!({"sslKey": path(&ca.client_key)}), vec!["sslCert"]),
        (
            json!({"sslMode": "required", "tls": true}),
            vec!["tls: give sslMode or tls"],
        ),
        (
            json!({"user": CERT_USER, "password": null, "sslMode": "required"}),
            vec!["access denied", "sslCert"],
        ),
    ];
    for (extra, mentions) in &cases {
        refused(&mut c, "mysql", "SOURCE", &with(&base, extra.clone()), mentions).await;
    }

    let source = with(
        &base,
        json!({"user": CERT_USER, "password": null, "sslMode": "verify_identity", "sslCa": path(&ca.ca),
               "sslCert": path(&ca.client_cert), "sslKey": path(&ca.client_key)}),
    );
    create_connector(&mut c, "src", "SOURCE", "mysql", &source)
        .await
        .unwrap();
    let probe = c.clone();
    wait_until(Duration::from_secs(30), "the stream", || {
        let mut c = probe.clone();
        async move {
            c.get_stream(hstream_proto::GetStreamRequest { name: "tls".into() })
                .await
                .is_ok()
        }
    })
    .await;
    let sink_base = with(&db.connector_config(), json!({"stream": "tls", "table": "dst"}));
    // The chain (at the address the certificate names); and the older option, at another.
    let sink = with(&sink_base, json!({"sslMode": "verify_ca", "sslCa": path(&ca.ca)}));
    create_connector(&mut c, "dst", "SINK", "mysql", &sink).await.unwrap();
    let sink2 = with(
        &sink_base,
        json!({"table": "dst2", "tls": true, "tlsSkipVerify": true, "host": "127.0.0.2"}),
    );
    create_connector(&mut c, "dst2", "SINK", "mysql", &sink2).await.unwrap();
    db.sql(&format!(
        "UPDATE {DATABASE}.src SET name = 'changed' WHERE id % 10 = 0; DELETE FROM {DATABASE}.src WHERE id % 7 = 0; \
         INSERT INTO {DATABASE}.src SELECT seq, 'late', 1 FROM {DATABASE}.seq_1001_to_1100"
    ));
    let dump = |t: &str| db.sql(&format!("SELECT * FROM {DATABASE}.{t} ORDER BY id"));
    for t in ["dst", "dst2"] {
        wait_until(Duration::from_secs(60), &format!("{t} to equal src"), || {
            let equal = dump(t) == dump("src");
            async move { equal }
        })
        .await;
    }
}
