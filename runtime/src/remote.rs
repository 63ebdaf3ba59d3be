//! Running the runtime standalone: [`GrpcStreams`] reaches a remote server through the public
//! HStreamApi, as any HStreamDB client does (MD5 key ranges from ListShards, Append per shard,
//! ReadShardStream), and [`FileCheckpoints`] keeps checkpoints in a local directory.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hstream_proto as pb;
use hstream_proto::h_stream_api_client::HStreamApiClient;
use md5::{Digest, Md5};
use prost::Message;
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::connector::{PayloadFlag, Record, SinkRecord};
use crate::error::ConnectorError;
use crate::streams::{Checkpoints, ReadChunk, Streams};

fn external(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::external(e.to_string())
}

/// Records per Append request.
const APPEND_BATCH: usize = 1000;

/// A source record as HStreamDB stores it.
pub fn to_hstream_record(r: Record) -> pb::HStreamRecord {
    let flag = match r.flag {
        PayloadFlag::Json => pb::h_stream_record_header::Flag::Json as i32,
        PayloadFlag::Raw => pb::h_stream_record_header::Flag::Raw as i32,
    };
    pb::HStreamRecord {
        header: Some(pb::HStreamRecordHeader {
            flag,
            attributes: r.attributes,
            key: r.key,
        }),
        payload: r.payload,
    }
}

/// A stored record as a sink sees it.
pub fn to_sink_record(shard_id: u64, lsn: u64, index: u32, r: pb::HStreamRecord) -> SinkRecord {
    let header = r.header.unwrap_or_default();
    let flag = if header.flag == pb::h_stream_record_header::Flag::Json as i32 {
        PayloadFlag::Json
    } else {
        PayloadFlag::Raw
    };
    SinkRecord {
        shard_id,
        lsn,
        index,
        key: header.key,
        flag,
        payload: r.payload,
        attributes: header.attributes,
    }
}

/// A shard and its inclusive hash-key range.
type ShardRange = (u64, u128, u128);

pub struct GrpcStreams {
    client: HStreamApiClient<Channel>,
    /// Shard ranges per stream (from ListShards).
    shards: Mutex<HashMap<String, Vec<ShardRange>>>,
}

impl GrpcStreams {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:6570`).
    pub async fn connect(endpoint: &str) -> Result<Self, ConnectorError> {
        let client = HStreamApiClient::connect(endpoint.to_owned())
            .await
            .map_err(|e| ConnectorError::external(format!("connecting to {endpoint}")).with_source(e))?
            .max_decoding_message_size(64 << 20);
        Ok(GrpcStreams {
            client,
            shards: Mutex::new(HashMap::new()),
        })
    }

    async fn ranges(&self, stream: &str) -> Result<Vec<ShardRange>, ConnectorError> {
        if let Some(r) = self.shards.lock().await.get(stream) {
            return Ok(r.clone());
        }
        let resp = self
            .client
            .clone()
            .list_shards(pb::ListShardsRequest {
                stream_name: stream.to_owned(),
            })
            .await
            .map_err(external)?
            .into_inner();
        let ranges: Vec<_> = resp
            .shards
            .iter()
            .map(|s| {
                let key = |k: &str| k.parse::<u128>().map_err(|_| external(format!("bad hash key {k:?}")));
                Ok((s.shard_id, key(&s.start_hash_range_key)?, key(&s.end_hash_range_key)?))
            })
            .collect::<Result<_, ConnectorError>>()?;
        self.shards.lock().await.insert(stream.to_owned(), ranges.clone());
        Ok(ranges)
    }
}

fn decode_batch(shard: u64, rr: pb::ReceivedRecord) -> Result<Vec<SinkRecord>, ConnectorError> {
    let b = rr
        .record
        .ok_or_else(|| external("a received batch without its record"))?;
    let raw = match pb::CompressionType::try_from(b.compression_type) {
        Ok(pb::CompressionType::None) => b.payload.to_vec(),
        Ok(pb::CompressionType::Gzip) => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&b.payload[..])
                .read_to_end(&mut out)
                .map_err(external)?;
            out
        }
        Ok(pb::CompressionType::Zstd) => zstd::decode_all(&b.payload[..]).map_err(external)?,
        Err(_) => return Err(external(format!("unknown compression {}", b.compression_type))),
    };
    let recs = pb::BatchHStreamRecords::decode(&raw[..]).map_err(external)?;
    Ok(rr
        .record_ids
        .iter()
        .zip(recs.records)
        .map(|(id, r)| to_sink_record(shard, id.batch_id, id.batch_index, r))
        .collect())
}

#[async_trait]
impl Streams for GrpcStreams {
    async fn ensure_stream(&self, name: &str) -> Result<(), ConnectorError> {
        let req = pb::Stream {
            stream_name: name.to_owned(),
            replication_factor: 1,
            shard_count: 1,
            ..Default::default()
        };
        match self.client.clone().create_stream(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(external(s)),
        }
    }

    async fn stream_exists(&self, name: &str) -> Result<bool, ConnectorError> {
        match self
            .client
            .clone()
            .get_stream(pb::GetStreamRequest { name: name.to_owned() })
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(external(s)),
        }
    }

    async fn append(&self, stream: &str, records: Vec<Record>) -> Result<(), ConnectorError> {
        let ranges = self.ranges(stream).await?;
        let mut per_shard: HashMap<u64, Vec<pb::HStreamRecord>> = HashMap::new();
        for r in records {
            let h = u128::from_be_bytes(Md5::digest(r.key.as_bytes()).into());
            let shard = ranges
                .iter()
                .find(|(_, s, e)| *s <= h && h <= *e)
                .map_or(ranges[0].0, |r| r.0);
            per_shard.entry(shard).or_default().push(to_hstream_record(r));
        }
        for (shard, recs) in per_shard {
            for chunk in recs.chunks(APPEND_BATCH) {
                let payload = pb::BatchHStreamRecords {
                    records: chunk.to_vec(),
                }
                .encode_to_vec();
                let req = pb::AppendRequest {
                    stream_name: stream.to_owned(),
                    shard_id: shard,
                    records: Some(pb::BatchedRecord {
                        compression_type: pb::CompressionType::None as i32,
                        publish_time: None,
                        batch_size: chunk.len() as u32,
                        payload: payload.into(),
                    }),
                };
                self.client.clone().append(req).await.map_err(external)?;
            }
        }
        Ok(())
    }

    async fn shards(&self, stream: &str) -> Result<Vec<u64>, ConnectorError> {
        Ok(self.ranges(stream).await?.into_iter().map(|r| r.0).collect())
    }

    async fn bounds(&self, stream: &str, shard: u64) -> Result<(u64, u64), ConnectorError> {
        let tail = self
            .client
            .clone()
            .get_tail_record_id(pb::GetTailRecordIdRequest {
                stream_name: stream.to_owned(),
                shard_id: shard,
            })
            .await
            .map_err(external)?
            .into_inner()
            .tail_record_id
            .map_or(0, |r| r.batch_id);
        // Reads from LSN 1 start at the first untrimmed batch.
        Ok((1, tail + 1))
    }

    async fn read(
        &self,
        stream: &str,
        shard: u64,
        from_lsn: u64,
        max_batches: usize,
        wait: Duration,
    ) -> Result<ReadChunk, ConnectorError> {
        let offset = |o| pb::ShardOffset { offset: Some(o) };
        let from = offset(pb::shard_offset::Offset::RecordOffset(pb::RecordId {
            shard_id: shard,
            batch_id: from_lsn,
            batch_index: 0,
        }));
        // Without `until` the server tails: the first response is whatever arrives first.
        let req = pb::ReadShardStreamRequest {
            reader_id: String::new(),
            shard_id: shard,
            from: Some(from),
            max_read_batches: max_batches as u64,
            until: None,
            stream_name: stream.to_owned(),
        };
        let mut chunk = ReadChunk {
            records: Vec::new(),
            next_lsn: from_lsn,
        };
        let mut s = self
            .client
            .clone()
            .read_shard_stream(req)
            .await
            .map_err(external)?
            .into_inner();
        let first = tokio::time::timeout(wait.max(Duration::from_millis(1)), s.message()).await;
        if let Ok(msg) = first {
            for rr in msg.map_err(external)?.map(|m| m.received_records).unwrap_or_default() {
                let lsn = rr.record_ids.first().map_or(chunk.next_lsn, |r| r.batch_id);
                chunk.records.extend(decode_batch(shard, rr)?);
                chunk.next_lsn = lsn + 1;
            }
        }
        Ok(chunk)
    }
}

/// Checkpoints as one file per task in a directory, replaced atomically (write, fsync, rename,
/// fsync the directory).
pub struct FileCheckpoints {
    dir: PathBuf,
}

impl FileCheckpoints {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, ConnectorError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| ConnectorError::internal(format!("{}", dir.display())).with_source(e))?;
        Ok(FileCheckpoints { dir })
    }

    fn path(&self, task: &str) -> PathBuf {
        self.dir.join(format!("{task}.checkpoint"))
    }
}

#[async_trait]
impl Checkpoints for FileCheckpoints {
    async fn load(&self, task: &str) -> Result<Option<(u32, Vec<u8>)>, ConnectorError> {
        match std::fs::read(self.path(task)) {
            Ok(b) if b.len() >= 4 => Ok(Some((
                u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
                b[4..].to_vec(),
            ))),
            Ok(_) => Err(ConnectorError::internal(format!("checkpoint of {task} is truncated"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ConnectorError::internal(e.to_string())),
        }
    }

    async fn store(&self, task: &str, version: u32, data: Vec<u8>) -> Result<(), ConnectorError> {
        let (dir, path) = (self.dir.clone(), self.path(task));
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&version.to_le_bytes())?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| ConnectorError::internal(e.to_string()))?
        .map_err(|e| ConnectorError::internal(e.to_string()))
    }
}
