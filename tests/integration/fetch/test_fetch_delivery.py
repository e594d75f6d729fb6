"""popbox fetch against real Dovecot: delete mode into Maildir, mbox and an
mda: command, byte-exact; pipelining on and off give the same result."""

import os

from fetch_env import digest_counts, make_message, read_maildir, read_mboxrd


def messages(n, start=0):
    return [make_message(i, body_size=200 + 37 * i) for i in range(start, start + n)]


def test_delete_mode_maildir_byte_exact(client, mailbox, account_conf, tmp_path):
    msgs = messages(25)
    # edge cases: no final newline (the server adds one), empty body, long line
    msgs.append(b"Subject: no final newline\n\nlast line without newline")
    msgs.append(b"Subject: empty body\n\n")
    msgs.append(b"Subject: long line\n\n" + b"x" * 20000 + b"\n")
    mailbox.deliver_many(msgs)
    account_conf(mailbox)
    p = client.fetch(check=0)
    assert "fetched 28" in p.out and "deleted 28" in p.out
    got = read_maildir(str(tmp_path / "Mail"))
    expected = [m if m.endswith(b"\n") else m + b"\n" for m in msgs]
    assert digest_counts(got.values()) == digest_counts(expected)
    assert mailbox.count() == 0
    for name, data in got.items():
        assert name.endswith(",S=%d" % len(data)), name
        assert "_pb" in name
    # nothing left in tmp/
    assert os.listdir(str(tmp_path / "Mail" / "tmp")) == []


def test_delete_mode_mbox(client, mailbox, account_conf, tmp_path):
    msgs = messages(20)
    mailbox.deliver_many(msgs)
    mbox = tmp_path / "mbox"
    account_conf(mailbox, deliver="mbox:%s" % mbox)
    client.fetch(check=0)
    got = read_mboxrd(str(mbox))
    assert digest_counts(got) == digest_counts(msgs)
    assert mailbox.count() == 0
    # an independent mbox reader sees the same messages
    import mailbox as pymailbox
    subjects = sorted(m["Subject"] for m in pymailbox.mbox(str(mbox)))
    assert subjects == sorted("test message %d" % i for i in range(20))
    # second batch appends
    more = messages(3, start=100)
    mailbox.deliver_many(more)
    client.fetch(check=0)
    assert digest_counts(read_mboxrd(str(mbox))) == digest_counts(msgs + more)
    assert not os.path.exists(str(mbox) + ".lock")


def test_delete_mode_mda(client, mailbox, account_conf, tmp_path):
    msgs = messages(15)
    mailbox.deliver_many(msgs)
    out = tmp_path / "mda-out"
    out.mkdir()
    cmd = 'cat > %s/"$POPBOX_MSGNUM.$$"' % out
    account_conf(mailbox, deliver="mda:" + cmd)
    client.fetch(check=0)
    got = [open(os.path.join(out, n), "rb").read() for n in os.listdir(out)]
    assert digest_counts(got) == digest_counts(msgs)
    assert mailbox.count() == 0


def test_pipelining_on_and_off_same_result(client, dovecot, account_conf, tmp_path):
    msgs = messages(60)
    results = []
    for mode in ("yes", "no"):
        mb = dovecot.add_user()
        mb.deliver_many(msgs)
        target = tmp_path / ("Mail-" + mode)
        account_conf(mb, deliver="maildir:%s" % target, extra={"pipelining": mode})
        p = client.fetch("-v", check=0)
        assert ("pipelining on" if mode == "yes" else "pipelining off") in p.err
        results.append(digest_counts(read_maildir(str(target)).values()))
        assert mb.count() == 0
    assert results[0] == results[1] == digest_counts(msgs)


def test_implicit_tls_and_scram_user(client, dovecot, account_conf, tmp_path):
    mb = dovecot.add_user(scheme="SCRAM-SHA-256")
    mb.deliver_many(messages(3))
    account_conf(mb, tls="implicit", extra={"auth": "scram-sha-256"})
    p = client.fetch("-v", check=0)
    assert "AUTH SCRAM-SHA-256" in p.err
    assert mb.password not in p.err
    assert mb.count() == 0


def test_auth_auto_prefers_scram(client, mailbox, account_conf):
    mailbox.deliver_many(messages(1))
    account_conf(mailbox)
    p = client.fetch("-v", check=0)
    assert "AUTH SCRAM-SHA-256" in p.err
    assert mailbox.password not in p.err


def test_apop_and_user_pass(client, dovecot, account_conf, tmp_path):
    for mech in ("apop", "user", "plain", "login", "cram-md5", "scram-sha-1"):
        mb = dovecot.add_user()
        mb.deliver_many(messages(2))
        account_conf(mb, extra={"auth": mech}, deliver="maildir:%s" % (tmp_path / mech))
        p = client.fetch("-v")
        if mech == "scram-sha-1" and p.returncode == 69:
            continue  # Dovecot here not configured for SCRAM-SHA-1
        assert p.returncode == 0, (mech, p.err)
        assert mb.count() == 0, mech
        assert mb.password not in p.err
        assert len(read_maildir(str(tmp_path / mech))) == 2


def test_pipelining_is_faster_on_a_slow_link(client, dovecot, tmp_path):
    """40 ms round trip: without pipelining every RETR and DELE costs a round
    trip; with it the window hides them. Counted in round trips (the flights
    of commands the client sends through the link, each after waiting for an
    answer), not in seconds, so a loaded machine cannot tip it."""
    from fetch_env import LatencyProxy
    proxy = LatencyProxy(dovecot.pop3_port, delay=0.02)
    flights = {}
    try:
        for mode in ("yes", "no"):
            mb = dovecot.add_user()
            mb.deliver_many(messages(60))
            account_conf_text = ("[account t]\nhost = 127.0.0.1\nport = %d\ntls = off\n"
                                 "allow_plaintext = yes\nuser = %s\npassword = %s\n"
                                 "deliver = maildir:%s\npipelining = %s\n" % (
                                     proxy.port, mb.user, mb.password,
                                     tmp_path / ("M" + mode), mode))
            client.write_config(account_conf_text)
            n = len(proxy.flights)
            client.fetch(check=0)
            assert len(proxy.flights) == n + 1, proxy.flights
            flights[mode] = proxy.flights[-1]
            assert mb.count() == 0
    finally:
        proxy.stop()
    # without: at least one flight per RETR and per DELE
    assert flights["no"] >= 120, flights
    assert flights["yes"] * 3 < flights["no"], flights


def test_thousands_of_small_messages(client, mailbox, account_conf, tmp_path):
    """2000 messages in one run, exactly once. Far from one round trip per
    message: the client's flights of commands through the link (see
    LatencyProxy; no delay added here) are counted, not timed."""
    from fetch_env import LatencyProxy
    msgs = [b"Subject: small %d\n\nbody %d\n" % (i, i) for i in range(2000)]
    mailbox.deliver_many(msgs)
    proxy = LatencyProxy(mailbox.dovecot.pop3s_port, delay=0)
    try:
        account_conf(mailbox, tls="implicit", extra={"port": str(proxy.port)})
        p = client.fetch(check=0)
    finally:
        proxy.stop()
    assert "fetched 2000" in p.out and "deleted 2000" in p.out
    assert digest_counts(read_maildir(str(tmp_path / "Mail")).values()) == digest_counts(msgs)
    assert mailbox.count() == 0
    assert len(proxy.flights) == 1, proxy.flights
    # a RETR and a DELE per message, sent in windows (about 210 flights
    # here); one per message or more would mean waiting on each
    assert proxy.flights[0] < 2000 // 4, proxy.flights
