//! Shard reader RPCs: requests translated into the readers service's terms.

use hstream_proto as pb;
use prost::Message;

use super::HStreamService;
use super::read::{self, RESPONSE_BYTES};
use crate::error::{ApiError, ApiResult};
use crate::readers::ReaderSpec;

impl HStreamService {
    /// A reader's position is in one node's memory: the one its lookup names. Creating,
    /// reading and deleting it elsewhere is WrongServer naming that node, as HStreamDB's
    /// clients expect (they look a reader up before creating it); a cursor kept from before a
    /// membership change is checked before it is read again (`Readers`).
    fn reader_here(&self, id: &str) -> ApiResult<()> {
        let at = self.api.assignments.spread(&super::reader_resource(id));
        if at.node != self.api.node.id {
            return Err(ApiError::WrongServer {
                what: format!("shard reader {id:?}"),
                owner: Some(format!("{}:{}", at.host, at.port)),
            });
        }
        Ok(())
    }

    pub(super) async fn create_shard_reader_rpc(
        &self,
        req: pb::CreateShardReaderRequest,
    ) -> ApiResult<pb::CreateShardReaderResponse> {
        // The id and shard are checked before the offset, as the request reads.
        self.api
            .readers
            .check_spec(&req.reader_id, &req.stream_name, req.shard_id)?;
        self.reader_here(&req.reader_id)?;
        let offset = req
            .shard_offset
            .as_ref()
            .ok_or_else(|| ApiError::InvalidOffset("shardOffset is missing".into()))?;
        let spec = ReaderSpec {
            id: req.reader_id.clone(),
            stream: req.stream_name.clone(),
            shard_id: req.shard_id,
            from: read::shard_from(req.shard_id, Some(offset))?,
            timeout_ms: req.timeout,
            offset_spec: offset.encode_to_vec(),
        };
        self.api.readers.create(spec, self.api.assignments.view()).await?;
        Ok(pb::CreateShardReaderResponse {
            stream_name: req.stream_name,
            shard_id: req.shard_id,
            shard_offset: req.shard_offset,
            reader_id: req.reader_id,
            timeout: req.timeout,
        })
    }

    /// Returns up to `maxRecords` batches; waits up to the reader's timeout when none is there.
    pub(super) async fn read_shard_rpc(&self, req: pb::ReadShardRequest) -> ApiResult<pb::ReadShardResponse> {
        self.reader_here(&req.reader_id)?;
        let (shard_id, batches) = self
            .api
            .readers
            .read(
                &req.reader_id,
                req.max_records,
                RESPONSE_BYTES,
                self.api.assignments.view(),
            )
            .await?;
        Ok(pb::ReadShardResponse {
            received_records: batches.into_iter().map(|b| read::received(shard_id, b)).collect(),
        })
    }

    pub(super) async fn delete_shard_reader_rpc(&self, req: pb::DeleteShardReaderRequest) -> ApiResult<()> {
        self.reader_here(&req.reader_id)?;
        self.api.readers.delete(&req.reader_id).await
    }

    pub(super) async fn list_shard_readers_rpc(&self) -> ApiResult<pb::ListShardReadersResponse> {
        Ok(pb::ListShardReadersResponse {
            reader_id: self.api.readers.list().await?,
        })
    }
}
