"""Switching from Dovecot to popboxd on the same Maildirs and users file
without a re-download (uidl_format = dovecot, docs/DESIGN.md "UIDLs kept from
the old server").

A real Dovecot 2.3 (tests/integration/fetch/fetch_env.py, started from our
own config) serves a Maildir and writes its dovecot-uidlist; poplib records
its UIDLs and mpop and fetchmail, in keep mode, fetch everything once. Then
Dovecot stops and popboxd serves the same Maildir from the same users file:
every UIDL must be the same and the clients must fetch nothing again. The
index must remember the UIDLs (removing dovecot-uidlist changes none), and
mail delivered after the switch gets new, unique UIDLs."""

import os
import poplib
import subprocess
import sys

import pytest

from popbox_server import RUNAWAY_SEC, build_dir, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "fetch"))
from fetch_env import Dovecot, make_message  # noqa: E402

# the clients' network timeouts and the waits for them: runaway guards
TIMEOUT = RUNAWAY_SEC
N_MESSAGES = 5


def need(prog):
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(":") + ["/usr/sbin"]:
        path = os.path.join(d, prog)
        if os.access(path, os.X_OK):
            return path
    pytest.skip("%s not installed (see tools/debian-packages.txt)" % prog)


@pytest.fixture
def dovecot_factory():
    made = []

    def make(extra_config=""):
        need("dovecot")
        d = Dovecot(extra_config=extra_config)
        made.append(d)
        d.start()
        return d

    yield make
    for d in made:
        d.cleanup()


def uidl_list(port, user, password):
    """[(number, uidl)] of a fresh session (poplib, USER/PASS)."""
    p = poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)
    try:
        p.user(user)
        p.pass_(password)
        _, lines, _ = p.uidl()
    finally:
        p.quit()
    return [tuple(line.decode().split(" ", 1)) for line in lines]


def uidls(port, user, password):
    return sorted(u for _, u in uidl_list(port, user, password))


class Clients:
    """mpop and fetchmail in keep mode with their UIDL state kept across
    servers (same host, 127.0.0.1; the port is the server's)."""

    def __init__(self, base, user, password):
        self.home = os.path.join(base, "clients-%s" % user)
        os.makedirs(self.home, mode=0o700)
        self.user, self.password = user, password
        self.mbox = os.path.join(self.home, "mpop.mbox")
        open(self.mbox, "wb").close()
        self.out = os.path.join(self.home, "fetchmail-out")
        os.mkdir(self.out)
        self.mda = os.path.join(self.home, "mda.sh")
        with open(self.mda, "w") as f:
            f.write('#!/bin/sh\nexec cat > "%s/msg.$$"\n' % self.out)
        os.chmod(self.mda, 0o755)

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["HOME"] = self.home
        env["LC_ALL"] = "C"
        return env

    def mpop(self, port):
        """Run mpop once; returns how many messages it delivered."""
        conf = os.path.join(self.home, "mpoprc")
        with open(conf, "w") as f:
            f.write('account default\nhost 127.0.0.1\nport %d\nuser %s\npassword "%s"\n'
                    "auth user\ntls off\nkeep on\nonly_new on\ntimeout %d\nuidls_file %s\n"
                    "delivery mbox %s\n" % (port, self.user, self.password, TIMEOUT,
                                            os.path.join(self.home, "mpop.uidls"), self.mbox))
        os.chmod(conf, 0o600)
        before = self._mbox_count()
        r = subprocess.run([need("mpop"), "-C", conf, "-q"], capture_output=True,
                           timeout=TIMEOUT, env=self.env())
        assert r.returncode == 0, (r.stdout, r.stderr)
        return self._mbox_count() - before

    def _mbox_count(self):
        with open(self.mbox, "rb") as f:
            data = f.read()
        return data.count(b"\nFrom ") + data.startswith(b"From ")

    def fetchmail(self, port):
        """Run fetchmail once in keep mode; returns how many it delivered."""
        rc = os.path.join(self.home, ".fetchmailrc")
        with open(rc, "w") as f:
            f.write('set no syslog\n'
                    'poll 127.0.0.1 protocol pop3 port %d timeout %d auth password uidl\n'
                    '  user "%s" there with password "%s"\n'
                    '  sslproto "" no sslcertck keep mda "%s"\n'
                    % (port, TIMEOUT, self.user, self.password, self.mda))
        os.chmod(rc, 0o600)
        before = len(os.listdir(self.out))
        r = subprocess.run([need("fetchmail"), "-f", rc, "--idfile",
                            os.path.join(self.home, ".fetchids"), "--pidfile",
                            os.path.join(self.home, "fetchmail.pid"), "--nodetach"],
                           capture_output=True, timeout=TIMEOUT, env=self.env())
        # 0: mail fetched, 1: no new mail
        assert r.returncode in (0, 1), (r.returncode, r.stdout, r.stderr)
        return len(os.listdir(self.out)) - before


def on_dovecot(dovecot, n=N_MESSAGES):
    """A Dovecot user with n messages, their UIDLs as Dovecot gives them,
    and the clients that have fetched them all once."""
    mb = dovecot.add_user()
    mb.deliver_many([make_message(i) for i in range(n)])
    before = uidls(dovecot.pop3_port, mb.user, mb.password)
    assert len(before) == n and len(set(before)) == n
    clients = Clients(dovecot.dir, mb.user, mb.password)
    assert clients.mpop(dovecot.pop3_port) == n
    assert clients.fetchmail(dovecot.pop3_port) == n
    assert clients.mpop(dovecot.pop3_port) == 0     # keep mode works against Dovecot
    return mb, before, clients


def popboxd_for(server_factory, dovecot, **config):
    """popboxd on Dovecot's Maildirs and users file (Dovecot stopped)."""
    dovecot.stop()
    conf = {"users": dovecot.users_file, "mail": "maildir:%s/%%u" % dovecot.mail_root}
    conf.update(config)
    return server_factory(config=conf)


def test_dovecot_uidls_kept_and_clients_fetch_nothing_again(dovecot_factory, server_factory):
    dovecot = dovecot_factory()
    mb, before, clients = on_dovecot(dovecot)
    assert os.path.exists(os.path.join(mb.path, "dovecot-uidlist"))

    srv = popboxd_for(server_factory, dovecot, uidl_format="dovecot")
    assert uidls(srv.port, mb.user, mb.password) == before
    assert clients.mpop(srv.port) == 0
    assert clients.fetchmail(srv.port) == 0

    # mail after the switch: a new UIDL (its base name), unique, fetched once
    mb.deliver(make_message(100))
    after = uidls(srv.port, mb.user, mb.password)
    assert len(after) == N_MESSAGES + 1 and len(set(after)) == N_MESSAGES + 1
    assert set(before) < set(after)
    new = (set(after) - set(before)).pop()
    assert any(n.startswith(new) for n in os.listdir(os.path.join(mb.path, "new")) +
               os.listdir(os.path.join(mb.path, "cur")))
    assert clients.mpop(srv.port) == 1
    assert clients.fetchmail(srv.port) == 1

    # the index remembers: without Dovecot's list nothing changes
    os.unlink(os.path.join(mb.path, "dovecot-uidlist"))
    assert uidls(srv.port, mb.user, mb.password) == after
    mb.deliver(make_message(101))     # a rescan too
    assert set(after) < set(uidls(srv.port, mb.user, mb.password))
    assert clients.mpop(srv.port) == 1
    assert clients.fetchmail(srv.port) == 1


def test_without_uidl_format_the_uidls_change(dovecot_factory, server_factory):
    """The reason for the feature, and proof the test above can fail:
    popboxd's own UIDLs differ from Dovecot's and the clients fetch all."""
    dovecot = dovecot_factory()
    mb, before, clients = on_dovecot(dovecot, n=2)
    srv = popboxd_for(server_factory, dovecot)
    assert set(uidls(srv.port, mb.user, mb.password)).isdisjoint(before)
    assert clients.mpop(srv.port) == 2


@pytest.mark.parametrize("fmt", ["%g", "%v.%u", "%08Xv-%Lf"])
def test_dovecot_pop3_uidl_format(dovecot_factory, server_factory, fmt):
    dovecot = dovecot_factory("pop3_uidl_format = %s\n" % fmt)
    mb, before, clients = on_dovecot(dovecot, n=3)
    srv = popboxd_for(server_factory, dovecot, uidl_format="dovecot",
                      dovecot_uidl_format=fmt)
    assert uidls(srv.port, mb.user, mb.password) == before
    assert clients.mpop(srv.port) == 0


def test_dovecot_saved_uidls_win(dovecot_factory, server_factory):
    """pop3_save_uidl makes Dovecot store each UIDL in dovecot-uidlist (the
    P field, as its pop3-migration plugin does); a stored UIDL wins over any
    pop3_uidl_format, so popboxd configured with another format still
    serves the stored ones."""
    dovecot = dovecot_factory("pop3_save_uidl = yes\n")
    mb, before, clients = on_dovecot(dovecot, n=3)
    with open(os.path.join(mb.path, "dovecot-uidlist")) as f:
        lines = f.read().splitlines()
    assert sum(1 for line in lines[1:] if " P" in line) == 3, lines
    srv = popboxd_for(server_factory, dovecot, uidl_format="dovecot",
                      dovecot_uidl_format="%u")
    assert uidls(srv.port, mb.user, mb.password) == before
    assert clients.mpop(srv.port) == 0
    assert clients.fetchmail(srv.port) == 0


def test_uidl_format_per_user(dovecot_factory, server_factory):
    """uidl_format= in the users file's extra fields overrides the config."""
    dovecot = dovecot_factory()
    mb1, before1, _ = on_dovecot(dovecot, n=2)
    mb2, before2, _ = on_dovecot(dovecot, n=2)
    dovecot.stop()
    users = os.path.join(dovecot.dir, "popbox-users")
    with open(users, "w") as f:
        f.write("%s:{PLAIN}%s::::::uidl_format=dovecot\n" % (mb1.user, mb1.password))
        f.write("%s:{PLAIN}%s::::::\n" % (mb2.user, mb2.password))
    srv = popboxd_for(server_factory, dovecot, users=users)
    assert uidls(srv.port, mb1.user, mb1.password) == before1
    assert set(uidls(srv.port, mb2.user, mb2.password)).isdisjoint(before2)


def test_bad_old_uidls_replaced_and_logged(server_factory):
    """A dovecot-uidlist is another program's file: a stored UIDL that is
    not valid (71 characters) is replaced by the message's own; of two
    messages listed with one UIDL the first keeps it; a new message whose
    own UIDL an old one has gets another. Each is logged, every UIDL is
    unique, the list itself is never changed."""
    srv = server_factory(config={"uidl_format": "dovecot"})
    names = ["1000.A.host", "1001.B.host", "1002.C.host", "1003.D.host", "1004.E.host"]
    for i, n in enumerate(names):
        srv.deliver(make_message(i), name=n)
    uidlist = ("3 V1700000000 N6 G0123456789abcdef0123456789abcdef\n"
               "1 P%s :1000.A.host\n"
               "2 Pshared :1001.B.host\n"
               "3 Pshared :1002.C.host\n"
               "4 P1004.E.host :1003.D.host\n") % ("x" * 71)
    path = os.path.join(srv.maildir(), "dovecot-uidlist")
    srv.write_file(path, uidlist)
    got = dict((n, u) for n, u in uidl_list(srv.port, "alice", "secret"))
    assert len(set(got.values())) == 5, got
    assert got["1"] == "1000.A.host"          # invalid: its own name
    assert got["2"] == "shared"               # the first keeps it
    assert got["3"] == "1002.C.host"
    # D was listed with E's name; E, not listed, is new: it gives way
    assert got["4"] == "1004.E.host"
    assert got["5"].startswith("H") and len(got["5"]) == 41
    with open(path) as f:
        assert f.read() == uidlist
    log = srv.log()
    assert "not a valid UIDL" in log
    assert log.count("had a UIDL another message has") == 2, log
    # remembered: the same after the list is gone
    os.unlink(path)
    assert dict(uidl_list(srv.port, "alice", "secret")) == got


def test_broken_uidlist_is_not_used(server_factory):
    """A list Dovecot would not serve from (UIDs out of order) is ignored
    whole, logged, and the messages get popbox UIDLs."""
    srv = server_factory(config={"uidl_format": "dovecot"})
    srv.deliver(make_message(1), name="1000.A.host")
    srv.deliver(make_message(2), name="1001.B.host")
    srv.write_file(os.path.join(srv.maildir(), "dovecot-uidlist"),
                   "3 V1 N3\n2 :1000.A.host\n1 :1001.B.host\n")
    assert uidls(srv.port, "alice", "secret") == ["1000.A.host", "1001.B.host"]
    assert "dovecot-uidlist: line 3: UIDs out of order, not used" in srv.log()


def test_courier_uidls_kept(server_factory):
    """uidl_format = courier: Courier pop3d's courierpop3dsizelist gives
    "UID<uid>-<uidvalidity>"; a message not in it gets its base name."""
    srv = server_factory(config={"uidl_format": "courier"})
    for i, n in enumerate(["1000.A.host", "1001.B.host", "1002.C.host"]):
        srv.deliver(make_message(i), name=n, subdir="cur", info="2,S")
    srv.write_file(os.path.join(srv.maildir(), "courierpop3dsizelist"),
                   "/2 3 1700000001\n1000.A.host:2,S 1234 1:1700000001\n"
                   "1001.B.host:2,S 99 2:1700000001\n")
    assert dict(uidl_list(srv.port, "alice", "secret")) == {
        "1": "UID1-1700000001", "2": "UID2-1700000001", "3": "1002.C.host"}


def migrate(srv, *args):
    r = subprocess.run([os.path.join(build_dir(), "popbox"), "migrate-uidls", "-c",
                        srv.conf_path] + list(args), capture_output=True, timeout=TIMEOUT)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def test_migrate_uidls_reports_and_freezes(dovecot_factory, server_factory):
    """popbox migrate-uidls reports before the switch, --freeze records the
    mapping, and then Dovecot's list may go before popboxd ever serves."""
    dovecot = dovecot_factory()
    mb, before, clients = on_dovecot(dovecot, n=3)
    dovecot.stop()
    index = os.path.join(mb.path, "popbox.index")
    srv = server_factory(config={"users": dovecot.users_file, "uidl_format": "dovecot",
                                 "mail": "maildir:%s/%%u" % dovecot.mail_root}, start=False)
    srv.port = free_port()              # start() takes another one
    srv.write_config()
    mb.deliver(make_message(50))        # after Dovecot: not in its list

    rc, out, err = migrate(srv, "--verbose", mb.user)
    assert rc == 0, (out, err)
    assert ("%s: 4 messages (uidl_format dovecot): 3 keep the old server's UIDL, 0 already "
            "served by popboxd, 1 get a new UIDL (1 not in the old list" % mb.user) in out, out
    assert "not in the old server's list" in out
    assert not os.path.exists(index)    # a report changes nothing

    rc, out, err = migrate(srv, "--freeze")          # every user of the file
    assert rc == 0, (out, err)
    assert "recorded in popbox.index" in out
    st = os.stat(index)
    assert st.st_uid == srv.uid         # written as run_as, never as root
    os.unlink(os.path.join(mb.path, "dovecot-uidlist"))

    rc, out, err = migrate(srv, mb.user)
    assert "0 keep the old server's UIDL, 4 already served by popboxd" in out, out
    srv.start()
    got = uidls(srv.port, mb.user, mb.password)
    assert set(before) < set(got) and len(got) == 4
    assert clients.mpop(srv.port) == 1
    assert clients.fetchmail(srv.port) == 1

    # a maildrop in a session is skipped (the lock, as for a second login)
    p = poplib.POP3("127.0.0.1", srv.port, timeout=TIMEOUT)
    p.user(mb.user)
    p.pass_(mb.password)
    try:
        rc, out, err = migrate(srv, mb.user)
        assert rc == 75 and "in a POP3 session now" in err, (rc, out, err)
    finally:
        p.quit()
    rc, out, err = migrate(srv, "nosuchuser")
    assert rc == 67 and "no such user" in err
