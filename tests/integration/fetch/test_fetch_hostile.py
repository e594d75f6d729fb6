"""popbox fetch against a hostile or broken server (docs/RELIABILITY.md §5):
nothing is delivered as complete unless it was, nothing is deleted."""

import os
import ssl

from fake_pop3 import FakePop3
from fetch_env import RUNAWAY_SEC, digest_counts, make_message, read_maildir


def args_for(srv, tmp_path, *extra):
    # --timeout: a runaway guard (these servers answer at once, or close)
    return ["--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off",
            "--allow-plaintext", "--user", "u", "--password-command", "echo pw",
            "--deliver", "maildir:%s" % (tmp_path / "M"),
            "--timeout", "%d" % RUNAWAY_SEC] + list(extra)


def delivered(tmp_path):
    return read_maildir(str(tmp_path / "M"))


def test_overlong_greeting(client, tmp_path):
    srv = FakePop3(messages=[make_message(1)], greeting="+OK " + "x" * 70000)
    try:
        p = client.fetch(*args_for(srv, tmp_path), check=76)
        assert "longer than" in p.err
        assert not any(c.startswith(("USER", "PASS")) for c in srv.received)
    finally:
        srv.stop()


def test_connection_closed_during_retr(client, tmp_path):
    msgs = [make_message(i) for i in range(3)]

    def hook(conn, i):
        if i == 1:
            conn.sendall(b"+OK\r\n" + FakePop3.wire(msgs[1])[:100])
            return True   # close mid-message
        return False
    srv = FakePop3(messages=msgs, retr_hook=hook)
    try:
        client.fetch(*args_for(srv, tmp_path, "--pipelining", "no"), check=75)
        got = delivered(tmp_path)
        # message 0 is complete and durable; the partial one is nowhere
        assert digest_counts(got.values()) == digest_counts(msgs[:1])
        assert os.listdir(str(tmp_path / "M" / "tmp")) == []
        assert srv.deleted == set()
        # the next run completes without duplicating message 0
        srv.retr_hook = None
        client.fetch(*args_for(srv, tmp_path), check=0)
        assert digest_counts(delivered(tmp_path).values()) == digest_counts(msgs)
        assert srv.deleted == {0, 1, 2}
    finally:
        srv.stop()


def test_body_far_larger_than_list_size(client, tmp_path):
    msgs = [make_message(0)]

    def hook(conn, i):
        conn.sendall(b"+OK\r\n" + b"A" * 80 + b"\r\n" * 1 + (b"B" * 1000 + b"\r\n") * 300)
        return True
    srv = FakePop3(messages=msgs, retr_hook=hook)
    try:
        p = client.fetch(*args_for(srv, tmp_path), check=76)
        assert "far larger" in p.err
        assert delivered(tmp_path) == {}
        assert srv.deleted == set()
    finally:
        srv.stop()


def test_stls_response_injection_ignored(client, dovecot, tmp_path):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(dovecot.ca.cert, dovecot.ca.key)
    msgs = [make_message(1)]
    srv = FakePop3(messages=msgs, capa=("USER", "UIDL", "STLS"), stls_context=ctx,
                   stls_inject=b"+OK injected\r\n")
    try:
        p = client.fetch("--host", "127.0.0.1", "--port", str(srv.port), "--tls", "starttls",
                         "--tls-trust-file", dovecot.ca.ca, "--user", "u",
                         "--password-command", "echo pw",
                         "--deliver", "maildir:%s" % (tmp_path / "M"), check=0)
        assert "discarding" in p.err
        assert digest_counts(delivered(tmp_path).values()) == digest_counts(msgs)
    finally:
        srv.stop()


def test_duplicate_uidls_are_never_trusted(client, tmp_path):
    msgs = [make_message(i) for i in range(3)]
    srv = FakePop3(messages=msgs, uidl_fn=lambda i: "same" if i < 2 else "uid-%d" % i)
    try:
        # keep mode: the ambiguous ones are fetched but never marked seen
        client.fetch(*args_for(srv, tmp_path, "--keep"), check=0)
        assert digest_counts(delivered(tmp_path).values()) == digest_counts(msgs)
        state = open(os.path.join(client.state_dir, "u@127.0.0.1.state")).read()
        assert "uid-2" in state and " same" not in state
        p = client.fetch(*args_for(srv, tmp_path, "--keep"), check=0)
        assert "fetched 2" in p.out
        # delete mode: delivered and deleted by message number in the same session
        client.fetch(*args_for(srv, tmp_path), check=0)
        assert srv.deleted == {0, 1, 2}
    finally:
        srv.stop()


def test_hostile_uidl_never_becomes_a_path(client, tmp_path):
    msgs = [make_message(i) for i in range(2)]
    srv = FakePop3(messages=msgs, uidl_fn=lambda i: "../../../../tmp/evil%d" % i)
    try:
        client.fetch(*args_for(srv, tmp_path, "--keep"), check=0)
        names = list(delivered(tmp_path))
        assert len(names) == 2 and not any("evil" in n for n in names)
        assert not os.path.exists("/tmp/evil0")
    finally:
        srv.stop()


def test_silence_after_stls_times_out(client, tmp_path):
    srv = FakePop3(messages=[make_message(1)], capa=("USER", "UIDL", "STLS"),
                   stls_context="silent")   # +OK, then never a ServerHello
    try:
        p = client.fetch("--host", "127.0.0.1", "--port", str(srv.port), "--tls", "starttls",
                         "--user", "u", "--password-command", "echo pw", "--timeout", "1",
                         "--deliver", "maildir:%s" % (tmp_path / "M"), check=75)
        assert "timed out" in p.err, p.err
        assert not any(c.startswith(("USER", "PASS")) for c in srv.received)
    finally:
        srv.stop()
