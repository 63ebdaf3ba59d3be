//! The runtime's connector conformance suite (`hstream_runtime::testing::conformance`) run
//! against this crate's PostgreSQL CDC source on a throw-away PostgreSQL: delivery, prompt
//! stops, resumption without repeats, and no loss after a refused append or a crash.

use async_trait::async_trait;
use hstream_integration_tests::pg::{DATABASE, Postgres};
use hstream_runtime::testing::conformance::{Upstream, check_source};
use hstream_runtime::{Kind, Record};
use serde_json::json;

/// Rows inserted into `orders`, one transaction per call; a change is a row id.
struct Orders<'a> {
    pg: &'a Postgres,
    next: u64,
}

#[async_trait]
impl Upstream for Orders<'_> {
    async fn produce(&mut self, n: usize) -> Vec<String> {
        let (from, to) = (self.next, self.next + n as u64 - 1);
        self.next += n as u64;
        self.pg.psql(
            DATABASE,
            &format!("INSERT INTO orders (id, name) SELECT g, 'n' || g FROM generate_series({from}, {to}) g"),
        );
        (from..=to).map(|i| i.to_string()).collect()
    }

    fn identity(&self, record: &Record) -> Option<String> {
        // The partition key is the key columns' text: the id.
        record.key.parse::<u64>().ok().map(|id| id.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_source_conforms() {
    let pg = Postgres::start();
    pg.psql(
        DATABASE,
        "CREATE TABLE orders (id bigint PRIMARY KEY, name text NOT NULL); ALTER TABLE orders OWNER TO cdc;",
    );
    let mut config = pg.connector_config();
    config["stream"] = json!("orders_cdc");
    config["table"] = json!("orders");
    let t = crate::registry().get(Kind::Source, "postgresql").unwrap();
    let report = check_source(t, config, &mut Orders { pg: &pg, next: 1 }).await;
    println!("postgresql conformance (live PostgreSQL): {report:?}");
    assert_eq!(report.delivered, 300, "{report:?}");
}
