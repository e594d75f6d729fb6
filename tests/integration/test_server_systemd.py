"""popboxd under systemd (issue 15 item 1), without systemd as PID 1.

- The units in contrib/systemd, as `make units` writes them, pass
  `systemd-analyze verify` without a single complaint, and the service's
  sandboxing keeps `systemd-analyze security` exposure low.
- Socket activation: systemd-socket-activate holds the listening sockets,
  named as the socket units name them (pop3, pop3s), and execs popboxd on
  the first connection; POP3 and POP3S sessions (poplib) run over the passed
  sockets, the first connection (made before popboxd existed) included.
- Notifications go to a NOTIFY_SOCKET this test binds: READY=1 with STATUS=,
  STATUS= following the open connections, RELOADING=1 then READY=1 around
  SIGHUP, STOPPING=1 on SIGTERM.
- The LMTP listeners (a TCP address and a unix socket, named lmtp) too:
  deliveries over both, and the socket file left to systemd.
- A passed socket the config does not list, a config entry no socket
  provides, a socket of the wrong kind or an unknown name: popboxd refuses to
  start (exit 1) and says which.
"""

import os
import poplib
import shutil
import socket
import ssl
import subprocess

import pytest

from popbox_server import REPO, build_dir, free_port, popboxd_path, _die_with_parent
from runaway import RUNAWAY_SEC, wait_until
from test_server_tls_lib import PKI, install_cert

MSG = b"From: a@example.org\nSubject: activated\n\nbody line\n"


def need(tool):
    if shutil.which(tool) is None:
        pytest.fail("%s is needed (tools/debian-packages.txt: systemd)" % tool)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


# ------------------------------------------------------------------ units

def test_units_verify(tmp_path):
    """Every unit, with the paths make install would write (here the build
    directory, so ExecStart= names a real executable), passes
    systemd-analyze verify with nothing on stderr: an unknown or misspelt
    directive is only a warning there, so silence is the check. The man
    pages of Documentation= are looked up in the repository's docs."""
    need("systemd-analyze")
    out = tmp_path / "b"
    r = subprocess.run(["make", "-s", "-C", REPO, "BUILD=%s" % out, "SBINDIR=%s" % build_dir(),
                        "BINDIR=%s" % build_dir(), "units"], capture_output=True, text=True,
                       timeout=RUNAWAY_SEC)
    assert r.returncode == 0, r.stderr
    system = sorted(os.listdir(out / "systemd" / "system"))
    user = sorted(os.listdir(out / "systemd" / "user"))
    assert system == ["popboxd-lmtp.socket", "popboxd-pop3s.socket", "popboxd.service",
                      "popboxd.socket"], system
    assert user == ["popbox-fetch@.service", "popbox-fetch@.timer"], user
    man = tmp_path / "man"
    for sec in ("1", "5", "8"):
        (man / ("man" + sec)).mkdir(parents=True)
    for f in os.listdir(os.path.join(REPO, "docs")):
        sec = f.rsplit(".", 1)[-1]
        if sec in ("1", "5", "8"):
            shutil.copy(os.path.join(REPO, "docs", f), man / ("man" + sec) / f)
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    env = dict(os.environ, MANPATH=str(man), XDG_RUNTIME_DIR=str(xdg))

    def verify(*args):
        r = subprocess.run(["systemd-analyze"] + list(args), capture_output=True, text=True,
                           env=env, timeout=RUNAWAY_SEC)
        assert r.returncode == 0 and r.stderr.strip() == "", (args, r.stdout, r.stderr)
        return r.stdout

    verify("verify", *[str(out / "systemd" / "system" / u) for u in system])
    # The templates, and an instance of each (what a user enables).
    udir = out / "systemd" / "user"
    for u in user:
        shutil.copy(udir / u, udir / u.replace("@.", "@work."))
    verify("--user", "verify", *[str(udir / u) for u in sorted(os.listdir(udir))])
    text = (udir / "popbox-fetch@work.service").read_text()
    assert "ExecStart=%s/popbox fetch %%i" % build_dir() in text, text
    # Exposure 0 (locked down) .. 10 (unsandboxed); above 3.0 means a
    # sandboxing directive went missing.
    report = verify("security", "--offline=true", "--threshold=30",
                    str(out / "systemd" / "system" / "popboxd.service"))
    assert "Overall exposure level for popboxd.service" in report, report
    service = (out / "systemd" / "system" / "popboxd.service").read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID",
                 "ExecStart=%s/popboxd -f -c /etc/popbox/popboxd.conf" % build_dir(),
                 "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL CAP_NET_BIND_SERVICE",
                 "SystemCallFilter=@system-service", "NoNewPrivileges=yes"):
        assert line in service.splitlines(), line


# ------------------------------------------------------------------ activation

class NotifySocket:
    """The service manager's end of sd_notify: a datagram socket whose path
    goes into NOTIFY_SOCKET; every datagram is one message of KEY=VALUE
    lines."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o777)
        self.messages = []

    def _drain(self):
        self.sock.settimeout(0.05)
        try:
            while True:
                data = self.sock.recv(65536)
                self.messages.append(dict(l.split("=", 1) for l in data.decode().split("\n") if l))
        except (socket.timeout, BlockingIOError):
            pass

    def wait_for(self, pred, what, start=0):
        """The index of the first message from `start` on for which pred
        holds."""
        def find():
            self._drain()
            for i in range(start, len(self.messages)):
                if pred(self.messages[i]):
                    return i + 1
            return None
        return wait_until(find, what) - 1

    def close(self):
        self.sock.close()


def listen_arg(where):
    """A port on 127.0.0.1, or the path of a unix socket."""
    return where if isinstance(where, str) else "127.0.0.1:%d" % where


def activate(srv, sockets, notify=None):
    """Run popboxd -f under systemd-socket-activate: sockets is a list of
    (port or unix socket path, name). Returns the Popen (popboxd's pid once
    it execs). The server's log gets both programs' output."""
    need("systemd-socket-activate")
    srv.write_config()
    cmd = ["systemd-socket-activate"]
    for where, _ in sockets:
        cmd += ["-l", listen_arg(where)]
    cmd.append("--fdname=" + ":".join(name for _, name in sockets))
    if notify is not None:
        cmd += ["-E", "NOTIFY_SOCKET=" + notify.path]
    cmd += [popboxd_path(), "-f", "-c", srv.conf_path]
    srv.logf = open(srv.log_path, "ab")
    srv.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=srv.logf,
                                stderr=subprocess.STDOUT, cwd=srv.base, preexec_fn=_die_with_parent)
    for where, _ in sockets:
        wait_until(lambda: "Listening on %s as" % listen_arg(where) in srv.log(),
                   "systemd-socket-activate listening on %s" % listen_arg(where))
    return srv.proc


def first_connection(port):
    """Connect (this is what makes systemd-socket-activate exec popboxd)."""
    return socket.create_connection(("127.0.0.1", port), timeout=RUNAWAY_SEC)


def test_socket_activation_sessions_and_notify(server_factory, pki):
    srv = server_factory(start=False)
    install_cert(srv, pki.server[0])
    plain, tls = free_port(), free_port()
    srv.config["listen"] = "127.0.0.1:%d" % plain
    srv.config["listen_tls"] = "127.0.0.1:%d" % tls
    srv.port = plain
    srv.deliver(MSG)
    notify = NotifySocket(os.path.join(srv.base, "notify"))
    try:
        proc = activate(srv, [(plain, "pop3"), (tls, "pop3s")], notify)
        # The connection that starts popboxd waits in the passed socket's
        # backlog and is served once a worker accepts.
        first = first_connection(plain)
        f = first.makefile("rwb")
        assert f.readline().startswith(b"+OK"), srv.log()
        ready = notify.wait_for(lambda m: m.get("READY") == "1", "READY=1")
        assert "connections" in notify.messages[ready]["STATUS"], notify.messages
        assert open("/proc/%d/comm" % proc.pid).read().strip() == "popboxd"
        assert "sockets from systemd" in srv.log(), srv.log()
        # The master bound nothing itself: its listening sockets are fds 3, 4.
        fds = {int(n): os.readlink("/proc/%d/fd/%s" % (proc.pid, n))
               for n in os.listdir("/proc/%d/fd" % proc.pid)}
        assert fds[3].startswith("socket:") and fds[4].startswith("socket:"), fds

        # STATUS= follows the open connections: the first one, and a POP3S
        # session held open next to it.
        notify.wait_for(lambda m: m.get("STATUS", "").startswith("1 connections"),
                        "STATUS with 1 connection")
        ctx = ssl.create_default_context(cafile=pki.ca_cert)
        p3s = poplib.POP3_SSL("localhost", tls, context=ctx, timeout=RUNAWAY_SEC)
        p3s.user("alice")
        p3s.pass_("secret")
        assert p3s.stat() == (1, len(MSG.replace(b"\n", b"\r\n")))
        notify.wait_for(lambda m: m.get("STATUS", "").startswith("2 connections"),
                        "STATUS with 2 connections")
        f.write(b"USER alice\r\n")
        f.flush()
        assert f.readline().startswith(b"+OK")
        f.write(b"PASS secret\r\n")
        f.flush()
        # The TLS session holds alice's maildrop.
        assert f.readline().startswith(b"-ERR [IN-USE]")
        f.close()        # the file object holds the socket open too
        first.close()
        p3s.quit()
        notify.wait_for(lambda m: m.get("STATUS", "").startswith("0 connections"),
                        "STATUS with 0 connections")

        # A plain POP3 session over the passed socket, to the end.
        p3 = poplib.POP3("127.0.0.1", plain, timeout=RUNAWAY_SEC)
        p3.user("alice")
        p3.pass_("secret")
        resp, lines, _ = p3.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == MSG.replace(b"\n", b"\r\n")
        p3.quit()

        # Reload: RELOADING=1, then READY=1 after it.
        mark = len(notify.messages)
        srv.reload()
        reloading = notify.wait_for(lambda m: m.get("RELOADING") == "1", "RELOADING=1", mark)
        assert int(notify.messages[reloading]["MONOTONIC_USEC"]) > 0
        notify.wait_for(lambda m: m.get("READY") == "1", "READY=1 after the reload", reloading + 1)
        wait_until(lambda: "configuration reloaded" in srv.log(), "the reload")
        p3 = poplib.POP3("127.0.0.1", plain, timeout=RUNAWAY_SEC)
        p3.quit()

        mark = len(notify.messages)
        rc = srv.stop()
        notify.wait_for(lambda m: m.get("STOPPING") == "1", "STOPPING=1", mark)
        assert rc == 0, srv.log()
    finally:
        notify.close()


def test_socket_activation_lmtp(server_factory):
    """listen_lmtp entries, a TCP address and a unix socket, come from
    systemd too (named lmtp): a message delivered over each with
    smtplib.LMTP is read back over POP3, and the socket file, systemd's,
    is still there after popboxd stopped."""
    import smtplib
    srv = server_factory(start=False)
    pop3, lmtp = free_port(), free_port()
    path = os.path.join(srv.base, "lmtp.sock")
    srv.config["listen"] = "127.0.0.1:%d" % pop3
    srv.config["listen_lmtp"] = "127.0.0.1:%d, unix:%s" % (lmtp, path)
    srv.port = pop3
    proc = activate(srv, [(pop3, "pop3"), (path, "lmtp"), (lmtp, "lmtp")])
    fds = None
    for n, (kind, addr) in enumerate((("tcp", ("127.0.0.1", lmtp)), ("unix", path))):
        lm = smtplib.LMTP(*addr) if kind == "tcp" else smtplib.LMTP(addr)
        lm.sendmail("s@example.org", ["alice"], b"Subject: %d\r\n\r\nover %s\r\n"
                    % (n, kind.encode()))
        lm.quit()
        if fds is None:
            fds = {int(f): os.readlink("/proc/%d/fd/%s" % (proc.pid, f))
                   for f in os.listdir("/proc/%d/fd" % proc.pid)}
    assert "sockets from systemd" in srv.log(), srv.log()
    # The master bound nothing itself: its listening sockets are fds 3-5.
    assert all(fds[fd].startswith("socket:") for fd in (3, 4, 5)), fds
    p3 = poplib.POP3("127.0.0.1", pop3, timeout=RUNAWAY_SEC)
    p3.user("alice")
    p3.pass_("secret")
    bodies = sorted(b"\r\n".join(p3.retr(i)[1]) for i in (1, 2))
    p3.quit()
    assert [b.endswith(b"over tcp") or b.endswith(b"over unix") for b in bodies] == [True, True]
    assert bodies[0].endswith(b"over tcp") and bodies[1].endswith(b"over unix"), bodies
    assert srv.stop() == 0, srv.log()
    assert os.path.exists(path), "popboxd removed systemd's socket file"


@pytest.mark.parametrize("case", ["config-more", "socket-more", "wrong-kind", "unnamed",
                                  "lmtp-missing", "lmtp-other-path"])
def test_socket_activation_mismatch(server_factory, case):
    """Any difference between the passed sockets and the config's listeners
    stops popboxd at start-up (exit 1) with a message naming it; the
    connection that triggered the start is closed unanswered."""
    srv = server_factory(start=False)
    a, b = free_port(), free_port()
    srv.config["listen"] = "127.0.0.1:%d, 127.0.0.1:%d" % (a, b)
    lmtp_path = os.path.join(srv.base, "lmtp.sock")
    if case.startswith("lmtp"):
        srv.config["listen_lmtp"] = "unix:" + lmtp_path
    sockets, expect = {
        "config-more": ([(a, "pop3")],
                        "lists listen 127.0.0.1:%d, which the socket unit does not pass" % b),
        "socket-more": ([(a, "pop3"), (b, "pop3"), (free_port(), "pop3")],
                        "passes pop3 socket 127.0.0.1:"),
        "wrong-kind": ([(a, "pop3"), (b, "pop3s")],
                       "passes pop3s socket 127.0.0.1:%d, which %s does not list in listen_tls"
                       % (b, srv.conf_path)),
        "unnamed": ([(a, "pop3"), (b, "popboxd.socket")],
                    "is named 'popboxd.socket'; name it pop3"),
        "lmtp-missing": ([(a, "pop3"), (b, "pop3")],
                         "lists listen_lmtp unix:%s, which the socket unit does not pass"
                         % lmtp_path),
        "lmtp-other-path": ([(a, "pop3"), (b, "pop3"), (lmtp_path + "2", "lmtp")],
                            "passes lmtp socket unix:%s2, which %s does not list in listen_lmtp"
                            % (lmtp_path, srv.conf_path)),
    }[case]
    proc = activate(srv, sockets)
    with first_connection(a) as s:
        rc = proc.wait(RUNAWAY_SEC)
        try:
            got = s.recv(100)
        except ConnectionResetError:
            got = b""
        assert got == b"", got
    log = srv.log()
    assert rc == 1, log
    assert expect in log, log
    assert "started" not in log, log
