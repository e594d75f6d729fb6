"""LMTP in popboxd (RFC 2033; docs/popboxd.conf.5 listen_lmtp, docs/DESIGN.md
"Mail in"), driven by Python's smtplib.LMTP and raw sockets: pipelining,
one reply per recipient, unknown recipients, SIZE, RSET, several
transactions per connection, dot-stuffing, 8-bit, line ends, limits, a
50 MB message with the worker's memory bounded; every delivered message is
read back over POP3 byte-exact."""

import os
import smtplib
import socket
import stat
import subprocess

import pytest

from popbox_server import free_port, sanitized
from runaway import wait_until
from mailin import (AWKWARD_BODIES, LMTPRaw, fetch_all, lmtp_message, lmtp_stuff,
                    lmtp_transaction, stray_files, wire_form)


def lmtp_server(factory, users=None, config=None, workers=2):
    """A started popboxd with an LMTP TCP port (srv.lmtp_port) and unix
    socket (srv.lmtp_path) beside its POP3 port."""
    srv = factory(users=users if users is not None else {"alice": "secret", "bob@example.org": "pw"},
                  config=config, start=False, workers=workers)
    srv.lmtp_port = free_port()
    srv.lmtp_path = os.path.join(srv.base, "lmtp.sock")
    srv.config.setdefault("listen_lmtp", "127.0.0.1:%d, unix:%s" % (srv.lmtp_port, srv.lmtp_path))
    srv.start()
    return srv


def rp(sender):
    return b"Return-Path: <" + sender.encode() + b">\r\n"


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM for %d" % pid)


def test_smtplib_delivers_to_several_users_and_refuses_unknown(server_factory):
    srv = lmtp_server(server_factory, config={"recipient_delimiter": "+"})
    lm = smtplib.LMTP("127.0.0.1", srv.lmtp_port)
    code, text = lm.ehlo("mta.example")
    assert code == 250
    assert set(lm.esmtp_features) >= {"pipelining", "enhancedstatuscodes", "8bitmime", "size"}
    assert lm.esmtp_features["size"] == str(64 << 20)
    body = b"Subject: hi\r\n\r\nhello\r\n.starts with a dot\r\n"
    refused = lm.sendmail("sender@example.net",
                          ["alice+news@example.com", "bob@EXAMPLE.org", "nobody@example.org"], body)
    assert refused == {"nobody@example.org": (550, b"5.1.1 <nobody@example.org> No such user here")}
    lm.quit()
    # the unix socket, as Postfix's lmtp:unix: uses it
    lm = smtplib.LMTP(srv.lmtp_path)
    lm.ehlo("mta.example")
    assert lm.sendmail("", ["alice"], b"Subject: second\r\n\r\nno final newline") == {}
    lm.quit()
    assert fetch_all(srv) == [rp("sender@example.net") + body,
                              rp("") + b"Subject: second\r\n\r\nno final newline\r\n"]
    assert fetch_all(srv, "bob@example.org", "pw") == [rp("sender@example.net") + body]
    # one copy on disk, hard-linked into both maildrops
    first = [p for p in srv.message_files("alice").values()]
    bob = list(srv.message_files("bob@example.org").values())
    inodes = {os.stat(p).st_ino for p in first}
    assert os.stat(bob[0]).st_ino in inodes and os.stat(bob[0]).st_nlink == 2
    assert stray_files(srv.maildir("alice")) == [] and stray_files(srv.maildir("bob@example.org")) == []
    log = srv.log()
    assert "to=<bob@EXAMPLE.org> user=bob@example.org size=%d result=delivered" % (
        len(rp("sender@example.net") + body)) in log


def test_every_kind_of_body_byte_exact_over_pipelined_raw_lmtp(server_factory):
    srv = lmtp_server(server_factory)
    names = sorted(AWKWARD_BODIES)
    with LMTPRaw(srv.lmtp_port) as c:
        assert c.greeting[0] == 220
        assert c.lhlo()[0] == 250
        for name in names:
            mail, rr, data, done = lmtp_transaction(c, "s@x", ["alice", "bob@example.org"],
                                                    AWKWARD_BODIES[name])
            assert mail[0] == 250 and [r[0] for r in rr] == [250, 250] and data[0] == 354, name
            assert [d[0] for d in done] == [250, 250], (name, done)
            assert done[0][1][0].startswith(b"2.0.0 <alice>")
            assert done[1][1][0].startswith(b"2.0.0 <bob@example.org>")
        assert c.cmd("QUIT")[0] == 221
    want = sorted(rp("s@x") + wire_form(lmtp_message(AWKWARD_BODIES[n])) for n in names)
    assert sorted(fetch_all(srv)) == want
    assert sorted(fetch_all(srv, "bob@example.org", "pw")) == want


def test_dot_stuffing_and_terminator_are_strict():
    # the helper itself: what the server must undo
    assert lmtp_stuff(b".a\r\n..b\r\nc.\r\n.") == b"..a\r\n...b\r\nc.\r\n..\r\n.\r\n"


def test_lf_dot_lf_does_not_end_the_message(server_factory):
    """Only CRLF . CRLF ends DATA: a bare-LF "dot line" is message text (no
    smuggling of a second message past a hop that reads LF as a line end)."""
    srv = lmtp_server(server_factory)
    body = b"Subject: smuggle\r\n\r\nfirst\n.\nMAIL FROM:<evil@x>\n\r\n"
    with LMTPRaw(srv.lmtp_port) as c:
        c.lhlo()
        _, rr, data, done = lmtp_transaction(c, "s@x", ["alice"], body)
        assert [d[0] for d in done] == [250]
        assert c.cmd("NOOP")[0] == 250
    assert fetch_all(srv) == [rp("s@x") + wire_form(body)]


def test_sequence_errors_limits_and_rset(server_factory):
    srv = lmtp_server(server_factory, config={"max_message_size": "1000"})
    with LMTPRaw(srv.lmtp_port) as c:
        assert c.cmd("MAIL FROM:<a@b>")[0] == 503          # before LHLO
        assert c.cmd("HELO x")[0] == 500                    # RFC 2033 §4.1
        assert c.cmd("EHLO x")[0] == 500
        code, lines = c.lhlo()
        assert code == 250 and lines[-1] == b"SIZE 1000"
        assert c.cmd("DATA")[0] == 503
        assert c.cmd("RCPT TO:<alice>")[0] == 503
        assert c.cmd("MAIL FROM:<a@b> SIZE=1001") == (552, [b"5.3.4 Message size exceeds the "
                                                              b"fixed maximum of 1000 octets"])
        assert c.cmd("MAIL FROM:<a@b> FOO=bar")[0] == 555
        assert c.cmd("MAIL FROM:a@b")[0] == 501
        assert c.cmd("MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME")[0] == 250
        assert c.cmd("MAIL FROM:<a@b>")[0] == 503           # nested
        assert c.cmd("RCPT TO:<>")[0] == 501
        assert c.cmd("RCPT TO:<alice> NOTIFY=NEVER")[0] == 555
        assert c.cmd("DATA")[0] == 503                       # no valid recipient yet
        assert c.cmd("RCPT TO:<alice>")[0] == 250
        assert c.cmd("RSET")[0] == 250
        assert c.cmd("RCPT TO:<alice>")[0] == 503           # RSET ended the transaction
        assert c.cmd("X" * 5000)[0] == 500                   # over-long line, consumed whole
        assert c.cmd("VRFY alice")[0] == 252
        # a message over max_message_size: 552 for each recipient, nothing stored
        _, rr, data, done = lmtp_transaction(c, "s@x", ["alice", "bob@example.org"],
                                             b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n")
        assert data[0] == 354
        assert [(d[0], d[1][0][:5]) for d in done] == [(552, b"5.3.4"), (552, b"5.3.4")]
        # the connection goes on: a second and a third transaction
        for i in range(2):
            _, _, _, done = lmtp_transaction(c, "s@x", ["alice"], b"Subject: %d\r\n\r\nok\r\n" % i)
            assert [d[0] for d in done] == [250]
        assert c.cmd("QUIT")[0] == 221
        assert c.closed()
    assert fetch_all(srv) == [rp("s@x") + b"Subject: %d\r\n\r\nok\r\n" % i for i in range(2)]
    assert stray_files(srv.maildir()) == []


def test_temporary_failure_of_one_recipient_only(server_factory):
    """bob's maildrop cannot take the message (its new/ is a file): bob gets
    451 4.x.x, alice, after him, gets her 250 and the message. The spool
    file is made in the first maildrop that can take it."""
    srv = lmtp_server(server_factory)
    bob = srv.maildir("bob@example.org")
    os.rmdir(os.path.join(bob, "new"))
    with open(os.path.join(bob, "new"), "w") as f:
        f.write("not a directory\n")
    with LMTPRaw(srv.lmtp_port) as c:
        c.lhlo()
        _, rr, _, done = lmtp_transaction(c, "s@x", ["bob@example.org", "alice"], b"Subject: x\r\n\r\nx\r\n")
        assert [r[0] for r in rr] == [250, 250]
        assert done[0][0] == 451 and done[0][1][0].startswith(b"4.")
        assert done[1][0] == 250
    assert fetch_all(srv) == [rp("s@x") + b"Subject: x\r\n\r\nx\r\n"]
    assert "to=<bob@example.org> user=bob@example.org" in srv.log()


@pytest.mark.parametrize("bounce", [False, True])
def test_full_maildrop_refused_at_rcpt(server_factory, bounce):
    config = {"max_maildrop_size": "100"}
    if bounce:
        config["max_maildrop_size_bounce"] = "yes"
    srv = lmtp_server(server_factory, config=config)
    srv.deliver(b"Subject: old\n\n" + b"x" * 120 + b"\n")
    with LMTPRaw(srv.lmtp_port) as c:
        c.lhlo()
        assert c.cmd("MAIL FROM:<s@x>")[0] == 250
        code, text = c.cmd("RCPT TO:<alice>")
        assert (code, text[0][:5]) == ((552, b"5.2.2") if bounce else (452, b"4.2.2"))
        assert c.cmd("RCPT TO:<bob@example.org>")[0] == 250
        # declared size over what is left of bob's room
        assert c.cmd("RSET")[0] == 250
        assert c.cmd("MAIL FROM:<s@x> SIZE=101")[0] == 250
        assert c.cmd("RCPT TO:<bob@example.org>")[0] == (552 if bounce else 452)


def test_unix_socket_mode_owner_and_removal(server_factory):
    srv = lmtp_server(server_factory, config={"lmtp_socket_mode": "0620"})
    st = os.stat(srv.lmtp_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
    assert st.st_uid == srv.uid
    srv.stop()
    assert not os.path.exists(srv.lmtp_path)
    # a stale socket file is replaced at the next start
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(srv.lmtp_path)
    s.close()
    srv.start()
    with LMTPRaw(srv.lmtp_path) as c:
        assert c.lhlo()[0] == 250


def test_command_timeout(server_factory):
    srv = lmtp_server(server_factory, config={"lmtp_timeout": "1"})
    with LMTPRaw(srv.lmtp_port) as c:
        c.lhlo()
        assert c.reply()[0] == 421          # nothing sent: the server gives up
        assert c.closed()
    assert "reason=timeout" in srv.log()


def test_pop3_sessions_run_while_lmtp_data_is_pending(server_factory):
    """One worker: an MTA stalls in the middle of DATA, and a POP3 login,
    STAT and QUIT on the same worker still complete; then the message ends
    and is delivered."""
    srv = lmtp_server(server_factory, workers=1)
    with LMTPRaw(srv.lmtp_port) as c:
        c.lhlo()
        c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        c.send(b"Subject: slow\r\n\r\nfirst half ")
        with srv.connect() as p:
            p.login()
            assert p.stat() == (0, 0)
            p.quit()
        c.send(b"second half\r\n.\r\n")
        assert c.reply()[0] == 250
    assert fetch_all(srv) == [rp("s@x") + b"Subject: slow\r\n\r\nfirst half second half\r\n"]


def test_50_mb_message_in_bounded_worker_memory(server_factory):
    """The message streams to the spool file in 256 KiB pieces: the
    worker's peak RSS grows by far less than the message."""
    srv = lmtp_server(server_factory, workers=1)
    (worker,) = srv.children_by_comm("popboxd-worker")
    before = vm_hwm_kib(worker)
    line = b"0123456789" * 7 + b"\r\n"
    chunk = line * 1024
    n = 50 * 1024 * 1024 // len(chunk)
    with LMTPRaw(srv.lmtp_port) as c:
        c.lhlo()
        c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        for _ in range(n):
            c.send(chunk)
        c.send(b".\r\n")
        assert [c.reply()[0] for _ in range(2)] == [250, 250]
    growth = vm_hwm_kib(worker) - before
    if not sanitized():
        assert growth < 16 * 1024, growth
    size = len(rp("s@x")) + len(chunk) * n
    with srv.connect() as p:
        p.login()
        assert p.list() == {1: size}
        p.quit()


def test_no_pop3_lock_taken_and_the_index_stays_warm(server_factory):
    """A POP3 session holds alice's maildrop while LMTP delivers into it:
    the delivery does not wait (Maildir delivery takes no lock), the
    session's snapshot does not change, and the next login sees the new
    message. Earlier files are made unreadable to popboxd before that
    login: their sizes still come from popbox.index, only the new file is
    read (docs/DESIGN.md "Mail in")."""
    srv = lmtp_server(server_factory)
    for i in range(50):
        srv.deliver(b"Subject: %d\n\n%s\n" % (i, b"y" * i))
    with srv.connect() as p:
        p.login()
        first = {p.uidl()[n]: size for n, size in p.list().items()}
        with LMTPRaw(srv.lmtp_port) as c:
            c.lhlo()
            _, _, _, done = lmtp_transaction(c, "s@x", ["alice"], b"Subject: new\r\n\r\nfresh\r\n")
            assert [d[0] for d in done] == [250]
        assert p.stat()[0] == 50
        p.quit()
    if os.geteuid() == 0:
        for path in srv.message_files().values():
            if b"fresh" not in open(path, "rb").read():
                os.chmod(path, 0)
    with srv.connect() as p:
        p.login()
        uidls, sizes = p.uidl(), p.list()
        after = {uidls[n]: size for n, size in sizes.items()}
        (fresh,) = [n for n, u in uidls.items() if u not in first]
        assert p.retr(fresh) == rp("s@x") + b"Subject: new\r\n\r\nfresh\r\n"
        p.quit()
    assert after == dict(first, **{uidls[fresh]: len(rp("s@x") + b"Subject: new\r\n\r\nfresh\r\n")})


def test_disconnect_or_stall_in_data_leaves_nothing(server_factory):
    """An MTA that goes away in the middle of a message (after 600 KiB, so
    spool pieces were written) or stalls there (lmtp_timeout: 421): no
    message, nothing in tmp/, and the next delivery works."""
    srv = lmtp_server(server_factory, config={"lmtp_timeout": "1"}, workers=1)
    piece = b"z" * 78 + b"\r\n"
    for stall in (False, True):
        c = LMTPRaw(srv.lmtp_port)
        c.lhlo()
        c.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        c.send(b"Subject: cut\r\n\r\n" + piece * (600 * 1024 // len(piece)))
        if stall:
            assert c.reply()[0] == 421
            assert c.closed()
        c.close()
    wait_until(lambda: "reason=disconnected-in-data" in srv.log() and "reason=timeout" in srv.log(),
               "both sessions ending")
    assert srv.message_files() == {} and srv.message_files("bob@example.org") == {}
    assert stray_files(srv.maildir()) == [] and stray_files(srv.maildir("bob@example.org")) == []
    with LMTPRaw(srv.lmtp_port) as c:
        c.lhlo()
        _, _, _, done = lmtp_transaction(c, "s@x", ["alice"], b"Subject: after\r\n\r\nok\r\n")
        assert [d[0] for d in done] == [250]
    assert fetch_all(srv) == [rp("s@x") + b"Subject: after\r\n\r\nok\r\n"]


def test_other_file_system_gets_a_copy_and_a_full_one_fails_alone(server_factory):
    """bob's maildrop is a 256 KiB tmpfs, alice's is not: the spool file is
    in alice's maildrop (the first recipient), so bob's copy is a copy, not
    a link; a message bigger than bob's room gets 451 for bob alone, alice
    gets her 250, and nothing is left in bob's tmp/."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    srv = lmtp_server(server_factory)
    bob = os.path.join(srv.mail_root, "bob@example.org")
    os.makedirs(bob, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", bob], check=True)
    try:
        os.chown(bob, srv.uid, srv.gid)
        small = b"Subject: small\r\n\r\n" + b"s" * 10000 + b"\r\n"
        big = b"Subject: big\r\n\r\n" + (b"b" * 78 + b"\r\n") * 5000
        with LMTPRaw(srv.lmtp_port) as c:
            c.lhlo()
            _, _, _, done = lmtp_transaction(c, "s@x", ["alice", "bob@example.org"], small)
            assert [d[0] for d in done] == [250, 250]
            _, _, _, done = lmtp_transaction(c, "s@x", ["alice", "bob@example.org"], big)
            assert [d[0] for d in done] == [250, 451], done
            assert done[1][1][0].startswith(b"4.3.0 <bob@example.org>")
        (a_small,) = [p for p in srv.message_files().values() if b"small" in open(p, "rb").read()]
        (b_small,) = srv.message_files("bob@example.org").values()
        assert os.stat(a_small).st_ino != os.stat(b_small).st_ino
        assert fetch_all(srv) == [rp("s@x") + small, rp("s@x") + big]
        assert fetch_all(srv, "bob@example.org", "pw") == [rp("s@x") + small]
        assert stray_files(bob) == []
        assert "No space left on device" in srv.log()
    finally:
        subprocess.run(["umount", bob], check=True)
