#!/usr/bin/env python3
"""An Airbyte destination for the runtime's tests, obeying the destination protocol.

config: {"path": <file>, "echo": "always" | "at_end", "token": <secret>}
`write` appends each RECORD's data as a JSON line to `path`; a STATE is echoed once the records
before it are fsynced: at once ("always"), or only when the input ends ("at_end").
"""
import json
import os
import sys


def out(msg):
    sys.stdout.write(json.dumps(msg, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def arg(name):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


SPEC = {
    "supported_destination_sync_modes": ["append", "overwrite"],
    "connectionSpecification": {
        "type": "object",
        "required": ["path"],
        "properties": {
            "path": {"type": "string"},
            "echo": {"type": "string", "enum": ["always", "at_end"]},
            "token": {"type": "string", "airbyte_secret": True},
        },
    },
}


def main():
    cmd = sys.argv[1]
    if cmd == "spec":
        out({"type": "SPEC", "spec": SPEC})
        return 0
    config = json.load(open(arg("--config")))
    if cmd == "check":
        ok = os.path.isdir(os.path.dirname(config["path"]) or ".")
        out({"type": "CONNECTION_STATUS", "connectionStatus": {
            "status": "SUCCEEDED" if ok else "FAILED", "message": None if ok else "no such directory"}})
        return 0
    assert cmd == "write", cmd
    catalog = json.load(open(arg("--catalog")))
    names = {s["stream"]["name"] for s in catalog["streams"]}
    held = []
    with open(config["path"], "a") as f:
        for line in sys.stdin:
            msg = json.loads(line)
            if msg["type"] == "RECORD" and msg["record"]["stream"] in names:
                f.write(json.dumps(msg["record"]["data"], sort_keys=True) + "\n")
            elif msg["type"] == "STATE":
                held.append(msg)
                f.flush()  # visible to the test, yet not echoed in at_end mode
                if config.get("echo", "always") == "always":
                    f.flush()
                    os.fsync(f.fileno())
                    for m in held:
                        out(m)
                    held = []
        f.flush()
        os.fsync(f.fileno())
    for m in held:
        out(m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
