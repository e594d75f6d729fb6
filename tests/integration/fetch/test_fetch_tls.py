"""TLS and authentication safety: verification by default, trust file,
fingerprint pin, STLS required, no password in clear."""

import os
import ssl

import pytest

from fake_pop3 import FakePop3
from fetch_env import make_message, read_maildir


def test_untrusted_certificate_refused(client, mailbox, account_conf, tmp_path):
    mailbox.deliver_many([make_message(1), make_message(2)])
    for tls in ("starttls", "implicit"):
        account_conf(mailbox, tls=tls, extra={"tls_trust_file": None})
        p = client.fetch(check=69)
        assert "not trusted" in p.err and "unknown issuer" in p.err, p.err
        assert "tls_trust_file" in p.err and "tls_fingerprint" in p.err
        assert "AUTH" not in p.err and "PASS" not in p.err
        assert not (tmp_path / "Mail").exists()
        assert mailbox.count() == 2


def test_trust_file_and_fingerprint_pin(client, dovecot, mailbox, account_conf, tmp_path):
    mailbox.deliver(make_message(1))
    account_conf(mailbox, tls="implicit",
                 extra={"tls_trust_file": None, "tls_fingerprint": dovecot.ca.fingerprint})
    client.fetch(check=0)
    assert mailbox.count() == 0
    assert len(read_maildir(str(tmp_path / "Mail"))) == 1
    # a wrong pin is refused
    mailbox.deliver(make_message(2))
    account_conf(mailbox, extra={"tls_trust_file": None, "tls_fingerprint": "AB" * 32})
    p = client.fetch(check=69)
    assert "does not match tls_fingerprint" in p.err
    assert mailbox.count() == 1


@pytest.mark.parametrize("which,reason", [("wrong", "name mismatch"), ("expired", "expired")])
def test_bad_certificate_refused(client, dovecot, tmp_path, which, reason):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(getattr(dovecot.ca, which + "_cert"), getattr(dovecot.ca, which + "_key"))
    srv = FakePop3(messages=[make_message(1)], tls_context=ctx)
    try:
        p = client.fetch("--host", "127.0.0.1", "--port", str(srv.port), "--tls", "implicit",
                         "--tls-trust-file", dovecot.ca.ca, "--user", "u",
                         "--password-command", "echo pw",
                         "--deliver", "maildir:%s" % (tmp_path / "M"), check=69)
        assert reason in p.err, p.err
        assert not any(c.startswith(("USER", "PASS")) for c in srv.received)
    finally:
        srv.stop()


def test_insecure_warns(client, mailbox, account_conf):
    mailbox.deliver(make_message(1))
    account_conf(mailbox, extra={"tls_trust_file": None, "insecure": "yes"})
    p = client.fetch(check=0)
    assert "WARNING" in p.err and "verification is OFF" in p.err


def test_tls_off_refuses_cleartext_password(client, tmp_path):
    srv = FakePop3(messages=[make_message(1)], capa=("USER", "UIDL"))
    try:
        args = ["--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off", "--user", "u",
                "--password-command", "echo topsecret", "--deliver",
                "maildir:%s" % (tmp_path / "M")]
        p = client.fetch(*args, check=78)
        assert "in clear" in p.err and "allow_plaintext" in p.err
        assert not any(c.startswith(("USER", "PASS", "AUTH")) for c in srv.received), srv.received
        assert not any("topsecret" in c for c in srv.received)
        # explicitly allowed: works
        client.fetch(*(args + ["--allow-plaintext"]), check=0)
        assert "PASS topsecret" in srv.received
        assert len(read_maildir(str(tmp_path / "M"))) == 1
    finally:
        srv.stop()


def test_tls_off_explicit_plain_refused_by_dovecot(client, mailbox, account_conf):
    account_conf(mailbox, tls="off", extra={"auth": "user", "tls_trust_file": None})
    p = client.fetch(check=78)
    assert "in clear" in p.err


@pytest.mark.parametrize("capa,reply", [(("USER", "UIDL"), None),
                                        (("USER", "UIDL", "STLS"), "-ERR TLS unavailable")])
def test_stls_stripping_refused(client, tmp_path, capa, reply):
    srv = FakePop3(messages=[make_message(1)], capa=capa, stls_reply=reply)
    try:
        p = client.fetch("--host", "127.0.0.1", "--port", str(srv.port), "--tls", "starttls",
                         "--user", "u", "--password-command", "echo pw",
                         "--deliver", "maildir:%s" % (tmp_path / "M"))
        assert p.returncode == 69, p.err
        assert not any(c.startswith(("USER", "PASS", "AUTH")) for c in srv.received)
    finally:
        srv.stop()


def test_wrong_password_is_77(client, tmp_path):
    # a scripted server: Dovecot's per-IP failure penalty would slow every
    # later test down
    srv = FakePop3(messages=[make_message(1)], capa=("USER", "UIDL", "RESP-CODES"),
                   pass_reply="-ERR [AUTH] invalid user name or password")
    try:
        p = client.fetch("--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off",
                         "--allow-plaintext", "--user", "u", "--password-command", "echo pw",
                         "--deliver", "maildir:%s" % (tmp_path / "M"), check=77)
        assert "refused" in p.err
        assert not any(c.startswith(("RETR", "DELE")) for c in srv.received)
    finally:
        srv.stop()


@pytest.mark.parametrize("reply,code", [
    ("-ERR [IN-USE] mailbox locked by another session", 75),
    ("-ERR [LOGIN-DELAY] wait 10 minutes between logins", 75),
    ("-ERR [SYS/TEMP] storage unavailable", 75),
    ("-ERR [SYS/PERM] account disabled", 69),
    ("-ERR [AUTH] invalid credentials", 77),
    ("-ERR bad password", 77),
])
def test_response_codes_map_to_exit_status(client, tmp_path, reply, code):
    srv = FakePop3(messages=[make_message(1)], capa=("USER", "UIDL", "RESP-CODES"),
                   pass_reply=reply)
    try:
        p = client.fetch("--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off",
                         "--allow-plaintext", "--user", "u", "--password-command", "echo pw",
                         "--deliver", "maildir:%s" % (tmp_path / "M"), check=code)
        assert reply.split("] ")[-1].replace("-ERR ", "") in p.err
        assert not (tmp_path / "M").exists()
    finally:
        srv.stop()
