"""A subscription's node killed mid-load, seen by the official HStreamDB Python client (0.5.0).

A producer appends RECORDS records through LookupShard (the client's own routing), retrying an
append that fails on a fresh client; two consumers of one subscription, bootstrapped through
different nodes, reach the subscription's node through LookupSubscription. Once a third of the
records arrived, this script SIGKILLs the node LookupSubscription names (it is given every
node's pid). A consumer whose session breaks makes a fresh client on a live node and looks the
subscription up again, as an application would.

Prints one JSON line: what the server acknowledged, what arrived (redeliveries counted), what
was lost (acknowledged but never delivered), and how long after the kill records flowed again.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import time

import HStream.Server.HStreamApi_pb2 as pb
from hstreamdb import insecure_client

STREAM = "failover"
SUB = "fsub"
BATCH = 20


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", required=True, help="host:port of every node, comma-separated")
    ap.add_argument("--pids", required=True, help="their pids, in the same order")
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--keys", type=int, default=8)
    args = ap.parse_args()
    nodes = args.nodes.split(",")
    pids = dict(zip(nodes, (int(p) for p in args.pids.split(","))))
    dead = set()

    async def client_on(preferred=None):
        """A fresh client (no cached lookups) on `preferred`, else the first node that answers."""
        order = ([preferred] if preferred else []) + nodes
        for n in order:
            if n in dead:
                continue
            host, port = n.split(":")
            try:
                c = await insecure_client(host=host, port=int(port))
                await c.list_streams()
                return c
            except Exception:
                continue
        raise RuntimeError("no node answers")

    setup = await client_on(nodes[0])
    await setup.create_stream(STREAM, shard_count=4)
    await setup.create_subscription(SUB, STREAM, ack_timeout=5, max_unacks=2000,
                                    offset=pb.SpecialOffset.EARLIEST)

    acked = set()
    delivered = {}
    state = {"kill_at": None, "resumed_at": None, "killed": None, "reconnects": 0,
             "produced": False}
    done = asyncio.Event()

    async def produce():
        client = await client_on(nodes[0])
        keys = [f"k{i}" for i in range(args.keys)]
        for start in range(0, args.records, BATCH):
            key = keys[(start // BATCH) % len(keys)]
            payloads = [f"{key}|{i}" for i in range(start, min(args.records, start + BATCH))]
            while True:
                try:
                    await client.append(STREAM, [p.encode() for p in payloads], key=key)
                    acked.update(payloads)
                    break
                except Exception:
                    # Unknown whether it was stored: sent again (a duplicate is allowed, a loss
                    # is not), through a fresh client whose lookups are new.
                    await asyncio.sleep(0.1)
                    client = await client_on()
            await asyncio.sleep(0.004)  # keep the load going across the kill
        state["produced"] = True

    async def consume(name, boot):
        while not done.is_set():
            try:
                client = await client_on(boot)
            except RuntimeError:
                await asyncio.sleep(0.2)
                continue
            session_start = time.monotonic()

            async def process(ack, stop, records):
                records = list(records)  # the client hands a generator
                for r in records:
                    p = r.payload.decode()
                    delivered[p] = delivered.get(p, 0) + 1
                kill_at = state["kill_at"]
                if kill_at is not None and session_start > kill_at and state["resumed_at"] is None:
                    state["resumed_at"] = time.monotonic()
                await ack([r.id for r in records])
                if done.is_set():
                    await stop()

            consumer = client.new_consumer(name, SUB, process)
            try:
                await consumer.start()
            except Exception:
                pass
            if not done.is_set():
                state["reconnects"] += 1
                boot = None  # its boot node may be the one killed
                await asyncio.sleep(0.2)

    async def kill_owner():
        while len(delivered) < args.records // 3:
            await asyncio.sleep(0.01)
        owner = await setup._lookup_subscription_api(SUB)
        target = f"{owner.host}:{owner.port}"
        os.kill(pids[target], signal.SIGKILL)
        dead.add(target)
        state["kill_at"] = time.monotonic()
        state["killed"] = target

    async def watch():
        while not (state["produced"] and acked.issubset(delivered.keys())):
            await asyncio.sleep(0.05)
        done.set()

    watcher = asyncio.create_task(watch())
    consumers = [asyncio.create_task(consume("c1", nodes[0])),
                 asyncio.create_task(consume("c2", nodes[1]))]
    await asyncio.wait_for(asyncio.gather(produce(), kill_owner()), timeout=180)
    await asyncio.wait_for(watcher, timeout=180)
    for c in consumers:
        c.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)

    after = await client_on()
    owner = await after._lookup_subscription_api(SUB)
    lost = sorted(acked - delivered.keys())
    summary = {
        "acked": len(acked),
        "delivered_unique": len(delivered),
        "deliveries": sum(delivered.values()),
        "lost": len(lost),
        "killed": state["killed"],
        "owner_after": f"{owner.host}:{owner.port}",
        "resumed_after_s": (state["resumed_at"] - state["kill_at"]) if state["resumed_at"] else None,
        "reconnects": state["reconnects"],
    }
    print(json.dumps(summary))
    if lost:
        print(f"FAILED: lost {lost[:10]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
