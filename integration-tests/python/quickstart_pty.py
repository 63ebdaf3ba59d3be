"""HStreamDB's quick start, typed as its docs show, through two `hstream sql` shells in
pseudo-terminals: shell A creates the stream and runs the filtered push query; shell B inserts
the six rows; shell A must show exactly the four rows with humidity > 70, in order; Ctrl-C ends
the query, :q the shells. Prints a JSON summary; any expectation not met raises."""

import json
import sys

import pexpect

binary, port = sys.argv[1], sys.argv[2]


def shell():
    s = pexpect.spawn(binary, ["--port", port, "sql"], encoding="utf-8", timeout=30)
    s.expect_exact("> ")
    return s


a = shell()
a.sendline("CREATE STREAM demo;")
a.expect_exact("created stream demo")
a.expect_exact("> ")
a.sendline("SELECT * FROM demo WHERE humidity > 70 EMIT CHANGES;")
a.expect_exact("tailing demo")

b = shell()
rows = [(22, 80), (15, 20), (31, 76), (5, 45), (27, 82), (28, 86)]
for t, h in rows:
    b.sendline(f"INSERT INTO demo (temperature, humidity) VALUES ({t}, {h});")
    b.expect_exact("inserted 1 row into demo")
    b.expect_exact("> ")

shown = []
for t, h in rows:
    if h > 70:
        want = json.dumps({"humidity": h, "temperature": t}, separators=(",", ":"))
        a.expect_exact(want)
        # Nothing but the matching rows came before it.
        assert "humidity" not in a.before, a.before
        shown.append(want)
a.sendintr()
a.expect_exact("> ")
# The filtered-out rows never appeared, even after the last matching one.
assert '"humidity":20' not in a.before and '"humidity":45' not in a.before, a.before
for s in (a, b):
    s.sendline(":q")
    s.expect(pexpect.EOF)
    s.close()
print(json.dumps({"exit": [a.exitstatus, b.exitstatus], "shown": shown}))
