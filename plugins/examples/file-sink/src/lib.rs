//! A sink appending each record as one JSON line to a file in a directory the host grants
//! (`"grant_dirs"`): `{"key": …, "value": <the JSON record>}` or, for a raw record,
//! `{"key": …, "raw": "<payload as text>"}`. Durable after each write when `fsync` is on,
//! else at each flush.

use std::fs::{File, OpenOptions};
use std::io::Write;

use hstream_plugin_sdk::serde_json::json;
use hstream_plugin_sdk::{Encoding, Error, Record, Sink, Written, export_sink};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: String,
    #[serde(default)]
    fsync: bool,
}

struct FileSink {
    file: File,
    fsync: bool,
}

impl Sink for FileSink {
    const NAME: &'static str = "file-sink";
    const DESCRIPTION: &'static str = "Appends records as JSON lines to a granted file";
    const CONFIG_SCHEMA: &'static str = r#"{
        "type": "object",
        "additionalProperties": false,
        "required": ["path"],
        "properties": {
            "path": {"type": "string", "description": "File to append to, inside a granted directory"},
            "fsync": {"type": "boolean", "description": "fsync after every write (else at flushes)"}
        }
    }"#;
    type Config = Config;

    fn open(config: Config) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|e| Error::Config(format!("cannot open {}: {e}", config.path)))?;
        Ok(FileSink {
            file,
            fsync: config.fsync,
        })
    }

    fn write(&mut self, records: Vec<Record>) -> Result<Written, Error> {
        let mut buf = Vec::new();
        for r in records {
            let line = match r.encoding {
                Encoding::Json => json!({ "key": r.key, "value": r.value()? }),
                Encoding::Raw => json!({ "key": r.key, "raw": String::from_utf8_lossy(&r.payload) }),
            };
            buf.extend_from_slice(line.to_string().as_bytes());
            buf.push(b'\n');
        }
        self.file.write_all(&buf).map_err(|e| Error::External(format!("write: {e}")))?;
        if self.fsync {
            self.flush()?;
            return Ok(Written::Durable);
        }
        Ok(Written::Accepted)
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.file.sync_data().map_err(|e| Error::External(format!("fsync: {e}")))
    }
}

export_sink!(FileSink);

