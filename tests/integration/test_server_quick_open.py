"""Quick opens on the worker's loop (docs/DESIGN.md "Quick opens on the
loop", issue 17): a Maildir whose last open on this worker came from
popbox.index alone, with at most 1,000 messages, is opened on the loop
without the store thread. popbox_maildrop_opens_total{on="loop"|"thread"}
and popbox_maildrop_quick_fallbacks_total say which path each login took;
the test checks that a settled maildrop really is served on the loop, that
every change another program makes sends the next login back to the
thread (a fallback), and that what is served is right either way.
"""

import os
import urllib.request

from popbox_server import free_port, wire_form
from runaway import RUNAWAY_SEC, wait_until

MSGS = [b"From: a@example.org\nSubject: one\n\nfirst\n",
        b"From: b@example.org\nSubject: two\n\nsecond\nline\n",
        b"From: c@example.org\nSubject: three\n\n.dot\nthird\n"]


def opens(mport):
    """(loop, thread, fallbacks) as the metrics endpoint says now."""
    url = "http://127.0.0.1:%d/metrics" % mport
    with urllib.request.urlopen(url, timeout=RUNAWAY_SEC) as r:
        text = r.read().decode()
    v = {}
    for line in text.splitlines():
        if line.startswith("popbox_maildrop_"):
            key, value = line.rsplit(" ", 1)
            v[key] = int(float(value))
    return (v['popbox_maildrop_opens_total{on="loop"}'],
            v['popbox_maildrop_opens_total{on="thread"}'],
            v["popbox_maildrop_quick_fallbacks_total"])


def login(srv, user="alice"):
    """A logged-in POP3Raw, retrying while the last session's lock is let
    go (-ERR [IN-USE])."""
    def attempt():
        c = srv.connect()
        assert c.cmd("USER " + user).startswith(b"+OK")
        st = c.cmd("PASS secret")
        if st.startswith(b"+OK"):
            return c
        c.close()
        assert b"[IN-USE]" in st, st
        return None
    return wait_until(attempt, "the maildrop lock let go", step=0.05)


def check(srv, expect, user="alice"):
    """One session: the listing and every message as expect ({uidl: data})
    says, then QUIT."""
    c = login(srv, user)
    try:
        u = c.uidl()
        assert sorted(u.values()) == sorted(expect), (u, sorted(expect))
        for n, uidl in u.items():
            assert c.retr(n) == wire_form(expect[uidl]), uidl
        assert c.quit().startswith(b"+OK")
    finally:
        c.close()


def delta(a, b):
    return tuple(y - x for x, y in zip(a, b))


def test_quick_open_taken_and_falls_back_on_every_change(server_factory):
    mport = free_port()
    srv = server_factory(start=False, workers=1, users={"alice": "secret", "bob": "secret"},
                         config={"metrics_listen": "127.0.0.1:%d" % mport})
    mail = {srv.deliver(m): m for m in MSGS}
    # bob: one message more than a quick open serves
    big = {}
    bob_new = os.path.join(srv.maildir("bob"), "new")
    for i in range(1001):
        name = "1700000000.M%dP1.big" % i
        data = b"Subject: %d\n\nbig %d\n" % (i, i)
        with open(os.path.join(bob_new, name), "wb") as f:
            f.write(data)
        big[name] = data
    if srv.as_root:
        for name in big:
            os.chown(os.path.join(bob_new, name), srv.uid, srv.gid)
    srv.start()
    srv.wait_children(lambda ch: "popboxd-metrics" in ch.values())
    wait_until(lambda: _scrapes(mport), "the metrics endpoint")

    # popbox.index records new/ and cur/ once their change time is 2 s
    # old; the login after the one that recorded them is served on the loop.
    def quick_login():
        before = opens(mport)
        check(srv, mail)
        after = opens(mport)
        return after if delta(before, after) == (1, 0, 0) else None
    wait_until(quick_login, "a login served on the loop", step=0.2)

    # settled: every login on the loop, the store thread not asked
    before = opens(mport)
    for _ in range(3):
        check(srv, mail)
    assert delta(before, opens(mport)) == (3, 0, 0)

    # new mail: the quick open gives up, the thread scans and serves it
    late = srv.deliver(b"Subject: late\n\nlate\n")
    mail[late] = b"Subject: late\n\nlate\n"
    before = opens(mport)
    check(srv, mail)
    assert delta(before, opens(mport)) == (0, 1, 1)
    # that open was a scan (new/ had just changed): the next goes to the
    # thread at once, without a try on the loop
    before = opens(mport)
    check(srv, mail)
    assert delta(before, opens(mport)) == (0, 1, 0)

    # settle again; then another program removes a message, and one made
    # without tmp/ (gone meanwhile): the scan that follows sees both and
    # makes tmp/ again
    wait_until(quick_login, "a login served on the loop again", step=0.2)
    files = srv.message_files()
    gone = sorted(mail)[0]
    os.unlink(files[gone])
    del mail[gone]
    md = srv.maildir()
    os.rmdir(os.path.join(md, "tmp"))
    before = opens(mport)
    check(srv, mail)                      # the unlink changed new/
    assert delta(before, opens(mport)) == (0, 1, 1)
    assert os.path.isdir(os.path.join(md, "tmp"))

    # DELE and QUIT by us: the next login does not trust the old record
    wait_until(quick_login, "a login served on the loop after the removal", step=0.2)
    c = login(srv)
    u = c.uidl()
    assert c.cmd("DELE 1").startswith(b"+OK")
    assert c.quit().startswith(b"+OK")
    c.close()
    del mail[u[1]]
    before = opens(mport)
    check(srv, mail)
    assert delta(before, opens(mport)) == (0, 1, 1)

    # more than 1,000 messages: always the thread, even when settled
    def big_recorded():
        before = opens(mport)
        c = login(srv, "bob")
        assert c.stat()[0] == 1001
        c.quit()
        c.close()
        assert delta(before, opens(mport)) == (0, 1, 0)
        with open(os.path.join(srv.maildir("bob"), "popbox.index")) as f:
            return "\ndirs -\n" not in f.read()
    wait_until(big_recorded, "bob's directories recorded in the index", step=0.2)
    before = opens(mport)
    c = login(srv, "bob")
    assert c.stat()[0] == 1001
    last = c.cmd("UIDL 1001").split()[2].decode()
    assert c.retr(1001) == wire_form(big[last])
    c.quit()
    c.close()
    assert delta(before, opens(mport)) == (0, 1, 0)


def _scrapes(mport):
    try:
        opens(mport)
        return True
    except OSError:
        return False
