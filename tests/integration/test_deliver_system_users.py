"""`popbox deliver` with users = pam (issue 13 item 4, system users): the
recipient is a real Unix account (tests/integration/unix_accounts.py) and
the message is delivered as that account, into /var/mail/USER (Debian:
root:mail 2775, spools USER:mail) or into ~/Maildir. Started as root it
becomes the recipient with group mail for the dot-lock; started as the
recipient (Postfix's mailbox_command) it delivers as it is; started as
anyone else it refuses (78) and writes nothing. The spool is read back
over POP3 through popboxd's session process as the user, and with
Python's mailbox. Root only."""

import grp
import os
import pwd
import secrets
import shutil
import subprocess

import pytest

from mailin import popbox_path
from popbox_server import REPO, RUNAWAY_SEC, wire_form
from test_server_mbox import python_mailbox_messages
from unix_accounts import PASSWORD, Accounts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (accounts, /var/mail, PAM)")


@pytest.fixture(scope="module")
def accounts():
    acc = Accounts()
    names = []
    try:
        names.append(acc.add("dv", home="/home/" + acc.prefix + "dv"))
        names.append(acc.add("ot"))
        yield names
    finally:
        for n in names:
            for f in os.listdir("/var/mail"):
                if f == n or f.startswith(n + "."):
                    os.unlink(os.path.join("/var/mail", f))
            shutil.rmtree("/home/" + n, ignore_errors=True)
        acc.remove_all()


@pytest.fixture(scope="module")
def pam_service():
    name = "popbox-test-" + secrets.token_hex(4)
    path = os.path.join("/etc/pam.d", name)
    shutil.copyfile(os.path.join(REPO, "contrib", "pam.d", "popbox"), path)
    try:
        yield name
    finally:
        os.unlink(path)


def as_user(name, groups=None):
    pw = pwd.getpwnam(name)

    def drop():
        os.setgroups(groups if groups is not None else [pw.pw_gid])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    return drop


def run_deliver(conf, user, data, *args, preexec=None):
    return subprocess.run([popbox_path(), "deliver", "-c", conf] + list(args) + [user],
                          input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=RUNAWAY_SEC, preexec_fn=preexec)


def test_deliver_into_var_mail_as_the_recipient(server_factory, accounts, pam_service):
    user, other = accounts
    spool = os.path.join("/var/mail", user)
    srv = server_factory(users={}, start=False, config={
        "users": "pam", "pam_service": pam_service, "mail": "mbox:/var/mail/%u", "lock_wait": "2"})
    srv.start()
    srv.write_config()
    os.chmod(srv.conf_path, 0o644)
    for d in (srv.base, os.path.dirname(srv.conf_path)):
        os.chmod(d, 0o755)
    body1 = b"Subject: one\n\nFrom the top\n8-bit \xe9\xff\n"
    # started as root (as an MTA's transport may run it): the spool is
    # created by the recipient, group mail from the set-group-id directory
    r = run_deliver(srv.conf_path, user, body1, "-f", "a@example.org")
    assert r.returncode == 0, r.stderr
    st = os.stat(spool)
    assert st.st_uid == pwd.getpwnam(user).pw_uid and st.st_gid == grp.getgrnam("mail").gr_gid
    # Debian's convention for an existing spool: USER:mail 0660
    os.chmod(spool, 0o660)
    # started as the recipient with group mail (Postfix's mailbox_command
    # runs as the recipient; group mail lets it dot-lock in /var/mail)
    body2 = b"Subject: two\n\nno final newline"
    mail_gid = grp.getgrnam("mail").gr_gid
    r = run_deliver(srv.conf_path, user + "+tag", body2, "-f", "b@example.org",
                    preexec=as_user(user, [pwd.getpwnam(user).pw_gid, mail_gid]))
    assert r.returncode == 67, (r.returncode, r.stderr)   # no recipient_delimiter set
    r = run_deliver(srv.conf_path, user, body2, "-f", "b@example.org",
                    preexec=as_user(user, [pwd.getpwnam(user).pw_gid, mail_gid]))
    assert r.returncode == 0, r.stderr
    before = open(spool, "rb").read()
    # started as the recipient without group mail: nothing can be made in
    # /var/mail (journal, dot-lock): a configuration error (78; Postfix
    # keeps the mail: 4.3.5), named, nothing written
    r = run_deliver(srv.conf_path, user, b"Subject: x\n\nx\n", preexec=as_user(user))
    assert r.returncode == 78 and b"Permission denied" in r.stderr, (r.returncode, r.stderr)
    assert open(spool, "rb").read() == before
    # started as another (non-root) user: refused, nothing written
    r = run_deliver(srv.conf_path, user, b"Subject: x\n\nx\n", preexec=as_user(other))
    assert r.returncode == 78 and b"not as the recipient" in r.stderr, (r.returncode, r.stderr)
    # unknown, root and system accounts are no recipients
    for name in ("nobody-" + secrets.token_hex(3), "root", "daemon"):
        r = run_deliver(srv.conf_path, name, b"Subject: x\n\nx\n")
        assert r.returncode == 67, (name, r.returncode, r.stderr)
    assert open(spool, "rb").read() == before
    assert oct(os.stat(spool).st_mode & 0o777) == "0o660"
    assert not [f for f in os.listdir("/var/mail") if f.startswith(user + ".") and "lock" in f]
    got = python_mailbox_messages(spool)
    assert len(got) == 2
    assert b"\n\nFrom b@example.org " in before and before.startswith(b"From a@example.org ")
    # read back over POP3: popboxd's session process runs as the user
    c = srv.connect()
    try:
        c.login(user, PASSWORD)
        assert c.stat()[0] == 2
        assert c.retr(1) == wire_form(b"Return-Path: <a@example.org>\n" + body1)
        assert c.retr(2) == wire_form(b"Return-Path: <b@example.org>\n" + body2)
        c.quit()
    finally:
        c.close()
    srv.stop()


def test_deliver_into_the_home_maildir_as_the_recipient(server_factory, accounts, pam_service):
    user, _ = accounts
    home = pwd.getpwnam(user).pw_dir
    srv = server_factory(users={}, start=False, config={
        "users": "pam", "pam_service": pam_service, "mail": "maildir:~/Maildir"})
    srv.start()
    srv.write_config()
    os.chmod(srv.conf_path, 0o644)
    os.chmod(srv.base, 0o755)
    r = run_deliver(srv.conf_path, user, b"Subject: m\n\nhello\n")
    assert r.returncode == 0, r.stderr
    new = os.path.join(home, "Maildir", "new")
    files = os.listdir(new)
    assert len(files) == 1
    uid = pwd.getpwnam(user).pw_uid
    assert os.stat(os.path.join(new, files[0])).st_uid == uid
    assert os.stat(os.path.join(home, "Maildir")).st_uid == uid
    srv.stop()
