"""popbox fetch against a server with Nagle's algorithm on (no TCP_NODELAY,
as popa3d) that writes each reply line by line: a small reply segment waits
in the server until the previous one is acknowledged, and a Linux client
that sends nothing meanwhile acknowledges only after its delayed-ACK timer
(40 ms). The client re-arms TCP_QUICKACK before it blocks in a read after
a write (src/client/conn.c), so such a server cannot stall it.

Checked in the client's system calls (strace -y), not by the clock: every
read from the connection that follows a write to it comes after a
setsockopt(TCP_QUICKACK, 1) made since that write. Timed, 30 messages took
about 0.03 s with it and 0.3 s without (7 or so stalls of 40 ms), a
difference a loaded machine blurs; the system calls do not change with load."""

import re
import shutil
import subprocess

import pytest

from fake_pop3 import FakePop3
from fetch_env import RUNAWAY_SEC, digest_counts, make_message, read_maildir

NMSG = 30
SOCKET_CALL = re.compile(r"^\d+ +(\w+)\(\d+<(?:socket|TCP|TCPv6):[^>]*>, (.*)$")
READS = ("read", "recvfrom", "recvmsg", "readv")
WRITES = ("write", "sendto", "sendmsg", "writev")


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_server_with_nagle_on_does_not_stall_the_fetch(client, tmp_path):
    msgs = [make_message(i) for i in range(NMSG)]
    srv = FakePop3(messages=msgs, capa=("USER", "UIDL", "PIPELINING"), nagle=True,
                   line_writes=True)
    maildir = tmp_path / "M"
    log = str(tmp_path / "strace")
    # LeakSanitizer cannot run under ptrace (make sanitize)
    env = dict(client.env)
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=0"]))
    try:
        p = subprocess.run(
            ["strace", "-f", "-y", "-o", log, "-e",
             "trace=setsockopt," + ",".join(READS + WRITES), client.bin, "fetch",
             "--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off",
             "--allow-plaintext", "--user", "u", "--password-command", "echo pw",
             "--deliver", "maildir:%s" % maildir, "--quiet"],
            env=env, capture_output=True, timeout=RUNAWAY_SEC)
    finally:
        srv.stop()
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert digest_counts(read_maildir(str(maildir)).values()) == digest_counts(msgs)
    assert srv.deleted == set(range(NMSG))
    # the commands were pipelined (the grouped writes are the case)
    assert any(c.startswith("RETR") for c in srv.received)

    with open(log, errors="replace") as f:
        calls = [m.groups() for m in map(SOCKET_CALL.match, f.read().splitlines()) if m]
    due = None            # the write no TCP_QUICKACK has followed yet
    rearmed = 0
    for k, (name, args) in enumerate(calls):
        if name in WRITES:
            due = due if due is not None else k
        elif name == "setsockopt" and re.match(r"SOL_TCP, TCP_QUICKACK, \[1\]", args):
            if due is not None:
                rearmed += 1
            due = None
        elif name in READS:
            assert due is None, "a read after a write with no TCP_QUICKACK between:\n%s" % (
                "\n".join("%s(%s" % c for c in calls[due:k + 1]))
    # every group of commands: login, the listings, the RETR/DELE windows, QUIT
    assert rearmed >= 5, (rearmed, calls[:40])
