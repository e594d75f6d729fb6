"""popboxd SASL AUTH (RFC 5034, issue 3): PLAIN, LOGIN, SCRAM-SHA-256/1 with
{SCRAM-SHA-256} and {PLAIN} secrets (a SCRAM client here checks the server
signature too), SCRAM-SHA-256-PLUS with tls-exporter channel binding over TLS
1.3, errors (wrong proof, "*", bad base64, unknown mechanism, unknown user),
the failed-login penalty, and `popbox hash` secrets accepted by popboxd and
by Dovecot.

Every connection comes from its own 127.x source address (fresh_source), so
a deliberate failure in one check does not slow the next one down.
"""

import base64
import hashlib
import hmac
import os
import shutil
import subprocess
import time

import pytest

from popbox_server import build_dir, peer_lines, wait_until, wire_form
from test_server_tls_lib import (PKI, CMD_TIMEOUT, b64, unb64, plain_connect_stls, scram_login,
                                 scram_secret, tls_connect, tls_exporter, tls_server)

MSG = b"From: a@example.org\nSubject: sasl\n\nbody\n.dot\n"
FAILED = b"-ERR [AUTH] Authentication failed"


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed for the TLS tests")
    return PKI(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def ssrv(server_factory, pki):
    """popboxd with TLS and sasl_channel_binding = yes (the -PLUS tests
    need it), users alice ({PLAIN}secret) and bob (a {SCRAM-SHA-256} secret
    for "bob pw"), one message each."""
    srv = tls_server(server_factory, pki, config={"sasl_channel_binding": "yes"}, start=False)
    srv.add_user("bob", scram_secret("bob pw"), scheme="RAW")
    srv.deliver(MSG)
    srv.deliver(MSG, user="bob")
    srv.start()
    return srv


def logged_in(c, st):
    assert st.startswith(b"+OK Logged in"), st
    assert c.retr(1) == wire_form(MSG)
    assert c.quit().startswith(b"+OK")


def continuation(st):
    assert st.startswith(b"+ ") or st == b"+", st
    return unb64(st[2:]) if len(st) > 2 else b""


# ------------------------------------------------------------------ listing

def test_auth_without_argument_lists_mechanisms(ssrv):
    c = ssrv.connect()
    try:
        st, body = c.multi("AUTH")
        assert st.startswith(b"+OK"), st
        mechs = body.decode().split()
        assert mechs == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN"], mechs
        st, body = c.multi("CAPA")
        assert b"\r\nSASL SCRAM-SHA-256 SCRAM-SHA-1 PLAIN LOGIN\r\n" in b"\r\n" + body
        assert b"AUTH-RESP-CODE\r\n" in body
        c.login()
        c.quit()
    finally:
        c.close()


# ------------------------------------------------------------------ PLAIN, LOGIN

@pytest.mark.parametrize("user,password", [("alice", "secret"), ("bob", "bob pw")])
def test_plain_with_initial_response(ssrv, user, password):
    """AUTH PLAIN works with {PLAIN} and {SCRAM-SHA-256} secrets."""
    with ssrv.connect() as c:
        logged_in(c, c.cmd("AUTH PLAIN " + b64("\0%s\0%s" % (user, password))))


def test_plain_without_initial_response(ssrv):
    with ssrv.connect() as c:
        assert continuation(c.cmd("AUTH PLAIN")) == b""
        logged_in(c, c.cmd(b64("\0alice\0secret")))


def test_plain_authzid_same_user_and_lowercase_mechanism(ssrv):
    with ssrv.connect() as c:
        logged_in(c, c.cmd("AUTH plain " + b64("alice\0alice\0secret")))


def test_plain_empty_initial_response(ssrv):
    """"=" is an empty initial response (RFC 5034 §4): for PLAIN that is a
    failed login, answered, not a hang; the session goes on."""
    with ssrv.connect() as c:
        st = c.cmd("AUTH PLAIN =")
        assert st.startswith(b"-ERR") or st.startswith(b"+ "), st
        if st.startswith(b"+ "):       # a server may also ask again
            st = c.cmd("*")
        assert st.startswith(b"-ERR"), st


def test_plain_wrong_password_and_unknown_user_look_alike(ssrv):
    answers = []
    for creds in ("\0alice\0wrong", "\0nosuchuser\0secret"):
        with ssrv.connect() as c:
            answers.append(c.cmd("AUTH PLAIN " + b64(creds)))
            assert c.cmd("STAT").startswith(b"-ERR")
    assert answers[0] == answers[1] == FAILED, answers


def test_login_mechanism(ssrv):
    with ssrv.connect() as c:
        continuation(c.cmd("AUTH LOGIN"))
        continuation(c.cmd(b64("alice")))
        logged_in(c, c.cmd(b64("secret")))


def test_login_with_initial_response(ssrv):
    """An initial response to LOGIN is the user name (as Dovecot and Cyrus
    take it): the next challenge asks for the password. Refusing the initial
    response with -ERR would be acceptable too; silently dropping it and
    asking for the user name again is not (the client would send its
    password as the user name)."""
    with ssrv.connect() as c:
        st = c.cmd("AUTH LOGIN " + b64("bob"))
        if st.startswith(b"-ERR"):
            return
        prompt = continuation(st)
        assert b"user" not in prompt.lower(), \
            "initial response %r ignored, server asks for the user name again: %r" % (b64("bob"), st)
        logged_in(c, c.cmd(b64("bob pw")))


# ------------------------------------------------------------------ SCRAM

@pytest.mark.parametrize("initial", [True, False], ids=["initial-response", "no-initial-response"])
def test_scram_sha_256_with_scram_secret(ssrv, initial):
    with ssrv.connect() as c:
        st, sc, seen = scram_login(c, "bob", "bob pw", initial=initial)
        assert sc.server_signature is not None
        # the server signature was sent as "+ base64(v=...)" and checked
        assert any(s.startswith(b"+ ") and unb64(s[2:]).startswith(b"v=") for s in seen), seen
        logged_in(c, st)


def test_scram_sha_256_with_plain_secret(ssrv):
    with ssrv.connect() as c:
        st, _, _ = scram_login(c, "alice", "secret")
        logged_in(c, st)


def test_scram_sha_1_with_plain_secret(ssrv):
    with ssrv.connect() as c:
        st, _, _ = scram_login(c, "alice", "secret", mech="SCRAM-SHA-1")
        logged_in(c, st)


def test_scram_with_doveadm_secret(server_factory):
    """A secret made by Dovecot's `doveadm pw -s SCRAM-SHA-256` works."""
    if shutil.which("doveadm") is None:
        pytest.skip("doveadm is not installed")
    secret = subprocess.run(["doveadm", "pw", "-s", "SCRAM-SHA-256", "-p", "dove pw"],
                            capture_output=True, check=True, timeout=CMD_TIMEOUT).stdout.decode().strip()
    srv = server_factory(start=False)
    srv.add_user("carol", secret, scheme="RAW")
    srv.deliver(MSG, user="carol")
    srv.start()
    with srv.connect() as c:
        st, _, _ = scram_login(c, "carol", "dove pw")
        logged_in(c, st)
    with srv.connect() as c:
        c.login("carol", "dove pw")
        c.quit()


def test_scram_wrong_proof(ssrv):
    for user, password in (("bob", "bob pw"), ("alice", "secret"), ("bob", "not bob's")):
        with ssrv.connect() as c:
            st, sc, seen = scram_login(c, user, password, corrupt_proof=password != "not bob's")
            assert st == FAILED, seen
            # no server signature for a failed proof
            assert not any(s.startswith(b"+ ") and unb64(s[2:]).startswith(b"v=") for s in seen), seen
            assert c.cmd("STAT").startswith(b"-ERR")
    assert ssrv.alive()


def test_scram_unknown_user_gets_a_normal_challenge(ssrv):
    """For a user who does not exist the server answers the client-first
    message with an ordinary challenge (iterations, salt, nonce), the same
    salt each time (no probing by comparing salts), and fails only at the
    proof, with the same text as a wrong password."""
    salts = []
    for _ in range(2):
        with ssrv.connect() as c:
            st, sc, seen = scram_login(c, "nosuchuser", "whatever")
            first = unb64(seen[0][2:]).decode()
            attrs = dict(a.split("=", 1) for a in first.split(","))
            assert int(attrs["i"]) >= 4096 and base64.b64decode(attrs["s"]), first
            salts.append(attrs["s"])
            assert st == FAILED, seen
    assert salts[0] == salts[1]
    with ssrv.connect() as c:
        st, sc, seen = scram_login(c, "bob", "wrong")
        assert st == FAILED


def test_scram_plus_not_offered_without_tls(ssrv):
    with ssrv.connect() as c:
        st = c.cmd("AUTH SCRAM-SHA-256-PLUS " + b64("p=tls-exporter,,n=alice,r=abcdefgh"))
        assert st.startswith(b"-ERR"), st
        c.login()
        c.quit()


def _exporter_or_skip(sock):
    try:
        return tls_exporter(sock)
    except RuntimeError as e:
        pytest.skip("cannot get the TLS exporter from Python's ssl: %s" % e)


@pytest.mark.parametrize("how", ["implicit", "stls"])
def test_scram_sha_256_plus_tls_exporter(ssrv, pki, how):
    """SCRAM-SHA-256-PLUS with tls-exporter channel binding (RFC 9266) over
    TLS 1.3; the binding data comes from OpenSSL's exporter on our side of
    the connection (ctypes, Python's ssl has no API for it)."""
    for user, password in (("bob", "bob pw"), ("alice", "secret")):
        c = tls_connect(ssrv, pki) if how == "implicit" else plain_connect_stls(ssrv, pki)
        try:
            assert c.sock.version() == "TLSv1.3"
            cb = _exporter_or_skip(c.sock)
            st, sc, seen = scram_login(c, user, password, mech="SCRAM-SHA-256-PLUS", cb_data=cb)
            assert st.startswith(b"+OK Logged in"), seen
            c.quit()
        finally:
            c.close()


def test_scram_plus_offered_over_tls_with_channel_binding(ssrv, pki):
    """sasl_channel_binding = yes: CAPA and AUTH over TLS list the -PLUS
    mechanisms."""
    c = tls_connect(ssrv, pki)
    try:
        st, body = c.multi("CAPA")
        assert b"\r\nSASL SCRAM-SHA-256-PLUS SCRAM-SHA-256 SCRAM-SHA-1-PLUS SCRAM-SHA-1 PLAIN LOGIN\r\n" \
            in b"\r\n" + body, body
        st, body = c.multi("AUTH")
        assert body.decode().split()[:2] == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"], body
    finally:
        c.close()


@pytest.fixture
def default_cb_server(server_factory, pki):
    """popboxd with TLS and sasl_channel_binding left at its default (no)."""
    srv = tls_server(server_factory, pki, start=False)
    srv.add_user("bob", scram_secret("bob pw"), scheme="RAW")
    srv.deliver(MSG)
    srv.deliver(MSG, user="bob")
    srv.start()
    return srv


@pytest.mark.parametrize("how", ["implicit", "stls"])
def test_channel_binding_off_by_default(default_cb_server, pki, how):
    """Without sasl_channel_binding no -PLUS mechanism is offered over TLS
    (mutt 2.2 picks one it cannot complete, see test_server_mutt.py), AUTH
    refuses them, and a SCRAM client's "y" flag (it could bind, but the
    server offers no -PLUS) is accepted, as RFC 5802 §6 requires."""
    srv = default_cb_server
    c = tls_connect(srv, pki) if how == "implicit" else plain_connect_stls(srv, pki)
    try:
        st, body = c.multi("CAPA")
        assert b"\r\nSASL SCRAM-SHA-256 SCRAM-SHA-1 PLAIN LOGIN\r\n" in b"\r\n" + body, body
        st, body = c.multi("AUTH")
        assert body.decode().split() == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN"], body
        st = c.cmd("AUTH SCRAM-SHA-256-PLUS " + b64("p=tls-exporter,,n=bob,r=abcdefgh"))
        assert st == b"-ERR Unsupported authentication mechanism", st
        st, sc, seen = scram_login(c, "bob", "bob pw", gs2_flag="y")
        assert st.startswith(b"+OK Logged in"), seen
        assert c.quit().startswith(b"+OK")
    finally:
        c.close()
    c = tls_connect(srv, pki)
    try:
        st, sc, seen = scram_login(c, "alice", "secret", gs2_flag="y")
        logged_in(c, st)
    finally:
        c.close()


def test_scram_plus_wrong_channel_binding(ssrv, pki):
    """Binding data of another TLS connection (a man in the middle) fails."""
    other = tls_connect(ssrv, pki)
    c = tls_connect(ssrv, pki)
    try:
        wrong = _exporter_or_skip(other.sock)
        assert wrong != _exporter_or_skip(c.sock)
        st, sc, seen = scram_login(c, "bob", "bob pw", mech="SCRAM-SHA-256-PLUS", cb_data=wrong)
        assert st == FAILED, seen
    finally:
        c.close()
        other.close()


def test_scram_downgrade_flag_y_refused_over_tls(ssrv, pki):
    """gs2 flag "y" (client could bind but thinks the server cannot) on a
    connection where the server offers -PLUS means a downgrade: refused
    (RFC 5802 §6)."""
    c = tls_connect(ssrv, pki)
    try:
        st, sc, seen = scram_login(c, "bob", "bob pw", gs2_flag="y")
        assert st.startswith(b"-ERR"), seen
    finally:
        c.close()
    # the same on a plain connection (no -PLUS offered) is fine
    with ssrv.connect() as c:
        st, sc, seen = scram_login(c, "bob", "bob pw", gs2_flag="y")
        logged_in(c, st)


# ------------------------------------------------------------------ errors

def failures(srv, addr):
    """The failed logins popboxd logged for the client address addr:
    popboxd(8) logs every failure with the peer address, and the
    failed-login penalty counts exactly these."""
    return [ln for ln in peer_lines(srv.log(), addr) if "login failed" in ln]


def logins(srv, addr):
    """The successful logins popboxd logged for addr (each resets its penalty)."""
    return [ln for ln in peer_lines(srv.log(), addr) if ": login user=" in ln]


def test_cancel_with_star(ssrv):
    """"*" cancels with -ERR at each step; the session stays usable. A cancel
    is answered as a cancel, never as a failed login. A cancel before the
    client gave any data is not counted as a failed login (none logged, so
    no penalty holds the login that follows); one after a challenge that
    answered its data is (test_server_auth_security.py)."""
    with ssrv.connect() as c:
        addr = c.sock.getsockname()[0]      # this connection's own (fresh_source)
        continuation(c.cmd("AUTH PLAIN"))
        st = c.cmd("*")
        assert st.startswith(b"-ERR"), "cancel must answer -ERR"
        assert st != FAILED, "a cancel answered as a failed login"
        continuation(c.cmd("AUTH SCRAM-SHA-256"))
        st = c.cmd("*")
        assert st.startswith(b"-ERR") and st != FAILED, st
        c.login()
        assert failures(ssrv, addr) == [], "a cancel before any data counted as a failed login"
        assert logins(ssrv, addr), ssrv.log()
        assert c.quit().startswith(b"+OK")
    with ssrv.connect() as c:
        continuation(c.cmd("AUTH LOGIN"))
        continuation(c.cmd(b64("alice")))
        st = c.cmd("*")
        assert st.startswith(b"-ERR") and st != FAILED, st
        st = c.cmd("AUTH SCRAM-SHA-256 " + b64("n,,n=bob,r=0123456789abcdef"))
        continuation(st)
        st = c.cmd("*")
        assert st.startswith(b"-ERR") and st != FAILED, st
        assert c.cmd("STAT").startswith(b"-ERR")
        c.login()
        assert c.quit().startswith(b"+OK")


def test_invalid_base64(ssrv):
    with ssrv.connect() as c:
        continuation(c.cmd("AUTH PLAIN"))
        st = c.cmd("not*base64!")
        assert st.startswith(b"-ERR"), st
        assert st.startswith(b"-ERR [AUTH]"), st
        # back in AUTHORIZATION: the next line is a command again
        assert c.cmd("NOOP").startswith(b"-ERR")
        st = c.cmd("AUTH PLAIN !!!!")
        assert st.startswith(b"-ERR"), st
    with ssrv.connect() as c:     # another address: no penalty from the above
        c.login()
        c.quit()


def test_unknown_mechanism(ssrv):
    with ssrv.connect() as c:
        for mech in ("X-UNKNOWN", "CRAM-MD5", "DIGEST-MD5", "GSSAPI", "A" * 100):
            st = c.cmd("AUTH " + mech)
            assert st.startswith(b"-ERR"), (mech, st)
        c.login()
        c.quit()


def test_cram_md5_only_when_listed(server_factory):
    srv = server_factory(config={"auth_mechanisms": "SCRAM-SHA-256 CRAM-MD5 PLAIN"}, start=False)
    srv.deliver(MSG)
    srv.start()
    with srv.connect() as c:
        st, body = c.multi("CAPA")
        assert b"SASL SCRAM-SHA-256 CRAM-MD5 PLAIN\r\n" in body, body
        challenge = continuation(c.cmd("AUTH CRAM-MD5"))
        assert challenge.startswith(b"<") and challenge.endswith(b">"), challenge
        digest = hmac.new(b"secret", challenge, hashlib.md5).hexdigest()
        logged_in(c, c.cmd(b64("alice " + digest)))
        # LOGIN is not listed: refused
    with srv.connect() as c:
        assert c.cmd("AUTH LOGIN").startswith(b"-ERR")
        assert c.cmd("AUTH SCRAM-SHA-1").startswith(b"-ERR")


# ------------------------------------------------------------------ penalty

def timed(c, line):
    t0 = time.monotonic()
    st = c.cmd(line)
    return st, time.monotonic() - t0


def test_failed_login_penalty(ssrv):
    """From one address: the first failure is answered at once, the second
    about 2 s later; a good login from another address is not slowed; a
    success resets the address (answers are fast again afterwards).

    No upper bound on time: the waits the penalty must impose are lower
    bounds (a loaded machine only lengthens them); where no wait may apply,
    the test checks what the penalty is computed from, the failures and
    successes popboxd counts per address, as it logs them before each
    answer (popboxd(8): every failure is logged with the peer address). How
    the wait follows from those counts (none before the first failure, 2 s
    doubling, per address, reset by a success) is tests/unit/test_auth_penalty.c."""
    from popbox_server import fresh_source
    bad = fresh_source()
    with ssrv.connect(source=bad) as c:
        st, t1 = timed(c, "AUTH PLAIN " + b64("\0alice\0wrong1"))
        assert st == FAILED
        # the first failure: nothing from this address counted before it
        assert len(failures(ssrv, bad)) == 1, failures(ssrv, bad)
        st, t2 = timed(c, "AUTH PLAIN " + b64("\0alice\0wrong2"))
        assert st == FAILED
    assert len(failures(ssrv, bad)) == 2, failures(ssrv, bad)
    # the penalty is 2 s, then 4 s (1.5, 3.0: the lower bounds, with slack
    # for timer granularity)
    assert t2 >= 1.5, "second failure answered after %.2fs (first %.2fs)" % (t2, t1)
    with ssrv.connect() as other:
        st = other.cmd("AUTH PLAIN " + b64("\0alice\0secret"))
        assert st.startswith(b"+OK"), st
        # another address: no failure counted for it, so nothing held it
        assert failures(ssrv, other.sock.getsockname()[0]) == []
        other.quit()
    # The penalty also applies to USER/PASS and to a correct password (no
    # oracle), then the success resets it.
    with ssrv.connect(source=bad) as c:
        assert c.cmd("USER alice").startswith(b"+OK")
        st, t3 = timed(c, "PASS secret")
        assert st.startswith(b"+OK"), st
        assert t3 >= 3.0, "third answer (after two failures) came after %.2fs" % t3
        c.quit()
    assert len(logins(ssrv, bad)) == 1, logins(ssrv, bad)     # the reset
    with ssrv.connect(source=bad) as c:
        st, t4 = timed(c, "AUTH PLAIN " + b64("\0alice\0wrong3"))
        assert st == FAILED
    # counted after the success: the first failure since the reset
    log = peer_lines(ssrv.log(), bad)
    after = log[max(k for k, ln in enumerate(log) if ": login user=" in ln):]
    assert sum("login failed" in ln for ln in after) == 1, log
    assert "127." in ssrv.log()


def test_failure_logged_with_peer(ssrv):
    from popbox_server import fresh_source
    src = fresh_source()
    with ssrv.connect(source=src) as c:
        assert c.cmd("AUTH PLAIN " + b64("\0alice\0wrong")) == FAILED
        c.quit()
    wait_until(lambda: src in ssrv.log(), "a log line naming %s" % src)
    lines = [l for l in ssrv.log().splitlines() if src in l]
    assert any("fail" in l.lower() for l in lines), lines
    assert not any("wrong" in l for l in lines), "the password is in the log: %r" % lines


# ------------------------------------------------------------------ popbox hash

def popbox_hash(scheme, password):
    cmd = [os.path.join(build_dir(), "popbox"), "hash"]
    if scheme:
        cmd += ["--scheme", scheme]
    r = subprocess.run(cmd, input=(password + "\n").encode(), capture_output=True, timeout=CMD_TIMEOUT)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip()


HASHES = [(None, "{SHA512-CRYPT}$6$"), ("SHA512-CRYPT", "{SHA512-CRYPT}$6$"),
          ("BLF-CRYPT", "{BLF-CRYPT}$2"), ("SCRAM-SHA-256", "{SCRAM-SHA-256}"), ("PLAIN", "{PLAIN}")]


@pytest.mark.parametrize("scheme,prefix", HASHES, ids=[h[0] or "default" for h in HASHES])
def test_popbox_hash_accepted_by_popboxd_and_dovecot(server_factory, scheme, prefix):
    password = "H4sh me, pl3ase"
    secret = popbox_hash(scheme, password)
    assert secret.startswith(prefix), secret
    assert "\n" not in secret and ":" not in secret.split("}", 1)[1] or scheme == "PLAIN"
    if shutil.which("doveadm"):
        r = subprocess.run(["doveadm", "pw", "-t", secret, "-p", password], capture_output=True,
                           timeout=CMD_TIMEOUT)
        assert r.returncode == 0 and b"verified" in r.stdout + r.stderr, (secret, r.stdout, r.stderr)
        r = subprocess.run(["doveadm", "pw", "-t", secret, "-p", password + "x"], capture_output=True,
                           timeout=CMD_TIMEOUT)
        assert r.returncode != 0
    srv = server_factory(start=False)
    srv.add_user("dave", secret, scheme="RAW")
    srv.deliver(MSG, user="dave")
    srv.start()
    with srv.connect() as c:
        c.login("dave", password)
        assert c.retr(1) == wire_form(MSG)
        c.quit()
    with srv.connect() as c:
        logged_in(c, c.cmd("AUTH PLAIN " + b64("\0dave\0" + password)))
    with srv.connect() as c:
        assert c.cmd("USER dave").startswith(b"+OK")
        assert c.cmd("PASS " + password + "x") == FAILED
    if scheme == "SCRAM-SHA-256":
        with srv.connect() as c:
            st, _, _ = scram_login(c, "dave", password)
            logged_in(c, st)


def test_popbox_hash_scram_format():
    secret = popbox_hash("SCRAM-SHA-256", "pw")
    iters, salt, stored, server = secret[len("{SCRAM-SHA-256}"):].split(",")
    assert int(iters) >= 4096
    salt = base64.b64decode(salt)
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", salt, int(iters))
    ck = hmac.new(salted, b"Client Key", "sha256").digest()
    assert base64.b64decode(stored) == hashlib.sha256(ck).digest()
    assert base64.b64decode(server) == hmac.new(salted, b"Server Key", "sha256").digest()
    # two runs: different salts
    assert popbox_hash("SCRAM-SHA-256", "pw") != secret
