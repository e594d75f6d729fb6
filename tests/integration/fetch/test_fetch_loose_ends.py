"""Loose ends of issue 16 item 6: tmp/ files a killed run left in the
Maildir are removed at the next run once older than 36 hours (and only
then); temp files of a killed state or token-file save are removed; `--keep
yes` (a separate word) is the option's value, and a word that is neither an
option nor an account says which word it was. (The 512-octet status line:
test_fetch_hostile_drops.py.)"""

import os
import time

from fake_pop3 import FakePop3
from fetch_env import make_message, read_maildir


def args(srv, maildir, *extra):
    return ["--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off",
            "--allow-plaintext", "--user", "u", "--password-command", "echo pw",
            "--deliver", "maildir:%s" % maildir] + list(extra)


def test_stale_tmp_and_state_temps_are_removed(client, tmp_path):
    srv = FakePop3(messages=[make_message(1)], capa=("USER", "UIDL"))
    md = tmp_path / "Mail"
    try:
        client.fetch(*args(srv, md), check=0)
        # what a run killed during a batch, or during a save, leaves behind
        old = [md / "tmp" / ("1700000000.M%dP99Q%d_pb0123456789abcdef.host" % (i, i))
               for i in range(3)]
        fresh = md / "tmp" / "1700000001.M1P98Q1_pbfedcba9876543210.host"
        for f in old + [fresh]:
            f.write_bytes(b"From: x\n\npartial")
        past = time.time() - 37 * 3600
        for f in old:
            os.utime(f, (past, past))
        state_dir = client.state_dir
        name = "u@127.0.0.1"
        stale = [os.path.join(state_dir, name + ".state.tmp.4242"),
                 os.path.join(state_dir, name + ".oauth2.tmp.17")]
        other = os.path.join(state_dir, "other.state.tmp.4242")
        for f in stale + [other]:
            with open(f, "w") as fh:
                fh.write("partial")
        srv.messages.append(make_message(2))
        client.fetch(*args(srv, md), check=0)
        assert len(read_maildir(str(md))) == 2
        for f in stale:
            assert not os.path.exists(f), f
        assert os.path.exists(other)           # another account's: not ours to touch
        assert fresh.exists()                  # younger than 36 hours
        assert not any(f.exists() for f in old)
    finally:
        srv.stop()


def test_keep_yes_as_a_separate_word(client, tmp_path):
    srv = FakePop3(messages=[make_message(1)], capa=("USER", "UIDL"))
    try:
        client.fetch(*args(srv, tmp_path / "M", "--keep", "yes"), check=0)
        assert srv.deleted == set()
        client.fetch(*args(srv, tmp_path / "M", "--keep", "no"), check=0)
        assert srv.deleted == {0}
        p = client.fetch(*args(srv, tmp_path / "M", "--keep", "sure"))
        assert p.returncode == 78, p.err
        assert "'sure' is not an option, so it was taken as an account name" in p.err
        assert "--keep yes" in p.err
    finally:
        srv.stop()
