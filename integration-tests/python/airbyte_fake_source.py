#!/usr/bin/env python3
"""An Airbyte source for the runtime's tests, obeying the protocol or, by config, breaking it.

config: {"count": N, "state_every": K, "mode": "ok" | "malformed" | "nan" | "exit" | "hang",
         "fail_at": M, "hang_secs": S, "state_sleep": seconds after each state, "token": <secret>}
One stream, "events": records {"id": i, "body": ...} for i in 1..=N with a STREAM state
{"next": i + 1} after every K records; `read --state` resumes at "next". In the failing modes the
connector breaks once it reaches record M: a RECORD without data, a RECORD with NaN (not
JSON), a TRACE error and exit 3, or
silence for `hang_secs` (an hour).
"""
import json
import sys
import time


def out(msg):
    sys.stdout.write(json.dumps(msg, separators=(",", ":")) + "\n")


def arg(name):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


SPEC = {
    "connectionSpecification": {
        "type": "object",
        "required": ["count"],
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            "state_every": {"type": "integer", "minimum": 1},
            "mode": {"type": "string", "enum": ["ok", "malformed", "nan", "exit", "hang"]},
            "fail_at": {"type": "integer"},
            "hang_secs": {"type": "integer"},
            "token": {"type": "string", "airbyte_secret": True},
        },
    }
}
STREAM = {
    "name": "events",
    "json_schema": {"type": "object"},
    "supported_sync_modes": ["full_refresh", "incremental"],
    "source_defined_cursor": True,
    "source_defined_primary_key": [["id"]],
}


def main():
    cmd = sys.argv[1]
    if cmd == "spec":
        out({"type": "SPEC", "spec": SPEC})
        return 0
    config = json.load(open(arg("--config")))
    if cmd == "check":
        out({"type": "CONNECTION_STATUS", "connectionStatus": {"status": "SUCCEEDED"}})
        return 0
    if cmd == "discover":
        out({"type": "CATALOG", "catalog": {"streams": [STREAM]}})
        return 0
    assert cmd == "read", cmd
    start = 1
    if arg("--state"):
        for s in json.load(open(arg("--state"))):
            start = s["stream"]["stream_state"]["next"]
    out({"type": "LOG", "log": {"level": "INFO", "message": f"reading from {start}"}})
    print(f"stderr: starting at {start}", file=sys.stderr)
    count, every = config["count"], config.get("state_every", 100)
    mode, fail_at = config.get("mode", "ok"), config.get("fail_at", -1)
    for i in range(start, count + 1):
        if i == fail_at and mode == "malformed":
            out({"type": "RECORD", "record": {"stream": "events", "emitted_at": 1}})
        elif i == fail_at and mode == "nan":
            # Python's json writes NaN, which is not JSON: a RECORD that cannot be read.
            out({"type": "RECORD", "record": {"stream": "events", "emitted_at": 1, "data": {"id": i, "v": float("nan")}}})
        elif i == fail_at and mode == "exit":
            out({"type": "TRACE", "trace": {"type": "ERROR", "emitted_at": 1.0,
                 "error": {"message": "the upstream went away", "failure_type": "transient_error"}}})
            sys.stdout.flush()
            return 3
        elif i == fail_at and mode == "hang":
            sys.stdout.flush()
            time.sleep(config.get("hang_secs", 3600))
        out({"type": "RECORD", "record": {"stream": "events", "emitted_at": 1,
             "data": {"id": i, "body": "x" * 40, "nested": {"i": i, "l": [i, "a"]}}}})
        if i % every == 0 or i == count:
            out({"type": "STATE", "state": {"type": "STREAM", "stream": {
                "stream_descriptor": {"name": "events"}, "stream_state": {"next": i + 1}},
                "sourceStats": {"recordCount": float(every)}}})
            # A pace for tests that need a long sync.
            time.sleep(config.get("state_sleep", 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
