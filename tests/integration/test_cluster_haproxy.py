"""Beyond one machine (issue 15 item 5, docs/DESIGN.md "Beyond one machine"):
three popboxd nodes on 127.0.0.2, 127.0.0.3 and 127.0.0.4 over one shared
Maildir tree and users file, behind a real HAProxy that passes the client's
address with send-proxy-v2 and checks each node with a POP3 probe.

One test, in the order an operator would see it:
- sessions spread over all three nodes, and every node logs the client's own
  address (each client connects from an address of its own);
- the failed-login penalty is kept by the client's address, not HAProxy's:
  after two wrong passwords from client X, a wrong password from client Y
  on the same node is answered at once, X's next one is held back (the
  node's popbox_auth_penalties_total);
- a login of a user whose maildrop is open on one node gets [IN-USE] on
  another (the lock holds across processes sharing the file system);
- a whole node killed with SIGKILL in the middle of a session with
  deletions pending loses nothing, and its user logs in through HAProxy at
  once (HAProxy redispatches a refused connection to a live node);
- the health checks ran (the nodes counted QUITs nobody else sent) and left
  no line in the nodes' logs.
"""

import os
import shutil
import signal
import socket
import struct
import subprocess
import urllib.request

import pytest

from popbox_server import POP3Raw, PopboxServer, fresh_source, free_port, peer_name, \
    popboxd_path, _die_with_parent
from runaway import RUNAWAY_SEC, wait_until

NODES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
MSGS = [b"Subject: m%d\n\nmessage %d\n" % (i, i) for i in range(3)]


def proxy_v2_local():
    """A PROXY v2 header with the LOCAL command (what a health check sends)."""
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00]) + struct.pack("!H", 0)


def node_ready(node):
    """The node greets a connection that says PROXY LOCAL."""
    def greets():
        if not node.alive():
            raise AssertionError("node %s exited:\n%s" % (node.host, node.log()))
        try:
            with socket.create_connection((node.host, node.port), timeout=RUNAWAY_SEC) as s:
                s.sendall(proxy_v2_local())
                ok = s.makefile("rb").readline().startswith(b"+OK")
                s.sendall(b"QUIT\r\n")
                return ok
        except OSError:
            return False
    wait_until(greets, "node %s greeting" % node.host)


def metrics(node):
    with urllib.request.urlopen("http://%s:%d/metrics" % (node.host, node.metrics_port),
                                timeout=RUNAWAY_SEC) as r:
        out = {}
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out


def served_by(nodes, sock):
    """The node whose log names this client connection (a socket, or its
    ADDR:PORT)."""
    peer = "peer=%s " % (sock if isinstance(sock, str) else peer_name(sock))

    def find():
        hits = [n for n in nodes if peer in n.log()]
        return hits[0] if len(hits) == 1 else None
    return wait_until(find, "the node that logged %s" % peer)


@pytest.fixture
def cluster(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is needed (tools/debian-packages.txt)")
    nodes = []
    try:
        first = None
        for host in NODES:
            config = {"proxy_protocol": "yes", "proxy_trusted": "127.0.0.1/32",
                      "workers": "1"}
            if first is not None:
                config["mail"] = first.config["mail"]
                config["users"] = first.config["users"]
            n = PopboxServer(config=config, workers=1)
            n.host = host
            n.port = free_port(host)
            n.metrics_port = free_port(host)
            n.config["listen"] = "%s:%d" % (host, n.port)
            n.config["metrics_listen"] = "%s:%d" % (host, n.metrics_port)
            nodes.append(n)
            if first is None:
                first = n
                for m in MSGS:
                    n.deliver(m)
                n.add_user("bob", "bobpw")
        for n in nodes:
            n.start(wait=False)
        for n in nodes:
            node_ready(n)
        port = free_port()
        cfg = tmp_path / "haproxy.cfg"
        servers = "".join(
            "    server n%d %s:%d send-proxy-v2 check check-send-proxy inter 300ms fall 1 rise 1\n"
            % (i + 1, n.host, n.port) for i, n in enumerate(nodes))
        cfg.write_text(
            "global\n    maxconn 256\n\n"
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 120s\n"
            "    timeout server 120s\n    retries 3\n    option redispatch 1\n\n"
            "frontend pop3\n    bind 127.0.0.1:%d\n    default_backend popbox\n\n"
            "backend popbox\n    balance roundrobin\n"
            "    option tcp-check\n"
            "    tcp-check expect rstring ^\\+OK\n"
            "    tcp-check send QUIT\\r\\n\n"
            "    tcp-check expect rstring ^\\+OK\n" % port + servers)
        r = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=RUNAWAY_SEC)
        assert r.returncode == 0, r.stdout + r.stderr
        hlog = open(tmp_path / "haproxy.log", "w+b")
        hap = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                               stdout=hlog, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

        def through():
            assert hap.poll() is None, open(hlog.name).read()
            try:
                c = POP3Raw(port, source=fresh_source())
            except OSError:
                return None
            ok = c.greeting.startswith(b"+OK")
            c.quit()
            c.close()
            return ok
        wait_until(through, "a greeting through HAProxy")
        yield nodes, port, hap
    finally:
        if "hap" in locals():
            hap.send_signal(signal.SIGTERM)
            try:
                hap.wait(RUNAWAY_SEC)
            except subprocess.TimeoutExpired:
                hap.kill()
                hap.wait()
        for n in nodes:
            n.stop()
        for n in nodes:
            n.cleanup()


def test_three_nodes_behind_haproxy(cluster):
    nodes, port, hap = cluster

    def connect():
        return POP3Raw(port, source=fresh_source())

    # Sessions spread over the nodes; each logs the client's own address.
    seen = set()
    quits = {n.host: 0 for n in nodes}
    for _ in range(6):
        c = connect()
        c.login("bob", "bobpw")
        c.stat()
        c.quit()
        node = served_by(nodes, c.sock)   # still open: QUIT reads to the close
        quits[node.host] += 1
        seen.add(node.host)
        c.close()
    assert seen == set(NODES), seen

    # The penalty goes by the client's address, which HAProxy passed on.
    def failing_session(src, passwords):
        """USER alice with each wrong password, QUIT; the node that served it."""
        c = POP3Raw(port, source=src)
        for pw in passwords:
            assert c.cmd("USER alice").startswith(b"+OK")
            assert c.cmd("PASS " + pw).startswith(b"-ERR")
        me = peer_name(c.sock)
        c.quit()
        c.close()
        n = served_by(nodes, me)
        quits[n.host] += 1
        return n

    def fail_on(node, src, password):
        """One wrong password from src, on node (round robin gets there)."""
        for _ in range(3 * len(nodes)):
            if failing_session(src, [password]) is node:
                return
        raise AssertionError("round robin never reached %s" % node.host)

    x_src, y_src = fresh_source(), fresh_source()
    node = failing_session(x_src, ["wrong1", "wrong2"])
    assert metrics(node)["popbox_auth_penalties_total"] == 1
    fail_on(node, y_src, "wrong3")     # Y's first failure there: at once
    assert metrics(node)["popbox_auth_penalties_total"] == 1, "Y was charged for X's failures"
    fail_on(node, x_src, "wrong4")     # X's third: held back
    assert metrics(node)["popbox_auth_penalties_total"] == 2
    # every node names the client, never the balancer, in its session lines
    for n in nodes:
        for line in n.log().splitlines():
            assert " peer=127.0.0.1:" not in line, line

    # [IN-USE] across nodes.
    a = connect()
    a.login("alice", "secret")
    a_node = served_by(nodes, a.sock)
    for _ in range(3 * len(nodes)):
        b = connect()
        assert b.cmd("USER alice").startswith(b"+OK")
        assert b.cmd("PASS secret").startswith(b"-ERR [IN-USE]")
        me = peer_name(b.sock)
        b.quit()
        b.close()
        b_node = served_by(nodes, me)
        quits[b_node.host] += 1
        if b_node is not a_node:
            break
    assert b_node is not a_node

    # A node killed mid-session (deletions pending): nothing lost, and the
    # user logs in through HAProxy at once.
    assert a.stat()[0] == len(MSGS)
    a.retr(1)
    assert a.cmd("DELE 1").startswith(b"+OK")
    assert a.cmd("DELE 2").startswith(b"+OK")
    victims = [a_node.pid] + list(a_node.children())
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    a_node.proc.wait(RUNAWAY_SEC)
    try:
        a.wait_closed()
    except OSError:
        pass
    a.close()
    wait_until(lambda: not any(os.path.exists("/proc/%d" % p) for p in victims[1:]),
               "the killed node's processes gone")
    c = connect()        # no retry here: HAProxy must find a live node itself
    c.login("alice", "secret")
    assert c.stat()[0] == len(MSGS)
    c_node = served_by(nodes, c.sock)
    assert c_node is not a_node
    c.quit()
    c.close()
    assert len(nodes[0].message_files("alice")) == len(MSGS)

    # The health checks ran on the live nodes (QUITs beyond ours) and wrote
    # nothing to their logs.
    for n in nodes:
        if n is a_node:
            continue
        ours = quits[n.host] + (1 if c_node is n else 0)
        wait_until(lambda n=n, ours=ours:
                   metrics(n)['popbox_commands_total{command="QUIT"}'] > ours + 10,
                   "health checks on %s" % n.host)
        assert "unknown-via" not in n.log(), n.log()
