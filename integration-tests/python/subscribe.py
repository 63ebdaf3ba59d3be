"""Consumption through a subscription with the official HStreamDB Python client (0.5.0).

Several producers append RECORDS records under KEYS keys; one consumer of a subscription created
at EARLIEST acks everything it gets. Checks: every record arrives, none twice, in per-key order.
Prints one JSON line; exits non-zero on a mismatch.
"""

import argparse
import asyncio
import json
import sys

from hstreamdb import insecure_client
import HStream.Server.HStreamApi_pb2 as pb

BATCH = 50


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--producers", type=int, default=5)
    args = ap.parse_args()
    keys = [f"k{i:03d}" for i in range(args.keys)]
    per_key = args.records // args.keys
    async with await insecure_client(host="127.0.0.1", port=args.port) as client:
        await client.create_stream("subscribed", shard_count=4)
        await client.create_subscription("sub1", "subscribed", ack_timeout=60, max_unacks=5000,
                                         offset=pb.SpecialOffset.EARLIEST)

        async def producer(my_keys):
            for key in my_keys:
                for start in range(0, per_key, BATCH):
                    await client.append("subscribed", [f"{key}|{s}".encode() for s in range(start, min(per_key, start + BATCH))], key=key)

        groups = [keys[i::args.producers] for i in range(args.producers)]
        seen = {}
        dups = 0
        order_errors = []
        done = asyncio.Event()
        total = per_key * len(keys)

        async def process(ack, stop, records):
            nonlocal dups
            ids = []
            for r in records:
                key, seq = r.payload.decode().split("|")
                seq = int(seq)
                last = seen.get(key, -1)
                if seq <= last:
                    dups += 1
                elif seq != last + 1:
                    order_errors.append((key, last, seq))
                else:
                    seen[key] = seq
                ids.append(r.id)
            await ack(ids)
            if sum(v + 1 for v in seen.values()) >= total:
                done.set()
                await stop()

        consumer = client.new_consumer("c1", "sub1", process)
        consume = asyncio.create_task(consumer.start())
        await asyncio.gather(*(producer(g) for g in groups))
        await asyncio.wait_for(done.wait(), timeout=300)
        await consume
        got = sum(v + 1 for v in seen.values())
        print(json.dumps({"appended": total, "received": got, "duplicates": dups, "order_errors": len(order_errors)}))
        if got != total or dups or order_errors:
            print(f"FAILED: {order_errors[:5]}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
