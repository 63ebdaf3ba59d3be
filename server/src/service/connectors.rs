//! HStream IO's connector RPCs: requests translated into the connectors service's terms, its
//! views into `pb::Connector` (config as JSON text, the task report as a protobuf Struct).

use hstream_proto as pb;
use serde_json::Value;

use super::HStreamService;
use super::read::timestamp;
use crate::connectors::{ConnectorSpec, ConnectorView};
use crate::error::{ApiError, ApiResult};

/// A config as the RPCs carry it: JSON text.
fn parse_config(text: &str) -> ApiResult<Value> {
    serde_json::from_str(text).map_err(|e| ApiError::InvalidConnectorConfig(format!("config is not JSON: {e}")))
}

fn connector_pb(c: ConnectorView) -> pb::Connector {
    pb::Connector {
        task_id: c.name.clone(),
        name: c.name,
        r#type: c.kind,
        target: c.target,
        creation_time: Some(timestamp(c.created_ms)),
        status: c.status,
        config: c.config.to_string(),
        offsets: c.report.iter().map(json_to_struct).collect(),
        node: c.node,
        docker_status: String::new(),
        image: String::new(),
    }
}

fn json_to_struct(v: &Value) -> prost_types::Struct {
    let bytes = hstream_runtime::structs::encode_json(v);
    <prost_types::Struct as prost::Message>::decode(bytes).unwrap_or_default()
}

impl HStreamService {
    pub(super) async fn create_connector_rpc(&self, req: pb::CreateConnectorRequest) -> ApiResult<pb::Connector> {
        let connectors = &self.api.connectors;
        // What the request names is checked before its config text is read.
        connectors.check_identity(&req.name, &req.r#type, &req.target)?;
        let spec = ConnectorSpec {
            name: req.name,
            kind: req.r#type,
            target: req.target,
            config: parse_config(&req.config)?,
        };
        Ok(connector_pb(connectors.create(spec).await?))
    }

    pub(super) async fn get_connector_rpc(&self, name: &str) -> ApiResult<pb::Connector> {
        Ok(connector_pb(self.api.connectors.get(name).await?))
    }

    pub(super) async fn list_connectors_rpc(&self) -> ApiResult<pb::ListConnectorsResponse> {
        let connectors = self.api.connectors.list().await?;
        Ok(pb::ListConnectorsResponse {
            connectors: connectors.into_iter().map(connector_pb).collect(),
        })
    }

    pub(super) fn connector_spec_rpc(&self, kind: &str, target: &str) -> ApiResult<pb::GetConnectorSpecResponse> {
        Ok(pb::GetConnectorSpecResponse {
            spec: self.api.connectors.config_spec(kind, target)?.to_string(),
        })
    }

    pub(super) async fn connector_logs_rpc(
        &self,
        req: pb::GetConnectorLogsRequest,
    ) -> ApiResult<pb::GetConnectorLogsResponse> {
        let begin = req.begin.max(0) as usize;
        let count = if req.count <= 0 { usize::MAX } else { req.count as usize };
        let lines = self.api.connectors.logs(&req.name, begin, count).await?;
        Ok(pb::GetConnectorLogsResponse { logs: lines.join("\n") })
    }

    pub(super) async fn alter_connector_rpc(&self, req: pb::AlterConnectorConfigRequest) -> ApiResult<()> {
        // The connector must exist before its patch is read.
        self.api.connectors.check_exists(&req.name).await?;
        self.api.connectors.alter(&req.name, parse_config(&req.config)?).await
    }
}
