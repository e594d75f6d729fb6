"""popbox fetch's authentication against a hostile server or a man in the
middle (docs/DESIGN.md, "popbox fetch: limits against a hostile server"):
the SCRAM iteration count the server asks for is bounded (4096 to
10,000,000) and checked before any work is done on the password, and APOP
(an MD5 digest anyone on the path can attack offline) is used without TLS
only when allow_plaintext says so."""

from fake_pop3 import FakePop3
from fetch_env import digest_counts, make_message, read_maildir

SCRAM_CAPA = ("USER", "UIDL", "SASL SCRAM-SHA-256")


def args_for(srv, tmp_path, *extra):
    """Plain TCP, auth auto; allow_plaintext only where a test adds it."""
    return ["--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off",
            "--user", "u", "--password-command", "echo pw",
            "--deliver", "maildir:%s" % (tmp_path / "M"), "--timeout", "10"] + list(extra)


def sasl_answers(srv):
    """What the client sent after AUTH SCRAM-SHA-256 (its SASL responses)."""
    lines = srv.received
    for k, line in enumerate(lines):
        if line.upper().startswith("AUTH SCRAM-SHA-256"):
            return lines[k + 1:k + 3]
    return None


def nothing_fetched(srv, tmp_path):
    assert not any(c.startswith(("RETR", "DELE", "STAT")) for c in srv.received), srv.received
    assert read_maildir(str(tmp_path / "M")) == {}
    assert srv.deleted == set()


def test_scram_at_the_minimum_iteration_count_logs_in(client, tmp_path):
    msgs = [make_message(1)]
    srv = FakePop3(messages=msgs, capa=SCRAM_CAPA, scram_iterations=4096)
    try:
        client.fetch(*args_for(srv, tmp_path), check=0)
        assert any(c.startswith("AUTH SCRAM-SHA-256") for c in srv.received)
        assert digest_counts(read_maildir(str(tmp_path / "M")).values()) == digest_counts(msgs)
        assert srv.deleted == {0}
    finally:
        srv.stop()


def check_refused(client, tmp_path, iterations, *extra):
    srv = FakePop3(messages=[make_message(1)], capa=SCRAM_CAPA, scram_iterations=iterations)
    try:
        # the runaway guard only stops a client that computes for minutes;
        # the outcome is what the test asserts
        p = client.fetch(*args_for(srv, tmp_path, *extra), check=76, timeout=300)
        assert "iteration count of %d" % iterations in p.err, p.err
        assert "4096 to 10000000" in p.err, p.err
        assert srv.wait_sessions(1)
        # refused before computing: the exchange was cancelled ("*")
        # instead of answered with a proof
        assert sasl_answers(srv) == ["*"], srv.received
        # and no other mechanism was tried after the refusal
        assert not any(c.startswith(("USER", "PASS", "APOP")) for c in srv.received)
        nothing_fetched(srv, tmp_path)
    finally:
        srv.stop()


def test_scram_with_one_iteration_is_refused(client, tmp_path):
    # a man in the middle on a connection without TLS asks for i=1 to make
    # the recorded proof cheap to attack offline; allow_plaintext would let
    # auto go on to USER/PASS, but a refused SCRAM is not a reason to
    check_refused(client, tmp_path, 1, "--allow-plaintext")


def test_scram_just_below_the_minimum_is_refused(client, tmp_path):
    check_refused(client, tmp_path, 4095)


def test_scram_with_fifty_million_iterations_is_refused(client, tmp_path):
    # minutes of CPU before answering: refused before the work starts
    check_refused(client, tmp_path, 50000000)


APOP_GREETING = "+OK fake ready <1896.697170952@fake.example>"


def test_no_apop_without_tls(client, tmp_path):
    """auth auto on a connection without TLS, a server offering only APOP:
    refused before anything is sent (the digest is an offline MD5 guess
    away from the password for whoever reads the connection)."""
    srv = FakePop3(messages=[make_message(1)], capa=("UIDL",), greeting=APOP_GREETING)
    try:
        p = client.fetch(*args_for(srv, tmp_path), check=78)
        assert "APOP" in p.err and "allow_plaintext" in p.err, p.err
        assert srv.wait_sessions(1)
        assert not any(c.startswith(("APOP", "USER", "PASS", "AUTH")) for c in srv.received)
        nothing_fetched(srv, tmp_path)
        # auth = apop named explicitly: refused the same way
        p = client.fetch(*args_for(srv, tmp_path, "--auth", "apop"), check=78)
        assert "APOP" in p.err and "allow_plaintext" in p.err, p.err
        assert srv.wait_sessions(2)
        assert not any(c.startswith("APOP") for c in srv.received)
    finally:
        srv.stop()


def test_apop_without_tls_when_allow_plaintext(client, tmp_path):
    msgs = [make_message(1)]
    srv = FakePop3(messages=msgs, capa=("UIDL",), greeting=APOP_GREETING)
    try:
        client.fetch(*args_for(srv, tmp_path, "--allow-plaintext"), check=0)
        assert any(c.startswith("APOP u ") for c in srv.received)
        assert digest_counts(read_maildir(str(tmp_path / "M")).values()) == digest_counts(msgs)
    finally:
        srv.stop()
