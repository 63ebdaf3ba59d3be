//! Groundwork of the MySQL/MariaDB CDC connector (issue 7): the throw-away MariaDB its tests run
//! against, checked to have what binlog CDC needs.

use hstream_integration_tests::mariadb::MariaDb;

#[test]
fn mariadb_harness_has_a_row_binlog_with_gtids_on_its_own_port() {
    let mut db = MariaDb::start();
    assert_ne!(db.port, 3306, "the machine's own server is left alone");
    assert_eq!(
        db.sql("SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata"),
        "1\tROW\tFULL\tFULL"
    );
    db.sql("CREATE TABLE app.t (id int PRIMARY KEY); INSERT INTO app.t VALUES (1), (2)");
    let gtid = db.sql("SELECT @@gtid_binlog_pos");
    assert!(gtid.starts_with("0-1-"), "GTIDs of domain 0, server 1: {gtid:?}");
    // The CDC account: over TCP with its password, allowed to read the binlog.
    let out = db.cdc_sql("SHOW GRANTS");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let grants = String::from_utf8_lossy(&out.stdout);
    assert!(
        grants.contains("REPLICATION SLAVE") && grants.contains("BINLOG MONITOR"),
        "{grants}"
    );
    assert_eq!(
        String::from_utf8_lossy(&db.cdc_sql("SELECT count(*) FROM app.t").stdout).trim(),
        "2"
    );
    // A clean restart keeps the rows and the binlog position.
    db.restart();
    assert_eq!(db.sql("SELECT count(*) FROM app.t"), "2");
    assert_eq!(db.sql("SELECT @@gtid_binlog_pos"), gtid);
}
