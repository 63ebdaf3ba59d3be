"""Drives our server with EMQX's HStreamDB data bridge call sequence (hstreamdb_erl, as EMQX 5
uses it), built on the `hstreamdb-api` stubs:

1. Echo (EMQX's connector start and health check);
2. producer discovery: ListShards of the stream, then LookupResource(ResShard, "<shard id>") for
   each shard, and a channel to the host:port each lookup returns;
3. Append per shard: RAW records with the key rendered from the partition-key template, batched
   (compression None, EMQX's default), the shard chosen by MD5 of the key over the shards'
   decimal hash ranges.

BRIDGES bridges run concurrently, each with its own discovery and channels, each appending
BATCHES batches of up to BATCH records. Payloads are binary (NUL and 0xFF bytes included).

Prints one JSON line: {"appended": n, "echo": msg, "lookups": n, "records": [[key, hex], ...]}.
"""

import argparse
import asyncio
import hashlib
import json

import grpc
import HStream.Server.HStreamApi_pb2 as pb
import HStream.Server.HStreamApi_pb2_grpc as pb_grpc


def key_of(bridge: int, n: int) -> str:
    # The partition-key template `${clientid}` of a fleet of devices.
    return f"device-{(bridge * 7 + n) % 23}"


def payload_of(bridge: int, n: int) -> bytes:
    return f"b{bridge}-{n}|".encode() + bytes([0, 255, n % 256]) + hashlib.md5(f"{bridge}/{n}".encode()).digest()


def shard_for(key: str, shards) -> int:
    h = int.from_bytes(hashlib.md5(key.encode()).digest(), "big")
    for s in shards:
        if int(s.startHashRangeKey) <= h <= int(s.endHashRangeKey):
            return s.shardId
    raise SystemExit(f"no shard covers key {key}")


async def bridge(seed: str, stream: str, index: int, batches: int, batch: int, out: list, stats: dict):
    async with grpc.aio.insecure_channel(seed) as ch:
        stub = pb_grpc.HStreamApiStub(ch)
        echo = await stub.Echo(pb.EchoRequest(msg=f"emqx-{index}"))
        assert echo.msg == f"emqx-{index}", echo
        stats["echo"] = echo.msg
        shards = (await stub.ListShards(pb.ListShardsRequest(streamName=stream))).shards
        assert shards, "ListShards returned no shard"
        channels = {}
        for s in shards:
            node = await stub.LookupResource(pb.LookupResourceRequest(resType=pb.ResShard, resId=str(s.shardId)))
            stats["lookups"] += 1
            addr = f"{node.host}:{node.port}"
            if addr not in channels:
                channels[addr] = grpc.aio.insecure_channel(addr)
            channels[s.shardId] = channels[addr]
        n = 0
        for _ in range(batches):
            per_shard = {}
            for _ in range(batch):
                key = key_of(index, n)
                rec = pb.HStreamRecord(
                    header=pb.HStreamRecordHeader(flag=pb.HStreamRecordHeader.RAW, key=key),
                    payload=payload_of(index, n),
                )
                per_shard.setdefault(shard_for(key, shards), []).append(rec)
                out.append([key, payload_of(index, n).hex()])
                n += 1
            for shard_id, recs in per_shard.items():
                data = pb.BatchHStreamRecords(records=recs).SerializeToString()
                req = pb.AppendRequest(
                    streamName=stream,
                    shardId=shard_id,
                    records=pb.BatchedRecord(compressionType=pb.CompressionType.Value("None"), batchSize=len(recs), payload=data),
                )
                resp = await pb_grpc.HStreamApiStub(channels[shard_id]).Append(req)
                assert len(resp.recordIds) == len(recs), resp
                assert all(r.shardId == shard_id for r in resp.recordIds), resp
                stats["appended"] += len(recs)
        for addr, c in list(channels.items()):
            if isinstance(addr, str):
                await c.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--bridges", type=int, default=8)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch", type=int, default=100)
    a = ap.parse_args()
    out = []
    stats = {"appended": 0, "lookups": 0, "echo": None}
    await asyncio.gather(*(bridge(a.seed, a.stream, i, a.batches, a.batch, out, stats) for i in range(a.bridges)))
    print(json.dumps({**stats, "records": out}))


asyncio.run(main())
