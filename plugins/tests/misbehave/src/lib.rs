//! A source that misbehaves on purpose, for the sandbox tests: `loop` spins forever in `next`,
//! `sleep` blocks in the host for an hour, `alloc` allocates until memory runs out, `open_file` reads `path`, `connect` opens a TCP
//! connection to `addr`. What it reached becomes its one record, so a test sees access too.

use std::io::Read;

use hstream_plugin_sdk::serde_json::{Value, json};
use hstream_plugin_sdk::{Batch, Error, Record, Source, export_source};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    behaviour: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    addr: String,
}

struct Misbehave {
    config: Config,
    done: bool,
}

impl Source for Misbehave {
    const NAME: &'static str = "misbehave";
    type Config = Config;

    fn open(config: Config, _offset: Option<Value>) -> Result<Self, Error> {
        Ok(Misbehave { config, done: false })
    }

    fn next(&mut self, _max: u32) -> Result<Batch, Error> {
        if self.done {
            return Ok(Batch { done: true, ..Batch::default() });
        }
        self.done = true;
        // Output goes to the task's log.
        println!("misbehave: {} (stdout)", self.config.behaviour);
        eprintln!("misbehave: {} (stderr)", self.config.behaviour);
        let reached = match self.config.behaviour.as_str() {
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "sleep" => {
                // Blocked in the host (a clock wait), where no deadline reaches.
                std::thread::sleep(std::time::Duration::from_secs(3600));
                json!({ "slept": true })
            }
            "alloc" => {
                let mut held: Vec<Vec<u8>> = Vec::new();
                loop {
                    held.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&held);
                }
            }
            "open_file" => {
                let mut text = String::new();
                std::fs::File::open(&self.config.path)
                    .and_then(|mut f| f.read_to_string(&mut text))
                    .map_err(|e| Error::Config(format!("open {}: {e}", self.config.path)))?;
                json!({ "path": self.config.path, "content": text })
            }
            "connect" => {
                std::net::TcpStream::connect(&self.config.addr)
                    .map_err(|e| Error::Config(format!("connect {}: {e}", self.config.addr)))?;
                json!({ "connected": self.config.addr })
            }
            other => return Err(Error::Config(format!("behaviour: unknown {other:?}"))),
        };
        Ok(Batch {
            records: vec![Record::json("k", &reached)],
            offset: Some(json!({ "done": true })),
            ..Batch::default()
        })
    }
}

export_source!(Misbehave);
