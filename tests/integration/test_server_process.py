"""popboxd as a program: command line, config errors, process layout,
supervision, signals, privileges and logging."""

import os
import pwd
import random
import signal
import socket
import subprocess
import time

import pytest

from popbox_server import (RUNAWAY_SEC, ConnectionClosed, children_of, comm_of, free_port,
                           peer_name, popboxd_path, session_end, socket_owner, wait_until)

AUTH = "popboxd-auth"
WORKER = "popboxd-worker"


def run_check(srv, *args, timeout=RUNAWAY_SEC):
    return subprocess.run([popboxd_path(), "-c", srv.conf_path] + list(args),
                          capture_output=True, timeout=timeout, cwd=srv.base)


def write_raw_config(srv, text):
    srv.write_file(srv.conf_path, text, own=False)


def base_config(srv):
    return ("listen = 127.0.0.1:%d\nusers = %s\nmail = maildir:%s/%%u\nstate_dir = %s\nrun_as = %s\n"
            "auth_user = %s\n"
            % (srv.port or 1, srv.users_path, srv.mail_root, srv.state_dir, srv.run_as,
               srv.auth_user))


@pytest.fixture
def unstarted(server_factory):
    srv = server_factory(start=False)
    srv.port = 1
    return srv


# ------------------------------------------------------------------ -t and config errors

def test_check_mode_valid_config(unstarted):
    unstarted.write_config()
    r = run_check(unstarted, "-t")
    assert r.returncode == 0, r.stderr


def test_check_mode_accepts_every_key(unstarted):
    text = base_config(unstarted) + """
# a comment line
listen = 127.0.0.1:2, [::1]:3
plaintext_auth = tls-or-loopback
workers = auto
apop = no
idle_timeout = 10m
login_timeout = 180s
max_connections = 100
max_connections_per_ip = 10
max_bad_commands = 20
log_debug = yes
"""
    write_raw_config(unstarted, text)
    r = run_check(unstarted, "-t")
    assert r.returncode == 0, r.stderr


BAD = [
    ("no_such_key = 1", "unknown key"),
    ("workers = many", "bad number"),
    ("workers = -1", "negative"),
    ("plaintext_auth = sometimes", "bad enum"),
    ("apop = maybe", "bad boolean"),
    ("listen = 127.0.0.1:99999", "port out of range"),
    ("listen = 127.0.0.1", "no port"),
    ("idle_timeout = 10x", "bad duration"),
    ("max_connections = 1e9", "bad number"),
    ("this line has no equals sign", "syntax"),
    ("mail = nosuchscheme:/tmp/x", "unknown mail scheme"),
    ("run_as = no-such-user-popbox-test", "unknown user"),
]


@pytest.mark.parametrize("line,why", BAD, ids=[b[1] + ":" + b[0][:20] for b in BAD])
def test_bad_config_line_reported_with_file_and_line(unstarted, line, why):
    text = base_config(unstarted)
    lineno = text.count("\n") + 2
    write_raw_config(unstarted, text + "# next line is bad\n" + line + "\n")
    r = run_check(unstarted, "-t")
    assert r.returncode == 1, (r.returncode, r.stderr)
    err = r.stderr.decode(errors="replace")
    if why in ("unknown user",):
        # may be detected when resolved rather than when parsed
        assert "no-such-user-popbox-test" in err, err
        return
    assert "%s:%d:" % (unstarted.conf_path, lineno) in err, err


def test_duplicate_single_key_is_error(unstarted):
    text = base_config(unstarted) + "apop = yes\napop = no\n"
    write_raw_config(unstarted, text)
    r = run_check(unstarted, "-t")
    assert r.returncode == 1
    assert "%s:%d:" % (unstarted.conf_path, text.count("\n")) in r.stderr.decode(), r.stderr


@pytest.mark.parametrize("missing", ["users", "mail"])
def test_required_keys(unstarted, missing):
    lines = [l for l in base_config(unstarted).splitlines() if not l.startswith(missing + " ")]
    write_raw_config(unstarted, "\n".join(lines) + "\n")
    r = run_check(unstarted, "-t")
    assert r.returncode == 1
    assert missing in r.stderr.decode(), r.stderr


def test_missing_config_file(unstarted):
    r = subprocess.run([popboxd_path(), "-t", "-c", os.path.join(unstarted.base, "nope.conf")],
                       capture_output=True, timeout=RUNAWAY_SEC)
    assert r.returncode == 1
    assert b"nope.conf" in r.stderr


def test_bad_config_on_normal_start_exits_1(unstarted):
    text = base_config(unstarted) + "bogus_key = 1\n"
    write_raw_config(unstarted, text)
    r = run_check(unstarted, "-f")
    assert r.returncode == 1, r
    assert "%s:%d:" % (unstarted.conf_path, text.count("\n")) in r.stderr.decode(), r.stderr


def test_bad_usage_exits_nonzero():
    r = subprocess.run([popboxd_path(), "--no-such-option"], capture_output=True,
                       timeout=RUNAWAY_SEC)
    assert r.returncode != 0
    r = subprocess.run([popboxd_path()], capture_output=True, timeout=RUNAWAY_SEC)
    assert r.returncode != 0


def test_listen_port_in_use_fails_cleanly(server_factory):
    first = server_factory()
    second = server_factory(start=False)
    second.config["listen"] = "127.0.0.1:%d" % first.port
    second.write_config()
    r = run_check(second, "-f")
    assert r.returncode != 0
    assert r.stderr, "a bind failure must be reported"


# ------------------------------------------------------------------ process layout

def test_process_layout(server_factory):
    srv = server_factory(workers=3)
    ch = srv.wait_children(lambda c: sorted(c.values()) == [AUTH] + [WORKER] * 3)
    assert sorted(ch.values()) == [AUTH] + [WORKER] * 3, ch


def test_privileges_dropped(server):
    ch = server.wait_children(lambda c: len(c) >= 3)
    for pid in ch:
        # the auth process has a user of its own (test_server_auth_security.py)
        user = server.auth_user if comm_of(pid) == AUTH else server.run_as
        expect_uid = pwd.getpwnam(user).pw_uid
        with open("/proc/%d/status" % pid) as f:
            status = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
        uids = status["Uid"].split()
        assert all(int(u) == expect_uid for u in uids), (comm_of(pid), uids)
        gids = status["Gid"].split()
        if os.geteuid() == 0:
            assert all(int(g) != 0 for g in gids), (comm_of(pid), gids)
            groups = status.get("Groups", "").split()
            assert "0" not in groups, (comm_of(pid), groups)
            assert int(status["CapEff"].strip(), 16) == 0, (comm_of(pid), status["CapEff"])
            assert int(status["CapPrm"].strip(), 16) == 0, (comm_of(pid), status["CapPrm"])


def _nofile_soft(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return line.split()[3]
    raise AssertionError("no open files limit for %d" % pid)


@pytest.mark.parametrize("huge", [False, True])
def test_open_file_limit_raised(server_factory, huge):
    """A low soft limit (ulimit -n 256) is raised in every process: to the
    hard limit, or, for a max_connections beyond it, to 5 descriptors per
    session per worker where the master may raise the hard limit
    (CAP_SYS_RESOURCE); where it may not, that is logged."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("needs a finite hard limit above 256")
    srv = server_factory(start=False, workers=2)
    conns = hard if huge else 100
    srv.config["max_connections"] = str(conns)
    want = 5 * conns // 2 + 64
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        srv.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    ch = srv.wait_children(lambda c: len(c) >= 3)
    got = {pid: int(_nofile_soft(pid)) for pid in [srv.pid] + list(ch)}
    warned = ("open file limit %d holds about" % hard in srv.log()
              and "fewer than max_connections = %d" % conns in srv.log())
    if not huge:
        assert set(got.values()) == {hard}, got
        assert not warned
    elif min(got.values()) >= want:
        assert not warned          # the master could raise the hard limit
    else:
        assert set(got.values()) == {hard}, got
        assert warned
    with srv.session() as c:
        assert c.stat()[0] == 0


def test_workers_auto(server_factory):
    srv = server_factory(workers="auto")
    n = os.cpu_count() or 1
    ch = srv.wait_children(lambda c: list(c.values()).count(WORKER) == n)
    assert list(ch.values()).count(WORKER) == n


def test_killed_worker_is_restarted_and_new_session_works(server_factory):
    srv = server_factory(workers=2)
    srv.deliver(b"Subject: x\n\ny\n")
    ch = srv.wait_children(lambda c: list(c.values()).count(WORKER) == 2)
    workers = srv.children_by_comm(WORKER)
    # a session on one worker; kill the other one
    a = srv.session()
    owner = socket_owner(srv.port, a.sock, workers)
    assert owner in workers, "cannot find the worker of the session"
    victim = [w for w in workers if w != owner][0]
    os.kill(victim, signal.SIGKILL)
    ch = srv.wait_children(lambda c: list(c.values()).count(WORKER) == 2 and victim not in c)
    new_workers = srv.children_by_comm(WORKER)
    assert len(new_workers) == 2 and victim not in new_workers, ch
    # the session on the other worker carries on
    assert a.stat()[0] == 1
    assert a.retr(1) == b"Subject: x\r\n\r\ny\r\n"
    a.quit()
    # new sessions work, several times (whichever worker accepts)
    for _ in range(6):
        with srv.session() as c:
            assert c.stat()[0] == 1
            c.quit()
    assert srv.alive()


def test_killing_the_sessions_worker_deletes_nothing(server_factory):
    srv = server_factory(workers=1)
    srv.deliver(b"Subject: x\n\ny\n")
    srv.wait_children(lambda c: list(c.values()).count(WORKER) == 1)
    a = srv.session()
    assert a.cmd("DELE 1").startswith(b"+OK")
    owner = socket_owner(srv.port, a.sock, srv.children_by_comm(WORKER))
    assert owner
    os.kill(owner, signal.SIGKILL)
    try:
        a.wait_closed()
    except OSError:
        pass
    a.close()
    assert len(srv.message_files()) == 1
    srv.wait_children(lambda c: list(c.values()).count(WORKER) == 1 and owner not in c)
    # the lock of the dead session must not be held forever (polled while
    # the master restarts the worker; the limit is the runaway guard)
    stat = wait_until(lambda: login_stat(srv), "a login after the worker was killed", step=0.2)
    assert stat[0] == 1, stat


def login_stat(srv, user="alice", password="secret"):
    """STAT (count, size) after a login, or None when the login fails."""
    with srv.connect() as c:
        c.cmd("USER " + user)
        if not c.cmd("PASS " + password).startswith(b"+OK"):
            return None
        return c.stat()


def login_works(srv, user="alice", password="secret"):
    with srv.connect() as c:
        c.cmd("USER " + user)
        return c.cmd("PASS " + password).startswith(b"+OK")


def test_killed_auth_is_restarted(server):
    ch = server.wait_children(lambda c: AUTH in c.values())
    auth = [p for p, c in ch.items() if c == AUTH]
    assert len(auth) == 1
    os.kill(auth[0], signal.SIGKILL)
    ch = server.wait_children(lambda c: AUTH in c.values() and auth[0] not in c)
    assert [c for c in ch.values()].count(AUTH) == 1 and auth[0] not in ch, ch
    wait_until(lambda: login_works(server), "a login with the restarted auth process",
               step=0.2)


def test_session_waiting_for_auth_when_auth_dies(server):
    """A login that is in flight when the auth process dies gets an answer
    (-ERR), never a hang."""
    auth = server.children_by_comm(AUTH)
    with server.connect() as c:
        c.cmd("USER alice")
        os.kill(auth[0], signal.SIGKILL)
        c.send(b"PASS secret\r\n")
        st = c.readline()       # (IO_TIMEOUT: a runaway guard)
        assert st.startswith((b"+OK", b"-ERR")), st


def test_master_sigterm_stops_everything(server):
    ch = server.wait_children(lambda c: len(c) >= 3)
    kids = list(ch)
    rc = server.stop()
    assert rc == 0, rc
    wait_until(lambda: not any(comm_of(k) and comm_of(k).startswith("popboxd") for k in kids),
               "the exit of every child after SIGTERM")


def test_sigterm_with_open_sessions_stops_promptly(server):
    """SIGTERM ends the sessions still open (three before login, one logged
    in with a DELE pending) rather than waiting for them: the server closes
    each connection, logs it as ended by the shutdown, and exits 0, with
    nothing deleted. The wait for the exit is the runaway guard (120 s),
    below the shortest time those sessions would end by themselves (the
    180 s login timeout)."""
    server.deliver(b"Subject: x\n\ny\n")
    conns = [server.connect() for _ in range(3)]
    sess = server.session()
    assert sess.cmd("DELE 1").startswith(b"+OK")
    peers = [peer_name(c.sock) for c in conns + [sess]]
    server.signal(signal.SIGTERM)
    assert server.proc.wait(RUNAWAY_SEC) == 0, server.log()
    for c in conns + [sess]:
        c.wait_closed()     # closed by the server (a hang fails at the guard)
        c.close()
    for peer in peers:
        assert session_end(server, peer) == "shutdown", server.log()
    assert len(server.message_files()) == 1


def test_daemon_mode(server_factory):
    srv = server_factory(start=False)
    srv.start(extra_args=(), wait=False)
    rc = srv.proc.wait(RUNAWAY_SEC)  # the launcher returns once daemonized
    assert rc == 0, srv.log()
    pidfile = os.path.join(srv.state_dir, "popboxd.pid")
    wait_until(lambda: os.path.exists(pidfile), "the pid file")
    with open(pidfile) as f:
        pid = int(f.read().strip())
    try:
        assert comm_of(pid) is not None and comm_of(pid).startswith("popboxd")

        def session():
            with srv.connect() as c:
                assert c.greeting.startswith(b"+OK")
                c.login()
            return True
        wait_until(session, "a login to the daemon", step=0.1, retry_on=(OSError,))
        kids = list(children_of(pid))
    finally:
        os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: comm_of(pid) is None, "the daemon's exit after SIGTERM")
        finally:
            if comm_of(pid) is not None:
                os.kill(pid, signal.SIGKILL)
    for k in kids:
        assert comm_of(k) is None or not comm_of(k).startswith("popboxd")


# ------------------------------------------------------------------ SIGHUP

def test_sighup_picks_up_new_user(server):
    server.add_user("carol", "carolpw")
    server.reload()
    wait_until(lambda: login_works(server, "carol", "carolpw"), "carol's login after SIGHUP",
               step=0.2)
    assert server.alive()


def test_users_file_change_noticed_without_sighup(server):
    server.add_user("dora", "dorapw")
    now = time.time() + 2
    os.utime(server.users_path, (now, now))
    wait_until(lambda: login_works(server, "dora", "dorapw"),
               "dora's login after the users file changed", step=0.3)


def test_sighup_removed_user_and_changed_password(server_factory):
    srv = server_factory(users={"alice": "secret", "bob": "bobpw"})
    del srv.users["bob"]
    srv.add_user("alice", "newsecret")
    srv.reload()
    wait_until(lambda: login_works(srv, "alice", "newsecret"),
               "the new password working after SIGHUP", step=0.2)
    with srv.connect() as c:
        c.cmd("USER alice")
        assert c.cmd("PASS secret").startswith(b"-ERR")
    with srv.connect() as c:
        c.cmd("USER bob")
        assert c.cmd("PASS bobpw").startswith(b"-ERR")


def test_sighup_keeps_sessions_and_applies_config(server):
    server.deliver(b"Subject: x\n\ny\n")
    a = server.session()
    server.config["apop"] = "yes"
    server.write_config()
    server.reload()

    def apop_greeting():
        with server.connect() as c:
            return b"<" in c.greeting
    wait_until(apop_greeting, "apop = yes applied after SIGHUP (a <timestamp> greeting)",
               step=0.2)
    assert a.stat()[0] == 1, "an open session must survive SIGHUP"
    a.quit()


def test_sighup_with_bad_config_keeps_running(server):
    server.write_file(server.conf_path, open(server.conf_path).read() + "bogus_key = 1\n", own=False)
    server.reload()
    # the reload has been handled once the log says what was wrong
    wait_until(lambda: "bogus_key" in server.log() or "popboxd.conf" in server.log(),
               "the bad config reported after SIGHUP")
    assert server.alive(), "a bad config on reload must not stop the server"
    with server.session() as c:
        assert c.stat() == (0, 0)


# ------------------------------------------------------------------ logging

def test_session_log_line_and_no_password(server_factory):
    secret = "Sup3r-S3cret-Pa55"
    srv = server_factory(users={"alice": secret}, extra_args=("-f", "-d"))
    srv.deliver(b"Subject: x\n\ny\n")
    peers = []
    with srv.connect() as c:
        peers.append(peer_name(c.sock))
        c.cmd("USER alice")
        assert c.cmd("PASS wrong-" + secret).startswith(b"-ERR")
    with srv.connect() as c:
        peers.append(peer_name(c.sock))
        c.login("alice", secret)
        c.retr(1)
        c.cmd("DELE 1")
        c.quit()
    with srv.connect() as c:
        peers.append(peer_name(c.sock))
        c.cmd("USER nobody-here")
        c.cmd("PASS " + secret)
    for peer in peers:      # everything these sessions log is written by then
        session_end(srv, peer)
    log = srv.log()
    assert secret not in log, "password found in the log"
    session_lines = [l for l in log.splitlines() if "alice" in l and "127." in l]
    assert session_lines, "expected a session line naming user and peer:\n" + log


def test_log_debug_key(server_factory):
    srv = server_factory(config={"log_debug": "yes"}, users={"alice": "pw-in-debug-log"})
    with srv.session("alice", "pw-in-debug-log") as c:
        peer = peer_name(c.sock)
        c.quit()
    session_end(srv, peer)  # everything the session logs is written by then
    assert "pw-in-debug-log" not in srv.log()


def test_hostile_garbage_does_not_kill_worker(server_factory):
    srv = server_factory(workers=1)
    srv.wait_children(lambda c: list(c.values()).count(WORKER) == 1)
    worker = srv.children_by_comm(WORKER)
    rnd = random.Random(1939)
    for _ in range(20):
        with srv.connect() as c:
            try:
                c.send(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 3000))))
                c.send(b"\r\nQUIT\r\n")
                c.wait_closed(timeout=5)
            except (ConnectionClosed, OSError):
                pass
    assert srv.children_by_comm(WORKER) == worker, "the worker died on garbage input"
    with srv.session() as c:
        assert c.stat() == (0, 0)


def test_ipv6_listener(server_factory):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        port = s.getsockname()[1]
        s.close()
    except OSError:
        pytest.skip("no ::1")
    srv = server_factory(start=False)
    srv.port = free_port()
    srv.config["listen"] = "127.0.0.1:%d, [::1]:%d" % (srv.port, port)
    srv.start()
    with socket.create_connection(("::1", port), timeout=RUNAWAY_SEC) as s:
        assert s.makefile("rb").readline().startswith(b"+OK")
