"""Mail into mbox spools (issue 13 item 4; docs/DESIGN.md "Storage (mbox)",
"Mail in"): LMTP and `popbox deliver` append through the same store code
(store_mbox_deliver_*). Every message is read back over POP3 byte-exact and
the spool checked with Python's mailbox module; a delivery while a POP3
session holds the maildrop shows at the next login; a full file system and
a held lock fail the delivery (75 / 451 for that recipient only) and leave
the spool exactly as it was."""

import os
import re
import subprocess

import pytest

from mailin import AWKWARD_BODIES, LMTPRaw, deliver, fetch_all, lmtp_message, lmtp_transaction
from popbox_server import free_port, wait_until, wire_form
from test_server_mbox import (MESSAGES, MboxLock, mbox_bytes, python_mailbox_messages,
                              quote_mboxo, spool_path, write_spool)

FROM_LINES = b"Subject: f\n\nFrom here\n>From there\n>>From far\nFrom\nFrom  two spaces\n"


def rp(sender):
    return b"Return-Path: <" + sender.encode() + b">\n"


def mbox_lmtp_server(server_factory, config=None, users=None, start=True):
    """popboxd with mail = mbox:ROOT/%u, an LMTP port and POP3."""
    srv = server_factory(start=False, workers=2,
                         users=users if users is not None else {"alice": "secret", "bob": "pw"})
    srv.config["mail"] = "mbox:%s/%%u" % srv.mail_root
    srv.config["lock_wait"] = "1"
    srv.lmtp_port = free_port()
    srv.config["listen_lmtp"] = "127.0.0.1:%d" % srv.lmtp_port
    if config:
        srv.config.update(config)
    if start:
        srv.start()
    return srv


def spool_files(srv):
    """Everything in the spool directory but the spools and popboxd's own
    lock and index files: what a delivery must never leave."""
    return sorted(f for f in os.listdir(srv.mail_root)
                  if f not in ("alice", "bob") and not f.endswith((".popbox-lock", ".popbox-index")))


@pytest.mark.parametrize("fmt", ["mboxrd", "mboxo"])
def test_lmtp_into_mbox_reads_back_byte_exact(server_factory, fmt):
    """Every awkward body (8-bit, NUL, CRLF, no final newline, lone dots)
    and From-lines over pipelined LMTP to two mbox users; read back over
    POP3 byte-exact (mboxo reads ">From " back as "From ", its known
    ambiguity), parsed by Python's mailbox, From_ lines naming the
    envelope sender (MAILER-DAEMON for the null sender)."""
    srv = mbox_lmtp_server(server_factory, {"mbox_format": fmt})
    bodies = dict(AWKWARD_BODIES)
    bodies["from-lines"] = FROM_LINES
    names = sorted(bodies)
    with LMTPRaw(srv.lmtp_port) as c:
        assert c.lhlo()[0] == 250
        for i, n in enumerate(names):
            sender = "" if i == 0 else "s%d@example.net" % i
            mail, rr, data, done = lmtp_transaction(c, sender, ["alice", "bob"], bodies[n])
            assert [r[0] for r in rr] == [250, 250] and data[0] == 354, n
            assert [d[0] for d in done] == [250, 250], (n, done)
        assert c.cmd("QUIT")[0] == 221
    for user, pw in (("alice", "secret"), ("bob", "pw")):
        got = fetch_all(srv, user, pw)
        assert len(got) == len(names)
        for i, (n, g) in enumerate(zip(names, got)):
            want = bodies[n]
            if fmt == "mboxo":
                want = want.replace(b"\n>From there", b"\nFrom there")
            sender = "" if i == 0 else "s%d@example.net" % i
            assert g == wire_form(rp(sender) + lmtp_message(want)), (fmt, user, n, g)
        spool = open(spool_path(srv, user), "rb").read()
        assert spool.startswith(b"From MAILER-DAEMON ")
        assert b"\n\nFrom s1@example.net " in spool
        parsed = python_mailbox_messages(spool_path(srv, user))
        assert len(parsed) == len(names)
        i = names.index("from-lines")
        quoted = (FROM_LINES.replace(b"\n>", b"\n>>").replace(b"\nFrom ", b"\n>From ")
                  if fmt == "mboxrd" else quote_mboxo(FROM_LINES))
        assert parsed[i] == rp("s%d@example.net" % i) + quoted + b"\n"   # LMTP's final CRLF
    assert spool_files(srv) == []
    log = srv.log()
    assert log.count("result=delivered") == 2 * len(names)
    srv.stop()


def test_delivery_while_a_session_holds_the_mbox(server_factory):
    """A POP3 session is open on alice's mbox (DELE pending) while LMTP
    and `popbox deliver` append: both succeed at once, the session's QUIT
    removes only what it deleted, the next login shows both new messages,
    Python's mailbox reads the spool."""
    srv = mbox_lmtp_server(server_factory, start=False)
    write_spool(srv, mbox_bytes(MESSAGES[:3]))
    srv.start()
    c = srv.session()
    try:
        assert c.stat()[0] == 3
        assert c.cmd("DELE 2").startswith(b"+OK")
        body1 = b"Subject: by lmtp\n\nFrom inside\n"
        with LMTPRaw(srv.lmtp_port) as lm:
            lm.lhlo()
            _, rr, _, done = lmtp_transaction(lm, "a@example.org", ["alice"],
                                              body1.replace(b"\n", b"\r\n"))
            assert [d[0] for d in done] == [250], done
        body2 = b"Subject: by deliver\n\nno final newline"
        r = deliver(srv, "alice", body2, "-f", "b@example.org")
        assert r.returncode == 0, r.stderr
        assert c.retr(3) == wire_form(MESSAGES[2][1])
        assert c.stat()[0] == 2
        assert c.cmd("QUIT") == b"+OK Bye, 1 messages deleted"
    finally:
        c.close()
    got = fetch_all(srv)
    want = [MESSAGES[0][1], MESSAGES[2][1], rp("a@example.org") + body1,
            rp("b@example.org") + body2]
    assert got == [wire_form(m) for m in want]
    assert len(python_mailbox_messages(spool_path(srv))) == 4
    assert spool_files(srv) == []
    srv.stop()


def test_locked_mbox_gets_451_for_that_recipient_alone(server_factory):
    """Another program holds bob's lock (fcntl + dot-lock) past lock_wait:
    LMTP answers 451 for bob and 250 for alice, `popbox deliver` exits 75;
    bob's spool is untouched; released, both deliveries go through."""
    srv = mbox_lmtp_server(server_factory, start=False)
    write_spool(srv, mbox_bytes(MESSAGES[:1]), user="bob")
    srv.start()
    before = open(spool_path(srv, "bob"), "rb").read()
    holder = MboxLock(spool_path(srv, "bob"))
    try:
        with LMTPRaw(srv.lmtp_port) as lm:
            lm.lhlo()
            _, rr, _, done = lmtp_transaction(lm, "s@x", ["alice", "bob"], b"Subject: l\r\n\r\nx\r\n")
            assert [r[0] for r in rr] == [250, 250]
            assert [d[0] for d in done] == [250, 451], done
            assert done[1][1][0].startswith(b"4.3.0 <bob>")
        r = deliver(srv, "bob", b"Subject: d\n\ny\n")
        assert r.returncode == 75, (r.returncode, r.stderr)
        assert b"locked" in r.stderr
        assert open(spool_path(srv, "bob"), "rb").read() == before
    finally:
        holder.release()
    assert deliver(srv, "bob", b"Subject: d\n\ny\n").returncode == 0
    assert fetch_all(srv, "bob", "pw") == [wire_form(MESSAGES[0][1]), wire_form(b"Subject: d\n\ny\n")]
    assert fetch_all(srv) == [wire_form(rp("s@x") + b"Subject: l\n\nx\n")]
    srv.stop()


def test_full_file_system_leaves_the_spool_exactly_as_before(server_factory):
    """The spool on a small tmpfs: a 420 KB message fits as the spool
    file (LMTP: twice) but not once more in the mbox, so the append itself
    fails half way: `popbox deliver` exits 75, LMTP answers 451, and the spool
    is byte for byte what it was, with no journal or spool file left.
    With room again the same deliveries work."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    srv = mbox_lmtp_server(server_factory, start=False)
    small = os.path.join(srv.base, "small")
    os.makedirs(small)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", small], check=True)
    try:
        srv._own(small)
        srv.config["mail"] = "mbox:%s/%%u" % small
        srv.start()
        alice = os.path.join(small, "alice")
        fd = os.open(alice, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, mbox_bytes([(b"Thu Dec  3 10:00:00 2026", b"Subject: a\n\n" + b"z" * 300000 + b"\n")]))
        os.close(fd)
        srv._own(alice)
        before = open(alice, "rb").read()
        big = b"Subject: big\n\n" + (b"0123456789abcdef" * 4 + b"\n") * 6500   # ~420 KB
        r = deliver(srv, "alice", big)
        assert r.returncode == 75, (r.returncode, r.stderr)
        # the spool file fitted: the append itself ran out of room
        assert b"writing: No space left on device" in r.stderr, r.stderr
        assert open(alice, "rb").read() == before
        assert sorted(os.listdir(small)) in (["alice"], ["alice", "alice.popbox-lock"],
                                             ["alice", "alice.popbox-index", "alice.popbox-lock"])
        # LMTP holds the message twice next to the mbox (its spool, then
        # the append journal): room for both, not for the append
        subprocess.run(["mount", "-o", "remount,size=1536k", small], check=True)
        with LMTPRaw(srv.lmtp_port) as lm:
            lm.lhlo()
            _, rr, _, done = lmtp_transaction(lm, "s@x", ["alice"], big.replace(b"\n", b"\r\n"))
            assert [d[0] for d in done] == [451], done
        assert "result=temporary failure: mbox %s: writing: No space left on device" % alice in srv.log()
        assert open(alice, "rb").read() == before
        assert [f for f in os.listdir(small) if "append" in f or f.startswith(".")] == []
        subprocess.run(["mount", "-o", "remount,size=4m", small], check=True)
        assert deliver(srv, "alice", big).returncode == 0
        got = python_mailbox_messages(alice)
        assert len(got) == 2 and got[1] == big
        srv.stop()
    finally:
        srv.stop()
        subprocess.run(["umount", small], check=True)


def test_rcpt_checks_the_mbox_size_against_max_maildrop_size(server_factory):
    """max_maildrop_size counts the mbox file: RCPT answers 452 4.2.2 for
    bob, whose mbox is over it (also for a SIZE declared too big for
    alice's), popbox deliver exits 75; alice's delivery goes through."""
    srv = mbox_lmtp_server(server_factory, {"max_maildrop_size": "2000"}, start=False)
    write_spool(srv, mbox_bytes([(b"Thu Dec  3 10:00:00 2026", b"Subject: x\n\n" + b"x" * 2500 + b"\n")]),
                user="bob")
    srv.start()
    before = open(spool_path(srv, "bob"), "rb").read()
    with LMTPRaw(srv.lmtp_port) as lm:
        lm.lhlo()
        assert lm.cmd("MAIL FROM:<s@x> SIZE=2001")[0] == 250
        r = lm.cmd("RCPT TO:<alice>")
        assert r[0] == 452 and r[1][0].startswith(b"4.2.2"), r
        assert lm.cmd("RSET")[0] == 250
        _, rr, _, done = lmtp_transaction(lm, "s@x", ["alice", "bob"], b"Subject: q\r\n\r\nq\r\n")
        assert [r[0] for r in rr] == [250, 452], rr
        assert [d[0] for d in done] == [250], done
    r = deliver(srv, "bob", b"Subject: d\n\ny\n")
    assert r.returncode == 75 and b"max_maildrop_size" in r.stderr, (r.returncode, r.stderr)
    assert open(spool_path(srv, "bob"), "rb").read() == before
    assert fetch_all(srv) == [wire_form(rp("s@x") + b"Subject: q\n\nq\n")]
    srv.stop()


def parse_lines(srv, since):
    """(bytes, offset) of the store's "mbox PATH: parsed N bytes from offset
    O" debug lines logged after byte since of the log."""
    with open(srv.log_path, "rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    return [(int(n), int(o)) for n, o in
            re.findall(r"mbox \S+: parsed (\d+) bytes from offset (\d+)", text)]


def login_parse(srv, retr=()):
    """One login: its UIDLs, the messages numbered in retr, and the one
    parse line its store open logged."""
    since = os.path.getsize(srv.log_path)
    c = srv.session()
    try:
        uidls = c.uidl()
        got = {n: c.retr(n) for n in retr}
        c.cmd("QUIT")
    finally:
        c.close()
    wait_until(lambda: parse_lines(srv, since), what="the store's parse line")
    lines = parse_lines(srv, since)
    assert len(lines) == 1, lines
    return uidls, got, lines[0]


def test_own_deliveries_keep_the_index_warm(server_factory):
    """The index stays warm across our own appends (store_mbox.c
    mbox_index_note_append): on a 3000-message spool a warm login parses 0
    bytes; after `popbox deliver` and an LMTP delivery the next login parses
    exactly the appended bytes from the old end, the old UIDLs stay and the
    new messages read back byte-exact; after an append by another program
    (Postfix-style, under fcntl + dot-lock) the login parses everything and
    still keeps every UIDL; a damaged index means a full parse, same UIDLs."""
    from test_server_mbox import append_like_postfix
    srv = mbox_lmtp_server(server_factory, config={"log_debug": "yes"}, start=False)
    msgs = [(b"Thu Dec  3 %02d:%02d:%02d 2026" % (10 + i // 3600, i // 60 % 60, i % 60),
             b"Subject: m%d\n\nbody %d\n" % (i, i) + b"x" * (i % 300) + b"\nFrom inside\n")
            for i in range(3000)]
    msgs[7] = msgs[8] = (msgs[7][0], b"Subject: twin\n\nsame\n")   # identical copies
    data = mbox_bytes(msgs)
    write_spool(srv, data)
    srv.start()
    spool = spool_path(srv)
    cold, _, parsed = login_parse(srv)
    assert parsed == (len(data), 0) and len(cold) == 3000
    assert len(set(cold.values())) == 3000
    warm, _, parsed = login_parse(srv)
    assert parsed == (0, len(data)) and warm == cold

    new1 = b"Subject: by deliver\n\nFrom the start\n.dot\nend\n"
    r = deliver(srv, "alice", new1, "-f", "a@example.org")
    assert r.returncode == 0, r.stderr
    new2 = b"Subject: by lmtp\n\n>From quoted\nlast\n"
    with LMTPRaw(srv.lmtp_port) as lm:
        lm.lhlo()
        _, _, _, done = lmtp_transaction(lm, "b@example.org", ["alice"],
                                         new2.replace(b"\n", b"\r\n"))
        assert [d[0] for d in done] == [250], done
    size1 = os.path.getsize(spool)
    after, got, parsed = login_parse(srv, retr=(3001, 3002))
    assert parsed == (size1 - len(data), len(data))
    assert len(after) == 3002 and {n: after[n] for n in cold} == cold
    assert got[3001] == wire_form(rp("a@example.org") + new1)
    assert got[3002] == wire_form(rp("b@example.org") + new2.replace(b"\n>From", b"\nFrom"))
    assert login_parse(srv)[2] == (0, size1)

    # another program's append: all parsed, every UIDL kept
    ext = b"Subject: by postfix\n\nexternal\n"
    append_like_postfix(spool, b"Thu Dec  3 23:00:00 2026", ext)
    size2 = os.path.getsize(spool)
    later, got, parsed = login_parse(srv, retr=(3003,))
    assert parsed == (size2, 0)
    assert len(later) == 3003 and {n: later[n] for n in after} == after
    assert got[3003] == wire_form(ext)
    # our append after it: tail only again; then a damaged index: all parsed
    r = deliver(srv, "alice", b"Subject: again\n\nx\n")
    assert r.returncode == 0, r.stderr
    size3 = os.path.getsize(spool)
    last, _, parsed = login_parse(srv)
    assert parsed == (size3 - size2, size2) and len(last) == 3004
    with open(spool + ".popbox-index", "r+b") as f:
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 1]))
    again, _, parsed = login_parse(srv)
    assert parsed == (size3, 0) and again == last
    assert len(python_mailbox_messages(spool)) == 3004
    srv.stop()
