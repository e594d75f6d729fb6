"""A real Postfix delivering into popboxd over LMTP (README "Receiving mail
from Postfix", docs/DESIGN.md "Mail in"): a private Postfix instance
(tests/integration/postfix_instance.py) takes mail by SMTP on loopback and
hands it to popboxd through lmtp:unix: (example.org) and lmtp:inet:
(example.net). Every message is read back over POP3 and compared with
what was sent; with popboxd stopped Postfix defers, and after popboxd is
back and the queue is flushed every deferred message arrives, none lost
and none twice."""

import os
import re
import time

import pytest

import postfix_instance
from popbox_server import free_port
from mailin import fetch_all
from runaway import wait_until

USERS = {"alice@example.org": "a-pw", "bob@example.org": "b-pw",
         "carol@example.net": "c-pw", "dave@example.net": "d-pw"}
SENDER = "sender@popbox.test"


def message(i, rcpts):
    """Message i: its own subject and a body with dots, 8-bit and long
    lines, as an MTA passes them on."""
    body = (b"line one of %d\r\n.a line with a leading dot\r\n..two dots\r\n" % i +
            "Gr\u00fc\u00dfe %d\r\n".encode() % i + b"x" * (800 + i) + b"\r\n")
    head = ("From: <%s>\r\nTo: %s\r\nSubject: m%03d\r\nMessage-Id: <m%03d@popbox.test>\r\n"
            "Date: Fri, 4 Dec 2026 16:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            % (SENDER, ", ".join("<%s>" % r for r in rcpts), i, i)).encode()
    return head + body


def recipients(i):
    users = sorted(USERS)
    first = users[i % 4]
    # every fifth message goes to a user of each domain: both transports
    return [first, users[(i + 1) % 4]] if i % 5 == 0 else [first]


def count_new(srv, user):
    d = os.path.join(srv.maildir(user), "new")
    return len(os.listdir(d))


def check_maildrops(srv, sent):
    """Every user's maildrop over POP3 holds exactly the messages sent to
    it: Return-Path, the headers Postfix added, then the message as sent,
    byte for byte."""
    for user, msgs in sent.items():
        got = fetch_all(srv, user, USERS[user])
        by_subject = {}
        for m in got:
            assert m.startswith(b"Return-Path: <%s>\r\nReceived: " % SENDER.encode()), m[:200]
            subj = re.search(rb"\r\nSubject: (m\d+)\r\n", m).group(1)
            assert subj not in by_subject, "message %s delivered twice to %s" % (subj, user)
            by_subject[subj] = m
        want = {b"m%03d" % i: msg for i, msg in msgs}
        assert sorted(by_subject) == sorted(want), user
        for subj, m in by_subject.items():
            assert m.endswith(want[subj]), (user, subj)


def send(pf, sent, numbers):
    with pf.smtp() as s:
        for i in numbers:
            rcpts = recipients(i)
            msg = message(i, rcpts)
            assert s.sendmail(SENDER, rcpts, msg) == {}
            for r in rcpts:
                sent[r].append((i, msg))


def test_postfix_delivers_over_lmtp_unix_and_inet_and_loses_nothing(server_factory):
    why = postfix_instance.available()
    if why is not None:
        pytest.fail(why)
    srv = server_factory(users=USERS, start=False)
    lmtp_port = free_port()
    sock = os.path.join(srv.base, "lmtp.sock")
    srv.config["listen_lmtp"] = "127.0.0.1:%d, unix:%s" % (lmtp_port, sock)
    srv.config["lmtp_socket_owner"] = "postfix"
    srv.config["lmtp_socket_mode"] = "0600"
    srv.start()
    pf = postfix_instance.PostfixInstance(srv.base, free_port(), [
        "virtual_mailbox_domains = example.org, example.net",
        "virtual_mailbox_maps = static:ok",
        "virtual_transport = lmtp:unix:" + sock,
        "transport_maps = inline:{ example.net=lmtp:inet:127.0.0.1:%d }" % lmtp_port,
    ])
    sent = {u: [] for u in USERS}
    try:
        pf.start()
        send(pf, sent, range(100))

        def all_in():
            return pf.queued() == 0 and all(count_new(srv, u) == len(sent[u]) for u in USERS)
        wait_until(all_in, "Postfix delivering 100 messages into popboxd")
        check_maildrops(srv, sent)
        log = srv.log()
        # both transports were used, and the queue id came from Postfix's Received
        assert re.search(r"delivery queue_id=[0-9A-Za-z]{6,} from=<%s> to=<alice@example.org>" % SENDER, log)
        assert re.search(r"delivery queue_id=[0-9A-Za-z]{6,} from=<%s> to=<carol@example.net>" % SENDER, log)
        assert re.search(r"lmtp [0-9a-f]+: end peer=unix ", log)
        assert re.search(r"lmtp [0-9a-f]+: end peer=127\.0\.0\.1:", log)

        # popboxd away: Postfix keeps the mail and retries
        srv.stop()
        before = {u: count_new(srv, u) for u in USERS}
        send(pf, sent, range(100, 120))
        wait_until(lambda: pf.log().count("status=deferred") >= 20 and pf.queued() == 20,
                   "Postfix deferring 20 messages while popboxd is stopped")
        assert {u: count_new(srv, u) for u in USERS} == before

        srv.start()
        # postqueue -f now and every few seconds, as an administrator would:
        # a message that Postfix's error agent still holds locked when the
        # flush reaches it is logged "skipped, still being delivered" and put
        # back into the incoming queue 60 s ahead, which the queue manager
        # only rescans at its next wakeup (300 s) or the next flush; seen in
        # loaded runs, nothing popboxd can change
        last_flush = [0.0]

        def all_in_flushing():
            if time.monotonic() - last_flush[0] > 5:
                pf.flush()
                last_flush[0] = time.monotonic()
            return all_in()
        try:
            wait_until(all_in_flushing, "the 20 deferred messages arriving after popboxd is back")
        except AssertionError as e:
            # say what was missing, what Postfix still holds and why, and
            # what both servers logged, for the next reader
            state = ("queued=%d delivered=%r sent=%r\npostqueue -p:\n%s\n"
                     "popboxd log (tail):\n%s\nPostfix log (tail):\n%s" % (
                         pf.queued(), {u: count_new(srv, u) for u in USERS},
                         {u: len(sent[u]) for u in USERS}, pf.mailq(),
                         srv.log()[-4000:], pf.log()[-4000:]))
            raise AssertionError("%s\n%s" % (e, state)) from None
        check_maildrops(srv, sent)
        assert sum(len(v) for v in sent.values()) == 144   # 120 messages, 24 of them to two users
    finally:
        pf.stop()
