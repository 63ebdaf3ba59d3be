//! A transform built against `hstream:plugin@2.0.0`, an ABI the host does not implement: the
//! host must refuse it at create, naming both versions.

wit_bindgen::generate!({ world: "transform-plugin", path: "wit" });

use exports::hstream::plugin::transform::Output;
use hstream::plugin::types::{Error, PluginInfo, Kind, Record};

struct V2;

impl exports::hstream::plugin::transform::Guest for V2 {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "abi-v2".into(),
            kind: Kind::Transform,
            config_schema: r#"{"type": "object"}"#.into(),
            description: String::new(),
        }
    }
    fn open(_config: String) -> Result<(), Error> {
        Ok(())
    }
    fn apply(records: Vec<Record>) -> Result<Vec<Output>, Error> {
        Ok(records
            .into_iter()
            .enumerate()
            .map(|(i, record)| Output { input: i as u32, record, stream: None })
            .collect())
    }
}

export!(V2);
