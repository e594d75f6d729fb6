"""LMTP for system users (issue 13 item 4 with item 2; docs/DESIGN.md
"Delivering as the recipient"): with users = pam and per-user session
processes, each recipient's delivery (and its RCPT room check) runs in a
short-lived process the master forks as that Unix account, so every file
it makes belongs to the user. Real accounts (unix_accounts.py), real PAM,
~/Maildir and /var/mail/USER (Debian: root:mail 2775, spools USER:mail
0660); read back byte-exact over POP3 through the user's session process.
Root only."""

import grp
import os
import pwd
import secrets
import shutil

import pytest

from mailin import AWKWARD_BODIES, LMTPRaw, fetch_all, lmtp_message, lmtp_transaction
from ports import free_port
from popbox_server import wire_form
from runaway import wait_until
from test_deliver_system_users import pam_service  # noqa: F401 (fixture)
from test_server_mbox import MboxLock, python_mailbox_messages
from unix_accounts import PASSWORD, Accounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (accounts, /var/mail, PAM)")

def awkward_body():
    # one message that has them all: 8-bit, lone dots, From lines, CRLF
    return b"Subject: all\n\n" + b"".join(AWKWARD_BODIES[k] for k in sorted(AWKWARD_BODIES))


@pytest.fixture(scope="module")
def accounts():
    acc = Accounts()
    names = {}
    try:
        for tag in ("a", "b", "c"):
            names[tag] = acc.add(tag, home="/home/" + acc.prefix + tag)
        names["m1"] = acc.add("m1")
        names["m2"] = acc.add("m2")
        names["sys"] = acc.add("s", system=True)
        yield names
    finally:
        for n in names.values():
            for f in os.listdir("/var/mail"):
                if f == n or f.startswith(n + "."):
                    os.unlink(os.path.join("/var/mail", f))
            shutil.rmtree("/home/" + n, ignore_errors=True)
        acc.remove_all()


def lmtp_server(server_factory, service, mail, config=None):
    srv = server_factory(users={}, start=False, config={
        "users": "pam", "pam_service": service, "mail": mail})
    srv.lmtp_port = free_port()
    srv.config["listen_lmtp"] = "127.0.0.1:%d" % srv.lmtp_port
    srv.config.update(config or {})
    srv.start()
    return srv


def rp(sender):
    return b"Return-Path: <" + sender.encode() + b">\n"


def files_under(top):
    for root, dirs, files in os.walk(top):
        for n in dirs + files:
            yield os.path.join(root, n)


def test_lmtp_into_home_maildirs_as_the_recipients(server_factory, accounts, pam_service):  # noqa: F811
    """One transaction to six recipients: two get the message in their
    ~/Maildir (b's home is 0700: only b can get there), unknown, root and a
    system account get 550 5.1.1 at RCPT, c (home 0700, over
    max_maildrop_size) 452 4.2.2 from a check that ran as c. Every file
    made belongs to its user; POP3 reads the message back byte-exact."""
    a, b, c = accounts["a"], accounts["b"], accounts["c"]
    for u in (b, c):
        os.chmod(pwd.getpwnam(u).pw_dir, 0o700)
    # c's maildrop is full: 300 KB in new/, made by c
    cpw = pwd.getpwnam(c)
    for d in ("Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
        p = os.path.join(cpw.pw_dir, d)
        os.makedirs(p, 0o700, exist_ok=True)
        os.chown(p, cpw.pw_uid, cpw.pw_gid)
    full = os.path.join(cpw.pw_dir, "Maildir", "new", "1.big")
    with open(full, "wb") as f:
        f.write(b"Subject: big\n\n" + b"x" * 300000 + b"\n")
    os.chown(full, cpw.pw_uid, cpw.pw_gid)
    srv = lmtp_server(server_factory, pam_service, "maildir:~/Maildir",
                      {"max_maildrop_size": "256K"})
    body = awkward_body()
    unknown = "nobody" + secrets.token_hex(3)
    rcpts = [a, b, unknown, "root", accounts["sys"], c]
    with LMTPRaw(srv.lmtp_port) as conn:
        assert conn.lhlo()[0] == 250
        mail, rr, data, done = lmtp_transaction(conn, "s@example.net", rcpts, body)
        assert mail[0] == 250
        assert [r[0] for r in rr] == [250, 250, 550, 550, 550, 452], rr
        assert [r[1][0][:5] for r in rr[2:]] == [b"5.1.1"] * 3 + [b"4.2.2"]
        assert data[0] == 354
        assert [d[0] for d in done] == [250, 250], done
        assert conn.cmd("QUIT")[0] == 221
    want = wire_form(rp("s@example.net") + lmtp_message(body))
    for u in (a, b):
        pw = pwd.getpwnam(u)
        top = os.path.join(pw.pw_dir, "Maildir")
        made = list(files_under(top))
        assert made, u
        for p in made:
            st = os.lstat(p)
            assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid), (p, st.st_uid)
        new = os.listdir(os.path.join(top, "new"))
        assert len(new) == 1
        assert oct(os.stat(os.path.join(top, "new", new[0])).st_mode & 0o777) == "0o600"
        assert fetch_all(srv, u, PASSWORD) == [want]
    # c's maildrop untouched
    assert os.listdir(os.path.join(cpw.pw_dir, "Maildir", "new")) == ["1.big"]
    log = srv.log()
    assert "result=delivered" in log and "to=<%s>" % a in log


def test_lmtp_into_var_mail_as_the_recipients(server_factory, accounts, pam_service):  # noqa: F811
    """/var/mail/USER (USER:mail 0660 in root:mail 2775): m1's delivery is
    appended as m1 (owner, group and mode kept, Python's mailbox parses
    it, POP3 reads it back byte-exact); m2's mbox is locked by another
    program past lmtp_timeout (lock_wait is longer): its delivery process
    is killed, m2 alone gets 451 and its spool is untouched; once the lock
    is gone m2's delivery goes through."""
    m1, m2 = accounts["m1"], accounts["m2"]
    mail_gid = grp.getgrnam("mail").gr_gid
    spools = {}
    for u in (m1, m2):
        p = os.path.join("/var/mail", u)
        with open(p, "wb"):
            pass
        pw = pwd.getpwnam(u)
        os.chown(p, pw.pw_uid, mail_gid)
        os.chmod(p, 0o660)
        spools[u] = p
    srv = lmtp_server(server_factory, pam_service, "mbox:/var/mail/%u",
                      {"lock_wait": "60", "lmtp_timeout": "3", "mbox_format": "mboxrd"})
    body = b"Subject: mbox\n\nFrom the start\n>From quoted\n.\n8-bit \xe9\nno newline"
    lock = MboxLock(spools[m2])
    try:
        with LMTPRaw(srv.lmtp_port) as conn:
            assert conn.lhlo()[0] == 250
            mail, rr, data, done = lmtp_transaction(conn, "t@example.org", [m1, m2], body)
            assert [r[0] for r in rr] == [250, 250] and data[0] == 354
            assert [d[0] for d in done] == [250, 451], done
            assert conn.cmd("QUIT")[0] == 221
        wait_until(lambda: "killed after 3 s" in srv.log(), "the kill in the log")
        assert os.path.getsize(spools[m2]) == 0
        # the killed delivery left nothing beside the spool but the
        # other program's own dot-lock
        assert sorted(f for f in os.listdir("/var/mail") if f.startswith(m2 + ".")) == \
            [m2 + ".lock"]
    finally:
        lock.release()
    with LMTPRaw(srv.lmtp_port) as conn:
        assert conn.lhlo()[0] == 250
        _, rr, _, done = lmtp_transaction(conn, "t@example.org", [m2], body)
        assert [d[0] for d in done] == [250], done
    for u in (m1, m2):
        pw = pwd.getpwnam(u)
        st = os.stat(spools[u])
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (pw.pw_uid, mail_gid, 0o660)
        for f in os.listdir("/var/mail"):
            if f.startswith(u + "."):
                assert os.lstat(os.path.join("/var/mail", f)).st_uid == pw.pw_uid, f
        assert len(python_mailbox_messages(spools[u])) == 1
        assert open(spools[u], "rb").read().startswith(b"From t@example.org ")
        got = fetch_all(srv, u, PASSWORD)
        assert got == [wire_form(rp("t@example.org") + lmtp_message(body))], (u, got)


def test_postfix_delivers_to_a_system_user(server_factory, accounts, pam_service):  # noqa: F811
    """A real Postfix (postfix_instance.py) hands mail for a Unix account
    to popboxd over lmtp:unix:, addressed user@example.org: the files in
    the user's ~/Maildir are the user's, and POP3 gives back the message
    as sent after Postfix's Return-Path and Received."""
    import postfix_instance
    why = postfix_instance.available()
    if why is not None:
        pytest.fail(why)
    user = accounts["a"]
    pw = pwd.getpwnam(user)
    new = os.path.join(pw.pw_dir, "Maildir", "new")
    before = len(os.listdir(new)) if os.path.isdir(new) else 0
    srv = server_factory(users={}, start=False, config={
        "users": "pam", "pam_service": pam_service, "mail": "maildir:~/Maildir"})
    sock = os.path.join(srv.base, "lmtp.sock")
    srv.config["listen_lmtp"] = "unix:" + sock
    srv.config["lmtp_socket_owner"] = "postfix"
    srv.config["lmtp_socket_mode"] = "0600"
    srv.start()
    pf = postfix_instance.PostfixInstance(srv.base, free_port(), [
        "virtual_mailbox_domains = example.org",
        "virtual_mailbox_maps = static:ok",
        "virtual_transport = lmtp:unix:" + sock,
    ])
    sender = "sender@popbox.test"
    msgs = [("Subject: pf%d\r\nMessage-Id: <pf%d@popbox.test>\r\n\r\nline %d\r\n"
             ".leading dot\r\nGr\u00fc\u00dfe\r\n" % (i, i, i)).encode() for i in range(3)]
    try:
        pf.start()
        with pf.smtp() as s:
            for m in msgs:
                assert s.sendmail(sender, ["%s@example.org" % user], m) == {}
        wait_until(lambda: pf.queued() == 0 and os.path.isdir(new) and
                   len(os.listdir(new)) == before + 3, "Postfix delivering 3 messages")
    finally:
        pf.stop()
    for p in files_under(os.path.join(pw.pw_dir, "Maildir")):
        assert os.lstat(p).st_uid == pw.pw_uid, p
    got = fetch_all(srv, user, PASSWORD)[before:]
    assert len(got) == 3
    # Postfix adds the headers a message lacks (From:, Date:); the body
    # comes through byte for byte
    by_body = {m.split(b"\r\n\r\n", 1)[1]: m.split(b"\r\n")[0] for m in msgs}
    for g in got:
        assert g.startswith(b"Return-Path: <%s>\r\nReceived: " % sender.encode()), g[:200]
        head, body = g.split(b"\r\n\r\n", 1)
        assert body in by_body and by_body[body] in head.split(b"\r\n"), g
        del by_body[body]


def test_concurrent_deliveries_as_the_recipients(server_factory, accounts, pam_service):  # noqa: F811
    """Eight LMTP connections at once, each five transactions to two users:
    delivery processes run side by side (and the master forks while others
    run); every message arrives once, as its user's file."""
    import threading
    m1, m2 = accounts["m1"], accounts["m2"]
    srv = lmtp_server(server_factory, pam_service, "mbox:/var/mail/%u", {"mbox_format": "mboxrd"})
    before = {u: len(python_mailbox_messages(os.path.join("/var/mail", u)))
              if os.path.exists(os.path.join("/var/mail", u)) else 0 for u in (m1, m2)}
    errors = []

    def client(k):
        try:
            with LMTPRaw(srv.lmtp_port) as conn:
                assert conn.lhlo()[0] == 250
                for i in range(5):
                    body = b"Subject: c%d-%d\n\nconcurrent %d %d\n" % (k, i, k, i)
                    _, rr, _, done = lmtp_transaction(conn, "c@example.org", [m1, m2], body)
                    assert [r[0] for r in rr] == [250, 250], rr
                    assert [d[0] for d in done] == [250, 250], done
        except Exception as e:    # noqa: BLE001 (reported below)
            errors.append(repr(e))
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for u in (m1, m2):
        spool = os.path.join("/var/mail", u)
        assert os.stat(spool).st_uid == pwd.getpwnam(u).pw_uid
        subjects = [m["Subject"] for m in __import__("mailbox").mbox(spool)]
        new = sorted(s for s in subjects if s.startswith("c"))
        assert new == sorted("c%d-%d" % (k, i) for k in range(8) for i in range(5)), u
        assert len(subjects) == before[u] + 40
