//! A counter source: JSON records `{"n": 0}`, `{"n": 1}`, … keyed `k<n % keys>`, optionally up
//! to a limit (then the task completes). Its offset is the next `n`, so a restart resumes there.

use hstream_plugin_sdk::serde_json::{Value, json};
use hstream_plugin_sdk::{Batch, Error, Record, Source, export_source};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Stop after this many records (0: never).
    #[serde(default)]
    limit: u64,
    /// Records per batch.
    #[serde(default = "default_batch")]
    batch: u32,
    /// Distinct keys.
    #[serde(default = "default_keys")]
    keys: u64,
}

fn default_batch() -> u32 {
    500
}

fn default_keys() -> u64 {
    8
}

struct Counter {
    next: u64,
    config: Config,
}

impl Source for Counter {
    const NAME: &'static str = "counter";
    const DESCRIPTION: &'static str = "Counts: JSON records {\"n\": 0, 1, 2, …}";
    const CONFIG_SCHEMA: &'static str = r#"{
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "limit": {"type": "integer", "minimum": 0, "description": "Stop after this many records (0: never)"},
            "batch": {"type": "integer", "minimum": 1, "maximum": 65536, "description": "Records per batch"},
            "keys": {"type": "integer", "minimum": 1, "description": "Distinct keys"}
        }
    }"#;
    type Config = Config;

    fn open(config: Config, offset: Option<Value>) -> Result<Self, Error> {
        let next = match offset {
            Some(o) => o["next"]
                .as_u64()
                .ok_or_else(|| Error::Internal(format!("offset without next: {o}")))?,
            None => 0,
        };
        Ok(Counter { next, config })
    }

    fn next(&mut self, max: u32) -> Result<Batch, Error> {
        let mut n = u64::from(max.min(self.config.batch));
        if self.config.limit > 0 {
            n = n.min(self.config.limit - self.next.min(self.config.limit));
        }
        let records = (self.next..self.next + n)
            .map(|i| Record::json(format!("k{}", i % self.config.keys), &json!({ "n": i })))
            .collect();
        self.next += n;
        Ok(Batch {
            records,
            offset: Some(json!({ "next": self.next })),
            done: self.config.limit > 0 && self.next >= self.config.limit,
            ..Batch::default()
        })
    }
}

export_source!(Counter);
