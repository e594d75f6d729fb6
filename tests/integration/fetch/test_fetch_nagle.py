"""popbox fetch against a server with Nagle's algorithm on (no TCP_NODELAY,
as popa3d) that writes each reply line by line: a small reply segment waits
in the server until the previous one is acknowledged, and a Linux client
that sends nothing meanwhile acknowledges only after its delayed-ACK timer
(40 ms). The client re-arms TCP_QUICKACK before it blocks in a read after
a write (src/client/conn.c), so such a server cannot stall it.

A stall detector, not a benchmark: 30 messages take ~0.03 s with the fix
and ~0.3 s without (about 7 stalls of 40 ms); the limit is well between,
and the best of three runs counts (a loaded machine may slow one)."""

import time

from fake_pop3 import FakePop3
from fetch_env import digest_counts, make_message, read_maildir

NMSG = 30
LIMIT_SEC = 0.2


def test_server_with_nagle_on_does_not_stall_the_fetch(client, tmp_path):
    best = None
    for attempt in range(3):
        msgs = [make_message(attempt * 100 + i) for i in range(NMSG)]
        srv = FakePop3(messages=msgs, capa=("USER", "UIDL", "PIPELINING"), nagle=True,
                       line_writes=True)
        maildir = tmp_path / ("M%d" % attempt)
        try:
            t0 = time.monotonic()
            client.fetch("--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off",
                         "--allow-plaintext", "--user", "u", "--password-command", "echo pw",
                         "--deliver", "maildir:%s" % maildir, "--timeout", "5", "--quiet",
                         check=0)
            took = time.monotonic() - t0
        finally:
            srv.stop()
        assert digest_counts(read_maildir(str(maildir)).values()) == digest_counts(msgs)
        assert srv.deleted == set(range(NMSG))
        # the commands were pipelined (the grouped writes are the case)
        assert any(c.startswith("RETR") for c in srv.received)
        best = took if best is None else min(best, took)
        if best < LIMIT_SEC:
            break
    assert best < LIMIT_SEC, "%d messages took %.3f s: delayed-ACK stalls" % (NMSG, best)
