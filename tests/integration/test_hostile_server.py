"""Hostile clients against a real popboxd (docs/RELIABILITY.md §3-§4, the
cases that apply to what exists). Raw sockets, each test connection from its own
127.x source address (the failed-login penalty is per address), loopback only,
every loop bounded. Memory is checked as the worker's RSS from /proc.

Case numbers (S3, S4, ...) are those of the adversarial test plan the
project started from; docs/RELIABILITY.md §4 lists what they cover."""

import os
import sys
import resource
import socket
import threading
import time

import pytest

import popbox_server
from popbox_server import RUNAWAY_SEC, ConnectionClosed, fresh_source, socket_owner, wait_until

WORKER = "popboxd-worker"
AUTH = "popboxd-auth"
MiB = 1 << 20


# ------------------------------------------------------------------ helpers

def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_worker(server_factory, **kw):
    srv = server_factory(workers=1, **kw)
    # the auth process too: tests look it up (its name is set after the fork)
    ch = srv.wait_children(lambda c: list(c.values()).count(WORKER) == 1 and AUTH in c.values())
    workers = [p for p, c in ch.items() if c == WORKER]
    assert len(workers) == 1, ch
    return srv, workers[0]


def lines_until(conn, n, timeout=RUNAWAY_SEC):
    """n status lines (CRLF stripped)."""
    conn.sock.settimeout(timeout)
    return [conn.readline().rstrip(b"\r\n") for _ in range(n)]


def send_all_no_read(sock, data, chunk=1 << 16):
    view = memoryview(data)
    while view:
        n = sock.send(view[:chunk])
        view = view[n:]


def login(conn):
    assert conn.cmd("USER alice") == b"+OK"
    assert conn.cmd("PASS secret").startswith(b"+OK Logged in")


# ------------------------------------------------------------------ S3/S4 over-long lines

@pytest.mark.parametrize("size", [MiB, 64 * MiB], ids=["1MiB", "64MiB"])
def test_huge_line_without_newline_one_err_bounded_memory(server_factory, size):
    """S3/S4: a line of 1 MiB / 64 MiB without LF is consumed as it comes,
    answered by one -ERR when it ends, never run as a command, and costs the
    worker no memory in proportion to its size; others are served meanwhile."""
    srv, worker = one_worker(server_factory)
    srv.deliver(b"Subject: x\n\nbody\n")
    before = rss_kib(worker)
    peak = [before]
    with srv.connect() as c:
        sender_error = []

        def sender():
            try:
                block = b"RETR 1 " + b"A" * (MiB - 7)
                for _ in range(size // MiB):
                    c.sock.sendall(block)
                    peak[0] = max(peak[0], rss_kib(worker))
            except OSError as e:
                sender_error.append(e)
        t = threading.Thread(target=sender)
        t.start()
        # Another client is served while the flood is being discarded.
        with srv.connect() as other:
            assert other.greeting.startswith(b"+OK")
            assert other.cmd("CAPA").startswith(b"+OK")
        t.join(RUNAWAY_SEC)
        assert not t.is_alive() and not sender_error, sender_error
        peak[0] = max(peak[0], rss_kib(worker))
        c.send(b"\r\nQUIT\r\n")
        got = c.wait_closed()
    lines = got.split(b"\r\n")
    assert lines[0].startswith(b"-ERR Command line too long"), got[:200]
    assert lines[1] == b"+OK Bye", got[:200]
    assert len(got) < 200
    # No proportional growth: 64 KiB of input buffer and allocator slack.
    if not popbox_server.sanitized():
        assert peak[0] - before < 4096, (before, peak[0])
    assert srv.children_by_comm(WORKER) == [worker]


def test_line_of_256_octets_is_refused_and_tail_not_run(server):
    """S2/S3: 255 octets including CRLF is a command, 256 is not; the tail
    after the limit is never a second command."""
    with server.connect() as c:
        ok = b"USER " + b"a" * (255 - 2 - 5)
        assert len(ok) + 2 == 255
        assert c.cmd(ok) == b"+OK"
        bad = b"USER " + b"b" * 240 + b"QUIT"        # 249+2... pad below
        bad = bad + b"x" * (256 - 2 - len(bad))
        c.send(bad + b"\r\n" + b"CAPA\r\n")
        assert c.readline().startswith(b"-ERR Command line too long")
        assert c.readline() == b"+OK Capability list follows\r\n"


# ------------------------------------------------------------------ S5-S7 NUL, CR, empty lines

def test_nul_and_bare_cr_give_one_err_and_never_execute(server):
    """S6/S7: NUL anywhere refuses the whole line; a bare CR inside a line
    never splits it into two commands; empty lines get -ERR."""
    server.deliver(b"Subject: keep\n\nbody\n")
    with server.connect() as c:
        c.send(b"CAP\x00A\r\nUSER alice\rPASS secret\r\n\r\nPASS secret\r\n")
        got = lines_until(c, 4)
        assert got[0] == b"-ERR NUL byte in command"
        assert got[1].startswith(b"-ERR "), got      # USER with 2 arguments
        assert got[2].startswith(b"-ERR "), got      # empty line
        assert got[3] == b"-ERR USER first", got     # USER was never run
        login(c)
        c.send(b"DELE 1\x00junk\r\nLIST 1\x00\r\nDELE\x001\r\nNOOP\r\n")
        got = lines_until(c, 4)
        assert all(l.startswith(b"-ERR") for l in got[:3]), got
        assert got[3] == b"+OK"
        assert c.cmd("QUIT").startswith(b"+OK")
    assert len(server.message_files()) == 1, "a NUL-tainted DELE was executed"


# ------------------------------------------------------------------ S8 numbers

BAD_NUMBERS = [b"LIST 4294967297", b"LIST 18446744073709551617", b"LIST 0", b"LIST -1",
               b"LIST +1", b"LIST 1x", b"LIST 0x1", b"RETR 99999999999999999999",
               b"DELE 4294967296", b"TOP 1 -1", b"TOP 1 99999999999999999999", b"UIDL -0",
               b"LIST 1 1", b"LIST  1", b"LIST\t1", b"TOP 1"]


def test_huge_and_negative_numbers(server):
    """S8: every malformed or out-of-range number gets exactly one -ERR, none
    wraps around to a real message; DELE of message 1 via 2^32 + 1 must not
    delete message 1."""
    server.deliver(b"Subject: one\n\nbody\n")
    with server.connect() as c:
        login(c)
        c.send(b"".join(n + b"\r\n" for n in BAD_NUMBERS) + b"DELE 4294967297\r\nNOOP\r\n")
        got = lines_until(c, len(BAD_NUMBERS) + 2)
        for cmd, line in zip(BAD_NUMBERS + [b"DELE 4294967297"], got):
            assert line.startswith(b"-ERR"), (cmd, line)
        assert got[-1] == b"+OK"
        assert c.cmd("TOP 1 0").startswith(b"+OK")
        assert c.read_multiline_raw() == b"Subject: one\r\n\r\n"
        assert c.cmd("QUIT") == b"+OK Bye, 0 messages deleted"
    assert len(server.message_files()) == 1


# ------------------------------------------------------------------ S11 pipelining

def test_pipelined_session_with_junk(server):
    """S11: a whole session in one write, junk in between: every command
    gets exactly its own answer, in order."""
    server.deliver(b"Subject: a\n\n.dot\n")
    server.deliver(b"Subject: b\n\nx\n")
    script = (b"USER alice\r\nPASS secret\r\nSTAT\r\n\xff\xfe\x80junk\r\nLIST\r\n"
              b"RETR 1\r\n\x1b[31m%n%s\r\nDELE 2\r\nUIDL 2\r\nRSET\r\nDELE 1\r\nQUIT\r\n")
    with server.connect() as c:
        c.send(script)
        assert c.readline() == b"+OK\r\n"
        assert c.readline().startswith(b"+OK Logged in, 2 messages")
        assert c.readline().startswith(b"+OK 2 ")
        assert c.readline().startswith(b"-ERR Unknown command")
        assert c.readline().startswith(b"+OK")
        assert c.read_multiline_raw().count(b"\r\n") == 2
        assert c.readline().startswith(b"+OK")
        assert c.read_multiline_raw() == b"Subject: a\r\n\r\n..dot\r\n"
        junk = c.readline()
        assert junk.startswith(b"-ERR Unknown command")
        assert b"\x1b" not in junk, "control characters echoed"
        assert c.readline() == b"+OK Message 2 deleted\r\n"
        assert c.readline().startswith(b"-ERR Message 2 is deleted")
        assert c.readline().startswith(b"+OK 2 messages")
        assert c.readline() == b"+OK Message 1 deleted\r\n"
        assert c.readline() == b"+OK Bye, 1 messages deleted\r\n"
    files = server.message_files()
    assert len(files) == 1


def test_10000_pipelined_noops_from_a_client_that_does_not_read(server_factory):
    """S11: 10 000 NOOPs sent without reading: output is throttled, memory
    stays bounded, and every NOOP is answered once the client reads."""
    srv, worker = one_worker(server_factory)
    before = rss_kib(worker)
    with srv.connect() as c:
        login(c)
        c.sock.settimeout(RUNAWAY_SEC)
        send_all_no_read(c.sock, b"NOOP\r\n" * 10000)
        time.sleep(0.5)
        grown = rss_kib(worker) - before
        got = b""
        while got.count(b"\r\n") < 10000:
            chunk = c.sock.recv(1 << 16)
            assert chunk
            got += chunk
        assert got == b"+OK\r\n" * 10000
        assert c.cmd("QUIT").startswith(b"+OK")
    if not popbox_server.sanitized():
        assert grown < 4096, grown


# ------------------------------------------------------------------ S19/S22 AUTH abuse

def test_sasl_line_over_12k_is_refused_once(server):
    """S22: a SASL continuation over the 12 KiB cap gets one -ERR and ends the
    exchange; the connection stays usable and the tail is not a command."""
    with server.connect() as c:
        assert c.cmd("AUTH PLAIN") == b"+ "
        c.send(b"QUFB" * 4000 + b"\r\nCAPA\r\n")           # 16000 octets
        assert c.readline().startswith(b"-ERR [AUTH] Authentication response too long")
        assert c.readline() == b"+OK Capability list follows\r\n"
        c.read_multiline_raw()
        # A long username (S19) and a 64 KiB password: single -ERR each.
        assert c.cmd(b"USER " + b"u" * 10240).startswith(b"-ERR Command line too long")
        assert c.cmd(b"USER alice") == b"+OK"
        assert c.cmd(b"PASS " + b"p" * 65536).startswith(b"-ERR Command line too long")
        assert c.cmd("QUIT") == b"+OK Bye"


def test_invalid_base64_and_nested_auth(server):
    """S22: invalid base64 (!!!, = in the middle, spaces, 8-bit), AUTH inside
    AUTH, "*" -> -ERR each; a login from elsewhere is unaffected."""
    with server.connect() as c:
        for bad in (b"!!!!", b"QQ=A", b"QU FB", b"\xc3\xa9\xc3\xa9", b"AUTH PLAIN", b"QR=="):
            assert c.cmd("AUTH PLAIN") == b"+ ", bad
            st = c.cmd(bad)
            assert st.startswith(b"-ERR [AUTH]"), (bad, st)
        assert c.cmd("AUTH PLAIN") == b"+ "
        assert c.cmd("*") == b"-ERR [AUTH] Authentication cancelled"
        assert c.cmd("AUTH X-UNKNOWN") == b"-ERR Unsupported authentication mechanism"
        with server.session() as other:
            assert other.stat() == (0, 0)
            other.quit()


def test_many_aborted_auths_keep_memory_flat(server_factory):
    """S22/S59 (CVE-2017-15132 class): 2000 aborted AUTH exchanges pipelined
    on a few connections: worker and auth process memory stay flat, and a
    normal login still works."""
    srv, worker = one_worker(server_factory)
    auth = srv.children_by_comm(AUTH)[0]
    w0, a0 = rss_kib(worker), rss_kib(auth)
    for _ in range(4):
        with srv.connect() as c:
            c.sock.settimeout(RUNAWAY_SEC)
            c.send(b"AUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n*\r\n" * 250)
            got = b""
            while got.count(b"\r\n") < 1000:
                chunk = c.sock.recv(1 << 16)
                assert chunk, got[-200:]
                got += chunk
            assert got.count(b"-ERR [AUTH] Authentication cancelled") == 500
            assert c.cmd("QUIT") == b"+OK Bye"
    with srv.session() as c:
        c.quit()
    if not popbox_server.sanitized():
        assert rss_kib(worker) - w0 < 2048, (w0, rss_kib(worker))
        assert rss_kib(auth) - a0 < 2048, (a0, rss_kib(auth))


# ------------------------------------------------------------------ S55 slowloris, S58 floods

def still_open(s):
    """Whether the server has not closed s (peeks, never blocks)."""
    timeout = s.gettimeout()
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.settimeout(timeout)


def test_slowloris_is_bounded_and_others_are_served(server_factory):
    """S55: 80 connections from one address dribbling one byte a second: at
    most max_connections_per_ip (here 20) get a session, the rest are refused
    at once; meanwhile a fresh client logs in, RETRs 1 MiB and quits, on
    the same single worker, while all 20 dribbling sessions stay open: it
    is served alongside them, not after them (checked by that, not by a
    time limit)."""
    srv, worker = one_worker(server_factory, config={"max_connections_per_ip": "20"})
    srv.deliver(b"Subject: big\n\n" + (b"x" * 1022 + b"\n") * 1024)
    src = fresh_source()
    socks, sessions, closed, refused, greeted = [], [], [], 0, 0
    try:
        for _ in range(80):
            s = socket.create_connection((srv.host, srv.port), timeout=RUNAWAY_SEC,
                                         source_address=(src, 0))
            socks.append(s)
            line = s.recv(512)
            if line.startswith(b"-ERR [SYS/TEMP] Too many connections from your address"):
                refused += 1
                closed.append(s)
            else:
                assert line.startswith(b"+OK"), line
                greeted += 1
                sessions.append(s)
        assert greeted == 20 and refused == 60, (greeted, refused)
        wait_until(lambda: not any(still_open(s) for s in closed),
                   "the close of the refused connections")
        for tick in range(3):
            for s in socks:
                try:
                    s.send(b"U"[:1])
                except OSError:
                    pass
            t0 = time.monotonic()
            with srv.session() as c:
                body = c.retr(1)
                assert len(body) > MiB
                c.quit()
            assert all(still_open(s) for s in sessions), \
                "a dribbling session was closed to serve the fresh client"
            time.sleep(max(0, 1 - (time.monotonic() - t0)))   # one byte a second
        assert srv.children_by_comm(WORKER) == [worker]
    finally:
        for s in socks:
            s.close()


def test_connection_flood_is_capped_and_recovers(server_factory):
    """S58: 300 connections from 10 addresses against max_connections = 60:
    the surplus is refused with [SYS/TEMP] at once, the number of live
    sessions stays at the cap, and once the flood is gone a normal session
    works."""
    srv = server_factory(workers=2, config={"max_connections": "60"})
    srv.wait_children(lambda c: list(c.values()).count(WORKER) == 2)
    socks, greeted, refused = [], 0, 0
    try:
        sources = [fresh_source() for _ in range(10)]
        for i in range(300):
            s = socket.create_connection((srv.host, srv.port), timeout=RUNAWAY_SEC,
                                         source_address=(sources[i % 10], 0))
            socks.append(s)
        for s in socks:
            line = s.recv(512)
            if line.startswith(b"+OK"):
                greeted += 1
            else:
                assert line.startswith(b"-ERR [SYS/TEMP] Too many connections"), line
                refused += 1
        assert greeted + refused == 300
        assert greeted <= 60 + 2, greeted      # per-worker share, rounded up
        assert refused >= 300 - 62
    finally:
        for s in socks:
            s.close()
    # polled while the worker sees the closes (runaway guard only)
    wait_until(lambda: session_works(srv), "a session after the flood", step=0.2,
               retry_on=(AssertionError, ConnectionClosed, OSError))


def session_works(srv, count=None):
    with srv.session() as c:
        if count is not None:
            assert c.stat()[0] == count
        c.quit()
    return True


# ------------------------------------------------------------------ S57 non-reading client

def test_client_that_never_reads_a_20mib_retr(server_factory):
    """S57/S42: RETR of a 20 MiB message by a client that never reads: the
    worker queues at most its output high-water mark, its RSS does not grow
    with the message, other clients are served, and closing the connection
    deletes nothing."""
    srv, worker = one_worker(server_factory, users={"alice": "secret", "bob": "secret"})
    line = b"y" * 998 + b"\n"
    srv.deliver(b"Subject: huge\n\n" + line * (20 * 1024))
    srv.deliver(b"Subject: small\n\nhello\n", user="bob")
    with srv.connect() as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        login(c)
        before = rss_kib(worker)
        c.send(b"RETR 1\r\n")
        time.sleep(2)
        grown = rss_kib(worker) - before
        with srv.session("bob") as other:
            assert other.retr(1) == b"Subject: small\r\n\r\nhello\r\n"
            other.quit()
    assert grown < 6 * 1024, grown
    time.sleep(0.2)
    assert len(srv.message_files()) == 1 and len(srv.message_files("bob")) == 1
    assert srv.children_by_comm(WORKER) == [worker]


# ------------------------------------------------------------------ S60 EMFILE

def test_emfile_server_survives_and_serves_again(server_factory, monkeypatch):
    """S60: popboxd with RLIMIT_NOFILE 48 and 120 connections: the worker
    stops accepting while its sessions could use up its descriptors (else
    accept() runs out of them); it neither dies nor spins, sessions it
    already has keep working, and after the connections close new clients
    are served."""
    limit = 48
    orig = popbox_server._die_with_parent

    def preexec():
        orig()
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    monkeypatch.setattr(popbox_server, "_die_with_parent", preexec)
    srv, worker = one_worker(server_factory)
    monkeypatch.setattr(popbox_server, "_die_with_parent", orig)
    srv.deliver(b"Subject: x\n\ny\n")
    with open("/proc/%d/limits" % worker) as f:
        assert any(l.startswith("Max open files") and str(limit) in l for l in f)
    existing = srv.session()
    socks = []
    try:
        sources = [fresh_source() for _ in range(4)]
        for i in range(120):
            socks.append(socket.create_connection((srv.host, srv.port), timeout=RUNAWAY_SEC,
                                                  source_address=(sources[i % 4], 0)))
        cpu0 = cpu_seconds(worker)
        time.sleep(2)
        cpu = cpu_seconds(worker) - cpu0
        assert cpu < 1.0, "worker spins on EMFILE: %.2f s CPU in 2 s" % cpu
        assert existing.stat() == (1, len(b"Subject: x\r\n\r\ny\r\n"))
        assert srv.children_by_comm(WORKER) == [worker]
    finally:
        for s in socks:
            s.close()
    existing.quit()
    try:
        wait_until(lambda: session_works(srv, count=1), "a session after EMFILE", step=0.3,
                   retry_on=(AssertionError, ConnectionClosed, OSError))
    except AssertionError as e:
        raise AssertionError("%s\n%s" % (e, srv.log()[-3000:]))
    assert srv.alive() and srv.children_by_comm(WORKER) == [worker]
    assert "accept" in srv.log()


def test_full_worker_leaves_new_connections_waiting(server_factory, monkeypatch):
    """A worker accepts no connection its open files could not serve: with
    RLIMIT_NOFILE 84 (64 for the worker itself, 5 per session) each of the
    two workers holds 4 sessions. The 9th client is not accepted and then
    failed at login for want of a descriptor; it waits in the listen queue,
    and is greeted and served as soon as one of the 8 sessions ends. LMTP
    is still accepted meanwhile: mail keeps coming in."""
    limit = 84
    orig = popbox_server._die_with_parent

    def preexec():
        orig()
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    srv = server_factory(start=False, workers=2)
    lmtp_port = popbox_server.free_port()
    srv.config["listen_lmtp"] = "127.0.0.1:%d" % lmtp_port
    users = ["u%d" % i for i in range(9)]
    for u in users:
        srv.add_user(u, "pw")
        srv.deliver(b"Subject: for %s\n\nbody\n" % u.encode(), user=u)
    monkeypatch.setattr(popbox_server, "_die_with_parent", preexec)
    srv.start()
    monkeypatch.setattr(popbox_server, "_die_with_parent", orig)
    ch = srv.wait_children(lambda c: list(c.values()).count(WORKER) == 2)
    for pid in [p for p, c in ch.items() if c == WORKER]:
        with open("/proc/%d/limits" % pid) as f:
            assert any(l.startswith("Max open files") and str(limit) in l for l in f)
    held = []
    waiting = None
    try:
        for u in users[:8]:
            held.append(srv.session(user=u, password="pw"))
            assert held[-1].stat()[0] == 1
        waiting = socket.create_connection((srv.host, srv.port), timeout=RUNAWAY_SEC,
                                           source_address=(fresh_source(), 0))
        waiting.settimeout(1.5)
        with pytest.raises(socket.timeout):
            data = waiting.recv(100)
            pytest.fail("a 9th connection was served while 8 sessions fill both workers: %r"
                        % data)
        for c in held:
            assert c.stat()[0] == 1
        with socket.create_connection(("127.0.0.1", lmtp_port), timeout=RUNAWAY_SEC) as lm:
            assert lm.recv(100).startswith(b"220 "), "LMTP not accepted by a full worker"
        held.pop(0).quit()
        waiting.settimeout(RUNAWAY_SEC)   # runaway guard only
        greeting = waiting.recv(100)
        assert greeting.startswith(b"+OK"), greeting
        waiting.sendall(b"USER u8\r\nPASS pw\r\nSTAT\r\nQUIT\r\n")
        got = b""
        while got.count(b"\r\n") < 4:
            chunk = waiting.recv(1000)
            assert chunk, got
            got += chunk
        assert got.split(b"\r\n")[2].startswith(b"+OK 1 "), got
    finally:
        if waiting is not None:
            waiting.close()
        for c in held:
            c.close()
    log = srv.log()
    assert "could use all %d open files of this worker" % limit in log, log[-3000:]
    assert "Too many open files" not in log, log[-3000:]


def test_connections_waiting_for_proxy_headers_count_as_sessions(server_factory, monkeypatch):
    """With proxy_protocol, a connection counts against the worker's open
    files from its accept, not from its PROXY header: one worker with
    RLIMIT_NOFILE 84 (room for 4) holding 4 silent connections from the
    balancer accepts no 5th, even one that sends its header at once, until
    the 4 go; then the 5th is served."""
    from test_server_proxy import start_proxied
    limit = 84
    orig = popbox_server._die_with_parent

    def preexec():
        orig()
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    srv = server_factory(config={"proxy_protocol": "yes", "proxy_trusted": "127.0.0.0/8",
                                 "plaintext_auth": "always"}, start=False, workers=1)
    monkeypatch.setattr(popbox_server, "_die_with_parent", preexec)
    start_proxied(srv)
    monkeypatch.setattr(popbox_server, "_die_with_parent", orig)
    silent = []
    fifth = None
    try:
        for _ in range(4):
            silent.append(socket.create_connection((srv.host, srv.port), timeout=RUNAWAY_SEC,
                                                   source_address=(fresh_source(), 0)))
        fifth = socket.create_connection((srv.host, srv.port), timeout=RUNAWAY_SEC,
                                         source_address=(fresh_source(), 0))
        fifth.sendall(b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 110\r\n")
        fifth.settimeout(1.5)
        with pytest.raises(socket.timeout):
            data = fifth.recv(100)
            pytest.fail("a 5th connection was served while 4 wait for their header: %r" % data)
        while silent:
            silent.pop().close()
        fifth.settimeout(RUNAWAY_SEC)   # runaway guard only
        assert fifth.recv(100).startswith(b"+OK"), srv.log()[-2000:]
    finally:
        for c in silent + ([fifth] if fifth else []):
            c.close()
    assert "Too many open files" not in srv.log()


# ------------------------------------------------------------------ S21 privileges

def _status(pid):
    with open("/proc/%d/status" % pid) as f:
        return dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)


def _established_socket_inodes(port):
    """Inodes of TCP sockets on our server port that carry a connection."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local_port = int(fields[1].rsplit(":", 1)[1], 16)
                    if local_port == port and fields[3] != "0A":     # not LISTEN
                        inodes.add(fields[9])
        except FileNotFoundError:
            pass
    return inodes


def _socket_inodes_of(pid):
    out = set()
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            target = os.readlink(os.path.join(d, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs popboxd started as root")
def test_no_process_reading_network_bytes_runs_as_root(server_factory):
    """S21 / figure 15: popboxd started as root; with sessions open in every
    state (greeting only, mid-AUTH, logged in), every process that holds a
    client connection, and the auth process that parses what clients send,
    runs with uid != 0 (real, effective, saved, fs) and no capabilities.
    Only the master keeps root, and it holds no client connection."""
    srv = server_factory(workers=2)
    srv.wait_children(lambda c: list(c.values()).count(WORKER) == 2)
    conns = [srv.connect() for _ in range(4)]
    try:
        assert conns[1].cmd("AUTH PLAIN") == b"+ "
        login(conns[2])
        assert conns[3].cmd("USER alice") == b"+OK"
        time.sleep(0.2)
        tree = [srv.pid] + list(srv.children())
        wanted = _established_socket_inodes(srv.port)
        assert len(wanted) >= 4, wanted
        holders = {}
        for pid in tree:
            for ino in _socket_inodes_of(pid) & wanted:
                holders.setdefault(pid, set()).add(ino)
        assert holders, "no process holds the client connections?"
        assert srv.pid not in holders, "the root master holds a client connection"
        readers = set(holders) | set(srv.children_by_comm(AUTH))
        for pid in readers:
            st = _status(pid)
            uids = [int(u) for u in st["Uid"].split()]
            assert 0 not in uids, (pid, st["Name"], uids)
            assert int(st["CapEff"].strip(), 16) == 0, (pid, st["Name"], st["CapEff"])
        master = _status(srv.pid)
        assert int(master["Uid"].split()[1]) == 0      # the test really ran as root
    finally:
        for c in conns:
            c.close()


def _can_read_as(pid, path):
    """Whether a process with pid's uid, gid and groups can open path."""
    st = _status(pid)
    uid, gid = int(st["Uid"].split()[1]), int(st["Gid"].split()[1])
    groups = [int(g) for g in st.get("Groups", "").split()]

    def demote():
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    import subprocess
    r = subprocess.run([sys.executable, "-c", "open(%r, 'rb').read(1)" % path],
                       preexec_fn=demote, capture_output=True, timeout=RUNAWAY_SEC)
    return r.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs popboxd started as root")
def test_workers_cannot_read_the_users_file(server_factory):
    """Issue 5 item 7: a compromised worker must not reach the password
    hashes. With the users file owned by root and mode 0600, as popboxd.8
    recommends, the master opens it and hands the descriptor to the auth
    process: logins work, and neither a worker nor the auth process can open
    the file by name. A user added later is still picked up."""
    srv = server_factory(workers=1)
    os.chown(srv.users_path, 0, 0)
    os.chmod(srv.users_path, 0o600)
    srv.wait_children(lambda c: list(c.values()).count(WORKER) == 1 and AUTH in c.values())
    worker = srv.children_by_comm(WORKER)[0]
    auth = srv.children_by_comm(AUTH)[0]
    assert not _can_read_as(worker, srv.users_path)
    assert not _can_read_as(auth, srv.users_path)
    srv.reload()   # the auth process re-reads the (now root-only) file
    time.sleep(0.5)
    c = srv.connect()
    login(c)
    assert c.cmd("STAT").startswith(b"+OK")
    c.cmd("QUIT")
    c.close()
