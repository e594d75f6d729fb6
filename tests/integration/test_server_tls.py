"""popboxd TLS (issue 3): implicit TLS (listen_tls) and STLS, checked with
real clients (openssl s_client, curl, poplib, mpop, fetchmail) that each
retrieve a message byte-exact; STLS injection; the plaintext_auth policy;
certificate reload on SIGHUP; key file permissions; `popboxd -t`.

A throw-away CA and server certificates (SAN DNS:localhost, IP:127.0.0.1) are
made once per session with the openssl command. Everything is on loopback;
every external command has a timeout; servers are stopped by PID (fixtures).
"""

import os
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from popbox_server import RUNAWAY_SEC, fresh_source, wire_form, dot_stuff_inverse, wait_until
from test_server_tls_lib import (PKI, CMD_TIMEOUT, b64, install_cert, plain_connect_stls,
                                 readable_within, served_fingerprint, starttls, tls_connect,
                                 tls_server, client_context)

# Lines starting with dots (stuffing), an empty line, a CR-less file end: the
# wire form has CRLF everywhere.
MSG = (b"From: sender@example.org\nTo: alice@example.org\nSubject: TLS test\n"
       b"Message-ID: <tls-test@example.org>\n\nfirst line\n.dotted line\n..two dots\n\n"
       b"From the middle\nlast line\n")


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed for the TLS tests")
    return PKI(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def tsrv(server_factory, pki):
    """A started popboxd with listen_tls, tls_cert/tls_key and one message
    for alice."""
    srv = tls_server(server_factory, pki, start=False)
    srv.deliver(MSG)
    srv.start()
    return srv


def capa(c):
    st, body = c.multi("CAPA")
    assert st.startswith(b"+OK"), st
    return [l for l in body.decode().split("\r\n") if l]


def sasl_mechs(caps):
    for l in caps:
        if l.startswith("SASL "):
            return l.split()[1:]
    return []


def need(tool):
    if shutil.which(tool) is None:
        pytest.skip("%s is not installed" % tool)


def retr_from_transcript(out):
    """Unstuffed octets of the single RETR answer in a POP3 transcript."""
    m = re.search(rb"\+OK \d+ octets\r\n", out)
    assert m, "no RETR answer in %r" % out[:2000]
    end = out.find(b"\r\n.\r\n", m.end() - 2)
    assert end >= 0, "unterminated RETR answer in %r" % out[:2000]
    return dot_stuff_inverse(out[m.end():end + 2])


# ------------------------------------------------------------------ raw TLS

def test_implicit_tls_alpn_and_capa(tsrv, pki):
    """TLS 1.3 by default, ALPN "pop3" accepted, CAPA on TLS: no STLS, USER
    and SASL PLAIN/LOGIN offered, the -PLUS variants not (not without
    sasl_channel_binding = yes, test_server_sasl.py)."""
    c = tls_connect(tsrv, pki, alpn=["pop3"])
    try:
        assert c.greeting.startswith(b"+OK")
        assert c.sock.version() == "TLSv1.3"
        assert c.sock.selected_alpn_protocol() == "pop3"
        caps = capa(c)
        assert "STLS" not in caps
        assert "USER" in caps
        assert "AUTH-RESP-CODE" in caps
        mechs = sasl_mechs(caps)
        for m in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN"):
            assert m in mechs, caps
        assert not any(m.endswith("-PLUS") for m in mechs), caps
        assert "CRAM-MD5" not in mechs
        st = c.cmd("STLS")
        assert st.startswith(b"-ERR"), st
        c.login()
        assert c.retr(1) == wire_form(MSG)
        c.quit()
    finally:
        c.close()


def test_tls_min_version(server_factory, pki):
    """TLS 1.2 is accepted by default; tls_min_version = TLSv1.3 refuses it."""
    srv = tls_server(server_factory, pki)
    c = tls_connect(srv, pki, max_version=ssl.TLSVersion.TLSv1_2)
    assert c.sock.version() == "TLSv1.2"
    c.login()
    c.quit()
    c.close()
    srv13 = tls_server(server_factory, pki, config={"tls_min_version": "TLSv1.3"})
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_connect(srv13, pki, max_version=ssl.TLSVersion.TLSv1_2)
    c = tls_connect(srv13, pki)
    assert c.sock.version() == "TLSv1.3"
    c.close()


def test_tls_close_notify_after_quit(tsrv, pki):
    """After QUIT the server ends TLS with close_notify before closing TCP
    (RFC 8446 §6.1 MUST; without it a client cannot tell the end of the
    session from a truncation)."""
    for how in ("implicit", "stls"):
        ctx = client_context(pki)
        ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
        if how == "implicit":
            c = tls_connect(tsrv, pki, ctx=ctx, strict_eof=True)
        else:
            c = plain_connect_stls(tsrv, pki, ctx=ctx, strict_eof=True)
        try:
            st = c.cmd("QUIT")
            assert st.startswith(b"+OK"), st
            try:
                rest = c.sock.recv(4096)
            except ssl.SSLError as e:
                pytest.fail("%s TLS: connection closed without close_notify after QUIT (%s)" % (how, e))
            assert rest == b""
        finally:
            c.close()


# ------------------------------------------------------------------ openssl s_client

def s_client(args, commands, timeout=CMD_TIMEOUT):
    r = subprocess.run(["openssl", "s_client", "-quiet", "-verify_return_error",
                        "-verify_hostname", "localhost", "-servername", "localhost"] + args,
                       input=commands, capture_output=True, timeout=timeout)
    return r.stdout, r.stderr.decode(errors="replace")


def test_openssl_s_client_implicit_tls(tsrv, pki):
    out, err = s_client(["-connect", "127.0.0.1:%d" % tsrv.tls_port, "-CAfile", pki.ca_cert,
                         "-alpn", "pop3"],
                        b"USER alice\r\nPASS secret\r\nRETR 1\r\nQUIT\r\n")
    assert out.startswith(b"+OK"), (out, err)
    assert b"+OK Logged in" in out, (out, err)
    assert retr_from_transcript(out) == wire_form(MSG)
    assert out.endswith(b"+OK Bye, 0 messages deleted\r\n"), out[-200:]


def test_openssl_s_client_starttls(tsrv, pki):
    out, err = s_client(["-starttls", "pop3", "-connect", "127.0.0.1:%d" % tsrv.port,
                         "-CAfile", pki.ca_cert],
                        b"CAPA\r\nUSER alice\r\nPASS secret\r\nRETR 1\r\nQUIT\r\n")
    # s_client consumed the greeting and the STLS answer; CAPA is the first
    # answer on TLS and must not offer STLS again.
    assert out.startswith(b"+OK Capability list follows\r\n"), (out, err)
    caps = out.split(b"\r\n.\r\n", 1)[0]
    assert b"\r\nSTLS\r\n" not in caps and b"\r\nUSER\r\n" in caps
    assert b"+OK Logged in" in out
    assert retr_from_transcript(out) == wire_form(MSG)


# ------------------------------------------------------------------ curl

def curl(args, timeout=CMD_TIMEOUT):
    r = subprocess.run(["curl", "-sS", "--max-time", "%d" % RUNAWAY_SEC,
                        "--interface", fresh_source()] + args,
                       capture_output=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


def test_curl_pop3s(tsrv, pki):
    need("curl")
    rc, out, err = curl(["--cacert", pki.ca_cert, "-u", "alice:secret",
                         "pop3s://127.0.0.1:%d/1" % tsrv.tls_port])
    assert rc == 0, err
    assert out == wire_form(MSG)


def test_curl_ssl_reqd_stls(tsrv, pki):
    need("curl")
    rc, out, err = curl(["--ssl-reqd", "--cacert", pki.ca_cert, "-u", "alice:secret",
                         "pop3://127.0.0.1:%d/1" % tsrv.port])
    assert rc == 0, err
    assert out == wire_form(MSG)


def test_curl_refuses_wrong_ca(tsrv, pki):
    """The certificate is really checked: with the system CAs curl refuses."""
    need("curl")
    rc, out, err = curl(["-u", "alice:secret", "pop3s://127.0.0.1:%d/1" % tsrv.tls_port])
    assert rc != 0 and out == b""


# ------------------------------------------------------------------ poplib

def test_poplib_pop3_ssl(tsrv, pki):
    import poplib
    source = fresh_source()
    ctx = client_context(pki)

    class POP3S(poplib.POP3_SSL):
        def _create_socket(self, timeout):
            sock = socket.create_connection((self.host, self.port), timeout,
                                            source_address=(source, 0))
            return self.context.wrap_socket(sock, server_hostname=self.host)

    p = POP3S("127.0.0.1", tsrv.tls_port, context=ctx, timeout=RUNAWAY_SEC)
    try:
        assert "STLS" not in p.capa()
        p.user("alice")
        p.pass_("secret")
        resp, lines, octets = p.retr(1)
        assert b"".join(l + b"\r\n" for l in lines) == wire_form(MSG)
        p.quit()
    finally:
        p.close()


def test_poplib_stls(tsrv, pki):
    p = tsrv.poplib()
    try:
        assert "STLS" in p.capa()
        p.stls(context=client_context(pki))
        caps = p.capa()
        assert "STLS" not in caps and "USER" in caps
        p.user("alice")
        p.pass_("secret")
        resp, lines, octets = p.retr(1)
        assert b"".join(l + b"\r\n" for l in lines) == wire_form(MSG)
        p.quit()
    finally:
        p.close()


# ------------------------------------------------------------------ mpop, fetchmail

def test_mpop_tls_scram_sha_256(server_factory, pki, tmp_path):
    """mpop over implicit TLS, certificate checked against the test CA
    (tls_trust_file), AUTH SCRAM-SHA-256 against a {SCRAM-SHA-256} secret."""
    need("mpop")
    from test_server_tls_lib import scram_secret
    srv = tls_server(server_factory, pki, users={"alice": "x"}, start=False)
    srv.add_user("alice", scram_secret("s3cret pw"), scheme="RAW")
    srv.deliver(MSG)
    srv.start()
    out = tmp_path / "mpop.out"
    rc = tmp_path / "mpoprc"
    rc.write_text("\n".join([
        "account test",
        "host 127.0.0.1",
        "port %d" % srv.tls_port,
        "timeout %d" % RUNAWAY_SEC,
        "tls on",
        "tls_starttls off",
        "tls_trust_file %s" % pki.ca_cert,
        "auth scram-sha-256",
        "user alice",
        "password s3cret pw",
        "keep on",
        "only_new off",
        "received_header off",
        "uidls_file %s" % (tmp_path / "uidls"),
        "delivery mda \"cat > %s\"" % out,
        ""]))
    os.chmod(rc, 0o600)
    r = subprocess.run(["mpop", "-C", str(rc), "--quiet", "test"], capture_output=True,
                       timeout=CMD_TIMEOUT, env=dict(os.environ, HOME=str(tmp_path)))
    assert r.returncode == 0, (r.stdout, r.stderr)
    # mpop delivers with LF line ends: the stored message exactly.
    assert out.read_bytes() == MSG
    assert "login user=alice" in srv.log()


def test_fetchmail_ssl_sslcertck(tsrv, pki, tmp_path):
    need("fetchmail")
    out = tmp_path / "fetchmail.out"
    rc = tmp_path / "fetchmailrc"
    # fetchmail checks the certificate against the poll name (no IP SANs):
    # poll "localhost", which /etc/hosts maps to 127.0.0.1.
    rc.write_text('set no syslog\n'
                  'poll localhost with proto POP3 port %d timeout %d\n'
                  '  user "alice" there with password "secret" is "root" here\n'
                  '  options keep\n' % (tsrv.tls_port, RUNAWAY_SEC))
    os.chmod(rc, 0o600)
    r = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "--ssl", "--sslcertck",
                        "--sslcertfile", pki.ca_cert, "--invisible", "--mda", "cat > %s" % out],
                       capture_output=True, timeout=CMD_TIMEOUT,
                       env=dict(os.environ, FETCHMAILHOME=str(tmp_path), HOME=str(tmp_path)))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert out.read_bytes() == MSG


# ------------------------------------------------------------------ STLS

def test_stls_injection_discarded(tsrv, pki):
    """STLS\\r\\nCAPA\\r\\n in one segment: the CAPA is answered neither in clear
    before the handshake nor over TLS after it (CVE-2011-0411 class)."""
    c = tsrv.connect()
    try:
        c.send(b"STLS\r\nCAPA\r\n")
        st = c.readline()
        assert st.startswith(b"+OK"), st
        assert not c.buf, "plaintext after the STLS answer: %r" % bytes(c.buf)
        # Nothing more in clear while the server waits for our ClientHello.
        assert not readable_within(c.sock, 0.5), "server sent plaintext after +OK: %r" % c.sock.recv(4096)
        c.sock = client_context(pki).wrap_socket(c.sock, server_hostname="localhost")
        # The first answer over TLS must be the one to our own command.
        st = c.cmd("XYZZY")
        assert st.startswith(b"-ERR"), st
        st = c.cmd("QUIT")
        assert st.startswith(b"+OK"), st
        rest = c.wait_closed()
        assert b"Capability" not in rest and b"IMPLEMENTATION" not in rest, rest
    finally:
        c.close()


def test_stls_injection_of_credentials(tsrv, pki):
    """Pipelined USER/PASS after STLS are not executed after the handshake
    either: the session is still unauthenticated."""
    c = tsrv.connect()
    try:
        c.send(b"STLS\r\nUSER alice\r\nPASS secret\r\n")
        st = c.readline()
        assert st.startswith(b"+OK"), st
        assert not c.buf
        c.sock = client_context(pki).wrap_socket(c.sock, server_hostname="localhost")
        st = c.cmd("STAT")
        assert st.startswith(b"-ERR"), st
        assert c.quit().startswith(b"+OK")
    finally:
        c.close()


def test_stls_forgets_state_and_recomputes_capa(tsrv, pki):
    c = tsrv.connect()
    try:
        caps = capa(c)
        assert "STLS" in caps and "USER" in caps
        assert not any(m.endswith("-PLUS") for m in sasl_mechs(caps))
        assert c.cmd("USER alice").startswith(b"+OK")
        starttls(c, pki)
        caps = capa(c)
        assert "STLS" not in caps and "USER" in caps
        assert {"SCRAM-SHA-256", "PLAIN"} <= set(sasl_mechs(caps))
        assert not any(m.endswith("-PLUS") for m in sasl_mechs(caps))
        # USER given in clear is forgotten.
        st = c.cmd("PASS secret")
        assert st.startswith(b"-ERR"), st
        assert c.cmd("STLS").startswith(b"-ERR")
        c.login()
        assert c.cmd("STLS").startswith(b"-ERR")     # not in TRANSACTION
        assert c.retr(1) == wire_form(MSG)
        c.quit()
    finally:
        c.close()


def test_stls_without_tls_configured(server):
    c = server.connect()
    try:
        assert "STLS" not in capa(c)
        assert c.cmd("STLS").startswith(b"-ERR")
        c.login()
        c.quit()
    finally:
        c.close()


# ------------------------------------------------------------------ plaintext policy

REFUSED = b"-ERR [AUTH]"


def test_plaintext_auth_never(server_factory, pki):
    """never: no plaintext authentication on a plain connection, even on
    loopback; CAPA hides USER, PLAIN and LOGIN; after STLS (and on implicit
    TLS) they work. SCRAM does not send the password and stays allowed."""
    srv = tls_server(server_factory, pki, config={"plaintext_auth": "never"})
    c = srv.connect()
    try:
        caps = capa(c)
        assert "USER" not in caps and "STLS" in caps
        mechs = sasl_mechs(caps)
        assert "PLAIN" not in mechs and "LOGIN" not in mechs and "SCRAM-SHA-256" in mechs
        st, body = c.multi("AUTH")
        assert st.startswith(b"+OK") and b"PLAIN" not in body and b"SCRAM-SHA-256" in body, (st, body)
        assert c.cmd("USER alice").startswith(REFUSED)
        assert c.cmd("PASS secret").startswith(REFUSED)
        assert c.cmd("AUTH PLAIN " + b64("\0alice\0secret")).startswith(REFUSED)
        assert c.cmd("AUTH PLAIN").startswith(REFUSED)
        assert c.cmd("AUTH LOGIN").startswith(REFUSED)
        st = c.cmd("USER alice")
        assert b"TLS" in st or b"encrypt" in st, "the refusal should say that TLS is required: %r" % st
        starttls(c, pki)
        caps = capa(c)
        assert "USER" in caps and "PLAIN" in sasl_mechs(caps)
        c.login()
        c.quit()
    finally:
        c.close()
    c = srv.connect()
    try:
        starttls(c, pki)
        st = c.cmd("AUTH PLAIN " + b64("\0alice\0secret"))
        assert st.startswith(b"+OK"), st
        c.quit()
    finally:
        c.close()
    c = tls_connect(srv, pki)
    try:
        assert "USER" in capa(c)
        c.login()
        c.quit()
    finally:
        c.close()
    from test_server_tls_lib import scram_login
    c = srv.connect()
    try:
        st, _, _ = scram_login(c, "alice", "secret")
        assert st.startswith(b"+OK"), st
        c.quit()
    finally:
        c.close()


@pytest.mark.parametrize("policy", ["always", "tls-or-loopback", None])
def test_plaintext_auth_allowed_on_loopback(server_factory, pki, policy):
    """always and tls-or-loopback (the default): on a plain loopback
    connection USER/PASS, AUTH PLAIN and LOGIN are offered and work. (The
    difference between the two shows only for non-loopback peers, which
    these loopback-only tests cannot be.)"""
    config = {"plaintext_auth": policy} if policy else None
    srv = tls_server(server_factory, pki, config=config)
    c = srv.connect()
    try:
        caps = capa(c)
        assert "USER" in caps and "STLS" in caps
        assert {"PLAIN", "LOGIN"} <= set(sasl_mechs(caps))
        c.login()
        c.quit()
    finally:
        c.close()
    c = srv.connect()
    try:
        st = c.cmd("AUTH PLAIN " + b64("\0alice\0secret"))
        assert st.startswith(b"+OK"), st
        c.quit()
    finally:
        c.close()


def test_plaintext_auth_bad_value(server_factory, pki):
    srv = tls_server(server_factory, pki, config={"plaintext_auth": "sometimes"}, start=False)
    srv.port = 1
    srv.write_config()
    r = subprocess.run(srv.command("-t"), capture_output=True, timeout=CMD_TIMEOUT)
    assert r.returncode == 1
    assert b"plaintext_auth" in r.stdout + r.stderr


# ------------------------------------------------------------------ reload

def wait_for(pred, step=0.05):
    """pred()'s first true value; false only at the runaway guard."""
    try:
        return wait_until(pred, "the condition", step=step)
    except AssertionError:
        return pred()


def fingerprint_now(srv, pki):
    c = tls_connect(srv, pki)
    try:
        return served_fingerprint(c.sock)
    finally:
        c.close()


def test_reload_new_certificate(tsrv, pki):
    """SIGHUP: new connections (implicit TLS and STLS) get the new
    certificate; a TLS session opened before keeps working. A broken new
    certificate keeps the current one and says so in the log."""
    old, new = pki.server[0]["fingerprint"], pki.server[1]["fingerprint"]
    assert fingerprint_now(tsrv, pki) == old
    a = tls_connect(tsrv, pki)          # survives both reloads
    b = tsrv.connect()                  # a plain session that does STLS after the reload
    try:
        a.login()
        assert served_fingerprint(a.sock) == old
        install_cert(tsrv, pki.server[1])
        tsrv.reload()
        assert wait_for(lambda: fingerprint_now(tsrv, pki) == new), tsrv.log()
        starttls(b, pki)
        assert served_fingerprint(b.sock) == new
        assert a.retr(1) == wire_form(MSG)
        assert a.stat() == (1, len(wire_form(MSG)))

        # A broken certificate: the current (new) one stays.
        with open(tsrv.config["tls_cert"], "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        tsrv.reload()
        assert wait_for(lambda: "keeping the current TLS certificate" in tsrv.log()), tsrv.log()
        time.sleep(0.3)    # the workers get the reload after the master logs
        for _ in range(4):  # both workers
            assert fingerprint_now(tsrv, pki) == new
        assert a.retr(1) == wire_form(MSG)
        assert a.quit().startswith(b"+OK")
        assert b.quit().startswith(b"+OK")
    finally:
        a.close()
        b.close()
    assert tsrv.alive()


def test_reload_mismatched_key_keeps_certificate(tsrv, pki):
    old = pki.server[0]["fingerprint"]
    srv = tsrv
    srv.write_file(srv.config["tls_key"], pki.server[1]["key_pem"], mode=0o600, own=False)
    srv.reload()
    assert wait_for(lambda: "keeping the current TLS certificate" in srv.log()), srv.log()
    time.sleep(0.3)
    for _ in range(4):
        c = tls_connect(srv, pki)
        assert served_fingerprint(c.sock) == old
        c.login()
        c.quit()
        c.close()


# ------------------------------------------------------------------ key file, popboxd -t

def test_world_readable_key_refuses_start(server_factory, pki):
    srv = tls_server(server_factory, pki, start=False)
    os.chmod(srv.config["tls_key"], 0o644)
    srv.start(wait=False)
    try:
        rc = srv.proc.wait(RUNAWAY_SEC)
    except subprocess.TimeoutExpired:
        pytest.fail("popboxd started with a world-readable key:\n" + srv.log())
    assert rc == 1, srv.log()
    assert "chmod" in srv.log(), srv.log()
    assert srv.config["tls_key"] in srv.log()


def check_config(srv):
    srv.port = 1
    srv.write_config()
    r = subprocess.run(srv.command("-t"), capture_output=True, timeout=CMD_TIMEOUT)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def test_check_mode_mismatched_key(server_factory, pki):
    """A key that does not belong to the certificate: refused, and the
    message names the setting (src/server/tls.c has "tls_key does not match
    the certificate in tls_cert" for this)."""
    srv = tls_server(server_factory, pki, start=False)
    srv.write_file(srv.config["tls_key"], pki.server[1]["key_pem"], mode=0o600, own=False)
    rc, out = check_config(srv)
    assert rc == 1, out
    assert "tls_key" in out, "the error does not say which file is wrong: %r" % out


def test_check_mode_validates_tls_files(server_factory, pki):
    """popboxd -t loads the certificate and key: 0 for good files (key mode
    0600 or 0640), 1 with a reason otherwise."""
    srv = tls_server(server_factory, pki, start=False)
    srv.port = 1

    def check():
        srv.write_config()
        r = subprocess.run(srv.command("-t"), capture_output=True, timeout=CMD_TIMEOUT)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")

    rc, out = check()
    assert rc == 0, out
    os.chmod(srv.config["tls_key"], 0o640)
    rc, out = check()
    assert rc == 0, out
    for mode in (0o644, 0o604, 0o602):
        os.chmod(srv.config["tls_key"], mode)
        rc, out = check()
        assert rc == 1 and "chmod" in out, (oct(mode), rc, out)
    os.chmod(srv.config["tls_key"], 0o600)
    # not a certificate
    srv.write_file(srv.config["tls_cert"], "hello\n", own=False)
    rc, out = check()
    assert rc == 1 and "tls_cert" in out, out
    # missing certificate file
    os.unlink(srv.config["tls_cert"])
    rc, out = check()
    assert rc == 1 and srv.config["tls_cert"] in out, out
    # tls_cert without tls_key, listen_tls without either
    install_cert(srv, pki.server[0])
    del srv.config["tls_key"]
    rc, out = check()
    assert rc == 1 and "tls_key" in out, out
    del srv.config["tls_cert"]
    rc, out = check()
    assert rc == 1 and "listen_tls" in out, out
    srv.config["tls_cert"], srv.config["tls_key"] = install_cert(srv, pki.server[0])
    srv.config["tls_min_version"] = "TLSv1.1"
    rc, out = check()
    assert rc == 1 and "tls_min_version" in out, out
