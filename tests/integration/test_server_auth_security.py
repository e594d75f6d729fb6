"""The auth process as a separate security domain (issue 14, items 2 and 6):
it does not hold the TLS private key, runs under its own uid when popboxd is
started as root, and is restarted by the master when it stops answering.
docs/DESIGN.md ("The auth process") says what these guarantee."""

import os
import re
import signal
import subprocess
import time

import pytest

from popbox_server import comm_of
from test_server_tls_lib import PKI, tls_server


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


def wait_for(predicate, what, timeout=180.0, step=0.1):
    """Poll predicate() until it returns something true; the timeout is only
    a guard against a run-away test, never a pass condition."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, "gave up waiting for " + what
        time.sleep(step)


def private_scalar(key_path):
    """The private scalar of an EC key file, as bytes (openssl pkey -text)."""
    text = subprocess.run(["openssl", "pkey", "-in", key_path, "-noout", "-text"],
                          capture_output=True, check=True, timeout=30).stdout.decode()
    m = re.search(r"priv:\s*\n((?:\s+[0-9a-f:]+\n)+)", text)
    assert m, text
    return bytes.fromhex(re.sub(r"[\s:]", "", m.group(1))).lstrip(b"\0")


def memory_contains(pid, needles):
    """Which of needles occur in the readable memory of process pid
    (/proc/PID/maps and /proc/PID/mem: needs ptrace rights over it, which
    the test runner has over its own descendants, and root over all)."""
    found = set()
    with open("/proc/%d/maps" % pid) as maps, open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            for n in needles:
                if n in data:
                    found.add(n)
    return found


def auth_pid(srv):
    return wait_for(lambda: srv.children_by_comm("popboxd-auth"), "the auth process")[0]


def test_auth_process_does_not_hold_the_tls_private_key(server_factory, pki):
    """The auth process never has the TLS private key in memory: neither the
    master's TLS context it was forked with nor the key text of a reload.
    Proof by a search of its memory for the key's private scalar (as
    OpenSSL holds it, least significant byte first, and as the PEM's DER
    holds it) after a reload; the same search finds it in a worker, which
    needs the key."""
    srv = tls_server(server_factory, pki)
    scalar = private_scalar(srv.config["tls_key"])
    assert len(scalar) >= 30
    needles = [scalar, scalar[::-1]]
    offset = len(srv.log())
    srv.reload()
    # the auth process re-reads the users file after a reload message
    wait_for(lambda: "reloaded: 1 users" in srv.log()[offset:], "the auth process's reload")
    with srv.session() as c:          # both channels served after the reload
        c.quit()
    worker = srv.children_by_comm("popboxd-worker")[0]
    assert memory_contains(worker, needles), "the memory search does not find the key in a worker"
    assert not memory_contains(auth_pid(srv), needles), "the auth process holds the TLS private key"
