"""Byte-exact RETR and TOP of difficult messages, LIST sizes equal to the octets
received; checked on raw sockets (exact stuffed bytes), with poplib and curl."""

import hashlib
import shutil
import socket
import subprocess
import time

import pytest

import popbox_server

from popbox_server import (RUNAWAY_SEC, dot_stuff, dot_stuff_inverse, socket_owner, top_form,
                           wire_form)

# name -> stored bytes. Names are the Maildir base names, hence the UIDLs.
DIFFICULT = {
    "dots": b"Subject: dots\n\n.\n..\n...\n.x\n..y\nend.\n. \n",
    "no-final-newline": b"Subject: no final newline\n\nlast line without LF",
    "no-final-newline-dot": b"Subject: x\n\nbody\n.",
    "empty-body": b"Subject: empty body\nFrom: a@b\n\n",
    "headers-only": b"Subject: no blank line\nFrom: a@b\n",
    "empty-file": b"",
    "only-newline": b"\n",
    "crlf-stored": b"Subject: crlf\r\nFrom: a@b\r\n\r\nline 1\r\n.dot line\r\nline 3\r\n",
    "mixed-endings": b"Subject: mixed\r\n\nlf line\ncrlf line\r\nbare\rcr inside\nend",
    "eight-bit": b"Subject: =?utf-8?q?8bit?=\n\nGr\xc3\xbc\xc3\x9fe \xff\xfe\x80\n\xe4\xf6\xfc latin-1\n",
    "nul-bytes": b"Subject: nul\n\nbefore\x00after\n\x00\n.\x00dot nul\n",
    "long-line": b"Subject: long line\n\n" + b"x" * 10000 + b"\n." + b"y" * 5000 + b"\n",
    "cr-at-end": b"Subject: cr\n\nends with CR\r",
    "blank-lines": b"Subject: blanks\n\n\n\n\nafter three blank lines\n\n",
    "terminator-lookalike": b"Subject: t\n\nline\r\n.\r\nnot the end\r\n.\r\n",
}


def expected_size(data):
    return len(wire_form(data))


@pytest.fixture
def difficult(server):
    for name, data in DIFFICULT.items():
        server.deliver(data, name=name)
    return server


def numbers_by_name(c):
    return {u: n for n, u in c.uidl().items()}


def test_list_sizes_are_wire_octets(difficult):
    with difficult.session() as c:
        byname = numbers_by_name(c)
        assert set(byname) == set(DIFFICULT)
        sizes = c.list()
        n, total = c.stat()
        assert n == len(DIFFICULT)
        for name, data in DIFFICULT.items():
            assert sizes[byname[name]] == expected_size(data), name
            assert c.cmd("LIST %d" % byname[name]) == b"+OK %d %d" % (byname[name], expected_size(data))
        assert total == sum(expected_size(d) for d in DIFFICULT.values())


@pytest.mark.parametrize("name", sorted(DIFFICULT))
def test_retr_raw_bytes_exact(difficult, name):
    data = DIFFICULT[name]
    with difficult.session() as c:
        n = numbers_by_name(c)[name]
        size = c.list()[n]
        st, raw = c.multi("RETR %d" % n)
        assert st.startswith(b"+OK"), st
        assert raw == dot_stuff(wire_form(data))
        assert len(dot_stuff_inverse(raw)) == size
        # the connection is still in sync
        assert c.cmd("NOOP").startswith(b"+OK")


@pytest.mark.parametrize("name", sorted(DIFFICULT))
def test_top_raw_bytes_exact(difficult, name):
    data = DIFFICULT[name]
    with difficult.session() as c:
        n = numbers_by_name(c)[name]
        for lines in (0, 1, 2, 1000):
            st, raw = c.multi("TOP %d %d" % (n, lines))
            assert st.startswith(b"+OK"), st
            assert raw == dot_stuff(top_form(data, lines)), (name, lines)
        assert c.cmd("NOOP").startswith(b"+OK")


def test_retr_with_poplib(difficult):
    p = difficult.poplib()
    try:
        p.user("alice")
        p.pass_("secret")
        _, uidls, _ = p.uidl()
        byname = {l.split()[1].decode(): int(l.split()[0]) for l in uidls}
        _, listing, _ = p.list()
        sizes = {int(l.split()[0]): int(l.split()[1]) for l in listing}
        for name, data in DIFFICULT.items():
            if name == "long-line":
                continue  # poplib refuses lines over 2048 octets
            n = byname[name]
            _, lines, octets = p.retr(n)
            assert octets == sizes[n] == expected_size(data), name
            got = b"".join(l + b"\r\n" for l in lines)
            assert got == wire_form(data), name
            _, lines, octets = p.top(n, 1)
            assert b"".join(l + b"\r\n" for l in lines) == top_form(data, 1), name
    finally:
        p.quit()


def test_stored_in_cur_with_info_and_size_tags(server):
    data = b"Subject: tagged\n\nline\n.dot\n"
    wire = wire_form(data)
    server.deliver(data, name="1700000000.M1P1.host,S=%d,W=%d" % (len(data), len(wire)),
                   subdir="cur", info="2,S")
    server.deliver(b"Subject: seen\n\nx\n", name="1700000001.M2P1.host", subdir="cur", info="2,RS")
    server.deliver(b"Subject: no info\n\ny\n", name="1700000002.M3P1.host", subdir="cur")
    with server.session() as c:
        byname = numbers_by_name(c)
        assert set(byname) == {"1700000000.M1P1.host,S=%d,W=%d" % (len(data), len(wire)),
                               "1700000001.M2P1.host", "1700000002.M3P1.host"}
        n = byname["1700000000.M1P1.host,S=%d,W=%d" % (len(data), len(wire))]
        assert c.list()[n] == len(wire)
        assert c.retr(n) == wire


def big_message(size=20 * 1024 * 1024):
    """Deterministic ~size bytes, lines under 2048 octets, some starting with '.'."""
    parts = [b"Subject: big\nFrom: big@example.org\n\n"]
    total = len(parts[0])
    i = 0
    while total < size:
        if i % 97 == 0:
            line = b"." + b"%08d" % i + b".\n"
        elif i % 101 == 0:
            line = b"\n"
        else:
            line = (b"%08d " % i) + bytes(range(0x21, 0x7f)) + b"\xe9\xe8\n"
        parts.append(line)
        total += len(line)
        i += 1
    return b"".join(parts)


@pytest.fixture(scope="module")
def big():
    return big_message()


def test_20mib_message_raw_and_poplib(server, big):
    server.deliver(big, name="big")
    server.deliver(b"Subject: after\n\nsmall\n", name="small")
    wire = wire_form(big)
    with server.session() as c:
        byname = numbers_by_name(c)
        n = byname["big"]
        assert c.list()[n] == len(wire)
        st, raw = c.multi("RETR %d" % n)
        assert st.startswith(b"+OK")
        assert hashlib.sha256(raw).hexdigest() == hashlib.sha256(dot_stuff(wire)).hexdigest()
        assert c.retr(byname["small"]) == b"Subject: after\r\n\r\nsmall\r\n"
        st, raw = c.multi("TOP %d 3" % n)
        assert raw == dot_stuff(top_form(big, 3))
        c.quit()  # release the maildrop lock before the poplib login below
    p = server.poplib()
    try:
        p.user("alice")
        p.pass_("secret")
        _, lines, octets = p.retr(n)
        assert octets == len(wire)
        assert hashlib.sha256(b"".join(l + b"\r\n" for l in lines)).digest() == hashlib.sha256(wire).digest()
    finally:
        p.quit()


def vm_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_slow_reader_of_big_message(server, big):
    """A client that stops reading: the worker does not buffer the message
    (its memory stays bounded), and resumes when the client reads again."""
    server.deliver(big, name="big")
    workers = server.children_by_comm("popboxd-worker")
    with server.session() as c:
        owner = socket_owner(server.port, c.sock, workers)
        assert owner, "cannot find the worker serving the session"
        before = vm_rss_kib(owner)
        c.send(b"RETR 1\r\n")
        time.sleep(1.5)      # the server fills the socket buffers and must pause
        during = vm_rss_kib(owner)
        if not popbox_server.sanitized():
            assert during - before < 8 * 1024, "worker grew by %d KiB while the reader stalled" % (during - before)
        assert c.readline().startswith(b"+OK")
        c.sock.setblocking(True)
        c.sock.settimeout(RUNAWAY_SEC)
        for _ in range(20):  # read a little, pause, read again
            c.buf += c.sock.recv(65536)
            time.sleep(0.02)
        raw = c.read_multiline_raw()
        assert hashlib.sha256(raw).digest() == hashlib.sha256(dot_stuff(wire_form(big))).digest()
        assert c.cmd("NOOP").startswith(b"+OK")


# ------------------------------------------------------------------ curl

CURL = shutil.which("curl")


@pytest.fixture(params=["default", "user-pass"])
def curl_server(request, server_factory):
    """popboxd with the difficult messages; "user-pass" offers only a SASL
    mechanism this curl lacks (SCRAM), so curl falls back to USER/PASS;
    "default" lets curl pick AUTH PLAIN from CAPA."""
    config = {"auth_mechanisms": "SCRAM-SHA-256"} if request.param == "user-pass" else None
    srv = server_factory(config=config)
    for name, data in DIFFICULT.items():
        srv.deliver(data, name=name)
    return srv


def curl(server, path, *extra):
    r = subprocess.run([CURL, "-s", "-S", "--max-time", "%d" % RUNAWAY_SEC,
                        "pop3://127.0.0.1:%d/%s" % (server.port, path), "-u", "alice:secret"]
                       + list(extra), capture_output=True, timeout=RUNAWAY_SEC)
    assert r.returncode == 0, (r.returncode, r.stderr)
    return r.stdout


@pytest.mark.skipif(CURL is None, reason="curl not installed (tools/debian-packages.txt)")
def test_curl_list_and_retr(curl_server):
    difficult = curl_server
    with difficult.session() as c:
        byname = numbers_by_name(c)
        sizes = c.list()
        c.quit()
    listing = curl(difficult, "")
    got = {int(a): int(b) for a, b in (l.split() for l in listing.splitlines() if l.strip())}
    assert got == sizes
    for name in ("dots", "crlf-stored", "eight-bit", "nul-bytes", "long-line", "mixed-endings",
                 "terminator-lookalike"):
        body = curl(difficult, "%d" % byname[name])
        assert body == wire_form(DIFFICULT[name]), name


@pytest.mark.skipif(CURL is None, reason="curl not installed (tools/debian-packages.txt)")
def test_curl_uidl_and_url_credentials(curl_server):
    difficult = curl_server
    out = subprocess.run([CURL, "-s", "-S", "--max-time", "%d" % RUNAWAY_SEC, "-X", "UIDL",
                          "pop3://alice:secret@127.0.0.1:%d/" % difficult.port],
                         capture_output=True, timeout=RUNAWAY_SEC)
    assert out.returncode == 0, out.stderr
    names = {l.split()[1].decode() for l in out.stdout.splitlines() if l.strip()}
    assert names == set(DIFFICULT)


@pytest.mark.skipif(CURL is None, reason="curl not installed (tools/debian-packages.txt)")
def test_curl_wrong_password_fails(curl_server):
    server = curl_server
    r = subprocess.run([CURL, "-s", "--max-time", "%d" % RUNAWAY_SEC,
                        "pop3://127.0.0.1:%d/" % server.port, "-u", "alice:wrong"],
                       capture_output=True, timeout=RUNAWAY_SEC)
    assert r.returncode == 67, r  # CURLE_LOGIN_DENIED

