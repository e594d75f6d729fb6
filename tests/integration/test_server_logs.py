"""Logs for log shippers (issue 15 item 4): log_format = json writes one JSON
object a line, with stable field names for the end of a session (session,
user, peer, proxy_peer, tls, mechanism, retr, top, dele, bytes, duration_ms,
end) and of an LMTP delivery; log_target = journal sends the same fields to
the systemd journal (sd_journal_send) as POPBOX_* fields. Peer-supplied
text stays sanitised, and every line is valid JSON whatever a client sends.
"""

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess

import pytest

from popbox_server import POP3Raw, free_port, fresh_source, peer_name, popboxd_path
from runaway import RUNAWAY_SEC, wait_until
from test_server_tls_lib import PKI, client_context, install_cert

MSG = b"From: a@example.org\nSubject: logged\n\nbody\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


def json_lines(srv):
    """Every line of the server's log, each parsed (a line that is not a
    JSON object fails the test)."""
    out = []
    for line in srv.log().splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        for key in ("time", "level", "process", "pid", "msg"):
            assert key in obj, (key, line)
        out.append(obj)
    return out


def session_end(srv, peer):
    def find():
        for o in json_lines(srv):
            if o.get("event") == "session_end" and o.get("peer") == peer:
                return o
    return wait_until(find, "the session_end line of %s" % peer)


def test_json_lines(server_factory, pki):
    lport = free_port()
    srv = server_factory(start=False, config={"log_format": "json",
                                              "listen_lmtp": "127.0.0.1:%d" % lport})
    install_cert(srv, pki.server[0])
    srv.tls_port = free_port()
    srv.config["listen_tls"] = "127.0.0.1:%d" % srv.tls_port
    srv.deliver(MSG)
    srv.deliver(MSG)
    srv.start()
    started = [o for o in json_lines(srv) if "started" in o["msg"]]
    assert started and started[0]["process"] == "popboxd" and started[0]["level"] == "info"

    c = srv.connect()
    c.login()
    c.retr(1)
    assert c.multi("TOP 2 0")[0].startswith(b"+OK")
    assert c.cmd("DELE 1").startswith(b"+OK")
    peer = peer_name(c.sock)
    c.quit()
    c.close()
    o = session_end(srv, peer)
    assert o["user"] == "alice" and o["mechanism"] == "USER" and o["end"] == "quit"
    assert (o["retr"], o["top"], o["dele"]) == (1, 1, 1)
    assert o["bytes"] > len(MSG) and o["duration_ms"] >= 0
    assert "tls" not in o and "proxy_peer" not in o
    assert o["process"].startswith("popboxd-worker") and o["level"] == "info"
    assert o["msg"].startswith("session %s: user=alice" % o["session"])
    assert len(o["session"]) == 16 and int(o["session"], 16) >= 0

    # TLS, AUTH PLAIN
    t = POP3Raw(srv.tls_port, read_greeting=False, source=fresh_source())
    t.sock = client_context(pki).wrap_socket(t.sock, server_hostname="localhost")
    t.readline()
    st = t.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0secret").decode())
    assert st.startswith(b"+OK"), st
    peer = peer_name(t.sock)
    version = t.sock.version()
    t.quit()
    t.close()
    o = session_end(srv, peer)
    assert o["tls"] == version and o["mechanism"] == "PLAIN"

    # A hostile user name: quotes, backslash, control and 8-bit octets.
    h = srv.connect()
    h.send(b'USER "a\\b\x01\x7f\xc3\xa9\x1b[31m\r\n')
    h.readline()
    assert h.cmd("PASS x").startswith(b"-ERR")
    peer = peer_name(h.sock)
    h.quit()
    h.close()
    wait_until(lambda: any(o.get("peer") == peer and o.get("event") == "session_end"
                           for o in json_lines(srv)), "the hostile session's line")
    raw = srv.log()
    assert "\x01" not in raw and "\x1b" not in raw and "\x7f" not in raw
    assert raw.isascii()

    # An LMTP delivery line.
    import smtplib
    lm = smtplib.LMTP("127.0.0.1", lport, timeout=RUNAWAY_SEC)
    lm.sendmail("sender@example.org", ["alice"], MSG)
    lm.quit()

    def delivery():
        return [o for o in json_lines(srv) if o.get("event") == "delivery"]
    d = wait_until(delivery, "the delivery line")[0]
    assert d["to"] == "alice" and d["from"] == "sender@example.org" and d["user"] == "alice"
    assert d["result"] == "delivered", d
    # the message and the trace headers the delivery adds at the top
    assert d["size"] > len(MSG.replace(b"\n", b"\r\n"))
    assert "error" not in d and len(d["session"]) == 16


def test_journal_fields(server_factory, tmp_path):
    """log_target = journal: popboxd runs in a mount namespace of its own
    where /run/systemd is this test's directory, whose journal/socket is a
    datagram socket the test reads: the journal's native protocol, one
    KEY=value a line."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private mount namespace (CI runs as root)")
    run = tmp_path / "run-systemd"
    (run / "journal").mkdir(parents=True)
    jsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    jsock.bind(str(run / "journal" / "socket"))
    os.chmod(run / "journal" / "socket", 0o666)   # the workers write as run_as
    for d in (run, run / "journal"):
        os.chmod(d, 0o755)
    jsock.settimeout(0.2)
    srv = server_factory(start=False, config={"log_target": "journal",
                                              "proxy_protocol": "yes",
                                              "proxy_trusted": "127.0.0.0/8"})
    real = srv.command

    def command(*extra):
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /run/systemd && exec "$@"', str(run)] + real(*extra)
    srv.command = command
    srv.start(wait=False)
    entries = []

    def receive(pred, what):
        def got():
            try:
                data = jsock.recv(1 << 16)
            except socket.timeout:
                return None
            e = dict(l.split("=", 1) for l in data.decode().split("\n") if "=" in l)
            entries.append(e)
            return e if pred(e) else None
        return wait_until(got, what)

    e = receive(lambda e: "started:" in e.get("MESSAGE", ""), "the start line in the journal")
    assert e["SYSLOG_IDENTIFIER"] == "popboxd" and e["PRIORITY"] == "6"
    # a client at 198.51.100.7:5555 through a balancer on loopback
    def connected():
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=RUNAWAY_SEC,
                                     source_address=("127.0.0.1", 0))
        s.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 110\r\n")
        return s
    s = wait_until(connected, "the worker listening", retry_on=(OSError,))
    via = peer_name(s)
    f = s.makefile("rwb")
    assert f.readline().startswith(b"+OK")
    f.write(b"QUIT\r\n")
    f.flush()
    f.readline()
    s.close()
    e = receive(lambda e: e.get("POPBOX_EVENT") == "session_end", "the session_end entry")
    assert e["POPBOX_PEER"] == "198.51.100.7:5555"
    assert e["POPBOX_PROXY_PEER"] == via
    assert e["POPBOX_END"] == "quit" and e["POPBOX_RETR"] == "0"
    assert int(e["POPBOX_BYTES"]) > 0 and "POPBOX_DURATION_MS" in e
    assert "POPBOX_USER" not in e and "POPBOX_TLS" not in e
    assert e["MESSAGE"].startswith("session %s: user=- peer=198.51.100.7:5555" % e["POPBOX_SESSION"])
    assert e["SYSLOG_IDENTIFIER"].startswith("popboxd-worker")
    jsock.close()
