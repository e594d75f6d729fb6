"""What people see: the progress line on a terminal, -q, OAuth tokens."""

import os
import pty
import select
import subprocess

from fake_pop3 import FakePop3
from fetch_env import RUNAWAY_SEC, make_message


def test_progress_line_on_a_terminal(client, mailbox, account_conf):
    mailbox.deliver_many([make_message(i, body_size=5000) for i in range(50)])
    account_conf(mailbox)
    master, slave = pty.openpty()
    p = subprocess.Popen([client.bin, "fetch"], env=client.env, stdout=subprocess.PIPE,
                         stderr=slave)
    os.close(slave)
    seen = b""
    while True:     # until the client closes the terminal or exits
        # RUNAWAY_SEC: a runaway guard, not a limit on the fetch
        r, _, _ = select.select([master], [], [], RUNAWAY_SEC)
        assert r or p.poll() is not None, "runaway guard: no output and no exit"
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        else:
            break
    out, _ = p.communicate(timeout=RUNAWAY_SEC)
    os.close(master)
    assert p.returncode == 0
    text = seen.decode(errors="replace")
    assert "test: message " in text and "/50" in text and "/s" in text and "ETA" in text, text
    assert b"fetched 50" in out


def test_quiet_prints_nothing_on_success(client, mailbox, account_conf):
    mailbox.deliver(make_message(1))
    account_conf(mailbox)
    p = client.fetch("-q", check=0)
    assert p.out == "" and p.err == ""


def test_xoauth2_and_oauthbearer_token_from_password_command(client, tmp_path):
    for mech in ("xoauth2", "oauthbearer"):
        srv = FakePop3(messages=[make_message(1)], capa=("UIDL", "SASL " + mech.upper()))
        try:
            client.fetch("--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off",
                         "--allow-plaintext", "--user", "me@example.com", "--auth", mech,
                         "--password-command", "echo tok-123",
                         "--deliver", "maildir:%s" % (tmp_path / mech), check=0)
            assert b"me@example.com" in srv.auth_payload
            assert srv.deleted == {0}
        finally:
            srv.stop()
