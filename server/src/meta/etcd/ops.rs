//! The etcd v3 requests the store is made of: puts, deletes and the compares that guard a
//! transaction.

use hstream_proto::etcd::compare::{CompareResult, CompareTarget, TargetUnion};
use hstream_proto::etcd::request_op::Request as Op;
use hstream_proto::etcd::response_op::Response as OpResponse;
use hstream_proto::etcd::{Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnResponse};

/// The key right after every key starting with `prefix` (etcd's `range_end` of a prefix).
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub(super) fn put(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

pub(super) fn delete(key: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key,
            ..Default::default()
        })),
    }
}

pub(super) fn delete_prefix(prefix: Vec<u8>) -> RequestOp {
    let range_end = prefix_end(&prefix);
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: prefix,
            range_end,
            ..Default::default()
        })),
    }
}

/// A put bound to a lease: the key vanishes with it.
pub(super) fn put_leased(key: Vec<u8>, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        })),
    }
}

/// The key holds exactly `value`.
pub(super) fn value_is(key: Vec<u8>, value: Vec<u8>) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Value as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(TargetUnion::Value(value)),
    }
}

/// The key does not exist.
pub(super) fn absent(key: Vec<u8>) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(TargetUnion::CreateRevision(0)),
    }
}

/// The key is as it was read: modified last at `rev` (0: it did not exist).
pub(super) fn unchanged(key: Vec<u8>, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(TargetUnion::ModRevision(rev)),
    }
}

/// No key under `prefix` was created or changed after revision `rev`.
pub(super) fn range_unchanged(prefix: Vec<u8>, rev: i64) -> Compare {
    let range_end = prefix_end(&prefix);
    Compare {
        result: CompareResult::Less as i32,
        target: CompareTarget::Mod as i32,
        key: prefix,
        range_end,
        target_union: Some(TargetUnion::ModRevision(rev + 1)),
    }
}

/// How many keys the `i`th operation of a succeeded transaction deleted.
pub(super) fn deleted(resp: &TxnResponse, i: usize) -> i64 {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(OpResponse::ResponseDeleteRange(d)) => d.deleted,
        _ => 0,
    }
}
