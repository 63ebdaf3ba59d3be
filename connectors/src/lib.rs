//! The connectors this build ships, beyond the runtime's built-in generator and blackhole:
//! PostgreSQL and MySQL/MariaDB CDC sources and sinks, the MQTT and Kafka sources and sinks, and
//! any Airbyte source or destination.
//!
//! [`registry`] is the one list of every connector type the server offers; `specs/` holds each
//! one's `ConnectorSpecification`, kept equal to the Rust config types by a test.

pub mod airbyte;
pub mod cdc;
pub mod changes;
pub mod kafka;
pub mod mqtt;
pub mod mysql;
pub use hstream_runtime::pbstruct;
pub mod postgres;
pub mod selection;
pub mod snapshots;
pub mod tls;

use hstream_runtime::Registry;

/// Every connector type of this build, one line each.
pub fn registry() -> Registry {
    let mut r = hstream_runtime::builtin();
    r.source::<postgres::PgSource>("postgresql");
    r.sink::<postgres::PgSink>("postgresql");
    r.source::<mysql::MySqlSource>("mysql");
    r.sink::<mysql::MySqlSink>("mysql");
    r.source::<mqtt::MqttSource>("mqtt");
    r.sink::<mqtt::MqttSink>("mqtt");
    r.source::<kafka::KafkaSource>("kafka");
    r.sink::<kafka::KafkaSink>("kafka");
    r.source::<airbyte::source::AirbyteSource>("airbyte");
    r.sink::<airbyte::sink::AirbyteSink>("airbyte");
    r
}

#[cfg(test)]
mod conformance_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// `specs/<kind>-<name>.json` must equal what the Rust config types derive. Run with
    /// `UPDATE_SPECS=1` to rewrite them after changing a config type.
    #[test]
    fn specs_in_the_repo_match_the_config_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs");
        for (kind, name, t) in registry().iter() {
            let path = dir.join(format!("{}-{name}.json", kind.as_str().to_lowercase()));
            let want = serde_json::to_string_pretty(t.spec()).unwrap() + "\n";
            if std::env::var_os("UPDATE_SPECS").is_some() {
                std::fs::write(&path, &want).unwrap();
                continue;
            }
            let have = std::fs::read_to_string(&path).unwrap_or_else(|_| {
                panic!(
                    "{} is missing: run UPDATE_SPECS=1 cargo test -p hstream-connectors",
                    path.display()
                )
            });
            assert_eq!(
                have,
                want,
                "{} drifted from the config type: run UPDATE_SPECS=1 cargo test -p hstream-connectors",
                path.display()
            );
        }
    }

    #[test]
    fn postgres_configs_name_the_field() {
        use hstream_runtime::Kind;
        use serde_json::json;
        let r = registry();
        let src = r.get(Kind::Source, "postgresql").unwrap();
        let errs = |t: &std::sync::Arc<dyn hstream_runtime::ConnectorType>, v| {
            t.validate(&v)
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        let e = errs(&src, json!({"stream": "s", "user": "u", "database": "d"}));
        assert!(e.iter().any(|m| m.starts_with("table")), "{e:?}");
        let e = errs(
            &src,
            json!({"stream": "s", "user": "u", "database": "d", "table": "t", "port": "x"}),
        );
        assert!(e.iter().any(|m| m.starts_with("port")), "{e:?}");
        let e = errs(
            &src,
            json!({"stream": "s", "user": "u", "database": "d", "table": "t", "slotName": "Bad-Name"}),
        );
        assert!(e.iter().any(|m| m.starts_with("slotName")), "{e:?}");
        let e = errs(
            &src,
            json!({"stream": "s", "user": "u", "database": "d", "table": "t", "snapshotMode": "sometimes"}),
        );
        assert!(e.iter().any(|m| m.starts_with("snapshotMode")), "{e:?}");
        assert!(
            src.validate(&json!({"stream": "s", "user": "u", "database": "d", "table": "t"}))
                .is_ok()
        );
        let sink = r.get(Kind::Sink, "postgresql").unwrap();
        // No table: each record goes to the table named after its source (tableNameFormat).
        assert!(
            sink.validate(&json!({"stream": "s", "user": "u", "database": "d"}))
                .is_ok()
        );
        let e = errs(&sink, json!({"stream": "s", "user": "u", "database": "d", "table": ""}));
        assert!(e.iter().any(|m| m.starts_with("table")), "{e:?}");
        let e = errs(
            &sink,
            json!({"stream": "s", "user": "u", "database": "d", "tableNameFormat": "${tabel}_copy"}),
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("tableNameFormat") && m.contains("${tabel}")),
            "{e:?}"
        );
        let both = json!({"stream": "s", "user": "u", "database": "d", "table": "t", "tableNameFormat": "x"});
        assert!(errs(&sink, both).iter().any(|m| m.starts_with("tableNameFormat")));
        // The password is a secret in both specs.
        for t in [&src, &sink] {
            assert_eq!(
                t.spec()["connectionSpecification"]["properties"]["password"]["airbyte_secret"],
                true
            );
        }
    }

    /// Every family's configs refuse an option they do not have, both at validation (the spec's
    /// schema) and in serde itself (the endpoint is flattened into them), naming it; the
    /// endpoint's options are read into the endpoint.
    #[test]
    fn configs_refuse_unknown_options() {
        use hstream_runtime::Kind;
        use serde_json::json;
        let base = |target: &str| match target {
            "mqtt" => json!({"stream": "s", "topic": "t", "host": "broker", "port": 1884, "username": "u"}),
            _ => json!({"stream": "s", "user": "u", "database": "d", "table": "t", "host": "db", "port": 7}),
        };
        for (kind, target) in [
            (Kind::Source, "postgresql"),
            (Kind::Sink, "postgresql"),
            (Kind::Source, "mysql"),
            (Kind::Sink, "mysql"),
            (Kind::Source, "mqtt"),
            (Kind::Sink, "mqtt"),
        ] {
            let t = registry().get(kind, target).unwrap();
            let good = base(target);
            assert!(t.validate(&good).is_ok(), "{kind:?} {target}: {:?}", t.validate(&good));
            let mut bad = good.clone();
            bad["hots"] = json!("x");
            let errs = t.validate(&bad).unwrap_err();
            assert!(
                errs.iter().any(|e| e.to_string().contains("hots")),
                "{kind:?} {target}: {errs:?}"
            );
            let typed = |v: serde_json::Value| -> Result<serde_json::Value, String> {
                let v2 = v.clone();
                let round = match (kind, target) {
                    (Kind::Source, "postgresql") => serde_json::from_value::<postgres::PgSourceConfig>(v2)
                        .map(|c| json!([c.endpoint.host, c.endpoint.port])),
                    (Kind::Sink, "postgresql") => serde_json::from_value::<postgres::PgSinkConfig>(v2)
                        .map(|c| json!([c.endpoint.host, c.endpoint.port])),
                    (Kind::Source, "mysql") => serde_json::from_value::<mysql::MySqlSourceConfig>(v2)
                        .map(|c| json!([c.endpoint.host, c.endpoint.port])),
                    (Kind::Sink, "mysql") => serde_json::from_value::<mysql::MySqlSinkConfig>(v2)
                        .map(|c| json!([c.endpoint.host, c.endpoint.port])),
                    (Kind::Source, _) => serde_json::from_value::<mqtt::MqttSourceConfig>(v2)
                        .map(|c| json!([c.endpoint.host, c.endpoint.port])),
                    (Kind::Sink, _) => serde_json::from_value::<mqtt::MqttSinkConfig>(v2)
                        .map(|c| json!([c.endpoint.host, c.endpoint.port])),
                };
                round.map_err(|e| e.to_string())
            };
            let port = if target == "mqtt" { 1884 } else { 7 };
            let host = if target == "mqtt" { "broker" } else { "db" };
            assert_eq!(typed(good).unwrap(), json!([host, port]), "{kind:?} {target}");
            let e = typed(bad).unwrap_err();
            assert!(e.contains("unknown field `hots`"), "{kind:?} {target}: {e}");
        }
    }
}
