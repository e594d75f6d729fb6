"""popbox fetch against a server that tries to make it write or wait without
end (docs/DESIGN.md, "popbox fetch: limits against a hostile server"):
max_message_size bounds a message whatever LIST says, deadline bounds a
session whatever the server's pace. Each outcome is asserted (exit status,
the words said, nothing deleted for the message that failed, no partial
file in tmp/); the client's timeout on the test's side is only a guard
against a runaway, never a pass condition."""

import os
import time

from fake_pop3 import FakePop3
from fetch_env import digest_counts, make_message, read_maildir

HUGE = 1152921504606846976     # 2^60: what a hostile LIST announced


def args_for(srv, tmp_path, *extra):
    return ["--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off",
            "--allow-plaintext", "--user", "u", "--password-command", "echo pw",
            "--deliver", "maildir:%s" % (tmp_path / "M"), "--timeout", "10"] + list(extra)


def maildir_state(tmp_path):
    """(messages delivered, files left in tmp/)"""
    tmp = tmp_path / "M" / "tmp"
    return read_maildir(str(tmp_path / "M")), os.listdir(str(tmp)) if tmp.is_dir() else []


def stream_hook(target, octets, end=True):
    """A RETR hook for message `target`: +OK, then `octets` of body lines
    (then the end of the message when end)."""
    line = b"X" * 1022 + b"\r\n"

    def hook(conn, i):
        if i != target:
            return False
        conn.sendall(b"+OK\r\n")
        sent = 0
        while sent < octets:
            conn.sendall(line * 64)
            sent += len(line) * 64
        if end:
            conn.sendall(b".\r\n")
        return "answered" if end else True
    return hook


def test_huge_list_size_is_not_fetched(client, tmp_path):
    """LIST 2 2^60: with max_message_size 1M the message is never asked for
    (before, the client took the announced size as its bound and wrote
    whatever came); the others are fetched and deleted, it stays."""
    msgs = [make_message(i) for i in range(3)]
    srv = FakePop3(messages=msgs, list_fn=lambda i: HUGE if i == 1 else len(FakePop3.wire(msgs[i])),
                   retr_hook=stream_hook(1, 8 << 20))
    try:
        p = client.fetch(*args_for(srv, tmp_path, "--max-message-size", "1M", "--list"), check=0)
        assert "larger than max_message_size" in p.out, p.out
        p = client.fetch(*args_for(srv, tmp_path, "--max-message-size", "1M"), check=76)
        assert ("message 2: the server lists it at %d octets, more than max_message_size "
                "(1048576); not fetched, left on the server" % HUGE) in p.err, p.err
        assert "failed 1" in p.out, p.out
        assert "RETR 2" not in srv.received
        got, tmp = maildir_state(tmp_path)
        assert digest_counts(got.values()) == digest_counts([msgs[0], msgs[2]])
        assert tmp == []
        assert srv.deleted == {0, 2}
    finally:
        srv.stop()


def test_default_max_message_size_is_one_gib(client, tmp_path):
    """No option: 2^60 is still refused (the default is 1 GiB)."""
    msgs = [make_message(0)]
    srv = FakePop3(messages=msgs, list_fn=lambda i: HUGE, retr_hook=stream_hook(0, 8 << 20))
    try:
        p = client.fetch(*args_for(srv, tmp_path), check=76)
        assert "more than max_message_size (1073741824)" in p.err, p.err
        assert "RETR 1" not in srv.received
        assert srv.deleted == set()
    finally:
        srv.stop()


def test_body_beyond_max_message_size_is_cut(client, tmp_path):
    """LIST says 900 KiB, the body runs on to 1.5 MiB: under the old bound
    (twice the LIST size) it was delivered and deleted; max_message_size
    1M cuts it, nothing is delivered or deleted, tmp/ is clean."""
    msgs = [make_message(0)]
    srv = FakePop3(messages=msgs, list_fn=lambda i: 900 << 10,
                   retr_hook=stream_hook(0, 1536 << 10))
    try:
        p = client.fetch(*args_for(srv, tmp_path, "--max-message-size", "1M"), check=76)
        assert ("message 1: more than max_message_size (1048576 octets) arrived, though "
                "LIST announced 921600; not delivered") in p.err, p.err
        got, tmp = maildir_state(tmp_path)
        assert got == {} and tmp == []
        assert not any(c.startswith("DELE") for c in srv.received)
        assert srv.deleted == set()
    finally:
        srv.stop()


def trickle_hook(interval, seconds):
    """A RETR hook: +OK, then one short line every `interval` seconds (just
    under the client's per-read timeout) for `seconds`, then the end of the
    message: a server that never times out a read and never finishes."""
    def hook(conn, i):
        conn.sendall(b"+OK\r\nSubject: slow\r\n\r\n")
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            time.sleep(interval)
            conn.sendall(b"x\r\n")
        conn.sendall(b".\r\n")
        return "answered"
    return hook


def test_deadline_ends_a_trickling_session(client, tmp_path):
    msgs = [make_message(0)]
    srv = FakePop3(messages=msgs, retr_hook=trickle_hook(1.0, 60))
    try:
        # per-read timeout 3 s, a byte every second: only the deadline
        # (4 s) can end this before the server does (60 s)
        a = args_for(srv, tmp_path, "--deadline", "4")
        a[a.index("--timeout") + 1] = "3"
        p = client.fetch(*a, check=75, timeout=300)
        assert "took longer than its deadline of 4 s (deadline)" in p.err, p.err
        got, tmp = maildir_state(tmp_path)
        assert got == {} and tmp == []
        assert srv.wait_sessions(1, timeout=90)
        assert not any(c.startswith(("DELE", "QUIT")) for c in srv.received), srv.received
        assert srv.deleted == set()
    finally:
        srv.stop()


def test_deadline_keeps_what_was_delivered(client, tmp_path):
    """Message 1 arrives whole before the deadline, message 2 trickles:
    message 1 is kept (durable, not deleted in that session), and the next
    run deletes it by its marker without delivering it again."""
    msgs = [make_message(i) for i in range(2)]
    slow = trickle_hook(1.0, 60)
    srv = FakePop3(messages=msgs, retr_hook=lambda conn, i: i == 1 and slow(conn, i))
    try:
        a = args_for(srv, tmp_path, "--deadline", "4", "--pipelining", "no")
        a[a.index("--timeout") + 1] = "3"
        p = client.fetch(*a, check=75, timeout=300)
        assert "deadline" in p.err, p.err
        got, tmp = maildir_state(tmp_path)
        assert digest_counts(got.values()) == digest_counts(msgs[:1]) and tmp == []
        assert srv.wait_sessions(1, timeout=90)
        assert srv.deleted == set()
        srv.retr_hook = None
        client.fetch(*args_for(srv, tmp_path), check=0)
        got, tmp = maildir_state(tmp_path)
        assert digest_counts(got.values()) == digest_counts(msgs)
        assert srv.deleted == {0, 1}
    finally:
        srv.stop()
