"""Keep mode and the state file: nothing fetched twice, keep_days,
max_size, --list, --rebuild-state, the account lock."""

import fcntl
import os

from fetch_env import RUNAWAY_SEC, digest_counts, make_message, read_maildir


def state_entries(client, account="test"):
    out = {}
    with open(client.state_file(account)) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            t, size, uidl = line.split()
            out[uidl] = (int(t), int(size))
    return out


def test_keep_mode_fetches_each_message_once(client, mailbox, account_conf, tmp_path):
    msgs = [make_message(i) for i in range(5)]
    mailbox.deliver_many(msgs)
    account_conf(mailbox, extra={"keep": "yes"})
    p = client.fetch(check=0)
    assert "fetched 5" in p.out and "deleted 0" in p.out
    assert mailbox.count() == 5
    assert len(state_entries(client)) == 5
    p = client.fetch(check=0)
    assert "fetched 0" in p.out and "kept 5" in p.out
    new = make_message(99)
    mailbox.deliver(new)
    p = client.fetch(check=0)
    assert "fetched 1" in p.out
    got = read_maildir(str(tmp_path / "Mail"))
    assert digest_counts(got.values()) == digest_counts(msgs + [new])
    assert mailbox.count() == 6
    # the state file is the documented text format
    with open(client.state_file("test")) as f:
        head = f.readline()
    assert head.startswith("# popbox state v1")


def test_keep_days_deletes_only_old_messages(client, mailbox, account_conf, tmp_path):
    mailbox.deliver_many([make_message(i) for i in range(4)])
    account_conf(mailbox, extra={"keep": "yes", "keep_days": "5"})
    client.fetch(check=0)
    assert mailbox.count() == 4
    # age two entries by ten days, as if fetched then
    entries = state_entries(client)
    old = sorted(entries)[:2]
    path = client.state_file("test")
    lines = open(path).read().splitlines()
    with open(path, "w") as f:
        for line in lines:
            parts = line.split()
            if not line.startswith("#") and parts[2] in old:
                parts[0] = str(int(parts[0]) - 10 * 86400)
                line = " ".join(parts)
            f.write(line + "\n")
    p = client.fetch(check=0)
    assert "fetched 0" in p.out and "deleted 2" in p.out, p.out
    assert mailbox.count() == 2
    assert set(state_entries(client)) == set(entries) - set(old)
    assert len(read_maildir(str(tmp_path / "Mail"))) == 4


def test_max_size_skips_and_reports(client, mailbox, account_conf, tmp_path):
    small = [make_message(i, body_size=500) for i in range(3)]
    big = make_message(50, body_size=40000)
    mailbox.deliver_many(small + [big])
    account_conf(mailbox, extra={"max_size": "10K"})
    p = client.fetch(check=0)
    assert "larger than max_size" in p.out and "skipped 1" in p.out, p.out
    assert digest_counts(read_maildir(str(tmp_path / "Mail")).values()) == digest_counts(small)
    assert mailbox.count() == 1


def test_list_changes_nothing(client, mailbox, account_conf, tmp_path):
    mailbox.deliver_many([make_message(i) for i in range(3)])
    account_conf(mailbox, extra={"keep": "yes"})
    p = client.fetch("--list", check=0)
    assert "3 messages on the server" in p.out and "would fetch 3" in p.out, p.out
    assert p.out.count(" fetch\n") == 3
    assert mailbox.count() == 3
    assert not (tmp_path / "Mail").exists()
    assert not os.path.exists(client.state_file("test"))
    client.fetch(check=0)
    before = open(client.state_file("test")).read()
    p = client.fetch("--list", check=0)
    assert "would fetch 0" in p.out and p.out.count("keep (already delivered)") == 3
    assert open(client.state_file("test")).read() == before


def test_rebuild_state_from_maildir(client, mailbox, account_conf, tmp_path):
    mailbox.deliver_many([make_message(i) for i in range(6)])
    account_conf(mailbox, extra={"keep": "yes"})
    client.fetch(check=0)
    entries = state_entries(client)
    os.unlink(client.state_file("test"))
    p = client.fetch("--rebuild-state", "test", check=0)
    assert "6 of 6" in p.out, p.out
    rebuilt = state_entries(client)
    assert set(rebuilt) == set(entries)
    for uidl, (t, size) in rebuilt.items():
        assert size == entries[uidl][1] and abs(t - entries[uidl][0]) <= 2
    p = client.fetch(check=0)
    assert "fetched 0" in p.out
    assert len(read_maildir(str(tmp_path / "Mail"))) == 6


def test_lost_state_file_no_duplicates_with_maildir(client, mailbox, account_conf, tmp_path):
    # even without --rebuild-state the Maildir markers prevent duplicates
    mailbox.deliver_many([make_message(i) for i in range(4)])
    account_conf(mailbox, extra={"keep": "yes"})
    client.fetch(check=0)
    os.unlink(client.state_file("test"))
    p = client.fetch(check=0)
    assert "fetched 0" in p.out
    assert len(read_maildir(str(tmp_path / "Mail"))) == 4


def test_account_lock(client, mailbox, account_conf, tmp_path):
    mailbox.deliver(make_message(1))
    account_conf(mailbox)
    os.makedirs(client.state_dir, exist_ok=True)
    with open(os.path.join(client.state_dir, "test.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        p = client.fetch(check=75)
        assert "another popbox" in p.err
    assert mailbox.count() == 1
    client.fetch(check=0)
    assert mailbox.count() == 0


def test_concurrent_runs_never_duplicate(client, mailbox, account_conf, tmp_path):
    msgs = [make_message(i) for i in range(40)]
    mailbox.deliver_many(msgs)
    account_conf(mailbox)
    procs = [client.popen() for _ in range(3)]
    for p in procs:
        p.wait(timeout=RUNAWAY_SEC)
    client.fetch(check=0)
    got = read_maildir(str(tmp_path / "Mail"))
    assert digest_counts(got.values()) == digest_counts(msgs)
    assert mailbox.count() == 0
