"""The auth process as a separate security domain (issue 14, items 2 and 6):
it does not hold the TLS private key, runs under its own uid when popboxd is
started as root, and is restarted by the master when it stops answering.
docs/DESIGN.md ("The auth process") says what these guarantee."""

import os
import re
import signal
import subprocess
import time

import pytest

from popbox_server import comm_of
from runaway import wait_until
from test_server_tls_lib import PKI, tls_server


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


def private_scalar(key_path):
    """The private scalar of an EC key file, as bytes (openssl pkey -text)."""
    text = subprocess.run(["openssl", "pkey", "-in", key_path, "-noout", "-text"],
                          capture_output=True, check=True, timeout=30).stdout.decode()
    m = re.search(r"priv:\s*\n((?:\s+[0-9a-f:]+\n)+)", text)
    assert m, text
    return bytes.fromhex(re.sub(r"[\s:]", "", m.group(1))).lstrip(b"\0")


# Mappings larger than this are not searched: a sanitizer's shadow memory
# (terabytes reserved, never holding data of ours), not a heap.
MAX_MAPPING = 1 << 30
CHUNK = 16 << 20


def memory_contains(pid, needles):
    """Which of needles occur in the readable memory of process pid
    (/proc/PID/maps and /proc/PID/mem: needs ptrace rights over it, which
    the test runner has over its own descendants, and root over all)."""
    found = set()
    overlap = max(len(n) for n in needles) - 1
    with open("/proc/%d/maps" % pid) as maps, open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if end - start > MAX_MAPPING:
                continue
            tail = b""
            for at in range(start, end, CHUNK):
                try:
                    mem.seek(at)
                    data = tail + mem.read(min(CHUNK, end - at))
                except (OSError, ValueError, OverflowError):
                    break
                for n in needles:
                    if n in data:
                        found.add(n)
                tail = data[-overlap:]
    return found


def auth_pid(srv):
    return wait_until(lambda: srv.children_by_comm("popboxd-auth"), "the auth process")[0]


def test_auth_process_does_not_hold_the_tls_private_key(server_factory, pki):
    """The auth process never has the TLS private key in memory: neither the
    master's TLS context it was forked with nor the key text of a reload.
    Proof by a search of its memory for the key's private scalar (as
    OpenSSL holds it, least significant byte first, and as the PEM's DER
    holds it) after a reload; the same search finds it in a worker, which
    needs the key."""
    srv = tls_server(server_factory, pki)
    scalar = private_scalar(srv.config["tls_key"])
    assert len(scalar) >= 30
    needles = [scalar, scalar[::-1]]
    offset = len(srv.log())
    srv.reload()
    # the auth process re-reads the users file after a reload message
    wait_until(lambda: "reloaded: 1 users" in srv.log()[offset:], "the auth process's reload")
    with srv.session() as c:          # both channels served after the reload
        c.quit()
    worker = wait_until(lambda: srv.children_by_comm("popboxd-worker"), "a worker")[0]
    assert memory_contains(worker, needles), "the memory search does not find the key in a worker"
    assert not memory_contains(auth_pid(srv), needles), "the auth process holds the TLS private key"


# ------------------------------------------------------------ user enumeration by timing

def timed_pass(srv, user, password="wrong"):
    """Seconds between PASS and its answer, from a fresh source address (so
    the penalty of earlier failures never holds the answer); the answer."""
    with srv.connect() as c:
        assert c.cmd("USER " + user).startswith(b"+OK")
        t0 = time.monotonic()
        st = c.cmd("PASS " + password)
        return time.monotonic() - t0, st


def test_unknown_and_disabled_users_cost_as_much_as_a_scram_user(server_factory):
    """With {SCRAM-SHA-256} secrets (100000 iterations, so a check is clearly
    slower than a round trip), PASS for an unknown user and for a disabled
    entry ("*", empty) takes as long as a wrong password for a known user:
    the medians of 40 interleaved samples each are within a factor 2. Every
    sample names another user (the per-user penalty counts from the 6th
    failure) and comes from another address."""
    import statistics
    from test_server_tls_lib import scram_secret
    n = 40
    secret = scram_secret("right", iterations=100000)
    users = {}
    for i in range(n):
        users["known%d" % i] = secret
        users["disabled%d" % i] = "*" if i % 2 else ""
    srv = server_factory(users={}, start=False)
    for name, field in users.items():
        srv.add_user(name, field, scheme="RAW", write=False)
    srv.write_users()
    srv.start()
    times = {"known": [], "unknown": [], "disabled": []}
    for i in range(n):
        for kind in times:
            t, st = timed_pass(srv, "%s%d" % (kind, i))
            assert st.startswith(b"-ERR"), st
            times[kind].append(t)
    known = statistics.median(times["known"])
    for kind in ("unknown", "disabled"):
        ratio = statistics.median(times[kind]) / known
        assert 0.5 < ratio < 2, "%s/known median ratio %.3f: %r" % (kind, ratio, times)
    assert timed_pass(srv, "known0", "right")[1].startswith(b"+OK")


def test_answer_for_an_unusable_mail_location_waits_for_the_penalty(server_factory):
    """The right password for a user whose mail location cannot be made
    (here a name the location refuses) is answered [SYS/TEMP], and that
    answer waits for the penalty like any other: at once, it would tell a
    guesser held by the penalty that the password is right."""
    from popbox_server import fresh_source
    srv = server_factory(users={".hidden": "pw"})
    source = fresh_source()
    with srv.connect(source=source) as c:
        assert c.cmd("USER .hidden").startswith(b"+OK")
        assert c.cmd("PASS wrong").startswith(b"-ERR")
    with srv.connect(source=source) as c:
        assert c.cmd("USER .hidden").startswith(b"+OK")
        t0 = time.monotonic()
        st = c.cmd("PASS pw")
        waited = time.monotonic() - t0
    assert st.startswith(b"-ERR [SYS/TEMP]"), st
    assert waited >= 1.5, "answered after %.2fs despite a failure from the address" % waited


# ------------------------------------------------------------ user enumeration by SCRAM salt

def server_first(srv, user, password="whatever", mech="SCRAM-SHA-256"):
    """The attributes of the server-first message that AUTH mech gives for
    user (the exchange then runs to its end)."""
    from test_server_tls_lib import scram_login, unb64
    with srv.connect() as c:
        st, sc, seen = scram_login(c, user, password, mech=mech)
        first = unb64(seen[0][2:]).decode()
    return dict(a.split("=", 1) for a in first.split(","))


def test_scram_first_challenge_alike_for_every_account(server_factory):
    """A {PLAIN} user, a {SCRAM-SHA-256} user and an unknown user get the
    same iteration count and salts of the same length; the {PLAIN} and the
    unknown user's salts are the same at every login, also after a restart
    of popboxd (the key behind them is kept in state_dir, mode 0600)."""
    import base64
    from test_server_tls_lib import scram_secret
    srv = server_factory(start=False)
    srv.add_user("bob", scram_secret("bob pw"), scheme="RAW")   # 4096, 16-octet salt
    srv.start()
    salts = {}
    for round_ in range(3):
        if round_ == 2:
            srv.restart()
        for user in ("alice", "bob", "nosuchuser"):
            attrs = server_first(srv, user, {"alice": "secret", "bob": "bob pw"}.get(user, "x"))
            assert attrs["i"] == "4096", (user, attrs)
            salts.setdefault(user, []).append(attrs["s"])
    lengths = {u: {len(base64.b64decode(s)) for s in v} for u, v in salts.items()}
    assert lengths == {"alice": {16}, "bob": {16}, "nosuchuser": {16}}, salts
    for user in ("alice", "nosuchuser"):
        assert len(set(salts[user])) == 1, "salts of %s differ: %r" % (user, salts)
    assert salts["alice"][0] != salts["nosuchuser"][0]
    key = os.path.join(srv.state_dir, "scram-salt.key")
    st = os.stat(key)
    assert st.st_mode & 0o077 == 0 and st.st_size == 32, oct(st.st_mode)


def test_scram_cancel_after_the_challenge_counts_as_a_failure(server_factory):
    """AUTH SCRAM-SHA-256, the server's challenge (the salt), then "*": a
    failed login for the penalty, so the next answer to the same user from
    the same address waits (2 s; a lower bound is checked)."""
    from popbox_server import fresh_source
    from test_server_tls_lib import ScramClient, b64
    srv = server_factory()
    source = fresh_source()
    with srv.connect(source=source) as c:
        st = c.cmd("AUTH SCRAM-SHA-256 " + b64(ScramClient("alice", "x").first()))
        assert st.startswith(b"+ "), st
        assert c.cmd("*").startswith(b"-ERR"), "cancel must answer -ERR"
        assert c.cmd("USER alice").startswith(b"+OK")
        t0 = time.monotonic()
        st = c.cmd("PASS secret")
        waited = time.monotonic() - t0
        assert st.startswith(b"+OK"), st
    assert waited >= 1.5, "the cancelled exchange was not counted (answer after %.2fs)" % waited
    assert "exchange cancelled after a challenge" in srv.log()


# ------------------------------------------------------------ a user of its own, supervised

def proc_ids(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return {int(x) for x in line.split()[1:]}
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def test_auth_process_runs_as_auth_user(server):
    """Started as root, the auth process runs as auth_user and the workers
    as run_as, two different unprivileged users: a worker cannot signal or
    trace the auth process. Not started as root, both run as the invoking
    user."""
    import pwd
    auth = auth_pid(server)
    workers = server.children_by_comm("popboxd-worker")
    assert workers
    if os.geteuid() == 0:
        auth_uid = pwd.getpwnam(server.auth_user).pw_uid
        worker_uid = pwd.getpwnam(server.run_as).pw_uid
        assert auth_uid not in (0, worker_uid)
        assert proc_ids(auth, "Uid") == {auth_uid}
        assert proc_ids(auth, "Gid") == {pwd.getpwnam(server.auth_user).pw_gid}
    else:
        auth_uid = worker_uid = os.geteuid()
        assert proc_ids(auth, "Uid") == {auth_uid}
    for w in workers:
        assert proc_ids(w, "Uid") == {worker_uid}
    with server.session() as c:
        c.quit()


def test_unknown_auth_user_refused(server_factory):
    """As root, popboxd -t and the start refuse an auth_user that does not
    exist, naming it."""
    if os.geteuid() != 0:
        pytest.skip("auth_user is only used when popboxd is started as root")
    srv = server_factory(config={"auth_user": "no-such-user-popbox-test"}, start=False)
    srv.port = 1
    srv.write_config()
    from popbox_server import popboxd_path
    r = subprocess.run([popboxd_path(), "-t", "-c", srv.conf_path], capture_output=True, timeout=20)
    assert r.returncode == 1, r
    assert b"auth_user user 'no-such-user-popbox-test' does not exist" in r.stderr, r.stderr


def test_stopped_auth_process_is_restarted(server_factory):
    """A stopped auth process (SIGSTOP, as a worker sharing its uid could
    send) would hold every login forever: the master notices that it does
    not answer its pings, kills it and starts another, and logins work
    again. The test polls for that (the guard of minutes only stops a
    run-away test)."""
    srv = server_factory()
    with srv.session() as c:      # the auth process is serving
        c.quit()
    old = auth_pid(srv)
    os.kill(old, signal.SIGSTOP)
    try:
        new = wait_until(lambda: [p for p in srv.children_by_comm("popboxd-auth") if p != old],
                       "a new auth process", limit=300, step=0.5)[0]
    finally:
        if comm_of(old) is not None:
            try:
                os.kill(old, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert new != old
    assert "auth process (pid %d) has not answered" % old in srv.log()
    with srv.session() as c:
        assert c.stat() == (0, 0)
        c.quit()
