//! Streams and records as a client sees them: encoding batches as HStreamDB clients do, reading
//! streams and shards back, decoding records, and a StreamingFetch consumer.

use super::*;

/// Encodes records the way HStreamDB clients do (RAW flag, one partition key).
pub fn batch(key: &str, payloads: &[Vec<u8>], compression: pb::CompressionType) -> pb::BatchedRecord {
    let records = payloads
        .iter()
        .map(|p| pb::HStreamRecord {
            header: Some(pb::HStreamRecordHeader {
                flag: pb::h_stream_record_header::Flag::Raw as i32,
                attributes: Default::default(),
                key: key.to_owned(),
            }),
            payload: Bytes::from(p.clone()),
        })
        .collect();
    let raw = pb::BatchHStreamRecords { records }.encode_to_vec();
    let payload = compress(&raw, compression);
    pb::BatchedRecord {
        compression_type: compression as i32,
        publish_time: None,
        batch_size: payloads.len() as u32,
        payload: payload.into(),
    }
}

pub fn compress(raw: &[u8], compression: pb::CompressionType) -> Vec<u8> {
    use std::io::Write;
    match compression {
        pb::CompressionType::None => raw.to_vec(),
        pb::CompressionType::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(raw).expect("gzip");
            e.finish().expect("gzip")
        }
        pb::CompressionType::Zstd => zstd::encode_all(raw, 1).expect("zstd"),
    }
}

/// Creates a stream of `shards` shards; returns their ids.
pub async fn make_stream(c: &mut Client, name: &str, shards: u32) -> Vec<u64> {
    c.create_stream(pb::Stream {
        stream_name: name.into(),
        replication_factor: 1,
        backlog_duration: 0,
        shard_count: shards,
        creation_time: None,
    })
    .await
    .unwrap();
    stream_shards(c, name).await.iter().map(|s| s.shard_id).collect()
}

/// A stream's shards; none for a stream that does not exist (yet: tests poll before a connector
/// created it).
pub async fn stream_shards(client: &mut Client, stream: &str) -> Vec<pb::Shard> {
    match client
        .list_shards(pb::ListShardsRequest {
            stream_name: stream.to_owned(),
        })
        .await
    {
        Ok(r) => r.into_inner().shards,
        Err(s) if s.code() == tonic::Code::NotFound => Vec::new(),
        Err(s) => panic!("list shards: {s}"),
    }
}

/// Every record of every shard of a stream up to its tail, whole (header and payload), in order
/// within each shard.
pub async fn read_stream_records(client: &Client, stream: &str) -> Vec<pb::HStreamRecord> {
    let mut client = client.clone();
    let mut out = Vec::new();
    for shard in stream_shards(&mut client, stream).await {
        for r in read_shard_to_tail(&mut client, stream, shard.shard_id).await {
            out.extend(decode_records(&r).into_iter().map(|(_, rec)| rec));
        }
    }
    out
}

/// How many records a stream holds up to its tail (counted from record ids, nothing decoded).
pub async fn count_stream_records(client: &Client, stream: &str) -> usize {
    try_count_stream_records(client, stream)
        .await
        .expect("reading the stream")
}

/// Like [`count_stream_records`], with the server's refusal returned.
pub async fn try_count_stream_records(client: &Client, stream: &str) -> Result<usize, tonic::Status> {
    let mut client = client.clone();
    let mut n = 0;
    for shard in stream_shards(&mut client, stream).await {
        n += try_read_shard_to_tail(&mut client, stream, shard.shard_id)
            .await?
            .iter()
            .map(|r| r.record_ids.len())
            .sum::<usize>();
    }
    Ok(n)
}

/// Decodes a received batch into (record id, key, payload) triples.
pub fn decode(r: &pb::ReceivedRecord) -> Vec<(pb::RecordId, String, Vec<u8>)> {
    decode_records(r)
        .into_iter()
        .map(|(id, rec)| (id, rec.header.map(|h| h.key).unwrap_or_default(), rec.payload.to_vec()))
        .collect()
}

/// Decodes a received batch into its records, whole, with their ids.
pub fn decode_records(r: &pb::ReceivedRecord) -> Vec<(pb::RecordId, pb::HStreamRecord)> {
    use std::io::Read;
    let b = r.record.as_ref().expect("record");
    let raw = match pb::CompressionType::try_from(b.compression_type).expect("compression") {
        pb::CompressionType::None => b.payload.to_vec(),
        pb::CompressionType::Gzip => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&b.payload[..])
                .read_to_end(&mut out)
                .expect("gunzip");
            out
        }
        pb::CompressionType::Zstd => zstd::decode_all(&b.payload[..]).expect("unzstd"),
    };
    let recs = pb::BatchHStreamRecords::decode(&raw[..]).expect("BatchHStreamRecords");
    assert_eq!(recs.records.len(), r.record_ids.len(), "record ids match records");
    r.record_ids.iter().copied().zip(recs.records).collect()
}

/// A JSON object as a protobuf Struct (an HStreamDB JSON record; numbers become doubles).
pub fn json_struct(v: &serde_json::Value) -> prost_types::Struct {
    use prost_types::value::Kind;
    use serde_json::Value;
    fn val(v: &Value) -> prost_types::Value {
        let kind = match v {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().expect("serde_json numbers convert to f64")),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.iter().map(val).collect(),
            }),
            Value::Object(_) => Kind::StructValue(json_struct(v)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    let fields = v.as_object().expect("a JSON object");
    prost_types::Struct {
        fields: fields.iter().map(|(k, x)| (k.clone(), val(x))).collect(),
    }
}

/// A protobuf Struct (an HStreamDB JSON record) as JSON.
pub fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    use prost_types::value::Kind;
    fn v(x: &prost_types::Value) -> serde_json::Value {
        match &x.kind {
            Some(Kind::NumberValue(n)) => serde_json::json!(n),
            Some(Kind::StringValue(s)) => serde_json::json!(s),
            Some(Kind::BoolValue(b)) => serde_json::json!(b),
            Some(Kind::StructValue(s)) => struct_to_json(s),
            Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(v).collect()),
            _ => serde_json::Value::Null,
        }
    }
    serde_json::Value::Object(s.fields.iter().map(|(k, x)| (k.clone(), v(x))).collect())
}

/// Every record of every shard of a JSON stream up to its tail, as (partition key, JSON),
/// in order within each shard; none for a stream that does not exist (yet).
pub async fn read_json_stream(client: &mut Client, stream: &str) -> Vec<(String, serde_json::Value)> {
    try_read_json_stream(client, stream).await.expect("reading the stream")
}

/// Like [`read_json_stream`], with the server's refusal (e.g. UNAVAILABLE while the store
/// fails over) returned instead of panicking.
pub async fn try_read_json_stream(
    client: &mut Client,
    stream: &str,
) -> Result<Vec<(String, serde_json::Value)>, tonic::Status> {
    let mut out = Vec::new();
    for shard in stream_shards(client, stream).await {
        for r in try_read_shard_to_tail(client, stream, shard.shard_id).await? {
            for (_, key, payload) in decode(&r) {
                let s = prost_types::Struct::decode(&payload[..]).expect("a JSON (Struct) record");
                out.push((key, struct_to_json(&s)));
            }
        }
    }
    Ok(out)
}

pub fn earliest() -> pb::ShardOffset {
    pb::ShardOffset {
        offset: Some(pb::shard_offset::Offset::SpecialOffset(
            pb::SpecialOffset::Earliest as i32,
        )),
    }
}

pub fn latest() -> pb::ShardOffset {
    pb::ShardOffset {
        offset: Some(pb::shard_offset::Offset::SpecialOffset(
            pb::SpecialOffset::Latest as i32,
        )),
    }
}

/// Reads a shard from EARLIEST to its tail as of now, through ReadShardStream.
pub async fn read_shard_to_tail(client: &mut Client, stream: &str, shard_id: u64) -> Vec<pb::ReceivedRecord> {
    try_read_shard_to_tail(client, stream, shard_id)
        .await
        .expect("read_shard_stream")
}

/// Like [`read_shard_to_tail`], with the server's refusal returned.
pub async fn try_read_shard_to_tail(
    client: &mut Client,
    stream: &str,
    shard_id: u64,
) -> Result<Vec<pb::ReceivedRecord>, tonic::Status> {
    let mut s = client
        .read_shard_stream(pb::ReadShardStreamRequest {
            reader_id: String::new(),
            shard_id,
            from: Some(earliest()),
            max_read_batches: 0,
            until: Some(latest()),
            stream_name: stream.to_owned(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(resp) = s.message().await? {
        out.extend(resp.received_records);
    }
    Ok(out)
}

/// What a test consumer received, in order: (record id, payload).
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(pb::RecordId, Vec<u8>)>>>;

/// A StreamingFetch consumer run by a test: everything it receives is recorded; it acks what it
/// receives unless told not to; dropping or [`TestConsumer::kill`]ing it breaks its connection.
pub struct TestConsumer {
    pub received: Received,
    acks: tokio::sync::mpsc::Sender<pb::StreamingFetchRequest>,
    task: tokio::task::JoinHandle<Result<(), tonic::Status>>,
    sub: String,
    name: String,
}

impl TestConsumer {
    /// Connects `name` to `sub`; with `auto_ack` every received record is acked at once.
    pub async fn start(client: &Client, sub: &str, name: &str, auto_ack: bool) -> Result<TestConsumer, tonic::Status> {
        Self::start_acking(client, sub, name, auto_ack, vec![]).await
    }

    /// Like [`TestConsumer::start`], with `acks` carried by the first request.
    pub async fn start_acking(
        client: &Client,
        sub: &str,
        name: &str,
        auto_ack: bool,
        acks: Vec<pb::RecordId>,
    ) -> Result<TestConsumer, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let first = pb::StreamingFetchRequest {
            subscription_id: sub.into(),
            consumer_name: name.into(),
            ack_ids: acks,
        };
        tx.send(first).await.expect("queue first request");
        let mut c = client.clone();
        let mut inbound = c
            .streaming_fetch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let received: Received = Default::default();
        let (rec, acks, s, n) = (received.clone(), tx.clone(), sub.to_owned(), name.to_owned());
        let task = tokio::spawn(async move {
            while let Some(resp) = inbound.message().await? {
                let rr = resp.received_records.expect("a batch");
                let got = decode(&rr);
                let ids: Vec<pb::RecordId> = got.iter().map(|(id, _, _)| *id).collect();
                rec.lock().unwrap().extend(got.into_iter().map(|(id, _, p)| (id, p)));
                if auto_ack {
                    let req = pb::StreamingFetchRequest {
                        subscription_id: s.clone(),
                        consumer_name: n.clone(),
                        ack_ids: ids,
                    };
                    if acks.send(req).await.is_err() {
                        break;
                    }
                }
            }
            Ok(())
        });
        Ok(TestConsumer {
            received,
            acks: tx,
            task,
            sub: sub.into(),
            name: name.into(),
        })
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn ids(&self) -> Vec<pb::RecordId> {
        self.received.lock().unwrap().iter().map(|(id, _)| *id).collect()
    }

    pub async fn ack(&self, ids: Vec<pb::RecordId>) {
        let req = pb::StreamingFetchRequest {
            subscription_id: self.sub.clone(),
            consumer_name: self.name.clone(),
            ack_ids: ids,
        };
        self.acks.send(req).await.expect("consumer is connected");
    }

    /// Breaks the connection, as a crashed consumer would.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Waits for the server to end this consumer's stream; returns how it ended.
    pub async fn ended(self) -> Result<(), tonic::Status> {
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("stream ends")
            .expect("task")
    }
}

/// CDC records (`{"key", "value"}`) folded into their final state: primary key text → row (absent once deleted).
pub fn fold_changes(records: &[(String, serde_json::Value)]) -> std::collections::BTreeMap<String, serde_json::Value> {
    use serde_json::{Value, json};
    let mut state = std::collections::BTreeMap::new();
    for (_, r) in records {
        let key = r["key"].to_string();
        match &r["value"] {
            Value::Null => {
                state.remove(&key);
            }
            v => {
                // A value without some column (an unchanged TOASTed one) keeps the earlier one.
                let entry = state.entry(key).or_insert_with(|| json!({}));
                for (k, x) in v.as_object().expect("row object") {
                    entry[k] = x.clone();
                }
            }
        }
    }
    state
}

/// A JSON record (a protobuf Struct, as HStreamDB's clients write them) with `attributes`.
pub fn json_record(key: &str, v: &serde_json::Value, attributes: &[(&str, &str)]) -> pb::HStreamRecord {
    use prost::Message;
    pb::HStreamRecord {
        header: Some(pb::HStreamRecordHeader {
            flag: pb::h_stream_record_header::Flag::Json as i32,
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            key: key.to_owned(),
        }),
        payload: json_struct(v).encode_to_vec().into(),
    }
}

/// Appends `records` as one uncompressed batch to a shard; returns their record ids.
pub async fn append_batch(
    c: &mut Client,
    stream: &str,
    shard: u64,
    records: Vec<pb::HStreamRecord>,
) -> Vec<pb::RecordId> {
    use prost::Message;
    let batch = pb::BatchedRecord {
        compression_type: pb::CompressionType::None as i32,
        publish_time: None,
        batch_size: records.len() as u32,
        payload: pb::BatchHStreamRecords { records }.encode_to_vec().into(),
    };
    c.append(pb::AppendRequest {
        stream_name: stream.into(),
        shard_id: shard,
        records: Some(batch),
    })
    .await
    .expect("append")
    .into_inner()
    .record_ids
}
