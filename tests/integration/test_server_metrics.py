"""The metrics endpoint (issue 15 item 3): metrics_listen serves GET /metrics
from a process of its own.

A known workload runs between two scrapes, and every counter's change is
checked against it: connections accepted and refused by reason, sessions by
state while two sessions are held open, logins by mechanism and result (USER
ok and failed, APOP, AUTH PLAIN answered [IN-USE]), the failed-login
penalty, the auth latency histogram, commands by verb, messages retrieved
and deleted, octets sent (the session log lines' bytes= and, for one
session, what the client received), TLS handshakes, a resumption and a
failed handshake, and restarts of a worker, the auth process and the
metrics process itself. `promtool check metrics` accepts the text; the
OpenMetrics form is served when asked for.
"""

import base64
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest

from popbox_server import (POP3Raw, apop_digest, free_port, fresh_source, popboxd_path,
                           session_end, peer_name)
from runaway import RUNAWAY_SEC, wait_until
from test_server_tls_lib import PKI, client_context, install_cert

MSGS = [b"From: a@example.org\nSubject: one\n\nfirst\n",
        b"From: b@example.org\nSubject: two\n\nsecond\nline\n"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


def scrape(port, accept=None):
    req = urllib.request.Request("http://127.0.0.1:%d/metrics" % port)
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=RUNAWAY_SEC) as r:
        return r.headers.get("Content-Type"), r.read().decode()


def parse(text):
    """{'name{labels}': value} of every sample line."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out


class Tally(POP3Raw):
    """A POP3Raw that counts every octet it receives."""
    received = 0

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            from popbox_server import ConnectionClosed
            raise ConnectionClosed("server closed the connection")
        self.received += len(chunk)
        self.buf += chunk

    def wait_closed(self, timeout=RUNAWAY_SEC):
        buffered = len(self.buf)          # counted by _fill already
        got = super().wait_closed(timeout)
        self.received += len(got) - buffered
        return got


def test_metrics_after_a_known_workload(server_factory, pki):
    if shutil.which("promtool") is None:
        pytest.fail("promtool is needed (tools/debian-packages.txt: prometheus)")
    mport = free_port()
    lport = free_port()
    srv = server_factory(start=False, config={
        "metrics_listen": "127.0.0.1:%d" % mport, "apop": "yes",
        "listen_lmtp": "127.0.0.1:%d" % lport,
        "auth_mechanisms": "PLAIN SCRAM-SHA-256", "max_connections_per_ip": "1"})
    install_cert(srv, pki.server[0])
    srv.tls_port = free_port()
    srv.config["listen_tls"] = "127.0.0.1:%d" % srv.tls_port
    for m in MSGS:
        srv.deliver(m)
    srv.start()
    # the start-up probe's session has ended and is counted
    wait_until(lambda: " end=" in srv.log(), "the start-up probe's session line")
    srv.wait_children(lambda ch: "popboxd-metrics" in ch.values())
    metrics_pid = srv.children_by_comm("popboxd-metrics")
    assert len(metrics_pid) == 1, srv.children()
    status = open("/proc/%d/status" % metrics_pid[0]).read()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    assert uid == srv.uid, status
    ctype, text0 = scrape(mport)
    assert ctype == "text/plain; version=0.0.4; charset=utf-8", ctype
    before = parse(text0)
    log_mark = len(srv.log())

    # S1: a whole transaction, byte-counted by the client.
    s1 = Tally(srv.port, source=fresh_source())
    s1.received = len(s1.greeting) + 2
    st, _ = s1.multi("CAPA")
    assert st.startswith(b"+OK")
    s1.login()
    s1.stat()
    s1.list()
    s1.uidl()
    s1.retr(1)
    s1.retr(2)
    assert s1.multi("TOP 1 0")[0].startswith(b"+OK")
    assert s1.cmd("XYZZY").startswith(b"-ERR")
    assert s1.cmd("NOOP").startswith(b"+OK")
    assert s1.cmd("DELE 1").startswith(b"+OK")
    s1_peer = peer_name(s1.sock)
    assert s1.quit().startswith(b"+OK")
    s1.close()
    assert session_end(srv, s1_peer) == "quit"
    s1_bytes = int(re.search(r"peer=%s .*bytes=(\d+)" % re.escape(s1_peer), srv.log()).group(1))
    assert s1_bytes == s1.received

    # S2: two wrong passwords for alice from one address; the second answer
    # is held back by the penalty.
    s2 = srv.connect()
    for pw in ("wrong", "wrong again"):
        assert s2.cmd("USER alice").startswith(b"+OK")
        assert s2.cmd("PASS " + pw).startswith(b"-ERR")
    s2.quit()
    s2.close()

    # S3 holds alice's maildrop (APOP), S4 tries AUTH PLAIN: [IN-USE].
    s3 = srv.connect()
    assert s3.cmd("APOP alice " + apop_digest(s3.greeting, "secret")).startswith(b"+OK")
    s4 = srv.connect()
    ir = base64.b64encode(b"\0alice\0secret").decode()
    assert s4.cmd("AUTH PLAIN " + ir).startswith(b"-ERR [IN-USE]")
    mid = parse(scrape(mport)[1])
    assert mid['popbox_sessions{state="authorization"}'] == 1, mid
    assert mid['popbox_sessions{state="transaction"}'] == 1, mid
    assert mid['popbox_sessions{state="update"}'] == 0, mid
    for c in (s3, s4):
        c.quit()
        c.close()

    # TLS: a full handshake, a resumption of its session, a failure.
    ctx = client_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2   # a session to resume at once
    t1 = POP3Raw(srv.tls_port, read_greeting=False, source=fresh_source())
    t1.sock = ctx.wrap_socket(t1.sock, server_hostname="localhost")
    assert t1.readline().startswith(b"+OK")
    session = t1.sock.session
    t1.quit()
    t1.close()
    t2 = POP3Raw(srv.tls_port, read_greeting=False, source=fresh_source())
    t2.sock = ctx.wrap_socket(t2.sock, server_hostname="localhost", session=session)
    assert t2.readline().startswith(b"+OK")
    assert t2.sock.session_reused
    t2.quit()
    t2.close()
    with socket.create_connection(("127.0.0.1", srv.tls_port), timeout=RUNAWAY_SEC,
                                  source_address=(fresh_source(), 0)) as raw:
        raw.sendall(b"USER alice\r\n" + b"\0" * 600)
        raw.settimeout(RUNAWAY_SEC)
        try:
            while raw.recv(4096):
                pass
        except ConnectionResetError:
            pass

    # max_connections_per_ip = 1: a second connection from one address.
    src = fresh_source()
    p1 = srv.connect(source=src)
    p2 = POP3Raw(srv.port, source=src)
    assert p2.greeting.startswith(b"-ERR [SYS/TEMP]"), p2.greeting
    p2.wait_closed()
    p2.close()
    p1.quit()
    p1.close()

    # Every session has ended: the gauges are back to zero.
    def settled():
        now = parse(scrape(mport)[1])
        return now if all(now['popbox_sessions{state="%s"}' % s] == 0
                          for s in ("authorization", "transaction", "update")) else None
    wait_until(lambda: srv.log().count(" end=", log_mark) == 9, "nine session end lines")
    after = settled() or wait_until(settled, "all session gauges at 0")

    def d(key):
        return after[key] - before.get(key, 0)

    assert d("popbox_connections_accepted_total") == 9
    assert d('popbox_connections_refused_total{reason="max_connections_per_ip"}') == 1
    assert d('popbox_connections_refused_total{reason="max_connections"}') == 0
    assert d('popbox_connections_refused_total{reason="proxy"}') == 0
    logins = {k: d(k) for k in after if k.startswith("popbox_logins_total")}
    want = {'popbox_logins_total{mechanism="USER",result="ok"}': 1,
            'popbox_logins_total{mechanism="USER",result="fail"}': 2,
            'popbox_logins_total{mechanism="APOP",result="ok"}': 1,
            'popbox_logins_total{mechanism="PLAIN",result="in_use"}': 1}
    assert len(logins) == 10 * 5
    assert {k: v for k, v in logins.items() if v} == want, logins
    assert d("popbox_auth_penalties_total") == 1
    # five requests went to the auth process: PASS x3, APOP, AUTH PLAIN
    assert d("popbox_auth_duration_seconds_count") == 5
    assert d('popbox_auth_duration_seconds_bucket{le="+Inf"}') == 5
    assert d('popbox_auth_duration_seconds_bucket{le="1"}') <= 4   # the held answer took >= 2 s
    assert d("popbox_auth_duration_seconds_sum") >= 2.0
    buckets = [after[k] for k in after if k.startswith("popbox_auth_duration_seconds_bucket")]
    assert buckets == sorted(buckets) and len(buckets) == 14
    commands = {re.search(r'command="(\w+)"', k).group(1): d(k)
                for k in after if k.startswith("popbox_commands_total")}
    assert commands == {"CAPA": 1, "USER": 3, "PASS": 3, "APOP": 1, "STLS": 0, "AUTH": 1,
                        "QUIT": 7, "STAT": 1, "LIST": 1, "UIDL": 1, "RETR": 2, "TOP": 1,
                        "DELE": 1, "NOOP": 1, "RSET": 0, "unknown": 1}, commands
    assert d("popbox_messages_retrieved_total") == 2
    assert d("popbox_messages_deleted_total") == 1
    logged = sum(int(b) for b in re.findall(r" bytes=(\d+) end=", srv.log()[log_mark:]))
    assert d("popbox_sent_bytes_total") == logged and logged > s1_bytes
    assert d("popbox_tls_handshakes_total") == 2
    assert d("popbox_tls_resumptions_total") == 1
    assert d("popbox_tls_failures_total") == 1
    version = subprocess.run([popboxd_path(), "-V"], capture_output=True, text=True,
                             timeout=RUNAWAY_SEC).stdout.split()[1]
    assert after['popbox_build_info{version="%s"}' % version] == 1

    final_text = scrape(mport)[1]
    r = subprocess.run(["promtool", "check", "metrics"], input=final_text, capture_output=True,
                       text=True, timeout=RUNAWAY_SEC)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", \
        (r.stdout, r.stderr)

    # OpenMetrics on request: counter families named without _total, # EOF.
    ctype, om = scrape(mport, accept="application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text; version=1.0.0"), ctype
    assert om.endswith("# EOF\n")
    assert "# TYPE popbox_connections_accepted counter\n" in om
    assert "\npopbox_connections_accepted_total " in om

    # Only GET /metrics.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen("http://127.0.0.1:%d/" % mport, timeout=RUNAWAY_SEC)
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, data=b"x",
                               timeout=RUNAWAY_SEC)
    assert e.value.code == 405

    # Restarts: a worker, the auth process and the metrics process killed.
    for comm in ("popboxd-worker", "popboxd-auth", "popboxd-metrics"):
        victim = srv.children_by_comm(comm)[0]
        os.kill(victim, signal.SIGKILL)
        srv.wait_children(lambda ch, v=victim, c=comm: v not in ch and c in ch.values())

    def restarted():
        try:
            now = parse(scrape(mport)[1])
        except (urllib.error.URLError, ConnectionError):
            return None
        return now if now['popbox_process_restarts_total{role="metrics"}'] == 1 else None
    now = wait_until(restarted, "the metrics process back, counting its own restart")
    for role in ("worker", "auth", "metrics"):
        assert now['popbox_process_restarts_total{role="%s"}' % role] == 1, role
    # counters survive the restarts of the processes that wrote them
    assert now["popbox_connections_accepted_total"] >= after["popbox_connections_accepted_total"]
    assert now["popbox_messages_deleted_total"] == after["popbox_messages_deleted_total"]

    # LMTP: one recipient delivered, one unknown (refused at RCPT: no delivery).
    import smtplib
    lm = smtplib.LMTP("127.0.0.1", lport, timeout=RUNAWAY_SEC)
    refused = lm.sendmail("x@example.org", ["alice", "nobody-here"], MSGS[0])
    lm.quit()
    assert list(refused) == ["nobody-here"], refused
    last = parse(scrape(mport)[1])
    deliveries = {re.search(r'result="(\w+)"', k).group(1): last[k] - before.get(k, 0)
                  for k in last if k.startswith("popbox_lmtp_deliveries_total")}
    assert deliveries == {"delivered": 1, "temp": 0, "perm": 0, "over_quota": 0, "too_big": 0}


def test_metrics_listen_config(server_factory):
    """metrics_listen takes one address (not *), none turns it off, and -t
    checks it; off, no metrics process runs."""
    srv = server_factory(start=False)
    srv.port = free_port()
    for bad, why in (("*:9110", "an address"), ("127.0.0.1:1, 127.0.0.1:2", "one host:port"),
                     ("127.0.0.1", "host:port"), ("127.0.0.1:0", "a port from 1")):
        srv.config["metrics_listen"] = bad
        srv.write_config()
        r = subprocess.run(srv.command("-t"), capture_output=True, text=True, timeout=RUNAWAY_SEC)
        assert r.returncode == 1 and "metrics_listen" in r.stderr and why in r.stderr, \
            (bad, r.stderr)
    srv.config["metrics_listen"] = "none"
    srv.start()
    assert "popboxd-metrics" not in srv.children().values()
