"""A connect and login storm (issue 17, the 1,024-client scale point that
hung): the listen socket keeps the backlog popboxd asked for, and every login
of a storm is answered. Before, libevent's listener re-listened with a
backlog of 128 in each worker, and the auth process dropped answers when a
busy worker's side of their channel was full, leaving those clients waiting
until the login timeout."""
import os
import selectors
import socket
import subprocess
import time

from popbox_server import RUNAWAY_SEC


def listen_backlog(port):
    """The backlog of the socket listening on port (ss: Send-Q of LISTEN)."""
    out = subprocess.run(["ss", "-Hltn", "sport = :%d" % port], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out and out[0] == "LISTEN", out
    return int(out[2])


def test_listen_backlog_is_the_masters(server_factory):
    srv = server_factory(users={"alice": "secret"}, workers=2)
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    # popboxd asks for 65,535; the kernel caps it at somaxconn. A worker's
    # listener must not shrink it (libevent's default would be 128).
    assert listen_backlog(srv.port) == min(65535, somaxconn)


N_CLIENTS = 600


def test_login_storm_every_login_answered(server_factory):
    users = {"s%d" % i: "secret" for i in range(N_CLIENTS)}
    srv = server_factory(users=users, workers=1, config={
        "max_connections": "5000", "max_connections_per_ip": "5000",
        "login_timeout": "10m"})
    sel = selectors.DefaultSelector()
    conns = {}
    # Each client from its own 127.0.x.y address; all connect at once and
    # pipeline their whole session, so the worker forwards hundreds of
    # logins to the auth process while it is still accepting.
    for i in range(N_CLIENTS):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.%d.%d" % (1 + i // 250, 1 + i % 250), 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", srv.port))
        conns[s] = {"i": i, "out": b"USER s%d\r\nPASS secret\r\nSTAT\r\nQUIT\r\n" % i,
                    "in": b""}
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    done = {}
    deadline = time.monotonic() + RUNAWAY_SEC   # runaway guard only
    while conns and time.monotonic() < deadline:
        for key, ev in sel.select(timeout=1):
            s = key.fileobj
            c = conns[s]
            if ev & selectors.EVENT_WRITE and c["out"]:
                try:
                    c["out"] = c["out"][s.send(c["out"]):]
                except BlockingIOError:
                    pass
                if not c["out"]:
                    sel.modify(s, selectors.EVENT_READ)
            if ev & selectors.EVENT_READ:
                try:
                    data = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                c["in"] += data
                if not data or c["in"].count(b"\r\n") >= 5:
                    sel.unregister(s)
                    s.close()
                    done[c["i"]] = c["in"]
                    del conns[s]
    for s in conns:
        s.close()
    assert not conns, "%d of %d clients got no complete answer within %d s" % (
        len(conns), N_CLIENTS, RUNAWAY_SEC)
    bad = {i: r for i, r in done.items()
           if [l[:3] for l in r.split(b"\r\n")[:5]] != [b"+OK"] * 5}
    assert not bad, "%d sessions failed, e.g. %r" % (len(bad), list(bad.items())[:3])
    log = srv.log()
    assert "cannot answer worker" not in log
    assert "cannot reach the auth process" not in log
