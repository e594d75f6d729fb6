"""PROXY protocol v1/v2 (issue 5 item 6): behind a trusted load balancer the
real client address is used in logs, limits and the failed-login penalty; a
header from an untrusted address, or a malformed one, closes the connection.
The load balancer is played by the test on loopback."""
import shutil
import socket
import ssl
import struct
import time

import pytest

from popbox_server import RUNAWAY_SEC, POP3Raw, fresh_source, peer_lines, wait_until
from test_server_tls_lib import PKI, tls_server

MSG = b"Subject: proxied\n\nhello through the balancer\n"


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed")
    return PKI(str(tmp_path_factory.mktemp("pki-proxy")))


def start_proxied(srv):
    """Start and wait until the workers listen: the readiness probe of the
    harness expects a greeting, which a PROXY listener gives only after a
    header, so probe by the log line and by connecting."""
    srv.start(wait=False)

    def listening():
        assert srv.alive(), "popboxd exited: " + srv.log()
        if "started:" not in srv.log():
            return False
        socket.create_connection(("127.0.0.1", srv.port), timeout=RUNAWAY_SEC).close()
        return True
    wait_until(listening, "popboxd started and listening", retry_on=(OSError,))
    time.sleep(0.2)   # the workers are forked right after the log line
    return srv


def proxied(server_factory, trusted="127.0.0.0/8", **kw):
    # the real clients are not on loopback: allow USER/PASS without TLS here
    srv = server_factory(config={"proxy_protocol": "yes", "proxy_trusted": trusted,
                                 "plaintext_auth": "always"}, start=False, **kw)
    srv.deliver(MSG)
    return start_proxied(srv)


def raw(port, header, source=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=RUNAWAY_SEC,
                                 source_address=(source or fresh_source(), 0))
    s.sendall(header)
    return s


def v2(cmd, fam, addr_block):
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 | cmd, fam]) +
            struct.pack("!H", len(addr_block)) + addr_block)


def read_line(s):
    buf = b""
    while not buf.endswith(b"\r\n"):
        c = s.recv(1)
        if not c:
            break
        buf += c
    return buf


def login_and_quit(s):
    assert read_line(s).startswith(b"+OK")
    s.sendall(b"USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n")
    lines = [read_line(s) for _ in range(4)]
    assert lines[2] == b"+OK 1 %d\r\n" % len(MSG.replace(b"\n", b"\r\n")), lines
    return lines


def closed_without_greeting(s):
    """The server closed: EOF, or a reset because our bytes were unread
    (the socket's timeout, RUNAWAY_SEC, is a runaway guard)."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def wait_log(srv, needle):
    """True once needle is in the log (False only at the runaway guard)."""
    try:
        return wait_until(lambda: needle in srv.log(), "%r in the log" % needle)
    except AssertionError:
        return False


def test_v1_tcp4_address_is_used(server_factory):
    srv = proxied(server_factory)
    s = raw(srv.port, b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 110\r\n")
    login_and_quit(s)
    s.close()
    assert wait_log(srv, "peer=203.0.113.7:40001"), srv.log()


def test_v2_tcp6_address_is_used(server_factory):
    srv = proxied(server_factory)
    src = socket.inet_pton(socket.AF_INET6, "2001:db8::5")
    dst = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    s = raw(srv.port, v2(1, 0x21, src + dst + struct.pack("!HH", 50000, 110)))
    login_and_quit(s)
    s.close()
    assert wait_log(srv, "peer=[2001:db8::5]:50000"), srv.log()


def test_v2_with_tlvs_and_local_command(server_factory):
    srv = proxied(server_factory)
    src = socket.inet_aton("198.51.100.9")
    tlv = b"\x04\x00\x03abc"    # a NOOP TLV the server must skip
    s = raw(srv.port, v2(1, 0x11, src + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 1234, 110) + tlv))
    login_and_quit(s)
    s.close()
    assert wait_log(srv, "peer=198.51.100.9:1234"), srv.log()
    # LOCAL (a health check): no client address; the balancer's is logged
    s = raw(srv.port, v2(0, 0x00, b""), source="127.9.9.9")
    login_and_quit(s)
    s.close()
    assert wait_log(srv, "peer=unknown-via-127.9.9.9:"), srv.log()


def test_header_split_over_segments(server_factory):
    srv = proxied(server_factory)
    s = raw(srv.port, b"PROXY TCP4 203.0.113.8 ")
    time.sleep(0.2)
    s.sendall(b"127.0.0.1 40002 110\r\n")
    login_and_quit(s)
    s.close()
    assert wait_log(srv, "peer=203.0.113.8:40002")


@pytest.mark.parametrize("junk", [
    b"CAPA\r\n",
    b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 110\r\n",
    b"PROXY TCP4 203.0.113.7\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY " + b"A" * 200 + b"\r\n",
    b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + b"\x00" * 12,   # version 3
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04" + b"\x00" * 4,    # too short for TCP4
], ids=["pop3-command", "bad-port", "short-v1", "bad-proto", "long-v1", "v2-version", "v2-short"])
def test_malformed_header_closes(server_factory, junk):
    srv = proxied(server_factory)
    s = raw(srv.port, junk)
    assert closed_without_greeting(s), "a malformed PROXY header must close the connection, no greeting"
    s.close()
    assert wait_log(srv, "malformed PROXY header")


def test_untrusted_source_is_closed(server_factory):
    srv = proxied(server_factory, trusted="192.0.2.0/24, 2001:db8::/32")
    s = raw(srv.port, b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 110\r\n")
    assert closed_without_greeting(s)
    s.close()
    assert wait_log(srv, "not in proxy_trusted")


def test_without_proxy_protocol_a_header_is_just_a_bad_command(server_factory):
    srv = server_factory()
    c = POP3Raw(srv.port, source=fresh_source())
    assert c.cmd("PROXY TCP4 203.0.113.7 127.0.0.1 40001 110").startswith(b"-ERR")
    c.close()


def test_proxy_header_before_tls_handshake(server_factory, pki):
    """The header and the ClientHello arrive back to back: the server must
    consume exactly the header."""
    srv = tls_server(server_factory, pki, config={"proxy_protocol": "yes",
                                                  "proxy_trusted": "127.0.0.0/8"}, start=False)
    # (over TLS, USER/PASS is allowed for any address)
    srv.deliver(MSG)
    start_proxied(srv)
    s = raw(srv.tls_port, b"PROXY TCP4 203.0.113.20 127.0.0.1 40003 995\r\n")
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    t = ctx.wrap_socket(s, server_hostname="localhost")
    login_and_quit(t)
    t.close()
    assert wait_log(srv, "peer=203.0.113.20:40003")


def test_penalty_follows_the_real_address(server_factory):
    """Failures from one real client (through the balancer) slow that client,
    not another client behind the same balancer. The wait imposed is a
    lower bound; that the other client is not held is read from what the
    penalty counts, the failures logged per real address (popboxd(8): every
    failure is logged with the peer address), with no upper bound on time."""
    srv = proxied(server_factory)

    def attempt(addr, password):
        s = raw(srv.port, b"PROXY TCP4 %s 127.0.0.1 40010 110\r\n" % addr.encode(), source="127.0.0.1")
        read_line(s)
        s.sendall(b"USER alice\r\nPASS %s\r\n" % password)
        read_line(s)
        t0 = time.monotonic()
        line = read_line(s)
        s.close()
        return line, time.monotonic() - t0

    def failures(addr):
        return [ln for ln in peer_lines(srv.log(), addr) if "login failed" in ln]

    line, _ = attempt("203.0.113.50", b"wrong")
    assert line.startswith(b"-ERR")
    line, slow = attempt("203.0.113.50", b"wrong")
    assert line.startswith(b"-ERR") and slow >= 1.5, slow
    # counted against the real client, not the balancer both come through
    assert len(failures("203.0.113.50")) == 2, srv.log()
    assert failures("127.0.0.1") == [], srv.log()
    line, _ = attempt("203.0.113.51", b"secret")
    assert line.startswith(b"+OK"), line
    assert failures("203.0.113.51") == [], srv.log()
    assert wait_log(srv, "login user=alice peer=203.0.113.51:40010"), srv.log()


def test_plaintext_policy_uses_the_real_address(server_factory):
    """tls-or-loopback: a proxied client from outside is not 'loopback'
    because the balancer is."""
    srv = server_factory(config={"proxy_protocol": "yes", "proxy_trusted": "127.0.0.0/8"}, start=False)
    srv.deliver(MSG)
    start_proxied(srv)
    s = raw(srv.port, b"PROXY TCP4 203.0.113.30 127.0.0.1 40004 110\r\n")
    assert read_line(s).startswith(b"+OK")
    s.sendall(b"USER alice\r\n")
    assert read_line(s).startswith(b"-ERR [AUTH]")
    s.close()


NO_ADDRESS = {
    "v1-unknown": b"PROXY UNKNOWN\r\n",
    "v1-unknown-with-addresses": b"PROXY UNKNOWN 203.0.113.7 127.0.0.1 40001 110\r\n",
    "v2-local": v2(0, 0x00, b""),
    "v2-unspec": v2(1, 0x00, b""),
}


@pytest.mark.parametrize("header", sorted(NO_ADDRESS))
def test_header_without_address_is_not_loopback(server_factory, header):
    """A header that names no client (v1 UNKNOWN, v2 LOCAL, v2 UNSPEC) does
    not make the client the balancer: the balancer is on loopback here, yet
    tls-or-loopback refuses USER/PASS in clear, and the session's peer is
    "unknown", logged with the balancer that passed it on."""
    srv = server_factory(config={"proxy_protocol": "yes", "proxy_trusted": "127.0.0.0/8"}, start=False)
    srv.deliver(MSG)
    start_proxied(srv)
    s = raw(srv.port, NO_ADDRESS[header], source="127.9.9.10")
    assert read_line(s).startswith(b"+OK")
    s.sendall(b"CAPA\r\n")
    capa = b""
    while not capa.endswith(b"\r\n.\r\n"):
        capa += read_line(s)
    assert b"\r\nUSER\r\n" not in capa and b"PLAIN" not in capa, capa
    s.sendall(b"USER alice\r\n")
    assert read_line(s).startswith(b"-ERR [AUTH] Plaintext"), "the client counted as loopback"
    s.sendall(b"QUIT\r\n")
    read_line(s)
    s.close()
    assert wait_log(srv, "peer=unknown-via-127.9.9.10:"), srv.log()


def test_header_without_address_has_its_own_penalty_key(server_factory):
    """Failed logins of clients whose balancer named no client count under
    "unknown" in the auth process, not under the balancer's address: the
    real clients behind the same balancer (and the balancer) are not
    slowed by them, and they all share that one key, whichever balancer
    passed them on."""
    srv = proxied(server_factory)

    def attempt(balancer, password):
        s = raw(srv.port, b"PROXY UNKNOWN\r\n", source=balancer)
        read_line(s)
        s.sendall(b"USER alice\r\nPASS %s\r\n" % password)
        read_line(s)
        t0 = time.monotonic()
        line = read_line(s)
        s.close()
        return line, time.monotonic() - t0

    line, _ = attempt(fresh_source(), b"wrong")
    assert line.startswith(b"-ERR")
    assert wait_log(srv, "login failed: user=alice peer=unknown:"), srv.log()
    line, slow = attempt(fresh_source(), b"wrong")    # another balancer address
    assert line.startswith(b"-ERR") and slow >= 1.5, slow
