"""Maildrop semantics: UIDL stability, UPDATE only after QUIT, the exclusive
lock, snapshot at login, the index cache."""

import os
import re
import signal
import socket
import time

import pytest

from popbox_server import ConnectionClosed, peer_name, session_end, wait_until, wire_form

UIDL_RE = re.compile(rb"^[\x21-\x7e]{1,70}$")


def fill(server, n=5, user="alice"):
    names = {}
    for i in range(n):
        data = b"Subject: message %d\n\nbody %d\n" % (i, i)
        names[server.deliver(data, user=user)] = data
    return names


def login_retry(server, user="alice", password="secret"):
    """Log in, retrying while the previous session's lock is being released
    (-ERR [IN-USE]; any other answer fails at once, a lock never released
    at the runaway guard)."""
    def attempt():
        c = server.connect()
        assert c.cmd("USER " + user).startswith(b"+OK")
        st = c.cmd("PASS " + password)
        if st.startswith(b"+OK"):
            return c
        c.close()
        if b"[IN-USE]" not in st:
            raise AssertionError("login failed: %r" % st)
        return None
    return wait_until(attempt, "the release of the maildrop lock", step=0.1)


# ------------------------------------------------------------------ UIDL

def test_uidl_is_maildir_base_name(server):
    names = fill(server, 3)
    server.deliver(b"Subject: seen\n\nx\n", name="1699999999.Vfd01I42M1.host", subdir="cur", info="2,S")
    with server.session() as c:
        got = set(c.uidl().values())
    assert got == set(names) | {"1699999999.Vfd01I42M1.host"}


def test_uidl_for_unsuitable_names_is_fixed_length_digest(server):
    long1 = "1700000000.M1P1." + "h" * 80
    long2 = "1700000000.M1P1." + "h" * 79 + "i"
    spaced = "1700000000.M2P2.host name with spaces"
    eight = "1700000000.M3P3.h\xf6st"
    for n in (long1, long2, spaced, eight):
        server.deliver(b"Subject: x\n\n" + n.encode() + b"\n", name=n)
    with server.session() as c:
        uidls = c.uidl()
        assert len(uidls) == 4
        vals = list(uidls.values())
        assert len(set(vals)) == 4, "UIDLs must be unique"
        for u in vals:
            assert UIDL_RE.match(u.encode()), u
        assert len({len(u) for u in vals}) == 1, "digest UIDLs have one fixed length: %r" % vals
        for n in (long1, long2, spaced):
            assert n not in vals
        first = dict(uidls)
        c.quit()
    with server.session() as c:
        assert c.uidl() == first


def test_uidl_stable_across_sessions_restart_and_index_loss(server):
    fill(server, 6)
    server.deliver(b"Subject: y\n\nx\n", name="x" * 75)  # digest UIDL too
    with server.session() as c:
        first = c.uidl()
        sizes = c.list()
        c.quit()
    assert len(set(first.values())) == 7

    def again():
        with login_retry(server) as c:
            assert set(c.uidl().values()) == set(first.values())
            assert sorted(c.list().values()) == sorted(sizes.values())
            c.quit()

    again()
    server.restart()
    again()
    index = os.path.join(server.maildir(), "popbox.index")
    assert os.path.exists(index), "the index cache should exist after a session"
    os.unlink(index)
    again()
    server.restart()
    os.unlink(index)
    again()


def test_damaged_index_cache_is_rebuilt(server):
    names = fill(server, 4)
    with server.session() as c:
        first = c.uidl()
        sizes = c.list()
        c.quit()
    index = os.path.join(server.maildir(), "popbox.index")
    assert os.path.exists(index)
    for garbage in (b"", b"\x00" * 100, b"garbage\nmore garbage 1 2 3\n",
                    open(index, "rb").read()[: max(1, os.path.getsize(index) // 2)]):
        with open(index, "wb") as f:
            f.write(garbage)
        with login_retry(server) as c:
            assert sorted(c.uidl().values()) == sorted(first.values())
            assert sorted(c.list().values()) == sorted(sizes.values())
            for n, u in c.uidl().items():
                assert c.retr(n) == wire_form(names[u])
            c.quit()


def test_uidl_kept_when_message_moves_from_new_to_cur(server):
    name = server.deliver(b"Subject: moving\n\nbody\n")
    with server.session() as c:
        u1 = c.uidl()
        c.quit()
    md = server.maildir()
    src = server.message_files()[name]
    os.rename(src, os.path.join(md, "cur", name + ":2,S"))
    with login_retry(server) as c:
        assert c.uidl() == u1
        assert c.retr(1) == b"Subject: moving\r\n\r\nbody\r\n"


# ------------------------------------------------------------------ UPDATE

def test_quit_deletes_marked_messages_and_files_are_gone(server):
    names = fill(server, 5)
    with server.session() as c:
        uidls = c.uidl()
        gone = {uidls[2], uidls[4]}
        assert c.cmd("DELE 2").startswith(b"+OK")
        assert c.cmd("DELE 4").startswith(b"+OK")
        # not yet: deletions happen in UPDATE only
        assert set(server.message_files()) == set(names)
        assert c.cmd("QUIT").startswith(b"+OK")
        c.wait_closed()
    assert set(server.message_files()) == set(names) - gone
    with login_retry(server) as c:
        assert set(c.uidl().values()) == set(names) - gone
        assert c.stat()[0] == 3


def test_dropped_connection_deletes_nothing(server):
    names = fill(server, 3)
    c = server.session()
    peer = peer_name(c.sock)
    for i in (1, 2, 3):
        assert c.cmd("DELE %d" % i).startswith(b"+OK")
    c.close()  # no QUIT
    # the session is over (and logged) once the worker has seen the close
    assert session_end(server, peer) == "disconnected", server.log()
    assert set(server.message_files()) == set(names)
    with login_retry(server) as c2:
        assert c2.stat()[0] == 3
        c2.quit()
    assert set(server.message_files()) == set(names)


def test_half_closed_connection_deletes_nothing(server):
    names = fill(server, 2)
    c = server.session()
    c.send(b"DELE 1\r\n")
    assert c.readline().startswith(b"+OK")
    c.sock.shutdown(socket.SHUT_WR)   # EOF without QUIT
    c.wait_closed()
    c.close()
    with login_retry(server) as c2:
        assert c2.stat()[0] == 2
    assert set(server.message_files()) == set(names)


def test_rset_then_quit_deletes_nothing(server):
    names = fill(server, 3)
    with server.session() as c:
        c.cmd("DELE 1")
        c.cmd("DELE 3")
        assert c.cmd("RSET").startswith(b"+OK")
        c.quit()
    assert set(server.message_files()) == set(names)


def test_sigterm_during_session_deletes_nothing(server):
    names = fill(server, 3)
    c = server.session()
    assert c.cmd("DELE 1").startswith(b"+OK")
    server.signal(signal.SIGTERM)
    try:
        server.proc.wait(15)
    finally:
        c.close()
    assert set(server.message_files()) == set(names)


def test_message_deleted_behind_the_servers_back(server):
    """Another agent removes a message file during the session: RETR gets -ERR
    (not a crash), QUIT still succeeds and removes the other marked messages."""
    names = fill(server, 3)
    with server.session() as c:
        uidls = c.uidl()
        os.unlink(server.message_files()[uidls[1]])
        st = c.cmd("RETR 1")
        if st.startswith(b"+OK"):
            c.read_multiline_raw()
        else:
            assert st.startswith(b"-ERR")
        assert c.cmd("DELE 1").startswith(b"+OK")
        assert c.cmd("DELE 2").startswith(b"+OK")
        assert c.cmd("QUIT").startswith(b"+OK")
    assert set(server.message_files()) == set(names) - {uidls[1], uidls[2]}


def test_message_replaced_by_a_directory_or_fifo_gets_err_and_session_goes_on(server):
    """A message file swapped for a directory or a FIFO after login: RETR and
    TOP answer -ERR [SYS/TEMP] before any status line (the first read fails;
    nothing half-sent, no hang on the FIFO), the session goes on, the other
    messages are served in full, and QUIT removes only what was marked."""
    names = fill(server, 3)
    with server.session() as c:
        uidls = c.uidl()
        files = server.message_files()
        os.unlink(files[uidls[1]])
        os.mkdir(files[uidls[1]])
        os.unlink(files[uidls[2]])
        os.mkfifo(files[uidls[2]])
        for cmd in ("RETR 1", "TOP 1 0", "RETR 2", "TOP 2 1"):
            st = c.cmd(cmd)
            assert st.startswith(b"-ERR [SYS/TEMP]"), (cmd, st)
        st = c.cmd("RETR 3")
        assert st.startswith(b"+OK"), st
        assert c.read_multiline_raw() == wire_form(names[uidls[3]])
        assert c.cmd("DELE 3").startswith(b"+OK")
        assert c.cmd("QUIT").startswith(b"+OK")
    left = server.message_files()
    assert uidls[3] not in left
    assert os.path.isdir(left[uidls[1]]) and uidls[2] in left


# ------------------------------------------------------------------ lock, snapshot

def test_second_login_gets_in_use(server):
    fill(server, 2)
    a = server.session()
    try:
        with server.connect() as b:
            assert b.cmd("USER alice").startswith(b"+OK")
            st = b.cmd("PASS secret")
            assert st.startswith(b"-ERR [IN-USE]"), st
        # the first session is undisturbed
        assert a.stat()[0] == 2
        assert a.cmd("QUIT").startswith(b"+OK")
        a.wait_closed()
    finally:
        a.close()
    with login_retry(server) as b:
        assert b.stat()[0] == 2


def test_in_use_across_many_connections(server):
    """Whichever worker gets each connection, only one session holds the lock."""
    fill(server, 1)
    a = server.session()
    try:
        for _ in range(8):
            with server.connect() as b:
                b.cmd("USER alice")
                assert b.cmd("PASS secret").startswith(b"-ERR [IN-USE]")
    finally:
        a.close()


def test_other_users_not_blocked_by_lock(server_factory):
    srv = server_factory(users={"alice": "secret", "bob": "bobpw"})
    fill(srv, 1, user="alice")
    fill(srv, 2, user="bob")
    with srv.session() as a, srv.session("bob", "bobpw") as b:
        assert a.stat()[0] == 1
        assert b.stat()[0] == 2


def test_delivery_during_session_invisible_until_next_login(server):
    names = fill(server, 2)
    with server.session() as c:
        before = c.uidl()
        n, size = c.stat()
        new = server.deliver(b"Subject: late\n\narrived during the session\n")
        new_cur = server.deliver(b"Subject: late2\n\nin cur\n", subdir="cur", info="2,")
        assert c.stat() == (n, size)
        assert c.uidl() == before
        assert c.cmd("LIST 3").startswith(b"-ERR")
        assert c.cmd("RETR 3").startswith(b"-ERR")
        assert c.cmd("DELE 1").startswith(b"+OK")
        assert c.cmd("QUIT").startswith(b"+OK")
        c.wait_closed()
    remaining = set(server.message_files())
    assert remaining == (set(names) - {before[1]}) | {new, new_cur}
    with login_retry(server) as c:
        assert set(c.uidl().values()) == remaining


def test_tmp_files_are_not_messages(server):
    fill(server, 1)
    md = server.maildir()
    with open(os.path.join(md, "tmp", "1700000000.M1P1.inprogress"), "wb") as f:
        f.write(b"Subject: partial\n\n")
    with server.session() as c:
        assert c.stat()[0] == 1


def test_dot_files_and_directories_ignored(server):
    fill(server, 1)
    md = server.maildir()
    os.mkdir(os.path.join(md, "new", "subdir"))
    with open(os.path.join(md, "new", ".hidden"), "wb") as f:
        f.write(b"Subject: hidden\n\n")
    with server.session() as c:
        assert c.stat()[0] == 1
        assert c.cmd("QUIT").startswith(b"+OK")


def test_many_messages(server):
    md = server.maildir()
    names = {}
    for i in range(2000):
        # times out of name order, so the listing order is the server's sort
        name = "%d.M%dP1.many" % (1700000000 + (i * 7919) % 2000, i)
        p = os.path.join(md, "new", name)
        body = b"Subject: %d\n\n%s\n" % (i, b"x" * i)
        with open(p, "wb") as f:
            f.write(body)
        server._own(p)
        names[name] = len(body) + body.count(b"\n")   # LF -> CRLF
    order = sorted(names, key=lambda n: (int(n.split(".")[0]), n))
    deleted = set(range(1, 2001, 3))
    with server.session() as c:
        assert c.stat()[0] == 2000
        # listings of over 16 KiB, in delivery-time order, sizes exact
        assert c.uidl() == {i + 1: n for i, n in enumerate(order)}
        assert c.list() == {i + 1: names[n] for i, n in enumerate(order)}
        for i in sorted(deleted):
            c.send(b"DELE %d\r\n" % i)
        for i in sorted(deleted):
            assert c.readline().startswith(b"+OK")
        # deleted messages are left out of both listings, numbers kept
        assert c.uidl() == {i + 1: n for i, n in enumerate(order) if i + 1 not in deleted}
        assert c.list() == {i + 1: names[n] for i, n in enumerate(order) if i + 1 not in deleted}
        c.quit()
    assert len(server.message_files()) == 2000 - len(deleted)
    left = [n for i, n in enumerate(order) if i + 1 not in deleted]
    # next login: sizes now come from the index cache, and agree
    for _ in range(2):
        with server.session() as c:
            assert c.uidl() == {i + 1: n for i, n in enumerate(left)}
            assert c.list() == {i + 1: names[n] for i, n in enumerate(left)}
            c.quit()


def test_relative_paths_resolved_against_config_dir(server_factory):
    srv = server_factory(start=False)
    srv.config["users"] = "users"
    srv.config["state_dir"] = "state"
    srv.config["mail"] = "maildir:mail/%u"
    srv.deliver(b"Subject: rel\n\nrelative\n", name="relmsg")
    # start from another working directory so only the config's dir can help
    srv.cwd = "/"
    srv.start()
    with srv.session() as c:
        assert c.uidl() == {1: "relmsg"}
    assert os.path.exists(os.path.join(srv.state_dir, "popboxd.pid"))


def test_maildrop_session_survives_other_session_errors(server_factory):
    srv = server_factory(users={"alice": "secret", "bob": "bobpw"})
    fill(srv, 2)
    with srv.session() as a:
        with srv.connect() as b:
            try:
                b.send(b"USER bob\r\nPASS bobpw\r\nRETR 99999999999\r\n" + b"Z" * 5000 + b"\r\n")
                b.readline()
            except ConnectionClosed:
                pass
        assert a.stat()[0] == 2


def test_pid_file(server):
    pidfile = os.path.join(server.state_dir, "popboxd.pid")
    assert os.path.exists(pidfile)
    with open(pidfile) as f:
        assert int(f.read().strip()) == server.pid


@pytest.mark.parametrize("user", ["../alice", "al/ice", ".hidden"])
def test_path_traversal_user_names_refused(server_factory, user):
    srv = server_factory(start=False)
    srv.add_user(user, "pw")
    srv.start()
    with srv.connect() as c:
        st = c.cmd("USER " + user)
        if st.startswith(b"+OK"):
            st = c.cmd("PASS pw")
        assert st.startswith(b"-ERR"), st


def test_client_vanishes_during_big_retr(server):
    """Closing the connection in the middle of a RETR: nothing deleted, the
    worker survives, the lock is released."""
    body = b"".join(b"%07d line of a big message\n" % i for i in range(300000))  # ~10 MB
    server.deliver(b"Subject: big\n\n" + body, name="big")
    server.deliver(b"Subject: small\n\nx\n", name="small")
    workers = server.children_by_comm("popboxd-worker")
    for _ in range(3):
        c = login_retry(server)   # the previous dropped session may still hold the lock
        assert c.cmd("DELE 2").startswith(b"+OK")
        c.send(b"RETR 1\r\n")
        c.sock.recv(100000)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()   # RST while the server is streaming
    with login_retry(server) as c:
        assert c.stat()[0] == 2
        c.quit()
    assert server.children_by_comm("popboxd-worker") == workers
    assert set(server.message_files()) == {"big", "small"}


def test_many_concurrent_connections(server_factory):
    srv = server_factory(config={"max_connections_per_ip": "1000"}, workers=2)
    fill(srv, 2)
    conns = []
    try:
        for _ in range(300):
            conns.append(srv.connect())
        assert all(c.greeting.startswith(b"+OK") for c in conns)
        with srv.session() as s:
            assert s.stat()[0] == 2
            assert len(s.retr(1)) > 0
            s.quit()
        for c in conns[::10]:
            assert c.cmd("NOOP").startswith(b"-ERR")   # wrong state, still served
    finally:
        for c in conns:
            c.close()


def test_update_failure_reported_and_nothing_else_lost(server):
    """A message that cannot be removed at UPDATE: QUIT answers -ERR (RFC 1939
    §6), the other messages are untouched, the next session works."""
    names = fill(server, 3)
    md = server.maildir()
    c = server.session()
    try:
        uidls = c.uidl()
        paths = server.message_files()
        victim_dir = os.path.dirname(paths[uidls[1]])
        assert c.cmd("DELE 1").startswith(b"+OK")
        os.chmod(victim_dir, 0o555)   # unlink in there now fails (also for nobody)
        if os.geteuid() != 0 and os.access(victim_dir, os.W_OK):
            pytest.skip("cannot make the directory read-only here")
        st = c.cmd("QUIT")
        assert st.startswith(b"-ERR"), st
        c.wait_closed()
    finally:
        c.close()
        os.chmod(os.path.join(md, "new"), 0o755)
        os.chmod(os.path.join(md, "cur"), 0o755)
    assert set(server.message_files()) == set(names)
    with login_retry(server) as c2:
        assert c2.stat()[0] == 3


def test_broken_maildrop_gives_sys_code_without_leaking_paths(server):
    path = os.path.join(server.mail_root, "alice")
    with open(path, "wb") as f:           # a file where the Maildir should be
        f.write(b"not a directory\n")
    server._own(path)
    with server.connect() as c:
        assert c.cmd("USER alice").startswith(b"+OK")
        st = c.cmd("PASS secret")
        assert st.startswith((b"-ERR [SYS/PERM]", b"-ERR [SYS/TEMP]")), st
        assert server.base.encode() not in st and b"/" not in st.split(b"]", 1)[1], "error leaks a path: %r" % st
    assert server.alive()


def test_lock_excludes_sessions_of_another_server(server_factory):
    """Two popboxd instances on one Maildir tree (docs/DESIGN.md "Behind a load balancer": several nodes on
    shared storage): the maildrop lock holds across processes."""
    a_srv = server_factory()
    fill(a_srv, 2)
    b_srv = server_factory(start=False)
    b_srv.config["mail"] = a_srv.config["mail"]
    b_srv.start()
    a = a_srv.session()
    try:
        with b_srv.connect() as b:
            assert b.cmd("USER alice").startswith(b"+OK")
            st = b.cmd("PASS secret")
            assert st.startswith(b"-ERR [IN-USE]"), st
        assert a.cmd("DELE 1").startswith(b"+OK")
        a.quit()
    finally:
        a.close()
    with login_retry(b_srv) as b:
        assert b.stat()[0] == 1


# ------------------------------------------------------------------ index as the scan

def settle():
    # popboxd records new/ and cur/ in popbox.index only once their change
    # time is two seconds old (store_maildir.c)
    time.sleep(2.3)


def test_unchanged_maildrop_served_from_index_and_every_change_seen(server):
    """Once new/ and cur/ are settled, a login takes the message list from
    popbox.index without reading the directories; every change another
    program makes to the maildrop must still show at the next login."""
    names = fill(server, 4)
    md = server.maildir()
    index = os.path.join(md, "popbox.index")
    settle()
    with login_retry(server) as c:            # scans, records the directories
        first = c.uidl()
        c.quit()
    with open(index) as f:
        text = f.read()
    assert "\ndirs -\n" not in text and "\ndirs " in text
    with login_retry(server) as c:            # from the index
        assert c.uidl() == first
        assert c.retr(2) == wire_form(names[first[2]])
        c.quit()

    # another MDA delivers: seen at once (no settling needed to see changes)
    new = server.deliver(b"Subject: late\n\nlate\n")
    with login_retry(server) as c:
        u = c.uidl()
        assert len(u) == 5 and new in u.values()
        c.quit()

    # a mail reader marks one seen (new/ -> cur/ with flags), another removes one
    settle()
    with login_retry(server) as c:
        c.quit()
    files = server.message_files()
    os.rename(files[first[1]], os.path.join(md, "cur", first[1] + ":2,S"))
    os.unlink(files[first[3]])
    with login_retry(server) as c:
        u = c.uidl()
        assert first[3] not in u.values()
        assert sorted(u.values()) == sorted(set(first.values()) - {first[3]} | {new})
        n = [k for k, v in u.items() if v == first[1]][0]
        assert c.retr(n) == wire_form(names[first[1]])
        c.quit()

    # DELE + QUIT by us, then a flag rename with the directory times set back
    settle()
    with login_retry(server) as c:
        u = c.uidl()
        n = [k for k, v in u.items() if v == new][0]
        assert c.cmd("DELE %d" % n).startswith(b"+OK")
        c.quit()
    settle()
    with login_retry(server) as c:
        assert new not in c.uidl().values()
        c.quit()
    cur = os.path.join(md, "cur")
    st = os.stat(cur)
    files = server.message_files()
    os.rename(files[first[1]], os.path.join(cur, first[1] + ":2,RS"))
    os.utime(cur, ns=(st.st_atime_ns, st.st_mtime_ns))
    with login_retry(server) as c:
        u = c.uidl()
        n = [k for k, v in u.items() if v == first[1]][0]
        assert c.retr(n) == wire_form(names[first[1]])
        assert c.cmd("DELE %d" % n).startswith(b"+OK")
        c.quit()
    assert first[1] not in server.message_files()


def test_planted_index_lines_cannot_hide_or_invent_mail_after_a_change(server):
    """An index whose directory record no longer matches is only a size cache:
    lines for messages that are gone are dropped, present ones are listed."""
    names = fill(server, 3)
    md = server.maildir()
    settle()
    with login_retry(server) as c:
        first = c.uidl()
        c.quit()
    index = os.path.join(md, "popbox.index")
    with open(index) as f:
        lines = f.read().split("\n")
    # a ghost entry, then a change to new/: the record no longer matches
    lines.insert(2, "7 n 1.ghost")
    lines[-2] = "end %d" % (len(names) + 1)
    with open(index, "w") as f:
        f.write("\n".join(lines))
    server.deliver(b"Subject: four\n\nfour\n")
    with login_retry(server) as c:
        u = c.uidl()
        assert "1.ghost" not in u.values()
        assert set(first.values()) <= set(u.values()) and len(u) == 4
        c.quit()
