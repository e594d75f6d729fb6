"""popboxd and popa3d 1.0.3 (Debian's package, unpacked with apt-get
download + dpkg-deb -x, run inetd-style: the connection is its stdin and
stdout) on the same /var/mail spool of a real Unix account: every message's
LIST size and RETR bytes are equal (with mbox_format = none, popa3d's way of
serving quoted From_ lines; with the default mboxo exactly those lines
differ), and with uidl_format = popa3d every UIDL is popa3d's, except that
copies popa3d gave one UIDL get their own (issue 18). After popboxd deletes a
message, popa3d reads the spool as before minus that message. Root only
(accounts, /var/mail, PAM)."""

import fcntl
import grp
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile

import pytest

from popbox_server import REPO, RUNAWAY_SEC, build_dir, dot_stuff_inverse
from ports import free_port
from unix_accounts import PASSWORD, Accounts, run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (accounts, /var/mail, PAM)")

# Debian's spool: Postfix local(8) appends each message after a From_ line,
# quoted mboxo, with an empty line after it.
RCV = b"Received: from mx.example.org (mx.example.org [192.0.2.1])\n\tby host.example.org (Postfix) with ESMTP id %d\n"
MESSAGES = [
    RCV % 1 + b"Date: Thu, 3 Dec 2026 10:00:00 +0000\nMessage-ID: <1@example.org>\nSubject: plain\n\nhello\n",
    RCV % 2 + b"Subject: quoted\n\n>From the start of a line\n>>From deeper\nFrom inside a paragraph\n",
    b"Date: Thu, 3 Dec 2026 10:00:02 +0000\nMessage-ID: <3@example.org>\nSubject: dots\n\n.\n..\n.x\n",
    RCV % 4 + b"Subject: 8bit\n\ncaf\xe9 \x00 \xff\n",
    RCV % 5 + b"Subject: same\n\nidentical\n",
    RCV % 5 + b"Subject: same\n\nidentical\n",
    b"Subject: no Date, Message-ID or Received\n\nbody\n",
    b"Subject: crlf\r\nDate: Thu, 3 Dec 2026 10:00:07 +0000\r\n\r\nline\r\n",
    RCV % 9 + b"Subject: last\n\nno final newline",
]


def spool_bytes():
    out = b""
    for i, m in enumerate(MESSAGES):
        out += b"From MAILER-DAEMON Thu Dec  3 10:00:%02d 2026\n" % i
        q = b"\n".join(b">" + l if l.startswith(b"From ") else l for l in m.split(b"\n"))
        out += q if i == len(MESSAGES) - 1 else q + b"\n"
    return out


@pytest.fixture(scope="module")
def popa3d():
    """popa3d unpacked, its user and chroot directory (made if missing and
    removed again), under the lock bench/bench.py takes for them."""
    lockf = open("/run/lock/popbox-bench-popa3d.lock" if os.path.isdir("/run/lock")
                 else "/tmp/popbox-bench-popa3d.lock", "w")
    fcntl.flock(lockf, fcntl.LOCK_EX)
    d = tempfile.mkdtemp(prefix="popbox-popa3d-")
    made_user = made_dir = False
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "download", "popa3d"], cwd=d, env=env, capture_output=True,
                           text=True, timeout=300)
        debs = [f for f in os.listdir(d) if f.startswith("popa3d_") and f.endswith(".deb")]
        if not debs:
            pytest.skip("apt-get download popa3d failed: %s" % r.stderr.strip()[-300:])
        subprocess.run(["dpkg-deb", "-x", os.path.join(d, debs[0]), os.path.join(d, "root")],
                       check=True, timeout=RUNAWAY_SEC)
        try:
            pwd.getpwnam("popa3d")
        except KeyError:
            run("useradd", "--system", "-M", "-d", "/var/lib/popa3d", "-s", "/usr/sbin/nologin",
                "-c", "popbox test (tests/integration/test_server_mbox_popa3d.py)", "popa3d")
            made_user = True
        if not os.path.isdir("/var/lib/popa3d"):
            os.makedirs("/var/lib/popa3d", 0o755)
            made_dir = True
        yield os.path.join(d, "root", "usr", "sbin", "popa3d")
    finally:
        if made_user:
            run("userdel", "popa3d")
        if made_dir:
            os.rmdir("/var/lib/popa3d")
        shutil.rmtree(d, ignore_errors=True)
        lockf.close()


@pytest.fixture(scope="module")
def account():
    acc = Accounts()
    try:
        yield acc.add("mb")
    finally:
        acc.remove_all()


@pytest.fixture
def spool(account):
    path = os.path.join("/var/mail", account)

    def write():
        with open(path, "wb") as f:
            f.write(spool_bytes())
        os.chown(path, pwd.getpwnam(account).pw_uid, grp.getgrnam("mail").gr_gid)
        os.chmod(path, 0o660)
    write()
    try:
        yield path, write
    finally:
        for f in os.listdir("/var/mail"):
            if f == account or f.startswith(account + "."):
                os.unlink(os.path.join("/var/mail", f))


@pytest.fixture(scope="module")
def pam_service():
    name = "popbox-test-" + secrets.token_hex(4)
    path = os.path.join("/etc/pam.d", name)
    shutil.copyfile(os.path.join(REPO, "contrib", "pam.d", "popbox"), path)
    try:
        yield name
    finally:
        os.unlink(path)


class Pop3:
    """A minimal POP3 client over a connected socket."""

    def __init__(self, sock):
        self.sock = sock
        self.f = sock.makefile("rwb")
        assert self.f.readline().startswith(b"+OK")

    def cmd(self, line):
        self.f.write(line.encode() + b"\r\n")
        self.f.flush()
        return self.f.readline().rstrip(b"\r\n")

    def multi(self, line):
        st = self.cmd(line)
        assert st.startswith(b"+OK"), (line, st)
        body = b""
        for _ in range(10 ** 6):
            l = self.f.readline()
            assert l, "connection closed in a multi-line answer"
            if l == b".\r\n":
                return body
            body += l
        raise AssertionError("unbounded answer")

    def everything(self, user):
        assert self.cmd("USER " + user).startswith(b"+OK")
        st = self.cmd("PASS " + PASSWORD)
        assert st.startswith(b"+OK"), st
        sizes = [int(l.split()[1]) for l in self.multi("LIST").split(b"\r\n") if l]
        uidls = [l.split()[1].decode() for l in self.multi("UIDL").split(b"\r\n") if l]
        msgs = [dot_stuff_inverse(self.multi("RETR %d" % i)) for i in range(1, len(sizes) + 1)]
        return sizes, uidls, msgs

    def close(self):
        try:
            self.cmd("QUIT")
        finally:
            self.f.close()
            self.sock.close()


def popa3d_view(binary, user):
    """popa3d's LIST sizes, UIDLs and RETR bytes, inetd-style."""
    a, b = socket.socketpair()
    a.settimeout(RUNAWAY_SEC)
    proc = subprocess.Popen([binary], stdin=b, stdout=b, stderr=subprocess.PIPE)
    b.close()
    try:
        c = Pop3(a)
        try:
            return c.everything(user)
        finally:
            c.close()
    finally:
        try:
            proc.wait(RUNAWAY_SEC)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def popboxd_view(srv, user, dele=()):
    s = socket.create_connection((srv.host, srv.port), timeout=RUNAWAY_SEC)
    c = Pop3(s)
    try:
        view = c.everything(user)
        for n in dele:
            assert c.cmd("DELE %d" % n).startswith(b"+OK")
        return view
    finally:
        c.close()


def popboxd(server_factory, pam_service, start=True, **config):
    cfg = {"users": "pam", "pam_service": pam_service, "mail": "mbox:/var/mail/%u",
           "lock_wait": "2"}
    cfg.update(config)
    srv = server_factory(users={}, config=cfg, start=start)
    if not start:
        srv.port = free_port()          # start() takes another one
        srv.write_config()
    return srv


def test_side_by_side_with_popa3d(server_factory, popa3d, account, spool, pam_service):
    path, rewrite = spool
    p3_sizes, p3_uidls, p3_msgs = popa3d_view(popa3d, account)
    assert len(p3_sizes) == len(MESSAGES)
    # popa3d's LIST counts one octet too few for a message without a final
    # newline (its RETR sends CRLF after the last line, LIST counts 1):
    # popboxd counts what it sends (docs/PROTOCOL.md)
    NO_NL = len(MESSAGES) - 1
    CRLF = len(MESSAGES) - 2
    assert [len(m) for m in p3_msgs] == [s + (i == NO_NL) for i, s in enumerate(p3_sizes)]
    p3_sizes[NO_NL] += 1

    # as stored (popa3d serves quoted lines as they are): all equal
    srv = popboxd(server_factory, pam_service, mbox_format="none", uidl_format="popa3d")
    sizes, uidls, msgs = popboxd_view(srv, account)
    # a CRLF message: popa3d serves each CR as text (CR CR LF) and keeps the
    # separating empty line; popboxd reads CRLF as the line end (wire.h)
    assert p3_msgs[CRLF] == msgs[CRLF].replace(b"\r\n", b"\r\r\n") + b"\r\n"
    assert p3_sizes[CRLF] == len(p3_msgs[CRLF]) and sizes[CRLF] == len(msgs[CRLF])
    others = [i for i in range(len(MESSAGES)) if i != CRLF]
    assert [sizes[i] for i in others] == [p3_sizes[i] for i in others]
    assert [msgs[i] for i in others] == [p3_msgs[i] for i in others]
    # popa3d's UIDLs, except the copy popa3d gave the same one
    assert p3_uidls[4] == p3_uidls[5]
    for i, (u, p) in enumerate(zip(uidls, p3_uidls)):
        if i == 5:
            assert u != p
        else:
            assert u == p, (i, u, p)
    assert len(set(uidls)) == len(uidls)
    srv.stop()

    # mboxo (default) and uidl_format = popbox: exactly the quoted lines
    # differ; the UIDLs served so far stay (the index remembers them)
    srv = popboxd(server_factory, pam_service)
    sizes2, uidls2, msgs2 = popboxd_view(srv, account)
    for i, (m, p) in enumerate(zip(msgs2, msgs)):
        want = p.replace(b"\r\n>From ", b"\r\nFrom ")
        assert m == want, i
        assert sizes2[i] == len(want)
    assert msgs2[1] != msgs[1]
    assert uidls2 == uidls
    # without the index: popbox's own UIDLs
    os.unlink(path + ".popbox-index")
    uidls3 = popboxd_view(srv, account)[1]
    assert not set(uidls3) & set(p3_uidls)

    # popboxd deletes message 2; popa3d then reads the rest unchanged
    popboxd_view(srv, account, dele=(2,))
    srv.stop()
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == \
        (pwd.getpwnam(account).pw_uid, grp.getgrnam("mail").gr_gid, 0o660)
    after = popa3d_view(popa3d, account)
    keep = [i for i in range(len(MESSAGES)) if i != 1]
    assert after[0] == [p3_sizes[i] - (i == NO_NL) for i in keep]
    assert after[2] == [p3_msgs[i] for i in keep]
    assert after[1] == [p3_uidls[i] for i in keep]


def migrate(srv, *args):
    r = subprocess.run([os.path.join(build_dir(), "popbox"), "migrate-uidls", "-c", srv.conf_path] +
                       list(args), capture_output=True, timeout=RUNAWAY_SEC)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def test_migrate_uidls_from_popa3d(server_factory, popa3d, account, spool, pam_service):
    """popbox migrate-uidls before switching a /var/mail spool from popa3d
    (users = pam, uidl_format = popa3d): the report says which messages keep
    popa3d's UIDL (all but the copy popa3d gave the same one) and changes
    nothing; --freeze records them in the mbox's index, made by the account
    (started as root: a child process becomes it); afterwards popboxd serves
    popa3d's UIDLs even with uidl_format = popbox, and a second report says
    every message was served by popboxd."""
    path, _ = spool
    d = os.path.dirname(path)
    before = os.listdir(d)
    with open(path, "rb") as f:
        content = f.read()
    p3_uidls = popa3d_view(popa3d, account)[1]
    srv = popboxd(server_factory, pam_service, start=False, uidl_format="popa3d")

    rc, out, err = migrate(srv, "--verbose", account)
    assert rc == 0, (out, err)
    n = len(MESSAGES)
    assert ("%s: %d messages (uidl_format popa3d): %d keep the old server's UIDL, 0 already "
            "served by popboxd, 1 get a new UIDL (0 not in the old list, 0 invalid, 1 colliding, "
            "0 without a list)" % (account, n, n - 1)) in out, (out, err)
    assert "message 6: new UIDL" in out and "another message's" in out, out
    # a report writes no index and leaves the spool as it was (the session
    # lock file, USER.popbox-lock, stays as after any session)
    assert set(os.listdir(d)) - set(before) <= {account + ".popbox-lock"}, os.listdir(d)
    with open(path, "rb") as f:
        assert f.read() == content

    # every mail user of the system (users = pam, no USER named): ours is
    # among them (other tests' accounts may be in a session now: 75)
    rc, out, err = migrate(srv)
    assert rc in (0, 75), (rc, out, err)
    assert "%s: %d messages (uidl_format popa3d): %d keep" % (account, n, n - 1) in out, out
    # a name that is no mail user (root, below first_valid_uid) is unknown
    rc, out, err = migrate(srv, "root")
    assert rc == 67 and "root: no such user" in err, (rc, out, err)

    rc, out, err = migrate(srv, "--freeze", account)
    assert rc == 0, (out, err)
    assert "recorded in the mbox's index" in out, out
    made = [f for f in os.listdir(d) if f.startswith(account + ".popbox-index")]
    assert made, os.listdir(d)
    for f in made:
        st = os.stat(os.path.join(d, f))
        assert st.st_uid == pwd.getpwnam(account).pw_uid, f     # the account's, never root's
    with open(path, "rb") as f:
        assert f.read() == content

    # popboxd serves what was frozen, with popa3d's UIDLs no longer asked for
    srv.config["uidl_format"] = "popbox"
    srv.write_config()
    srv.start()
    uidls = popboxd_view(srv, account)[1]
    assert [u for i, u in enumerate(uidls) if i != 5] == [u for i, u in enumerate(p3_uidls) if i != 5]
    assert uidls[5] != p3_uidls[5] and len(set(uidls)) == n
    srv.stop()
    rc, out, err = migrate(srv, account)
    assert rc == 0, (out, err)
    assert ("%s: %d messages (uidl_format popbox): 0 keep the old server's UIDL, %d already "
            "served by popboxd, 0 get a new UIDL" % (account, n, n)) in out, (out, err)
