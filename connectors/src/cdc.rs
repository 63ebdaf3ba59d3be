//! What the CDC sources share: the options saying what they capture ([`Capture`]: tables,
//! snapshot mode, record format) and the one writer of a change record, HStream IO's `{"key", "value"}` or Debezium's envelope, as protobuf Struct
//! bytes. Each source supplies row images through [`RowImage`].

use bytes::Bytes;
use hstream_runtime::{Attributes, PayloadFlag, Record};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pbstruct as pb;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Copy the tables' rows first, then stream changes (the first run only).
    #[default]
    Initial,
    /// Stream changes only, from where the source stands now.
    Never,
    /// Copy the tables' rows, then complete.
    InitialOnly,
    /// Copy the tables' rows at every start, then stream changes (from the stored position
    /// when the source still has it, so changes made while stopped, deletes included, follow
    /// the copy; from the copy's position otherwise).
    Always,
    /// As `initial`, and copy the rows again when the stored position is gone from the source
    /// (a dropped or invalidated slot, a purged binlog; rows deleted while it was missing stay
    /// in the stream).
    WhenNeeded,
}

impl SnapshotMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMode::Initial => "initial",
            SnapshotMode::Never => "never",
            SnapshotMode::InitialOnly => "initial_only",
            SnapshotMode::Always => "always",
            SnapshotMode::WhenNeeded => "when_needed",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// `{"key": primary key, "value": row after, null on delete}`, as HStream IO's CDC sources.
    #[default]
    Hstream,
    /// `{"before", "after", "op", "ts_ms", "source"}`, as Debezium's change events.
    Debezium,
}

/// What a CDC source captures and how it writes it: the options every CDC source has, under
/// HStream IO's and Debezium's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capture {
    /// One table to capture (HStream IO's option). An unqualified name is in the source's
    /// default schema (`schema` for PostgreSQL, `database` for MySQL).
    #[serde(default)]
    pub table: Option<String>,
    /// Tables to capture (Debezium's table include list); unqualified names as for `table`.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Tables by pattern (Debezium's `table.include.list`): regular expressions, each matched
    /// whole and case-insensitively against `schema.table` (`database.table` for MySQL), looked
    /// up in the catalog at every start of the task.
    #[serde(default)]
    pub table_include_list: Vec<String>,
    /// Tables left out (Debezium's `table.exclude.list`), also when `table`/`tables` name them.
    #[serde(default)]
    pub table_exclude_list: Vec<String>,
    /// Columns left out of every record (Debezium's `column.exclude.list`): patterns matched
    /// against `schema.table.column`. Not key columns.
    #[serde(default)]
    pub column_exclude_list: Vec<String>,
    /// Columns whose non-null values are replaced by `columnMaskChars` asterisks (Debezium's
    /// `column.mask.with.N.chars`). Not key columns.
    #[serde(default)]
    pub column_mask_list: Vec<String>,
    #[serde(default = "default_mask_chars")]
    #[schemars(range(min = 1, max = 255))]
    pub column_mask_chars: u32,
    /// Columns whose non-null values are replaced by the hex SHA-256 of `columnHashSalt`
    /// followed by the value's text (Debezium's `column.mask.hash.SHA-256.with.salt.<salt>`):
    /// equal values stay equal, so they can still be joined. Not key columns.
    #[serde(default)]
    pub column_hash_list: Vec<String>,
    #[serde(default)]
    pub column_hash_salt: Option<hstream_runtime::Secret>,
    #[serde(default)]
    pub snapshot_mode: SnapshotMode,
    #[serde(default)]
    pub format: RecordFormat,
    /// The signal table (Debezium's `signal.data.collection`), `schema.table` (`database.table`
    /// for MySQL): a row inserted into it asks the running source for an incremental snapshot
    /// (`execute-snapshot`), to stop, pause or resume them, or to log a line. Its first three
    /// columns are the signal's id, type and data (JSON), as Debezium's signal table has them.
    /// Its own changes are not captured unless it is also among the captured tables.
    #[serde(default)]
    pub signal_data_collection: Option<String>,
    /// Debezium's heartbeat topic: when set, a heartbeat record goes to this stream (created on
    /// first use) every `heartbeatIntervalMs` while the source streams, idle tables or not:
    /// `{"serverName": <stream>, "ts_ms", "source": {the position}}`, keyed by the source's
    /// stream. Consumers see the source is alive and how far it has read.
    #[serde(default)]
    pub heartbeat_stream: Option<String>,
    /// Debezium's transaction metadata: a BEGIN and an END record per transaction that changed
    /// captured tables go to `transactionStream`, and each change record (Debezium's format)
    /// carries `"transaction": {"id", "total_order", "data_collection_order"}`.
    #[serde(default)]
    pub provide_transaction_metadata: bool,
    /// Where the BEGIN/END records go; default `<stream>_transaction`.
    #[serde(default)]
    pub transaction_stream: Option<String>,
}

fn default_mask_chars() -> u32 {
    8
}

impl Capture {
    /// The stream of BEGIN/END records, when transaction metadata is asked for.
    pub fn transaction_stream(&self, stream: &str) -> Option<String> {
        self.provide_transaction_metadata.then(|| {
            self.transaction_stream
                .clone()
                .unwrap_or_else(|| format!("{stream}_transaction"))
        })
    }

    /// The extra streams (heartbeats, transactions) are other than `stream` and each other.
    pub fn validate_streams(&self, stream: &str) -> Result<(), hstream_runtime::ConnectorError> {
        use hstream_runtime::ConnectorError;
        if self.heartbeat_stream.as_deref() == Some(stream) {
            return Err(ConnectorError::config(
                "heartbeatStream: must differ from stream (heartbeats would mix with the changes)",
            ));
        }
        if self.transaction_stream.is_some() && !self.provide_transaction_metadata {
            return Err(ConnectorError::config(
                "transactionStream: only with provideTransactionMetadata=true",
            ));
        }
        if let Some(t) = self.transaction_stream(stream) {
            if t == stream || self.heartbeat_stream.as_deref() == Some(t.as_str()) {
                return Err(ConnectorError::config(
                    "transactionStream: must differ from stream and heartbeatStream",
                ));
            }
            // The default (`<stream>_transaction`) too must be a stream name.
            if t.len() > 255 {
                return Err(ConnectorError::config(
                    "transactionStream: at most 255 characters (name one: the default adds 12 to stream)",
                ));
            }
        }
        Ok(())
    }

    /// At least one table, and no empty name.
    pub fn validate(&self) -> Result<(), hstream_runtime::ConnectorError> {
        use hstream_runtime::ConnectorError;
        if self.table.is_none() && self.tables.is_empty() && self.table_include_list.is_empty() {
            return Err(ConnectorError::config(
                "table: name a table (or list them in tables, or give patterns in tableIncludeList)",
            ));
        }
        let stream_name = |h: &str| {
            h.len() <= 255
                && h.starts_with(|c: char| c.is_ascii_alphabetic())
                && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        for (option, name) in [
            ("heartbeatStream", &self.heartbeat_stream),
            ("transactionStream", &self.transaction_stream),
        ] {
            if name.as_deref().is_some_and(|h| !stream_name(h)) {
                return Err(ConnectorError::config(format!(
                    "{option}: a stream name (a letter, then letters, digits, '-' and '_'; at most 255)"
                )));
            }
        }
        if self
            .signal_data_collection
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(ConnectorError::config("signalDataCollection: must not be empty"));
        }
        if self.table.as_deref() == Some("") || self.tables.iter().any(String::is_empty) {
            return Err(ConnectorError::config("table: table names must not be empty"));
        }
        if !(1..=255).contains(&self.column_mask_chars) {
            return Err(ConnectorError::config("columnMaskChars: from 1 to 255"));
        }
        if !self.column_hash_list.is_empty() && self.column_hash_salt.is_none() {
            return Err(ConnectorError::config(
                "columnHashSalt: columnHashList needs a salt (without one, a hash of a guessable value is guessed)",
            ));
        }
        // The patterns themselves are checked by each source (`Selection::new`).
        Ok(())
    }
}

/// Where a source's incremental snapshots stand, as its offset keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncrementalOffset {
    /// Tables waiting, `[schema or database, table]`; the first is being copied.
    pub pending: Vec<[String; 2]>,
    /// The key of the last row copied of the first table (each key column's text; MySQL: each
    /// column's SQL literal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<String>>,
    /// Paused by a `pause-snapshot` signal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    Read,
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }
}

/// One row image of a captured table, able to write itself.
pub trait RowImage {
    /// Whether the table has a primary key.
    fn has_key(&self) -> bool;
    /// The row's fields (Struct entries).
    fn write_row(&self, buf: &mut Vec<u8>);
    /// The key columns' fields.
    fn write_key(&self, buf: &mut Vec<u8>);
    /// The partition key: the key columns' text, comma separated.
    fn partition_key(&self) -> String;
}

/// Record attributes naming the table a change came from, set on every change record in both
/// formats; the sinks route by them.
pub const ATTR_DB: &str = "source.db";
pub const ATTR_SCHEMA: &str = "source.schema";
pub const ATTR_TABLE: &str = "source.table";

/// The attributes of a table's change records (`schema` is PostgreSQL's; MySQL has none).
pub fn source_attributes(db: &str, schema: Option<&str>, table: &str) -> Attributes {
    let mut a = Attributes::with_capacity(3);
    a.insert(ATTR_DB.to_owned(), db.to_owned());
    if let Some(s) = schema {
        a.insert(ATTR_SCHEMA.to_owned(), s.to_owned());
    }
    a.insert(ATTR_TABLE.to_owned(), table.to_owned());
    a
}

/// A truncate of the table `attributes` name: Debezium's `{"op": "t", "ts_ms", "source"}`, or
/// in HStream IO's format `{"key": null, "value": null, "op": "t"}` (a shape with no truncate
/// of its own). `source` writes the body of Debezium's `source` block.
pub fn truncate(format: RecordFormat, attributes: &Attributes, source: impl FnOnce(&mut Vec<u8>)) -> Record {
    let mut buf = Vec::with_capacity(128);
    match format {
        RecordFormat::Hstream => {
            pb::field(&mut buf, "key", pb::null);
            pb::field(&mut buf, "value", pb::null);
            pb::field(&mut buf, "op", |b| pb::string(b, "t"));
        }
        RecordFormat::Debezium => {
            pb::field(&mut buf, "op", |b| pb::string(b, "t"));
            pb::field(&mut buf, "ts_ms", |b| pb::number(b, now_ms() as f64));
            pb::field(&mut buf, "source", |b| pb::object(b, source));
        }
    }
    let mut r = Record::new(String::new(), PayloadFlag::Json, Bytes::from(buf));
    r.attributes = attributes.clone();
    r
}

/// One transaction's metadata (Debezium's `provide.transaction.metadata`): its id, and how
/// many change records it had so far, in all and per table.
#[derive(Debug)]
pub struct TxMeta {
    id: String,
    ts_ms: i64,
    total: u64,
    per_table: Vec<(String, u64)>,
}

impl TxMeta {
    pub fn new(id: String, ts_ms: i64) -> TxMeta {
        TxMeta {
            id,
            ts_ms,
            total: 0,
            per_table: Vec::new(),
        }
    }

    /// Counts a change record (its table from its `source.*` attributes) and, in Debezium's
    /// format, appends the envelope's `transaction` block.
    pub fn annotate(&mut self, record: &mut Record, format: RecordFormat) {
        let a = &record.attributes;
        let table = format!(
            "{}.{}",
            a.get(ATTR_SCHEMA).or_else(|| a.get(ATTR_DB)).map_or("", String::as_str),
            a.get(ATTR_TABLE).map_or("", String::as_str)
        );
        self.total += 1;
        let order = match self.per_table.iter_mut().find(|(t, _)| *t == table) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.per_table.push((table, 1));
                1
            }
        };
        if format == RecordFormat::Debezium {
            // A Struct's fields are map entries: one more appended is one more field.
            let mut buf = Vec::with_capacity(record.payload.len() + 96);
            buf.extend_from_slice(&record.payload);
            pb::field(&mut buf, "transaction", |b| {
                pb::object(b, |b| {
                    pb::field(b, "id", |b| pb::string(b, &self.id));
                    pb::field(b, "total_order", |b| pb::number(b, self.total as f64));
                    pb::field(b, "data_collection_order", |b| pb::number(b, order as f64));
                })
            });
            record.payload = Bytes::from(buf);
        }
    }

    /// The transaction's BEGIN and END records (none when it changed no captured table), keyed
    /// by its id.
    pub fn records(&self) -> Vec<Record> {
        if self.total == 0 {
            return Vec::new();
        }
        let one = |end: bool| {
            let mut buf = Vec::with_capacity(128);
            pb::field(&mut buf, "status", |b| pb::string(b, if end { "END" } else { "BEGIN" }));
            pb::field(&mut buf, "id", |b| pb::string(b, &self.id));
            pb::field(&mut buf, "ts_ms", |b| pb::number(b, self.ts_ms as f64));
            pb::field(&mut buf, "event_count", |b| match end {
                true => pb::number(b, self.total as f64),
                false => pb::null(b),
            });
            pb::field(&mut buf, "data_collections", |b| match end {
                true => pb::list(b, |b| {
                    for (t, n) in &self.per_table {
                        pb::item(b, |b| {
                            pb::object(b, |b| {
                                pb::field(b, "data_collection", |b| pb::string(b, t));
                                pb::field(b, "event_count", |b| pb::number(b, *n as f64));
                            })
                        });
                    }
                }),
                false => pb::null(b),
            });
            Record::new(self.id.clone(), PayloadFlag::Json, Bytes::from(buf))
        };
        vec![one(false), one(true)]
    }
}

/// A heartbeat record of the source writing to `stream`: `{"serverName", "ts_ms", "source"}`,
/// `source` writing the position.
pub fn heartbeat(stream: &str, source: impl FnOnce(&mut Vec<u8>)) -> Record {
    let mut buf = Vec::with_capacity(96);
    pb::field(&mut buf, "serverName", |b| pb::string(b, stream));
    pb::field(&mut buf, "ts_ms", |b| pb::number(b, now_ms() as f64));
    pb::field(&mut buf, "source", |b| pb::object(b, source));
    Record::new(stream.to_owned(), PayloadFlag::Json, Bytes::from(buf))
}

/// A change record. `source` writes the body of Debezium's `source` block.
pub fn change<R: RowImage + ?Sized>(
    format: RecordFormat,
    op: Op,
    before: Option<&R>,
    after: Option<&R>,
    source: impl FnOnce(&mut Vec<u8>),
) -> Record {
    let keyed = after.or(before);
    let key = keyed.map(RowImage::partition_key).unwrap_or_default();
    let mut buf = Vec::with_capacity(256);
    match format {
        RecordFormat::Hstream => {
            pb::field(&mut buf, "key", |b| match keyed {
                Some(r) if r.has_key() => pb::object(b, |b| r.write_key(b)),
                _ => pb::null(b),
            });
            pb::field(&mut buf, "value", |b| match after {
                Some(r) => pb::object(b, |b| r.write_row(b)),
                None => pb::null(b),
            });
        }
        RecordFormat::Debezium => {
            for (name, img) in [("before", before), ("after", after)] {
                pb::field(&mut buf, name, |b| match img {
                    Some(r) => pb::object(b, |b| r.write_row(b)),
                    None => pb::null(b),
                });
            }
            pb::field(&mut buf, "op", |b| pb::string(b, op.code()));
            pb::field(&mut buf, "ts_ms", |b| pb::number(b, now_ms() as f64));
            pb::field(&mut buf, "source", |b| pb::object(b, source));
        }
    }
    Record::new(key, PayloadFlag::Json, Bytes::from(buf))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
