"""End-to-end check with the official HStreamDB Python client (hstreamdb 0.5.0).

For each compression (None and Gzip through the client, Zstd through the generated stubs, since
the client has no Zstd), several producers append RECORDS records under KEYS keys to a stream of
SHARDS shards. Everything is then read back three ways: the client's shard readers
(CreateShardReader/ReadShard), ReadStream until LATEST, and ReadShardStream per shard. Each way must
return every record exactly once, in per-key order, with byte-equal payloads.

Prints one JSON line with the counts; exits non-zero on any mismatch.
"""

import argparse
import asyncio
import gzip
import hashlib
import json
import sys

import grpc
import zstandard
from hstreamdb import insecure_client
from hstreamdb.types import RecordId
import HStream.Server.HStreamApi_pb2 as pb
import HStream.Server.HStreamApi_pb2_grpc as pb_grpc

BATCH = 100


def payload(key: str, seq: int) -> bytes:
    # Deterministic, incompressible-ish bytes of varying length.
    h = hashlib.sha256(f"{key}/{seq}".encode()).digest()
    return f"{key}|{seq}|".encode() + h * (1 + seq % 5)


def parse(p: bytes):
    key, seq, _ = p.split(b"|", 2)
    return key.decode(), int(seq)


async def produce(client, stub, stream, keys, n, compression):
    per_key = n // len(keys)

    async def one_key(key):
        ids = []
        for start in range(0, per_key, BATCH):
            payloads = [payload(key, s) for s in range(start, min(per_key, start + BATCH))]
            if compression == "zstd":
                shard_id = await client._find_shard_id(stream, key=key)
                recs = pb.BatchHStreamRecords(records=[
                    pb.HStreamRecord(header=pb.HStreamRecordHeader(flag=pb.HStreamRecordHeader.RAW, key=key), payload=p)
                    for p in payloads
                ])
                body = zstandard.ZstdCompressor(level=1).compress(recs.SerializeToString())
                resp = await stub.Append(pb.AppendRequest(
                    streamName=stream, shardId=shard_id,
                    records=pb.BatchedRecord(compressionType=pb.Zstd, batchSize=len(payloads), payload=body)))
                got = [RecordId(r.shardId, r.batchId, r.batchIndex) for r in resp.recordIds]
            else:
                got = list(await client.append(stream, payloads, key=key, compresstype=compression))
            assert len(got) == len(payloads), "one record id per record"
            ids.extend(got)
        return ids

    # Several producers at once: one coroutine per key, each keeping its own order.
    results = await asyncio.gather(*(one_key(k) for k in keys))
    return per_key * len(keys), [i for ids in results for i in ids]


def decode_batch(rr):
    b = rr.record
    if b.compressionType == pb.Gzip:
        raw = gzip.decompress(b.payload)
    elif b.compressionType == pb.Zstd:
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(b.payload)
    else:
        raw = b.payload
    recs = pb.BatchHStreamRecords()
    recs.ParseFromString(raw)
    assert len(recs.records) == len(rr.recordIds), "record ids match records"
    return [(rid, r.header.key, r.payload) for rid, r in zip(rr.recordIds, recs.records)]


def check(name, records, keys, per_key):
    """records: (key, payload) in read order. Exactly once, per-key order, byte-equal."""
    seen = {k: -1 for k in keys}
    for key, p in records:
        k, seq = parse(p)
        if k != key:
            raise AssertionError(f"{name}: header key {key!r} but payload of {k!r}")
        if p != payload(k, seq):
            raise AssertionError(f"{name}: payload of {k}/{seq} differs")
        if seq != seen[k] + 1:
            raise AssertionError(f"{name}: key {k} went from seq {seen[k]} to {seq}")
        seen[k] = seq
    short = {k: v for k, v in seen.items() if v != per_key - 1}
    if short:
        raise AssertionError(f"{name}: keys not read to the end: {list(short.items())[:5]}")
    return len(records)


async def read_with_client_readers(client, stream, shards, expected_per_shard, tag):
    out = []
    for shard in shards:
        got = []
        reader_id = f"{tag}_{shard.id}"
        async with client.with_reader(
            stream, reader_id, pb.ShardOffset(specialOffset=pb.EARLIEST), 1000, shard_id=shard.id
        ) as reader:
            while len(got) < expected_per_shard[shard.id]:
                recs = list(await reader.read(1000))
                if not recs:
                    raise AssertionError(f"reader {reader_id} stalled at {len(got)}")
                got.extend((r.header.key or "", r.payload) for r in recs)
        out.extend(got)
    return out


async def read_stream(stub, stream):
    out = []
    call = stub.ReadStream(pb.ReadStreamRequest(
        streamName=stream, **{"from": pb.StreamOffset(specialOffset=pb.EARLIEST)},
        until=pb.StreamOffset(specialOffset=pb.LATEST)))
    async for resp in call:
        for rr in resp.receivedRecords:
            out.extend((key, p) for _, key, p in decode_batch(rr))
    return out


async def read_shard_streams(stub, shards):
    # hstreamdb-api 0.6.1 has no ReadShardStreamRequest.streamName: the shard id alone names it.
    out = []
    for shard in shards:
        call = stub.ReadShardStream(pb.ReadShardStreamRequest(
            shardId=shard.id, **{"from": pb.ShardOffset(specialOffset=pb.EARLIEST)},
            until=pb.ShardOffset(specialOffset=pb.LATEST)))
        async for resp in call:
            for rr in resp.receivedRecords:
                for rid, key, p in decode_batch(rr):
                    assert rid.shardId == shard.id
                    out.append((key, p))
    return out


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=50)
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    keys = [f"key-{i:02d}" for i in range(args.keys)]
    per_key = args.records // args.keys
    summary = {}
    async with await insecure_client(host="127.0.0.1", port=args.port) as client:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{args.port}")
        stub = pb_grpc.HStreamApiStub(channel)
        for compression in (None, "gzip", "zstd"):
            tag = compression or "none"
            stream = f"roundtrip_{tag}"
            await client.create_stream(stream, shard_count=args.shards)
            shards = await client.list_shards(stream)
            assert len(shards) == args.shards
            total, ids = await produce(client, stub, stream, keys, args.records, compression)
            assert len(set(ids)) == total, "record ids are unique"
            expected_per_shard = {s.id: 0 for s in shards}
            for rid in ids:
                expected_per_shard[rid.shard_id] += 1
            result = {"appended": total}
            if compression != "zstd":  # the client's reader decodes None and Gzip only
                recs = await read_with_client_readers(client, stream, shards, expected_per_shard, tag)
                result["client_readers"] = check(f"{tag}/client readers", recs, keys, per_key)
            result["read_stream"] = check(f"{tag}/ReadStream", await read_stream(stub, stream), keys, per_key)
            result["read_shard_stream"] = check(
                f"{tag}/ReadShardStream", await read_shard_streams(stub, shards), keys, per_key)
            summary[tag] = result
        await channel.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
