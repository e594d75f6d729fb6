"""users = pam: Unix accounts log in through PAM (docs/DESIGN.md, "Unix
users: PAM"; popboxd.conf(5)).

Root only (CI runs as root): the test creates real accounts with useradd
(prefix "pbt", a random part), sets their passwords with chpasswd (pam_unix
checks them against /etc/shadow), installs contrib/pam.d/popbox under a
service name of its own and removes all of it at the end, even on failure.
"""

import os
import pwd
import secrets
import shutil
import statistics
import subprocess
import time

import pytest

from popbox_server import REPO, fresh_source
from unix_accounts import PASSWORD, Accounts, run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates Unix accounts: root only (CI)")

FAIL = b"-ERR [AUTH] Authentication failed"
# Timing samples per kind: 5 users of each kind, 4 wrong passwords each
# (the per-user penalty counts from a user's 6th failure).
TIMING_USERS = 5
TIMING_ROUNDS = 4


@pytest.fixture(scope="module")
def accounts():
    acc = Accounts()
    try:
        yield acc
    finally:
        acc.remove_all()


@pytest.fixture(scope="module")
def pam_service():
    """contrib/pam.d/popbox (what make install puts in /etc/pam.d) under a
    name of this run's own."""
    name = "popbox-test-" + secrets.token_hex(4)
    path = os.path.join("/etc/pam.d", name)
    shutil.copyfile(os.path.join(REPO, "contrib", "pam.d", "popbox"), path)
    try:
        yield name
    finally:
        os.unlink(path)


@pytest.fixture(scope="module")
def users(accounts):
    u = {
        "ok": accounts.add("ok"),
        "locked": accounts.add("locked"),
        "expired": accounts.add("expired"),
        "system": accounts.add("sys", system=True),
        "denied": accounts.add("denied"),
    }
    run("usermod", "--lock", u["locked"])
    run("chage", "--expiredate", "1970-01-02", u["expired"])
    assert pwd.getpwnam(u["system"]).pw_uid < 1000
    assert pwd.getpwnam(u["ok"]).pw_uid >= 1000
    return u


def own_maildir(srv, user, mode=None):
    """user's Maildir in srv's tree, owned by user (as an MDA running as the
    user makes it): with users = pam each session runs as its user
    (session_process = auto, test_server_peruser.py). mode: of its
    directories."""
    pw = pwd.getpwnam(user)
    top = srv.maildir(user)
    for root, dirs, files in os.walk(top):
        for name in [root] + [os.path.join(root, f) for f in files]:
            os.chown(name, pw.pw_uid, pw.pw_gid)
        if mode is not None:
            os.chmod(root, mode)
    return top


def pam_server(server_factory, service, users, extra=None, messages=None):
    """messages: {user: [message]} delivered before the start; every
    account in users gets a Maildir of its own."""
    config = {"users": "pam", "pam_service": service, "deny_users": users["denied"] + " nobody"}
    config.update(extra or {})
    srv = server_factory(users={}, config=config, start=False)
    for user, msgs in (messages or {}).items():
        for m in msgs:
            srv.deliver(m, user=user)
    for user in users.values():
        own_maildir(srv, user)
    srv.start()
    return srv


def login(srv, user, password=PASSWORD):
    """The answer to PASS, from a fresh source (no penalty of earlier
    failures)."""
    with srv.connect(source=fresh_source()) as c:
        st = c.cmd("USER " + user)
        assert st.startswith(b"+OK"), st
        st = c.cmd("PASS " + password)
        if st.startswith(b"+OK"):
            c.quit()
        return st


def test_pam_logins_ok_and_refused(server_factory, pam_service, users):
    """The right password of an ordinary account logs in (poplib, with a
    message in its Maildir); a wrong password, an unknown user, a locked
    account, an expired one, a uid below first_valid_uid, a name in
    deny_users and root all get the same answer."""
    srv = pam_server(server_factory, pam_service, users,
                     messages={users["ok"]: [b"Subject: hi\n\nfrom PAM\n"]})
    p = srv.poplib()
    p.user(users["ok"])
    p.pass_(PASSWORD)
    assert p.stat()[0] == 1
    assert b"from PAM" in b"\n".join(p.retr(1)[1])
    p.quit()
    refused = {
        "wrong password": (users["ok"], "wrong"),
        "unknown": (users["ok"] + "x", PASSWORD),
        "locked": (users["locked"], PASSWORD),
        "expired": (users["expired"], PASSWORD),
        "uid below first_valid_uid": (users["system"], PASSWORD),
        "deny_users": (users["denied"], PASSWORD),
        "root": ("root", PASSWORD),
    }
    for why, (user, password) in refused.items():
        assert login(srv, user, password) == FAIL, why
    log = srv.log()
    assert "%s refused: uid" % users["system"] in log
    assert "%s refused: uid" % users["denied"] in log
    assert PASSWORD not in log


def test_pam_first_valid_uid_setting(server_factory, pam_service, users):
    """first_valid_uid = 0 lets the system account in (it is the setting
    that refused it above, not PAM)."""
    srv = pam_server(server_factory, pam_service, users, {"first_valid_uid": "0"})
    assert login(srv, users["system"]).startswith(b"+OK")


def test_pam_sasl_plain_and_login_only(server_factory, pam_service, users):
    """CAPA offers SASL PLAIN LOGIN only (PAM has no secrets for SCRAM or
    APOP); AUTH PLAIN and AUTH LOGIN log in; SCRAM is refused."""
    import base64
    srv = pam_server(server_factory, pam_service, users)
    with srv.connect(source=fresh_source()) as c:
        st, body = c.multi("CAPA")
        sasl = [l for l in body.split(b"\r\n") if l.startswith(b"SASL")]
        assert sasl == [b"SASL PLAIN LOGIN"], body
        assert c.cmd("AUTH SCRAM-SHA-256").startswith(b"-ERR")
        token = base64.b64encode(b"\0" + users["ok"].encode() + b"\0" + PASSWORD.encode())
        assert c.cmd(b"AUTH PLAIN " + token).startswith(b"+OK")
        c.quit()
    with srv.connect(source=fresh_source()) as c:
        assert c.cmd("AUTH LOGIN").startswith(b"+ ")
        assert c.cmd(base64.b64encode(users["ok"].encode())).startswith(b"+ ")
        assert c.cmd(base64.b64encode(PASSWORD.encode())).startswith(b"+OK")
        c.quit()


def test_pam_config_check(server_factory, pam_service, users):
    """popboxd -t refuses what PAM cannot do."""
    srv = pam_server(server_factory, pam_service, users)
    for line, problem in (("apop = yes", "apop = yes needs stored secrets"),
                          ("auth_mechanisms = SCRAM-SHA-256 PLAIN", "SCRAM-SHA-256 needs stored secrets")):
        srv.write_config(extra_lines=[line])
        r = subprocess.run(srv.command("-t"), capture_output=True, timeout=60)
        assert r.returncode != 0 and problem.encode() in r.stderr, r.stderr


def test_pam_refused_uid_costs_as_much_as_a_wrong_password(server_factory, pam_service, accounts,
                                                           users):
    """A refused account (uid below first_valid_uid, or in deny_users) with
    its right password answers like a wrong password of an ordinary
    account, and as late: the medians of 20 interleaved samples of each are
    within a factor 2 (both run one PAM check)."""
    kinds = {"wrong": [], "system": [], "denied": []}
    names = {k: [] for k in kinds}
    for i in range(TIMING_USERS):
        names["wrong"].append(accounts.add("tw%d" % i))
        names["system"].append(accounts.add("ts%d" % i, system=True))
        names["denied"].append(accounts.add("td%d" % i))
    srv = pam_server(server_factory, pam_service, users,
                     {"deny_users": " ".join(names["denied"])})
    for r in range(TIMING_ROUNDS):
        for i in range(TIMING_USERS):
            for kind in kinds:
                with srv.connect(source=fresh_source()) as c:
                    assert c.cmd("USER " + names[kind][i]).startswith(b"+OK")
                    t0 = time.monotonic()
                    st = c.cmd("PASS " + ("wrong" if kind == "wrong" else PASSWORD))
                    kinds[kind].append(time.monotonic() - t0)
                    assert st == FAIL, (kind, st)
    base = statistics.median(kinds["wrong"])
    for kind in ("system", "denied"):
        ratio = statistics.median(kinds[kind]) / base
        assert 0.5 < ratio < 2, "%s/wrong median ratio %.3f: %r" % (kind, ratio, kinds)
