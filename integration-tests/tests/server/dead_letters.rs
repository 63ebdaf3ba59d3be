//! Error tolerance and dead-letter streams (`errors.*`) end to end: a PostgreSQL sink that
//! meets refused records (tolerated, and not), a database outage that must never make dead
//! letters, and PostgreSQL and MariaDB sources with rows over the stream's record size limit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hstream_integration_tests::mariadb::MariaDb;
use hstream_integration_tests::pg::{DATABASE, Postgres};
use hstream_integration_tests::*;
use hstream_proto as pb;
use serde_json::{Value, json};

const FAST_RETRY: &[&str] = &["--connector-retry-base-ms", "50", "--connector-retry-max-ms", "500"];
const RECORDS: u64 = 10_000;

/// The 37 ids whose records the table refuses: even ones break a CHECK constraint, odd ones
/// hold a value of the wrong type.
fn bad_ids() -> BTreeMap<u64, &'static str> {
    (0..37u64)
        .map(|j| (j * 269 + 11, if j % 2 == 0 { "constraint" } else { "type" }))
        .collect()
}

fn row(id: u64, bad: Option<&str>) -> Value {
    match bad {
        Some("constraint") => json!({"id": id, "name": format!("n{id}"), "amount": -1}),
        Some(_) => json!({"id": id, "name": format!("n{id}"), "amount": "not a number"}),
        None => json!({"id": id, "name": format!("n{id}"), "amount": id}),
    }
}

/// Appends rows `ids` to shard `shard` in batches of 500; returns each id's record id.
async fn append_rows(
    c: &mut Client,
    stream: &str,
    shard: u64,
    ids: std::ops::Range<u64>,
    bad: &BTreeMap<u64, &str>,
) -> BTreeMap<u64, pb::RecordId> {
    let mut at = BTreeMap::new();
    let ids: Vec<u64> = ids.collect();
    for chunk in ids.chunks(500) {
        let records = chunk
            .iter()
            .map(|&id| json_record(&id.to_string(), &row(id, bad.get(&id).copied()), &[("origin", "test")]))
            .collect();
        let rids = append_batch(c, stream, shard, records).await;
        at.extend(chunk.iter().copied().zip(rids));
    }
    at
}

fn table(pg: &Postgres, name: &str) {
    pg.psql(
        DATABASE,
        &format!(
            "CREATE TABLE {name} (id bigint PRIMARY KEY, name text NOT NULL, amount int CHECK (amount >= 0)); \
             ALTER TABLE {name} OWNER TO cdc;"
        ),
    );
}

fn ids_in(pg: &Postgres, table: &str) -> BTreeSet<u64> {
    pg.psql(DATABASE, &format!("SELECT id FROM {table}"))
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap())
        .collect()
}

fn sink_config(pg: &Postgres, stream: &str, table: &str, extra: Value) -> Value {
    let mut cfg = config_with(pg.connector_config(), stream, extra);
    cfg["table"] = json!(table);
    cfg
}

async fn stream_exists(c: &Client, name: &str) -> bool {
    let mut c = c.clone();
    c.get_stream(pb::GetStreamRequest { name: name.into() }).await.is_ok()
}

#[tokio::test]
async fn pg_sink_dead_letters_refused_records_and_writes_all_others() {
    let pg = Postgres::start();
    table(&pg, "dst");
    table(&pg, "strict");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let shard = make_stream(&mut c, "orders", 1).await[0];
    let bad = bad_ids();
    assert_eq!(bad.len(), 37);
    let at = append_rows(&mut c, "orders", shard, 0..RECORDS, &bad).await;
    // Created the way users do, from the SQL shell; a misspelt error option is refused naming it.
    let create = |extra: &str| {
        format!(
            "CREATE SINK CONNECTOR dst TO postgresql WITH (host = '127.0.0.1', port = {}, user = 'cdc', \
             password = '{}', database = '{DATABASE}', stream = 'orders', table = 'dst', \
             \"errors.tolerance\" = 'all', {extra});",
            pg.port,
            pg::CDC_PASSWORD
        )
    };
    let out = sql(&server, &create("\"errors.deadletter.topic\" = 'orders-dlq'")).await;
    assert!(out.contains("errors.deadletter.topic: unknown option"), "{out}");
    let out = sql(&server, &create("\"errors.deadletter.stream\" = 'orders-dlq'")).await;
    let made = c.get_connector(pb::GetConnectorRequest { name: "dst".into() }).await;
    assert!(made.is_ok(), "{out}");
    let want: BTreeSet<u64> = (0..RECORDS).filter(|i| !bad.contains_key(i)).collect();
    wait_until(Duration::from_secs(120), "9,963 rows in the table", || async {
        ids_in(&pg, "dst").len() == want.len()
    })
    .await;
    wait_until(Duration::from_secs(60), "37 dead letters", || async {
        stream_exists(&c, "orders-dlq").await && count_stream_records(&c, "orders-dlq").await >= bad.len()
    })
    .await;
    assert_eq!(ids_in(&pg, "dst"), want);
    assert_eq!(
        pg.psql(
            DATABASE,
            "SELECT count(*) FROM dst WHERE amount = id AND name = 'n' || id"
        ),
        "9963"
    );
    // Each dead letter: the original record, byte for byte, and why and where it failed.
    let dead = read_stream_records(&c, "orders-dlq").await;
    assert_eq!(dead.len(), bad.len(), "each refused record once");
    let mut seen = BTreeSet::new();
    for d in &dead {
        let h = d.header.as_ref().unwrap();
        let id: u64 = h.key.parse().unwrap();
        let original = json_record(&id.to_string(), &row(id, bad.get(&id).copied()), &[]);
        assert_eq!(d.payload, original.payload, "the original payload of {id}");
        assert_eq!(h.flag, pb::h_stream_record_header::Flag::Json as i32);
        let a = &h.attributes;
        assert_eq!(a["origin"], "test", "the original attributes: {a:?}");
        assert_eq!(a["__connect.errors.connector.name"], "dst");
        assert_eq!(a["__connect.errors.stage"], "write");
        assert_eq!(a["__connect.errors.class.name"], "data");
        assert_eq!(a["__connect.errors.topic"], "orders");
        assert_eq!(a["__connect.errors.partition"], shard.to_string());
        assert_eq!(a["__connect.errors.offset"], at[&id].batch_id.to_string());
        assert_eq!(a["__connect.errors.batch.index"], at[&id].batch_index.to_string());
        let why = &a["__connect.errors.exception.message"];
        match bad[&id] {
            "constraint" => assert!(
                why.contains("violates check constraint") && why.contains("23514"),
                "{why}"
            ),
            _ => assert!(
                why.contains("invalid input syntax for type integer") && why.contains("22P02"),
                "{why}"
            ),
        }
        assert!(!why.contains(pg::CDC_PASSWORD));
        seen.insert(id);
    }
    assert_eq!(seen, bad.keys().copied().collect());
    // The sink's position reaches the end of the stream and it goes on with later records.
    let last_lsn = at[&(RECORDS - 1)].batch_id as f64;
    wait_until(Duration::from_secs(30), "the position past the last record", || async {
        let r = connector_report(&c, "dst").await;
        r["offset"]["shards"][shard.to_string()]
            .as_f64()
            .is_some_and(|next| next > last_lsn)
    })
    .await;
    let r = connector_report(&c, "dst").await;
    assert_eq!(r["deadLetters"], json!(37.0), "{r}");
    assert_eq!(r["restarts"], json!(0.0), "{r}");
    // The count shows in `hstream connector status` and in the metrics.
    let out = tokio::process::Command::new(workspace_bin("hstream"))
        .args(["--port", &server.addr.port().to_string(), "connector", "status", "dst"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("  37 dead letters"), "{text}");
    let m = super::metrics::scrape(&server).await;
    let family = "hstream_connector_dead_letters";
    let total = super::metrics::sample(
        &m,
        family,
        "hstream_connector_dead_letters_total",
        &[("connector", "dst")],
    );
    assert_eq!(total, Some(37.0), "{}", m[family]);
    append_rows(&mut c, "orders", shard, RECORDS..RECORDS + 1, &BTreeMap::new()).await;
    wait_until(Duration::from_secs(30), "a later record", || async {
        ids_in(&pg, "dst").contains(&RECORDS)
    })
    .await;

    // errors.tolerance none (the default): the task fails with the reason, naming the first
    // refused record; what came before it is written, nothing after, and no record becomes a
    // dead letter.
    let cfg = sink_config(&pg, "orders", "strict", json!({}));
    create_connector(&mut c, "strict", "SINK", "postgresql", &cfg)
        .await
        .unwrap();
    wait_status(&c, "strict", "FAILED", Duration::from_secs(60)).await;
    let r = connector_report(&c, "strict").await;
    let error = r["lastError"].as_str().unwrap_or("");
    let first = format!(
        "data error: record {shard}-{}-{} of stream orders failed in stage write: ",
        at[&11].batch_id, at[&11].batch_index
    );
    assert!(
        error.starts_with(&first) && error.contains("violates check constraint"),
        "{r}"
    );
    assert_eq!(r["deadLetters"], json!(0.0), "{r}");
    assert_eq!(count_stream_records(&c, "orders-dlq").await, bad.len());
    assert_eq!(
        ids_in(&pg, "strict"),
        (0..11).collect(),
        "what came before the refused record"
    );
}

#[tokio::test]
async fn pg_sink_outage_mid_load_is_retried_never_dead_lettered() {
    let pg = Postgres::start();
    table(&pg, "dst");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST_RETRY);
    let mut c = server.client().await;
    let shard = make_stream(&mut c, "orders", 1).await[0];
    let none = BTreeMap::new();
    append_rows(&mut c, "orders", shard, 0..RECORDS / 2, &none).await;
    let cfg = sink_config(
        &pg,
        "orders",
        "dst",
        json!({"errors.tolerance": "all", "errors.deadletter.stream": "orders-dlq",
               "errors.retry.timeout": 300, "errors.retry.delay.max.ms": 100}),
    );
    create_connector(&mut c, "dst", "SINK", "postgresql", &cfg)
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "rows in the table", || async {
        !ids_in(&pg, "dst").is_empty()
    })
    .await;
    // The database goes away mid-load, more records come meanwhile, and it comes back.
    pg.stop();
    append_rows(&mut c, "orders", shard, RECORDS / 2..RECORDS, &none).await;
    wait_until(Duration::from_secs(60), "the sink to notice the outage", || async {
        let r = connector_report(&c, "dst").await;
        r["restarts"].as_f64().unwrap_or(0.0) >= 1.0 || r["lastError"].as_str().is_some_and(|e| !e.is_empty())
    })
    .await;
    pg.start_again();
    wait_until(Duration::from_secs(120), "every row", || async {
        ids_in(&pg, "dst").len() == RECORDS as usize
    })
    .await;
    assert_eq!(ids_in(&pg, "dst"), (0..RECORDS).collect());
    let r = connector_report(&c, "dst").await;
    assert_eq!(r["deadLetters"], json!(0.0), "{r}");
    assert!(
        !stream_exists(&c, "orders-dlq").await,
        "no dead letter, so no dead-letter stream"
    );
}

/// The ids (the partition keys: the key column's text) of a stream's records.
fn ids_of(records: &[pb::HStreamRecord]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r.header.as_ref().unwrap().key.parse().unwrap())
        .collect()
}

/// What both sources must show: every small row once in the stream, each oversized one (three
/// in the snapshot, two inserted and one updated while streaming) once in the dead-letter
/// stream, cut to fit and saying why, and the task still running.
async fn assert_oversized_rows_dead_lettered(c: &Client, task: &str, big: &BTreeSet<u64>) {
    let small: Vec<u64> = (1..=200).filter(|i| !big.contains(i)).collect();
    wait_until(Duration::from_secs(120), "the marker row", || async {
        ids_of(&read_stream_records(c, "rows").await).contains(&999)
    })
    .await;
    let mut got = ids_of(&read_stream_records(c, "rows").await);
    got.sort_unstable();
    let mut want = small.clone();
    want.push(999);
    assert_eq!(got, want, "every small row once, no oversized one");
    wait_until(Duration::from_secs(30), "the dead letters", || async {
        stream_exists(c, "rows-dlq").await && count_stream_records(c, "rows-dlq").await >= 6
    })
    .await;
    let dead = read_stream_records(c, "rows-dlq").await;
    let mut dead_ids = ids_of(&dead);
    dead_ids.sort_unstable();
    let mut want_dead: Vec<u64> = big.iter().copied().collect();
    want_dead.push(20); // updated to an oversized value while streaming
    want_dead.sort_unstable();
    assert_eq!(dead_ids, want_dead, "each oversized row once");
    for d in &dead {
        let a = &d.header.as_ref().unwrap().attributes;
        assert_eq!(a["__connect.errors.stage"], "write", "{a:?}");
        assert_eq!(a["__connect.errors.connector.name"], task);
        assert!(
            a["__connect.errors.exception.message"].contains("over the stream's max record size of 65536"),
            "{a:?}"
        );
        assert!(
            a["__connect.errors.payload.truncated"].parse::<usize>().unwrap() > 100_000,
            "{a:?}"
        );
        assert!(a.contains_key("__connect.errors.source.position"), "{a:?}");
        assert!(
            d.payload.len() > 50_000 && d.payload.len() < 65_536,
            "{}",
            d.payload.len()
        );
    }
    let r = connector_report(c, task).await;
    assert_eq!(r["deadLetters"], json!(6.0), "{r}");
    assert_eq!(r["restarts"], json!(0.0), "{r}");
    assert_eq!(connector_status(c, task).await, "RUNNING");
}

const BIG_IN_SNAPSHOT: [u64; 3] = [10, 50, 90];
const BIG_WHILE_STREAMING: [u64; 2] = [150, 160];
/// The SQL of an oversized value (100,000 characters) for row `id`, the same in both databases.
const BIG_VALUE: &str = "repeat(md5(id), 3125)";

fn big_rows() -> BTreeSet<u64> {
    BIG_IN_SNAPSHOT.into_iter().chain(BIG_WHILE_STREAMING).collect()
}

/// SQL inserting rows `from..=to` into `table` from `numbers` (a query of `id`s): oversized
/// bodies for the big rows, short ones for the others.
fn insert_sql(table: &str, numbers: &str) -> String {
    let big: Vec<String> = big_rows().iter().map(u64::to_string).collect();
    format!(
        "INSERT INTO {table} (id, body) SELECT id, CASE WHEN id IN ({}) THEN {BIG_VALUE} ELSE concat('row ', id) END \
         FROM ({numbers}) AS n",
        big.join(",")
    )
}

/// Waits until the snapshot's rows are in the stream, so what follows is streamed.
async fn wait_snapshot(c: &Client) {
    wait_until(Duration::from_secs(120), "the snapshot", || async {
        stream_exists(c, "rows").await && count_stream_records(c, "rows").await >= 100 - BIG_IN_SNAPSHOT.len()
    })
    .await;
}

#[tokio::test]
async fn pg_source_dead_letters_rows_over_the_record_size() {
    let pg = Postgres::start();
    pg.psql(
        DATABASE,
        "CREATE TABLE wide (id bigint PRIMARY KEY, body text); ALTER TABLE wide OWNER TO cdc; \
         CREATE FUNCTION md5(bigint) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT md5($1::text)';",
    );
    let insert = |from: u64, to: u64| {
        let numbers = format!("SELECT generate_series({from}, {to})::bigint AS id");
        pg.psql(DATABASE, &insert_sql("wide", &numbers));
    };
    insert(1, 100);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-record-size", "65536"]);
    let mut c = server.client().await;
    let cfg = config_with(
        pg.connector_config(),
        "rows",
        json!({"table": "wide", "errors.tolerance": "all", "errors.deadletter.stream": "rows-dlq"}),
    );
    create_connector(&mut c, "wide", "SOURCE", "postgresql", &cfg)
        .await
        .unwrap();
    wait_snapshot(&c).await;
    insert(101, 200);
    pg.psql(DATABASE, &format!("UPDATE wide SET body = {BIG_VALUE} WHERE id = 20"));
    insert(999, 999);
    assert_oversized_rows_dead_lettered(&c, "wide", &big_rows()).await;
}

#[tokio::test]
async fn mariadb_source_dead_letters_rows_over_the_record_size() {
    let db = MariaDb::start();
    db.sql("CREATE TABLE app.wide (id BIGINT PRIMARY KEY, body LONGTEXT)");
    let insert = |from: u64, to: u64| {
        let numbers = format!("SELECT seq AS id FROM app.seq_{from}_to_{to}");
        db.sql(&insert_sql("app.wide", &numbers));
    };
    insert(1, 100);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-record-size", "65536"]);
    let mut c = server.client().await;
    let cfg = config_with(
        db.connector_config(),
        "rows",
        json!({"table": "wide", "errors.tolerance": "all", "errors.deadletter.stream": "rows-dlq"}),
    );
    create_connector(&mut c, "wide", "SOURCE", "mysql", &cfg).await.unwrap();
    wait_snapshot(&c).await;
    insert(101, 200);
    db.sql(&format!("UPDATE app.wide SET body = {BIG_VALUE} WHERE id = 20"));
    insert(999, 999);
    assert_oversized_rows_dead_lettered(&c, "wide", &big_rows()).await;
}
