//! WASM transforms: the example field filter (`plugins/examples/field-filter`, built by
//! scripts/build-plugins.sh) against the same filter written natively, on the same records in
//! one run, in process (no server, no disk: the transform's own cost).
//!
//! Records have the generator's JSON shape `{"key", "seq", "n", "data"}` (protobuf Struct, as
//! stored); the filter keeps `n >= keep_from`, renames `n` to `num` and removes `data`. Printed:
//! records/s and ns/record of each, the ratio, the per-record overhead of crossing into WASM
//! (WASM − native) and how much of it is the host's Struct ↔ JSON-text conversion, and the
//! fixed cost of one call (batches of 1 against batches of `batch`).

use std::time::Instant;

use hstream_runtime::connector::{PayloadFlag, Record};
use hstream_runtime::options::ConnectorJson;
use hstream_runtime::structs::{decode_json, encode_json};
use hstream_runtime::wasm::instance::{from_wit, to_wit};
use hstream_runtime::wasm::transforms::{Chain, TransformSpec};
use serde_json::{Value, json};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Records per run.
    #[arg(long, default_value_t = 500_000)]
    records: u64,
    /// Records per transform call (the appender hands over up to 16,384 at once).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Bytes of the `data` field.
    #[arg(long, default_value_t = 64)]
    data_bytes: usize,
}

impl Args {
    pub fn default_args() -> Args {
        Args {
            records: 500_000,
            batch: 1000,
            data_bytes: 64,
        }
    }
}

fn records(n: u64, data_bytes: usize) -> Vec<Record> {
    let data = "x".repeat(data_bytes);
    (0..n)
        .map(|i| {
            let key = format!("k{}", i % 8);
            let v = json!({"key": key, "seq": i / 8, "n": i, "data": data});
            Record::new(key, PayloadFlag::Json, encode_json(&v))
        })
        .collect()
}

/// The filter, natively: what the plugin does, on the decoded Struct.
fn native(records: &[Record], keep_from: f64) -> Vec<Record> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let Ok(Value::Object(mut fields)) = decode_json(&r.payload) else {
            continue;
        };
        if !fields
            .get("n")
            .and_then(Value::as_f64)
            .is_some_and(|n| n > keep_from - 1.0)
        {
            continue;
        }
        if let Some(v) = fields.remove("n") {
            fields.insert("num".into(), v);
        }
        fields.remove("data");
        out.push(Record {
            payload: encode_json(&Value::Object(fields)),
            ..r.clone()
        });
    }
    out
}

fn per_record_ns(secs: f64, n: u64) -> f64 {
    secs * 1e9 / n as f64
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let module = hstream_integration_tests::repo_root().join("plugins/target/wasm32-wasip2/release/field_filter.wasm");
    anyhow::ensure!(
        module.exists(),
        "{} is missing: run scripts/build-plugins.sh",
        module.display()
    );
    let keep_from = (args.records * 3 / 10) as f64;
    let spec = TransformSpec {
        name: "keep".into(),
        module: module.display().to_string(),
        config: ConnectorJson::Object(
            json!({"filter": {"field": "n", "greater_than": keep_from - 1.0}, "rename": {"n": "num"}, "remove": ["data"]})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
        memory_limit_mb: None,
        call_timeout_ms: None,
        grant_dirs: None,
        grant_connect: None,
    };
    let t = Instant::now();
    let chain = Chain::open(std::slice::from_ref(&spec)).await?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let input = records(args.records, args.data_bytes);
    let n = args.records;
    println!(
        "wasm transform: {n} JSON records ({}-byte data), keep n >= {keep_from}, rename n -> num, remove data; \
         batches of {}",
        args.data_bytes, args.batch
    );
    println!("  plugin loaded, compiled and started in {open_ms:.0} ms (cached afterwards)");

    // Warm both paths once.
    native(&input[..args.batch.min(input.len())], keep_from);
    chain
        .apply_source(vec![(None, input[..args.batch.min(input.len())].to_vec())], "s")
        .await?;

    let t = Instant::now();
    let mut kept_native = 0usize;
    for chunk in input.chunks(args.batch) {
        kept_native += native(chunk, keep_from).len();
    }
    let native_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut kept_wasm = 0usize;
    for chunk in input.chunks(args.batch) {
        for (_, rs) in chain.apply_source(vec![(None, chunk.to_vec())], "s").await? {
            kept_wasm += rs.len();
        }
    }
    let wasm_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        kept_native == kept_wasm,
        "the two filters disagree: native kept {kept_native}, wasm {kept_wasm}"
    );

    // The host's share: Struct -> JSON text on the way in, JSON text -> Struct on the way out.
    let t = Instant::now();
    for r in &input {
        let w = to_wit(&r.key, r.flag, &r.payload, &r.attributes)?;
        std::hint::black_box(from_wit("bench", w)?);
    }
    let convert_s = t.elapsed().as_secs_f64();

    // The fixed cost of a call: batches of one.
    let small = (n / 10).max(1000) as usize;
    let t = Instant::now();
    for r in &input[..small.min(input.len())] {
        std::hint::black_box(chain.apply_source(vec![(None, vec![r.clone()])], "s").await?);
    }
    let single_s = t.elapsed().as_secs_f64();

    let (nat, was) = (per_record_ns(native_s, n), per_record_ns(wasm_s, n));
    println!(
        "  native filter:         {:>10.0} rec/s  {nat:>7.0} ns/rec  (kept {kept_native})",
        n as f64 / native_s
    );
    println!(
        "  field-filter.wasm:     {:>10.0} rec/s  {was:>7.0} ns/rec  (kept {kept_wasm}) -> {:.2}x the native rate",
        n as f64 / wasm_s,
        native_s / wasm_s
    );
    let convert = per_record_ns(convert_s, n);
    println!(
        "  crossing into WASM:    {:>7.0} ns/rec over native, of which {convert:.0} ns the host's Struct <-> JSON text",
        was - nat
    );
    let single = per_record_ns(single_s, small as u64);
    println!(
        "  one record per call:   {:>10.0} rec/s  {single:>7.0} ns/rec -> {:.1} us fixed cost per call",
        small as f64 / single_s,
        (single - was) / 1e3
    );
    Ok(())
}
