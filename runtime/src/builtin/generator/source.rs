use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{GeneratorConfig, GeneratorOffset, PayloadShape};
use crate::connector::{Done, PayloadFlag, Record, Source, SourceOutput};
use crate::error::ConnectorError;
use crate::structs;

pub struct GeneratorSource {
    config: GeneratorConfig,
    next: u64,
}

impl GeneratorSource {
    fn record(&self, i: u64) -> Record {
        let keys = self.config.keys as u64;
        let key = format!("k{}", i % keys);
        let seq = i / keys;
        match self.config.shape {
            PayloadShape::Bytes => {
                let mut p = format!("{key}:{seq}:").into_bytes();
                p.resize(p.len().max(self.config.payload_bytes as usize), b'x');
                Record::new(key, PayloadFlag::Raw, Bytes::from(p))
            }
            PayloadShape::Json => {
                let data = "x".repeat(self.config.payload_bytes as usize);
                let value = serde_json::json!({ "key": key, "seq": seq, "n": i, "data": data });
                Record::new(key, PayloadFlag::Json, structs::encode_json(&value))
            }
        }
    }
}

#[async_trait]
impl Source for GeneratorSource {
    type Config = GeneratorConfig;
    type Offset = GeneratorOffset;
    const REPLAYS: bool = true;

    async fn check(_: &GeneratorConfig) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn open(config: GeneratorConfig, offset: Option<GeneratorOffset>) -> Result<Self, ConnectorError> {
        Ok(GeneratorSource {
            config,
            next: offset.map_or(0, |o| o.next),
        })
    }

    fn stream(config: &GeneratorConfig) -> &str {
        &config.stream
    }

    async fn run(&mut self, out: &mut SourceOutput<GeneratorOffset>) -> Result<Done, ConnectorError> {
        let cancel = out.cancelled();
        let batch = self.config.batch_size as u64;
        // Paced per batch: one batch every batch/rate seconds.
        let mut tick = (self.config.rate > 0).then(|| {
            let period = Duration::from_secs_f64(batch as f64 / self.config.rate as f64).max(Duration::from_micros(1));
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            if cancel.is_cancelled() {
                return Ok(Done::Cancelled);
            }
            let end = match self.config.count {
                Some(c) if self.next >= c => return Ok(Done::Completed),
                Some(c) => (self.next + batch).min(c),
                None => self.next + batch,
            };
            if let Some(t) = tick.as_mut() {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(Done::Cancelled),
                    _ = t.tick() => {}
                }
            }
            let records: Vec<Record> = (self.next..end).map(|i| self.record(i)).collect();
            if out.emit(records, GeneratorOffset { next: end }).await.is_err() {
                return Ok(Done::Cancelled);
            }
            self.next = end;
        }
    }
}
