"""A process per user session (docs/DESIGN.md "A process per user session";
popboxd.conf(5) session_process).

With users = pam a logged-in session leaves its worker for a process of its
own that runs as the user's uid. Root only (CI runs as root): the tests make
real accounts with useradd (prefix "pbt", a random part), real PAM (the
service contrib/pam.d/popbox under a name of this run's own), Maildirs
owned by each user, and remove all of it at the end, even on failure.
"""

import os
import pwd
import re
import signal
import subprocess

import pytest

from popbox_server import ConnectionClosed, fresh_source, wire_form
from runaway import wait_until
from test_server_pam import own_maildir
from test_server_pam import pam_service  # noqa: F401 (fixture)
from unix_accounts import PASSWORD, Accounts
from test_server_tls_lib import PKI, install_cert, starttls, tls_connect
from ports import free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates Unix accounts: root only (CI)")

FAIL = b"-ERR [AUTH] Authentication failed"
# A message whose wire form tests the byte path through the relay: a lone
# dot, a line starting with a dot, 8-bit octets, no final newline.
MSG = (b"Subject: per-user\n\nfirst\n.\n..dots\n\xe4\xf6\xfc 8-bit\n" + b"x" * 70000 + b"\nlast")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def accounts():
    acc = Accounts()
    try:
        yield acc
    finally:
        acc.remove_all()


@pytest.fixture(scope="module")
def users(accounts):
    u = {"a": accounts.add("a"), "b": accounts.add("b"), "sys": accounts.add("s", system=True)}
    assert pwd.getpwnam(u["sys"]).pw_uid < 1000
    return u


def peruser_server(server_factory, pki, service, users, deliver, config=None):
    """users = pam with TLS on a plain (STLS) and an implicit-TLS listener;
    deliver: {user: [messages]} put into Maildirs owned by each user."""
    cfg = {"users": "pam", "pam_service": service}
    cfg.update(config or {})
    srv = server_factory(users={}, config=cfg, start=False)
    install_cert(srv, pki.server[0])
    srv.tls_port = free_port()
    srv.config["listen_tls"] = "127.0.0.1:%d" % srv.tls_port
    for user, msgs in deliver.items():
        for m in msgs:
            srv.deliver(m, user=user)
        own_maildir(srv, user, mode=0o700)
    srv.start()
    return srv


def proc_status(pid):
    """{field: value} of /proc/PID/status."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def session_procs(srv):
    return srv.children_by_comm("popboxd-session")


def wait_session_procs(srv, n):
    wait_until(lambda: len(session_procs(srv)) == n, "%d session processes" % n)
    return session_procs(srv)


def connect(srv, pki, how):
    if how == "plain":
        return srv.connect(source=fresh_source())
    if how == "stls":
        return starttls(srv.connect(source=fresh_source()), pki)
    return tls_connect(srv, pki)


@pytest.mark.parametrize("how", ["plain", "stls", "tls"])
def test_session_runs_as_the_user(server_factory, pki, pam_service, users, how):  # noqa: F811
    """Over plain, STLS and implicit TLS: the login (pipelined with the
    commands after it, all in one write) is served by a popboxd-session
    process whose uids and gids are the user's and nothing else; RETR is
    byte-exact, DELE + QUIT remove the message from the user's Maildir; the
    process waits for the user's next login (session_process_linger) and
    serves it, over another kind of connection too."""
    a = users["a"]
    pw = pwd.getpwnam(a)
    srv = peruser_server(server_factory, pki, pam_service, users, {a: [MSG, b"Subject: two\n\n2\n"]})
    # (a worker is named popboxd-worker only once it runs its own code)
    ch = srv.wait_children(lambda ch: list(ch.values()).count("popboxd-worker") == 2)
    workers = {p for p, comm in ch.items() if comm == "popboxd-worker"}
    assert len(workers) == 2, ch
    c = connect(srv, pki, how)
    # Everything up to STAT in one write: the worker reads it all before the
    # login ends, and must hand the unread part over with the connection.
    c.send(("USER %s\r\nPASS %s\r\nSTAT\r\nNOOP\r\n" % (a, PASSWORD)).encode())
    assert c.readline().startswith(b"+OK")
    assert c.readline().startswith(b"+OK Logged in, 2 messages")
    assert c.readline().startswith(b"+OK 2 ")
    assert c.readline().startswith(b"+OK")
    (pid,) = wait_session_procs(srv, 1)
    st = proc_status(pid)
    assert st["Uid"].split() == [str(pw.pw_uid)] * 4, st["Uid"]
    assert st["Gid"].split() == [str(pw.pw_gid)] * 4, st["Gid"]
    assert st["Groups"].split() == [str(pw.pw_gid)], st["Groups"]
    assert c.retr(1) == wire_form(MSG)
    assert c.cmd("DELE 1").startswith(b"+OK")
    assert c.quit().startswith(b"+OK")
    assert len(os.listdir(os.path.join(srv.mail_root, a, "cur")) +
               os.listdir(os.path.join(srv.mail_root, a, "new"))) == 1
    # The user's next login, over another kind of connection: same process.
    c = connect(srv, pki, {"plain": "tls", "stls": "plain", "tls": "stls"}[how])
    c.login(a, PASSWORD)
    assert c.stat()[0] == 1
    assert session_procs(srv) == [pid]
    assert c.quit().startswith(b"+OK")
    # The workers served the login and were not replaced.
    assert set(srv.children_by_comm("popboxd-worker")) == workers
    log = srv.log()
    assert "login user=%s" % a in log and "to its session process" in log
    assert PASSWORD not in log


def test_users_stay_apart(server_factory, pki, pam_service, users):  # noqa: F811
    """Two users logged in at once get one process each, each with its own
    uid; a's process holds no descriptor in b's Maildir and a's uid cannot
    read b's messages (b's Maildir is 0700) nor its own process's memory; killing a's session process
    ends a's connection without UPDATE (its DELE is not done) and b's
    session goes on to RETR and QUIT."""
    a, b = users["a"], users["b"]
    srv = peruser_server(server_factory, pki, pam_service, users,
                         {a: [b"Subject: for a\n\na\n"], b: [b"Subject: for b\n\nb\n", MSG]})
    ca = connect(srv, pki, "plain")
    ca.login(a, PASSWORD)
    cb = connect(srv, pki, "tls")
    cb.login(b, PASSWORD)
    pids = wait_session_procs(srv, 2)
    by_uid = {int(proc_status(p)["Uid"].split()[0]): p for p in pids}
    ua, ub = pwd.getpwnam(a).pw_uid, pwd.getpwnam(b).pw_uid
    assert set(by_uid) == {ua, ub}
    b_dir = os.path.realpath(os.path.join(srv.mail_root, b))
    fd_dir = "/proc/%d/fd" % by_uid[ua]
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except FileNotFoundError:
            continue
        assert not target.startswith(b_dir), target
    b_msg = next(iter(srv.message_files(b).values()))
    r = subprocess.run(["setpriv", "--reuid=%d" % ua, "--regid=%d" % pwd.getpwnam(a).pw_gid,
                        "--clear-groups", "cat", b_msg], capture_output=True, timeout=30)
    assert r.returncode != 0 and b"Permission denied" in r.stderr, r
    # The user cannot read the memory of their own session process either
    # (it was forked from root's master): /proc/PID/environ needs ptrace access.
    r = subprocess.run(["setpriv", "--reuid=%d" % ua, "--regid=%d" % pwd.getpwnam(a).pw_gid,
                        "--clear-groups", "cat", "/proc/%d/environ" % by_uid[ua]],
                       capture_output=True, timeout=30)
    assert r.returncode != 0 and b"Permission denied" in r.stderr, r
    assert ca.cmd("DELE 1").startswith(b"+OK")
    os.kill(by_uid[ua], signal.SIGKILL)
    # The connection ends (a reset, or a close and then a broken pipe).
    with pytest.raises((ConnectionClosed, OSError)):
        ca.wait_closed()
        ca.cmd("NOOP")
    wait_session_procs(srv, 1)
    assert len(srv.message_files(a)) == 1, "DELE without QUIT was carried out"
    assert cb.retr(2) == wire_form(MSG)
    assert cb.quit().startswith(b"+OK")
    wait_until(lambda: "killed by signal 9" in srv.log(), "the kill logged")
    ca.close()
    cb.close()


def test_refused_accounts_and_virtual_users(server_factory, pki, pam_service, users):  # noqa: F811
    """root and an account below first_valid_uid get the answer of a wrong
    password and no process. session_process = per-user with a users file:
    an entry with uid 0 or without uid gets [SYS/TEMP] and no process; an
    entry with an ordinary uid gets one, which ends with its session
    (session_process_linger = 0). The default with a users file
    (auto = worker) starts none."""
    srv = peruser_server(server_factory, pki, pam_service, users, {})
    for user in ("root", users["sys"]):
        with srv.connect(source=fresh_source()) as c:
            assert c.cmd("USER " + user).startswith(b"+OK")
            assert c.cmd("PASS " + PASSWORD) == FAIL
    assert session_procs(srv) == []

    a = users["a"]
    pw = pwd.getpwnam(a)
    v = server_factory(users={}, config={"session_process": "per-user",
                                         "session_process_linger": "0"}, start=False)
    v.add_user("rooty", "pw", extra=":0:0::/nonexistent", write=False)
    v.add_user("nouid", "pw", write=False)
    v.add_user(a, "pw", extra=":%d:%d::/nonexistent" % (pw.pw_uid, pw.pw_gid), write=False)
    v.write_users()
    v.deliver(b"Subject: v\n\nv\n", user=a)
    own_maildir(v, a, mode=0o700)
    v.start()
    for user in ("rooty", "nouid"):
        with v.connect(source=fresh_source()) as c:
            assert c.cmd("USER " + user).startswith(b"+OK")
            assert c.cmd("PASS pw").startswith(b"-ERR [SYS/TEMP]")
    assert session_procs(v) == []
    with v.connect(source=fresh_source()) as c:
        c.login(a, "pw")
        (pid,) = wait_session_procs(v, 1)
        assert int(proc_status(pid)["Uid"].split()[0]) == pw.pw_uid
        assert c.quit().startswith(b"+OK")
    wait_session_procs(v, 0)   # session_process_linger = 0: it ends with its session
    log = v.log()
    assert "uid below first_valid_uid (or root)" in log and "no numeric uid and gid" in log

    plain = server_factory()
    plain.deliver(b"Subject: w\n\nw\n")
    with plain.connect(source=fresh_source()) as c:
        c.login()
        assert c.stat()[0] == 1
        assert session_procs(plain) == []
        assert c.quit().startswith(b"+OK")


def test_mbox_spool_with_the_mail_group(server_factory, pam_service, users):  # noqa: F811
    """A Debian-style spool (directory root:mail 2775, the user's mbox
    user:mail 0660): the user's session process has the user's gid and
    group mail and nothing else, serves the spool (RETR, DELE, QUIT) and
    leaves a valid mbox with one message, owner, group and mode kept.
    Without mail_privileged_group the process cannot create its lock files
    in the spool directory: the login is refused with a reason in the log,
    and the spool is untouched."""
    import grp
    import mailbox
    from test_server_mbox import mbox_bytes, served
    a = users["a"]
    pw = pwd.getpwnam(a)
    mail_gid = grp.getgrnam("mail").gr_gid
    msgs = [(b"Thu Jan  1 00:00:00 2026", b"Subject: one\n\nFrom here\nbody\n"),
            (b"Thu Jan  1 00:00:01 2026", b"Subject: two\n\nsecond\n")]
    for group in ("mail", "none"):
        srv = server_factory(users={}, start=False, config={
            "users": "pam", "pam_service": pam_service, "mail_privileged_group": group,
            "lock_wait": "1"})
        spool = os.path.join(srv.base, "spool")
        os.mkdir(spool)
        os.chown(spool, 0, mail_gid)
        os.chmod(spool, 0o2775)
        path = os.path.join(spool, a)
        with open(path, "wb") as f:
            f.write(mbox_bytes(msgs))
        os.chown(path, pw.pw_uid, mail_gid)
        os.chmod(path, 0o660)
        srv.config["mail"] = "mbox:%s/%%u" % spool
        srv.start()
        c = srv.connect(source=fresh_source())
        assert c.cmd("USER " + a).startswith(b"+OK")
        st = c.cmd("PASS " + PASSWORD)
        if group == "none":
            assert st.startswith(b"-ERR"), st
            c.close()
            wait_until(lambda: "popboxd needs to write in the mbox's directory" in srv.log(),
                       "the reason logged")
            assert os.listdir(spool) == [a]
            with open(path, "rb") as f:
                assert f.read() == mbox_bytes(msgs)
            continue
        assert st.startswith(b"+OK Logged in, 2 messages"), st
        (pid,) = wait_session_procs(srv, 1)
        status = proc_status(pid)
        assert status["Uid"].split() == [str(pw.pw_uid)] * 4
        assert sorted(status["Groups"].split()) == sorted([str(pw.pw_gid), str(mail_gid)])
        assert c.retr(1) == served(msgs[0][1])
        assert c.cmd("DELE 1").startswith(b"+OK")
        assert c.quit().startswith(b"+OK")
        st_after = os.stat(path)
        assert (st_after.st_uid, st_after.st_gid, st_after.st_mode & 0o7777) == \
            (pw.pw_uid, mail_gid, 0o660)
        mb = mailbox.mbox(path, create=False)
        try:
            assert [mb.get_bytes(k) for k in mb.keys()] == [msgs[1][1]]
        finally:
            mb.close()


def capa_expire(c):
    """The EXPIRE line of CAPA."""
    st, body = c.multi("CAPA")
    assert st.startswith(b"+OK"), st
    (line,) = [l for l in body.split(b"\r\n") if l.startswith(b"EXPIRE")]
    return line.decode()


def test_metrics_count_session_processes(server_factory, pki, pam_service, users):  # noqa: F811
    """Sessions served by users' session processes are in the metrics like
    a worker's (issue 13): commands, logins by mechanism and result
    (USER ok and [IN-USE], AUTH PLAIN ok over TLS), messages retrieved and
    deleted, octets sent (what the clients received, plain and relayed),
    the session gauge while a session is open (folded from the process's
    own counter row by the master while it runs) and back to 0. promtool
    accepts the text."""
    import base64
    import shutil
    import ssl
    from test_server_metrics import Tally, parse, scrape
    from test_server_tls_lib import client_context
    if shutil.which("promtool") is None:
        pytest.fail("promtool is needed (tools/debian-packages.txt: prometheus)")
    a, b = users["a"], users["b"]
    mport = free_port()
    srv = peruser_server(server_factory, pki, pam_service, users,
                         {a: [MSG, b"Subject: two\n\n2\n"], b: [b"Subject: for b\n\nb\n"]},
                         config={"metrics_listen": "127.0.0.1:%d" % mport})
    wait_until(lambda: " end=" in srv.log(), "the start-up probe's session line")
    log_mark = len(srv.log())
    before = parse(scrape(mport)[1])

    def d(now, key):
        return now[key] - before.get(key, 0)

    # a, plain: a whole transaction, every octet counted by the client.
    ca = Tally(srv.port, source=fresh_source())
    ca.received = len(ca.greeting) + 2
    assert ca.multi("CAPA")[0].startswith(b"+OK")
    ca.login(a, PASSWORD)
    ca.stat()
    ca.list()
    ca.uidl()
    assert ca.retr(1) == wire_form(MSG)
    ca.retr(2)
    assert ca.multi("TOP 1 0")[0].startswith(b"+OK")
    assert ca.cmd("XYZZY").startswith(b"-ERR")
    assert ca.cmd("NOOP").startswith(b"+OK")
    assert ca.cmd("DELE 1").startswith(b"+OK")
    (pid,) = wait_session_procs(srv, 1)

    # While the session is open: the master folds what the process
    # counted so far (every second), the gauge shows the session.
    def open_session():
        now = parse(scrape(mport)[1])
        return now if (now['popbox_sessions{state="transaction"}'] == 1 and
                       d(now, 'popbox_commands_total{command="RETR"}') == 2) else None
    mid = wait_until(open_session, "a's open session in the metrics")
    assert mid['popbox_sessions{state="authorization"}'] == 0, mid
    assert d(mid, 'popbox_logins_total{mechanism="USER",result="ok"}') == 1

    # a again while the maildrop is held: [IN-USE], counted by the process.
    a2 = Tally(srv.port, source=fresh_source())
    a2.received = len(a2.greeting) + 2
    assert a2.cmd("USER " + a).startswith(b"+OK")
    assert a2.cmd("PASS " + PASSWORD).startswith(b"-ERR [IN-USE]")
    a2.wait_closed()
    a2.close()
    assert ca.quit().startswith(b"+OK")
    ca.close()

    # b over TLS, AUTH PLAIN: the worker relays (and counts the octets).
    cb = Tally(srv.tls_port, read_greeting=False, source=fresh_source())
    cb.sock = client_context(pki).wrap_socket(cb.sock, server_hostname="localhost")
    assert cb.readline().startswith(b"+OK")
    ir = base64.b64encode(("\0%s\0%s" % (b, PASSWORD)).encode()).decode()
    assert cb.cmd("AUTH PLAIN " + ir).startswith(b"+OK Logged in, 1 messages")
    assert cb.retr(1) == wire_form(b"Subject: for b\n\nb\n")
    assert cb.quit().startswith(b"+OK")
    cb.close()
    assert isinstance(cb.sock, ssl.SSLSocket)

    # Six end lines: the worker's and the process's of each session (the
    # worker counts a relayed session's octets when it ends).
    wait_until(lambda: srv.log().count(" end=", log_mark) == 6, "six session end lines")
    want_bytes = ca.received + a2.received + cb.received

    def settled():
        now = parse(scrape(mport)[1])
        return now if (all(now['popbox_sessions{state="%s"}' % s] == 0
                           for s in ("authorization", "transaction", "update")) and
                       d(now, 'popbox_commands_total{command="QUIT"}') == 2 and
                       d(now, "popbox_sent_bytes_total") >= want_bytes) else None
    after = wait_until(settled, "every session ended and folded")
    # Octets: what the three clients received, counted once each (a plain
    # session's by its worker until the handover and by the process after;
    # a relayed one's by the worker alone).
    assert d(after, "popbox_sent_bytes_total") == want_bytes, \
        (d(after, "popbox_sent_bytes_total"), ca.received, a2.received, cb.received)
    logins = {k: d(after, k) for k in after if k.startswith("popbox_logins_total")}
    assert {k: v for k, v in logins.items() if v} == {
        'popbox_logins_total{mechanism="USER",result="ok"}': 1,
        'popbox_logins_total{mechanism="USER",result="in_use"}': 1,
        'popbox_logins_total{mechanism="PLAIN",result="ok"}': 1}, logins
    commands = {re.search(r'command="(\w+)"', k).group(1): d(after, k)
                for k in after if k.startswith("popbox_commands_total")}
    assert commands == {"CAPA": 1, "USER": 2, "PASS": 2, "APOP": 0, "STLS": 0, "AUTH": 1,
                        "QUIT": 2, "STAT": 1, "LIST": 1, "UIDL": 1, "RETR": 3, "TOP": 1,
                        "DELE": 1, "NOOP": 1, "RSET": 0, "unknown": 1}, commands
    assert d(after, "popbox_messages_retrieved_total") == 3
    assert d(after, "popbox_messages_deleted_total") == 1
    assert d(after, "popbox_connections_accepted_total") == 3
    assert len(srv.message_files(a)) == 1
    r = subprocess.run(["promtool", "check", "metrics"], input=scrape(mport)[1],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", \
        (r.stdout, r.stderr)
    # A session process killed with a session open: its session leaves the
    # gauge, what it counted stays.
    c = connect(srv, pki, "plain")
    c.login(b, PASSWORD)
    assert c.cmd("NOOP").startswith(b"+OK")
    victim = [p for p in wait_session_procs(srv, 2) if p != pid]
    wait_until(lambda: parse(scrape(mport)[1])['popbox_sessions{state="transaction"}'] == 1,
               "b's session in the gauge")
    os.kill(victim[0], signal.SIGKILL)
    wait_until(lambda: parse(scrape(mport)[1])['popbox_sessions{state="transaction"}'] == 0,
               "the killed process's session out of the gauge")
    last = parse(scrape(mport)[1])
    assert d(last, 'popbox_commands_total{command="NOOP"}') == 2
    c.close()


def test_reload_reaches_session_processes(server_factory, pki, pam_service, users):  # noqa: F811
    """A reload reaches the users' session processes: each takes no new
    login and ends with its open sessions, so the next login gets a process
    with the new settings (here expire_days, in CAPA after login). An open
    session (relayed over TLS) goes on undisturbed with the settings it
    had, to its QUIT and UPDATE; an idle process ends at once."""
    a, b = users["a"], users["b"]
    srv = peruser_server(server_factory, pki, pam_service, users,
                         {a: [b"Subject: one\n\n1\n", b"Subject: two\n\n2\n"],
                          b: [b"Subject: for b\n\nb\n"]})
    ca = connect(srv, pki, "tls")
    ca.login(a, PASSWORD)
    assert capa_expire(ca) == "EXPIRE NEVER"
    (pa,) = wait_session_procs(srv, 1)
    cb = connect(srv, pki, "plain")
    cb.login(b, PASSWORD)
    assert capa_expire(cb) == "EXPIRE NEVER"
    assert cb.quit().startswith(b"+OK")
    (pb,) = [p for p in wait_session_procs(srv, 2) if p != pa]   # lingers (60 s)

    reloads = srv.log().count("configuration reloaded")
    srv.config["expire_days"] = "30"
    srv.write_config()
    srv.reload()
    wait_until(lambda: srv.log().count("configuration reloaded") > reloads, "the reload")
    assert "reload: 2 session process(es) take no new logins and end with their 1 open" \
        in srv.log()
    wait_until(lambda: pb not in session_procs(srv), "b's idle process gone")
    # b's next login: a new process, the new setting.
    cb = connect(srv, pki, "plain")
    cb.login(b, PASSWORD)
    assert capa_expire(cb) == "EXPIRE 30"
    assert cb.quit().startswith(b"+OK")
    procs = session_procs(srv)
    assert pa in procs and pb not in procs and len(procs) == 2, procs
    # a's session was not cut and keeps its settings; QUIT does UPDATE.
    assert ca.cmd("NOOP").startswith(b"+OK")
    assert capa_expire(ca) == "EXPIRE NEVER"
    assert ca.retr(1) == wire_form(b"Subject: one\n\n1\n")
    assert ca.cmd("DELE 1").startswith(b"+OK")
    assert ca.quit().startswith(b"+OK")
    ca.close()
    assert len(srv.message_files(a)) == 1
    wait_until(lambda: pa not in session_procs(srv), "a's old process gone after its session")
    ca = connect(srv, pki, "stls")
    ca.login(a, PASSWORD)
    assert capa_expire(ca) == "EXPIRE 30"
    assert ca.stat()[0] == 1
    assert pa not in session_procs(srv)
    assert ca.quit().startswith(b"+OK")
    assert "killed by signal" not in srv.log()


def test_per_ip_limit_counts_session_processes(server_factory, pki, pam_service, users):  # noqa: F811
    """max_connections_per_ip holds for sessions that left their worker for
    a session process (plain: the connection itself moved): the master
    counts them for their address until they end, or until their process
    is gone."""
    from popbox_server import POP3Raw
    a, b = users["a"], users["b"]
    srv = peruser_server(server_factory, pki, pam_service, users,
                         {a: [b"Subject: a\n\na\n"], b: [b"Subject: b\n\nb\n"]},
                         config={"max_connections_per_ip": "2"})
    src = fresh_source()
    c1 = srv.connect(source=src)
    c1.login(a, PASSWORD)
    c2 = srv.connect(source=src)
    c2.login(b, PASSWORD)
    wait_session_procs(srv, 2)
    # Both sessions are in session processes now, none in a worker.
    c3 = POP3Raw(srv.port, source=src)
    assert c3.greeting.startswith(b"-ERR [SYS/TEMP] Too many connections from your address"), \
        c3.greeting
    c3.wait_closed()
    c3.close()
    assert c1.stat()[0] == 1 and c2.stat()[0] == 1   # not disturbed

    def admitted():
        c = POP3Raw(srv.port, source=src)
        if c.greeting.startswith(b"+OK"):
            return c
        c.close()
        return None
    # One ends: its address has room again.
    assert c1.quit().startswith(b"+OK")
    c1.close()
    c4 = wait_until(admitted, "a connection admitted after a's session ended")
    c5 = POP3Raw(srv.port, source=src)   # c2 (process) + c4 (worker)
    assert c5.greeting.startswith(b"-ERR [SYS/TEMP]"), c5.greeting
    c5.close()
    # b's process is killed: its session no longer counts either.
    (pb,) = [p for p in session_procs(srv)
             if int(proc_status(p)["Uid"].split()[0]) == pwd.getpwnam(b).pw_uid]
    os.kill(pb, signal.SIGKILL)
    with pytest.raises((ConnectionClosed, OSError)):
        c2.wait_closed()
        c2.cmd("NOOP")
    c2.close()
    c6 = wait_until(admitted, "a connection admitted after b's process died")
    for c in (c4, c6):
        assert c.quit().startswith(b"+OK")
        c.close()
    # Other addresses were never limited.
    with connect(srv, pki, "plain") as c:
        c.login(a, PASSWORD)
        assert c.quit().startswith(b"+OK")
