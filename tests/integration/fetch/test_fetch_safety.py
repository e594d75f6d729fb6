"""Data safety: kill -9 at random moments (exactly once into Maildir), a
failing mda: command, a full destination file system."""

import os
import random
import signal
import subprocess
import time

import pytest

from fetch_env import (RUNAWAY_SEC, digest_counts, make_message, read_maildir, read_mboxrd,
                       wait_until)

KILLS_REQUIRED = 20
MAX_ROUNDS = 80


def crash_loop(client, mailbox, expected, batch_start, rnd, kills_required):
    """Start fetches and SIGKILL them at random moments until enough kills
    landed while the fetch was still running. Refills the server if a run
    managed to finish. Returns (kills, rounds)."""
    kills = rounds = 0
    while kills < kills_required and rounds < MAX_ROUNDS:
        rounds += 1
        if mailbox.count() == 0:
            more = [make_message(i, body_size=rnd.randrange(200, 3000))
                    for i in range(batch_start, batch_start + 100)]
            batch_start += 100
            mailbox.deliver_many(more)
            expected.extend(more)
        p = client.popen()
        time.sleep(rnd.uniform(0.0, 0.12))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(timeout=RUNAWAY_SEC)
    return kills, rounds


def finish(client):
    """The run to completion after the kills. A server session left by a
    killed client may still hold a lock for a moment: 75 means try again
    (until the runaway guard: a 75 that never goes away fails)."""
    runs = []

    def attempt():
        runs.append(client.fetch())
        return runs[-1].returncode != 75
    wait_until(attempt, "a run not refused with 75 (temporary) after the kills", step=0.5)
    p = runs[-1]
    assert p.returncode == 0, p.err
    return p


def test_kill_9_during_fetch_maildir_exactly_once(client, mailbox, account_conf, tmp_path):
    rnd = random.Random(int(os.environ.get("POPBOX_CRASH_SEED", "4711")))
    expected = [make_message(i, body_size=rnd.randrange(200, 3000)) for i in range(300)]
    mailbox.deliver_many(expected)
    account_conf(mailbox, tls="implicit")
    kills, rounds = crash_loop(client, mailbox, expected, 1000, rnd, KILLS_REQUIRED)
    assert kills >= KILLS_REQUIRED, "only %d kills landed in %d rounds" % (kills, rounds)
    finish(client)
    got = read_maildir(str(tmp_path / "Mail"))
    counts = digest_counts(got.values())
    want = digest_counts(expected)
    missing = set(want) - set(counts)
    dups = [h for h, n in counts.items() if n > 1]
    extra = set(counts) - set(want)
    assert not missing and not dups and not extra, (
        "%d missing, %d duplicated, %d unknown after %d kills" % (
            len(missing), len(dups), len(extra), kills))
    assert mailbox.count() == 0


def test_kill_9_during_fetch_mbox_at_least_once(client, mailbox, account_conf, tmp_path):
    rnd = random.Random(815)
    expected = [make_message(i, body_size=rnd.randrange(200, 3000)) for i in range(200)]
    mailbox.deliver_many(expected)
    mbox = tmp_path / "mbox"
    account_conf(mailbox, deliver="mbox:%s" % mbox)
    kills, _ = crash_loop(client, mailbox, expected, 5000, rnd, 10)
    finish(client)
    got = read_mboxrd(str(mbox))
    counts = digest_counts(got)
    assert set(digest_counts(expected)) <= set(counts), "a message was lost"
    # no partial message survives: everything in the mbox is a whole message
    assert set(counts) <= set(digest_counts(expected))
    assert mailbox.count() == 0


def test_failing_mda_leaves_message_on_server(client, mailbox, account_conf, tmp_path):
    msgs = [make_message(i) for i in range(5)]
    mailbox.deliver_many(msgs)
    account_conf(mailbox, deliver="mda:exit 1")
    p = client.fetch(check=74)
    assert "left on the server" in p.err
    assert mailbox.count() == 5
    account_conf(mailbox, deliver="mda:cat >/dev/null; exit 75")
    client.fetch(check=75)
    assert mailbox.count() == 5
    # one message refused, the others delivered and deleted
    out = tmp_path / "out"
    out.mkdir()
    cmd = ("mda:t=$(mktemp %s/m.XXXXXX); cat > $t; "
           "if grep -q 'test message 3$' $t; then rm $t; exit 1; fi" % out)
    account_conf(mailbox, deliver=cmd)
    client.fetch(check=74)
    got = [open(os.path.join(out, n), "rb").read() for n in os.listdir(out)]
    assert digest_counts(got) == digest_counts(msgs[:3] + msgs[4:])
    assert mailbox.count() == 1


def mounted_tmpfs(tmp_path, size):
    """A tmpfs of this size at tmp_path/full for the test's duration."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "popbox-test", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("mount not permitted here: %s" % r.stderr.decode().strip())
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    yield from mounted_tmpfs(tmp_path, "256k")


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
def test_full_file_system_exits_74_and_deletes_nothing(client, mailbox, account_conf,
                                                      small_tmpfs, kind):
    msgs = [make_message(i, body_size=20000) for i in range(30)]  # ~600 KB > 256 KB
    mailbox.deliver_many(msgs)
    target = small_tmpfs / ("Mail" if kind == "maildir" else "mbox")
    account_conf(mailbox, deliver="%s:%s" % (kind, target))
    p = client.fetch(check=74)
    assert "No space left on device" in p.err and "nothing deleted" in p.err, p.err
    assert mailbox.count() == 30
    if kind == "mbox":
        # no partial message left behind
        got = read_mboxrd(str(target))
        assert set(digest_counts(got)) <= set(digest_counts(msgs))


def test_kill_9_during_keep_mode_fetch(client, mailbox, account_conf, tmp_path):
    rnd = random.Random(99)
    expected = [make_message(i, body_size=rnd.randrange(200, 3000)) for i in range(200)]
    mailbox.deliver_many(expected)
    account_conf(mailbox, extra={"keep": "yes"})
    kills = 0
    for _ in range(40):
        p = client.popen()
        time.sleep(rnd.uniform(0.0, 0.1))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(timeout=RUNAWAY_SEC)
        if kills >= 10:
            break
    finish(client)
    p = finish(client)
    assert "fetched 0" in p.out
    counts = digest_counts(read_maildir(str(tmp_path / "Mail")).values())
    assert counts == digest_counts(expected)
    assert mailbox.count() == 200


@pytest.fixture
def tmpfs_384k(tmp_path):
    yield from mounted_tmpfs(tmp_path, "384k")


@pytest.mark.parametrize("sync", ["auto", "fsync"])
def test_disk_full_in_the_middle_of_a_batch_deletes_nothing_undurable(client, tmpfs_384k,
                                                                       sync):
    """Maildir batches of 64: 100 messages of one 4 KiB page each on a
    384 KiB tmpfs; the first batch fits, the second fails in its middle.
    Every DELE the server received names a message that is in new/; no
    message of the failed batch is in new/ or left in tmp/; no QUIT."""
    from fake_pop3 import FakePop3
    msgs = [make_message(i, body_size=3000) for i in range(100)]
    srv = FakePop3(messages=msgs, capa=("USER", "UIDL", "TOP", "PIPELINING"))
    if sync == "fsync":
        client.env["POPBOX_MAILDIR_FSYNC"] = "1"
    target = tmpfs_384k / "Mail"
    try:
        p = client.fetch("--host", "127.0.0.1", "--port", str(srv.port), "--tls", "off",
                         "--allow-plaintext", "--user", "u", "--password-command", "echo pw",
                         "--deliver", "maildir:%s" % target, check=74)
    finally:
        srv.stop()
    assert "No space left on device" in p.err and "nothing deleted" in p.err, p.err
    got = digest_counts(read_maildir(str(target)).values())
    index = {h: i for i, h in enumerate(digest_counts([m]).popitem()[0] for m in msgs)}
    present = {index[h] for h in got}
    assert 0 < len(present) < len(msgs), len(present)
    deles = [int(c.split()[1]) - 1 for c in srv.received if c.startswith("DELE")]
    assert deles and set(deles) <= present, "DELE of a message that is not durable locally"
    # whole batches only: the first batch, not a part of the second
    assert present == set(range(64)), sorted(present)
    assert "QUIT" not in srv.received
    assert srv.deleted == set()
    assert os.listdir(str(target / "tmp")) == []
