"""Drives `hstream sql` through a pseudo-terminal as a user would: prompt, a statement over two
lines, table output, an error that points at the token, a tailing SELECT stopped with Ctrl-C,
and :q. Prints a JSON summary; any expectation not met raises (non-zero exit)."""

import json
import sys

import pexpect

binary, port, history = sys.argv[1], sys.argv[2], sys.argv[3]
child = pexpect.spawn(binary, ["--port", port, "sql", "--history-file", history], encoding="utf-8", timeout=30)
child.expect_exact("> ")
child.sendline("CREATE STREAM pty_s")
child.expect_exact("| ")  # continuation prompt: the statement is not complete yet
child.sendline("  WITH (SHARD_COUNT = 2);")
child.expect_exact("created stream pty_s")
child.expect_exact("> ")
child.sendline("SHOW STREAMS;")
child.expect(r"\| pty_s\s+\| 2\s+\|")
child.expect_exact("> ")
child.sendline("SHOW STREEMS;")
child.expect_exact('error: line 1, column 6: expected STREAMS, CONNECTORS, QUERIES, SUBSCRIPTIONS or NODES, found "STREEMS"')
child.expect_exact("> ")
child.sendline("SELECT * FROM pty_s EMIT CHANGES;")
child.expect_exact("tailing pty_s")
child.sendintr()
child.expect_exact("> ")
child.sendline(":q")
child.expect(pexpect.EOF)
child.close()
print(json.dumps({"exit": child.exitstatus}))
