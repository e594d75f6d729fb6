"""popboxd serving mbox spools (mail = mbox:PATH; docs/DESIGN.md "mbox",
src/server/store_mbox.c): byte-exact RETR and exact LIST sizes, UIDLs
stable across restarts, Status: rewrites and a lost index, locking shared
with other programs (fcntl + dot-lock), mail appended during a session,
and crash-safe expunge (SIGKILL at every write of the expunge, a full
disk), each checked against a model and with Python's mailbox module.

The spools are written here as Debian's Postfix local(8) writes them
(mboxo: "From " lines quoted with one '>', a blank line after each
message)."""

import fcntl
import hashlib
import mailbox
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from popbox_server import RUNAWAY_SEC, ConnectionClosed, traced_env, wait_until, wire_form

STRACE = shutil.which("strace")
WORKER = "popboxd-worker"


# ---------------------------------------------------------------- model

def quote_mboxo(body):
    """Postfix's quoting: a line starting with "From " gets a '>'."""
    out = []
    for line in body.split(b"\n"):
        out.append(b">" + line if line.startswith(b"From ") else line)
    return b"\n".join(out)


def mbox_bytes(messages, sender=b"MAILER-DAEMON"):
    """An mbox of (envelope date, message) as Postfix local appends them:
    From_ line, the quoted message, a newline if it lacks one, a blank
    line. The last message may be left without any newline (not what
    Postfix writes, but what a truncated or hand-made spool holds)."""
    out = b""
    for i, (date, msg) in enumerate(messages):
        out += b"From %s %s\n" % (sender, date)
        q = quote_mboxo(msg)
        if i == len(messages) - 1 and not msg.endswith(b"\n"):
            out += q          # left as it is: no final newline at all
            break
        out += q + (b"" if q.endswith(b"\n") else b"\n") + b"\n"
    return out


def served(msg):
    """What RETR must send for a message given to mbox_bytes: the
    message itself, quoting undone (wire_form adds a missing line end)."""
    return wire_form(msg)


MESSAGES = [
    (b"Thu Dec  3 10:00:00 2026", b"Subject: one\n\nFrom the start of a line\nplain\n"),
    (b"Thu Dec  3 10:00:01 2026", b"Subject: dots\n\n.\n..\n.lone dot above\n"),
    (b"Thu Dec  3 10:00:02 2026", b"Subject: 8bit\nContent-Type: text/plain; charset=latin1\n\n"
     b"caf\xe9 \x00 nul \xff\xfe\n>>From stays as it is in mboxo\n"),
    (b"Thu Dec  3 10:00:03 2026", b"Subject: crlf\r\n\r\nline one\r\nFrom quoted crlf\r\n"),
    (b"Thu Dec  3 10:00:04 2026", b"Subject: same\n\nidentical\n"),
    (b"Thu Dec  3 10:00:04 2026", b"Subject: same\n\nidentical\n"),
    (b"Thu Dec  3 10:00:05 2026", b"Subject: empty lines\n\n\n\nafter two empty lines\n\n"),
    (b"Thu Dec  3 10:00:06 2026", b"Subject: last\n\nno final newline"),
]


def spool_path(srv, user="alice"):
    return os.path.join(srv.mail_root, user)


def write_spool(srv, data, user="alice", mode=0o600):
    """Rewrite the spool in place (same inode, as MTAs and mutt do)."""
    p = spool_path(srv, user)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, mode)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    srv._own(p)


class MboxLock:
    """The lock another program (Postfix, mutt) takes: fcntl, then a
    dot-lock holding its PID, in a child process so the fcntl lock is
    really another process's."""

    def __init__(self, path, dot=True, fcntl_lock=True):
        self.path = path
        script = (
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "if sys.argv[2] == '1': fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "if sys.argv[3] == '1':\n"
            "    d = os.open(sys.argv[1] + '.lock', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)\n"
            "    os.write(d, b'%d\\n' % os.getpid()); os.close(d)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"
            "if sys.argv[3] == '1': os.unlink(sys.argv[1] + '.lock')\n")
        self.proc = subprocess.Popen(["python3", "-c", script, path, "1" if fcntl_lock else "0",
                                      "1" if dot else "0"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline() == b"locked\n"

    def release(self):
        if self.proc.poll() is None:
            self.proc.stdin.write(b"\n")
            self.proc.stdin.flush()
            self.proc.wait(RUNAWAY_SEC)


def append_like_postfix(path, date, msg):
    """Append one message under fcntl + dot-lock, as Postfix local does."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        dot = path + ".lock"
        d = os.open(dot, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(d)
        try:
            data = b"From MAILER-DAEMON " + date + b"\n" + quote_mboxo(msg)
            if not data.endswith(b"\n"):
                data += b"\n"
            os.write(fd, data + b"\n")
            os.fsync(fd)
        finally:
            os.unlink(dot)
    finally:
        os.close(fd)


def python_mailbox_messages(path):
    """The messages Python's mailbox module reads from the spool (a second,
    independent parser): bytes as stored (quoted), From_ line removed."""
    mb = mailbox.mbox(path, create=False)
    try:
        return [mb.get_bytes(k) for k in mb.keys()]
    finally:
        mb.close()


@pytest.fixture
def mbox_server(server_factory):
    def make(config=None, workers=2):
        srv = server_factory(start=False, workers=workers)
        srv.config["mail"] = "mbox:%s/%%u" % srv.mail_root
        srv.config["lock_wait"] = "1"
        if config:
            srv.config.update(config)
        return srv
    return make


# ---------------------------------------------------------------- tests

def test_retr_and_list_are_byte_exact(mbox_server):
    srv = mbox_server()
    write_spool(srv, mbox_bytes(MESSAGES))
    srv.start()
    c = srv.session()
    try:
        sizes = c.list()
        assert len(sizes) == len(MESSAGES)
        for i, (_, msg) in enumerate(MESSAGES, 1):
            want = served(msg)
            got = c.retr(i)
            assert got == want, (i, got, want)
            assert sizes[i] == len(want), (i, sizes[i], len(want))
        count, total = c.stat()
        assert count == len(MESSAGES) and total == sum(sizes.values())
        # TOP goes through the same unquoting
        st, top = c.multi("TOP 1 1")
        assert st.startswith(b"+OK") and top == wire_form(b"Subject: one\n\nFrom the start of a line\n")
        uidl = c.uidl()
        assert len(set(uidl.values())) == len(MESSAGES), "identical messages share a UIDL"
        assert c.cmd("QUIT").startswith(b"+OK")
    finally:
        c.close()
    # Python's mailbox module sees the same messages (before unquoting)
    assert [m.replace(b"\r\n", b"\n") for m in python_mailbox_messages(spool_path(srv))] == \
        [quote_mboxo(m).replace(b"\r\n", b"\n") + (b"" if m.endswith(b"\n") else b"")
         for _, m in MESSAGES]


def test_mboxrd_unquotes_one_level(mbox_server):
    srv = mbox_server({"mbox_format": "mboxrd"})
    body = b"Subject: rd\n\n>From one\n>>From two\n>>>From three\n>Fromage\n"
    write_spool(srv, b"From a@b Thu Dec  3 10:00:00 2026\n" + body + b"\n")
    srv.start()
    c = srv.session()
    try:
        want = wire_form(b"Subject: rd\n\nFrom one\n>From two\n>>From three\n>Fromage\n")
        assert c.list()[1] == len(want)
        assert c.retr(1) == want
    finally:
        c.close()


def uidls_of(srv):
    c = srv.session()
    try:
        u = c.uidl()
        c.cmd("QUIT")
        return u
    finally:
        c.close()


def mutt_status_rewrite(path):
    """What mutt does on sync after reading: a Status:/X-Status: header in
    every message, the file rewritten in place (offsets all move)."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    for part in data.split(b"\n\nFrom "):
        head, sep, rest = part.partition(b"\n")
        eol = b"\r\n" if rest.split(b"\n", 1)[0].endswith(b"\r") else b"\n"
        hdr_end = rest.find(eol + eol)
        add = eol + b"Status: RO" + eol + b"X-Status: A"
        rest = rest[:hdr_end] + add + rest[hdr_end:]
        out.append(head + sep + rest)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        new = b"\n\nFrom ".join(out)
        os.ftruncate(fd, 0)
        os.pwrite(fd, new, 0)
    finally:
        os.close(fd)


def test_uidls_stable_across_restart_status_rewrite_and_lost_index(mbox_server):
    srv = mbox_server()
    msgs = [(d, m) for d, m in MESSAGES if not m.endswith(b"newline")]
    write_spool(srv, mbox_bytes(msgs))
    srv.start()
    first = uidls_of(srv)
    assert len(set(first.values())) == len(msgs)
    assert os.path.exists(spool_path(srv) + ".popbox-index")
    srv.stop()
    srv.start()
    assert uidls_of(srv) == first
    mutt_status_rewrite(spool_path(srv))
    assert b"Status: RO" in open(spool_path(srv), "rb").read()
    assert uidls_of(srv) == first
    os.unlink(spool_path(srv) + ".popbox-index")
    assert uidls_of(srv) == first
    # never from X-UIDL: a forged header changes nothing
    forged = [(d, b"X-UIDL: " + first[1].encode() + b"\n" + m) for d, m in msgs[:1]]
    write_spool(srv, mbox_bytes(msgs + forged))
    after = uidls_of(srv)
    assert [after[i] for i in range(1, len(msgs) + 1)] == [first[i] for i in range(1, len(msgs) + 1)]
    assert after[len(msgs) + 1] not in first.values()


MUTT_RUNAWAY_GUARD = 120   # seconds: only ends a mutt that hangs, never a pass condition


def run_mutt_on_spool(path, home):
    """Debian's mutt opens the mbox, marks every message read (Status: RO),
    flags the first (X-Status: F), writes the mailbox and quits: its own
    rewrite, under its own locks. `script` gives it a terminal, -e 'push'
    types the keys."""
    os.makedirs(os.path.join(home, "Mail"), exist_ok=True)
    rc = os.path.join(home, "muttrc")
    with open(rc, "w") as f:
        f.write("\n".join([
            "set mbox_type=mbox",
            'set folder="%s"' % os.path.join(home, "Mail"),
            'set spoolfile="%s"' % path,
            "set quit=yes", "set move=no", "set delete=yes", "set wait_key=no",
            "set sort=mailbox-order", "set mark_old=yes", "set beep=no",
        ]) + "\n")
    keys = "<tag-pattern>~A<enter><tag-prefix><clear-flag>N<first-entry><flag-message><sync-mailbox><quit>"
    cmd = "mutt -n -F %s -f %s -e 'push \"%s\"'" % (rc, path, keys)
    env = dict(os.environ, HOME=home, TERM="xterm")
    subprocess.run(["script", "-qec", cmd, "/dev/null"], env=env, cwd=home,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=MUTT_RUNAWAY_GUARD, check=False)


def strip_flag_headers(msg):
    """A served message without the header fields mutt's rewrite adds
    (Status:, X-Status:, and Content-Length:/Lines: where it writes them)."""
    head, sep, body = msg.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    keep = [l for l in lines if not l.startswith((b"Status: ", b"X-Status: ", b"Content-Length: ",
                                                  b"Lines: "))]
    return b"\r\n".join(keep) + sep + body


def test_real_mutt_status_rewrite_keeps_uidls_and_bytes(mbox_server, tmp_path):
    """mutt itself (not a model of it) rewrites the spool's flag headers:
    popboxd's UIDLs stay (with the index, and after losing it), every
    message is served with mutt's new headers and otherwise as before."""
    if shutil.which("mutt") is None or shutil.which("script") is None:
        pytest.fail("mutt and script (bsdutils) are needed: tools/debian-packages.txt")
    srv = mbox_server()
    msgs = [(d, m) for d, m in MESSAGES if not m.endswith(b"newline")]
    write_spool(srv, mbox_bytes(msgs))
    srv.start()
    first = uidls_of(srv)
    assert len(set(first.values())) == len(msgs)
    path = spool_path(srv)
    st0 = os.stat(path)
    srv.stop()      # mutt works on the spool while no session is open

    run_mutt_on_spool(path, str(tmp_path / "home"))
    with open(path, "rb") as f:
        data = f.read()
    assert data.count(b"Status: RO") == len(msgs), "mutt did not rewrite the spool:\n%r" % data[:2000]
    assert data.count(b"X-Status: F") == 1, data[:2000]
    st = os.stat(path)
    assert (st.st_ino, st.st_uid, st.st_mode) == (st0.st_ino, st0.st_uid, st0.st_mode)
    assert not os.path.exists(path + ".lock")
    assert len(python_mailbox_messages(path)) == len(msgs)

    srv.start()
    for lose_index in (False, True):
        if lose_index:
            for f in os.listdir(os.path.dirname(path)):
                if f.startswith(os.path.basename(path) + ".popbox-index"):
                    os.unlink(os.path.join(os.path.dirname(path), f))
        assert uidls_of(srv) == first, "lost index" if lose_index else "index kept"
        c = srv.session()
        try:
            sizes = c.list()
            for i, (_, m) in enumerate(msgs, 1):
                got = c.retr(i)
                assert sizes[i] == len(got)
                assert b"Status: RO\r\n" in got.split(b"\r\n\r\n", 1)[0] + b"\r\n", (i, got)
                assert strip_flag_headers(got) == served(m), (i, got)
            assert c.cmd("QUIT").startswith(b"+OK")
        finally:
            c.close()


def test_missing_spool_is_an_empty_maildrop(mbox_server):
    srv = mbox_server()
    srv.start()
    c = srv.session()
    try:
        assert c.stat() == (0, 0)
        assert c.cmd("QUIT").startswith(b"+OK")
    finally:
        c.close()
    assert not os.path.exists(spool_path(srv))


def test_lock_held_by_another_program_gives_in_use(mbox_server):
    srv = mbox_server()
    write_spool(srv, mbox_bytes(MESSAGES[:2]))
    srv.start()
    for dot, fl in ((True, True), (True, False), (False, True)):
        holder = MboxLock(spool_path(srv), dot=dot, fcntl_lock=fl)
        try:
            c = srv.connect()
            try:
                c.cmd("USER alice")
                r = c.cmd("PASS secret")
                assert r.startswith(b"-ERR [IN-USE]"), (dot, fl, r)
            finally:
                c.close()
        finally:
            holder.release()
    # released: the login works (and a dot-lock of a dead process is broken)
    with open(spool_path(srv) + ".lock", "w") as f:
        f.write("999999999:%s\n" % socket.gethostname())
    assert len(uidls_of(srv)) == 2
    assert not os.path.exists(spool_path(srv) + ".lock")


def test_delivery_during_session_is_kept_and_shown_next_time(mbox_server):
    srv = mbox_server()
    write_spool(srv, mbox_bytes(MESSAGES[:3]))
    srv.start()
    c = srv.session()
    try:
        assert c.stat()[0] == 3
        new = b"Subject: arrived during the session\n\nFrom quoted\nhello\n"
        append_like_postfix(spool_path(srv), b"Thu Dec  3 11:00:00 2026", new)
        assert c.retr(2) == wire_form(MESSAGES[1][1])   # still served, file only grew
        assert c.stat()[0] == 3                          # not in this session
        assert c.cmd("DELE 1").startswith(b"+OK")
        assert c.cmd("DELE 3").startswith(b"+OK")
        assert c.cmd("QUIT") == b"+OK Bye, 2 messages deleted"
    finally:
        c.close()
    c = srv.session()
    try:
        assert c.stat()[0] == 2
        assert c.retr(1) == wire_form(MESSAGES[1][1])
        assert c.retr(2) == wire_form(new)
    finally:
        c.close()
    got = python_mailbox_messages(spool_path(srv))
    assert got == [MESSAGES[1][1], quote_mboxo(new)]


def test_rewrite_by_another_program_during_session_deletes_nothing(mbox_server):
    srv = mbox_server()
    write_spool(srv, mbox_bytes(MESSAGES[:3]))
    srv.start()
    c = srv.session()
    try:
        assert c.cmd("DELE 1").startswith(b"+OK")
        mutt_status_rewrite(spool_path(srv))
        before = open(spool_path(srv), "rb").read()
        r = c.cmd("RETR 2")
        assert r.startswith(b"-ERR [SYS/TEMP]"), r
        r = c.cmd("QUIT")
        assert r.startswith(b"-ERR"), r
    finally:
        c.close()
    assert open(spool_path(srv), "rb").read() == before


def test_expunge_keeps_owner_group_mode_and_empties_in_place(mbox_server):
    srv = mbox_server()
    write_spool(srv, mbox_bytes(MESSAGES[:3]), mode=0o660)
    st = os.stat(spool_path(srv))
    srv.start()
    c = srv.session()
    try:
        for i in (1, 2, 3):
            c.cmd("DELE %d" % i)
        assert c.cmd("QUIT") == b"+OK Bye, 3 messages deleted"
    finally:
        c.close()
    st2 = os.stat(spool_path(srv))
    assert (st2.st_ino, st2.st_uid, st2.st_gid, st2.st_mode) == \
        (st.st_ino, st.st_uid, st.st_gid, st.st_mode)
    assert st2.st_size == 0


# ---------------------------------------------------------------- crashes

def sha(b):
    return hashlib.sha256(b).hexdigest()


CRASH_MESSAGES = [(b"Thu Dec  3 10:00:%02d 2026" % i,
                   b"Subject: m%d\n\n" % i + (b"x" * (1000 * i)) + b"\nFrom inside %d\n" % i)
                  for i in range(1, 7)]
CRASH_DELETE = (1, 3, 4)


def check_spool(srv, reply, extra=()):
    """The spool after a crash or error, through Python's mailbox module:
    nothing unmarked is lost, nothing is changed, order kept; all or
    nothing of the marked ones are gone (+OK: all). extra: messages
    appended meanwhile, which must be there too."""
    got = python_mailbox_messages(spool_path(srv))
    want_all = [quote_mboxo(m) + (b"" if m.endswith(b"\n") else b"\n") for _, m in CRASH_MESSAGES]
    want_all = [m.rstrip(b"\n") + b"\n" for m in want_all]
    kept = [m for i, m in enumerate(want_all, 1) if i not in CRASH_DELETE]
    extra = [quote_mboxo(m) for m in extra]
    assert got in (want_all + extra, kept + extra), (len(got), reply)
    if reply is not None and reply.startswith(b"+OK"):
        assert got == kept + extra
    return got == kept + extra


def worker_pid(srv, not_pid=None):
    ch = srv.wait_children(lambda c: [p for p, n in c.items() if n == WORKER and p != not_pid],
                           timeout=RUNAWAY_SEC)
    pids = [p for p, n in ch.items() if n == WORKER and p != not_pid]
    assert len(pids) == 1, ch
    return pids[0]


# Every system call of the expunge that changes a file or a directory (the
# dot-lock's link and the opens before them change nothing of the mbox).
EXPUNGE_CALLS = ("pwrite64", "ftruncate", "fsync", "renameat", "renameat2", "unlinkat")


def expunge_session(srv, tmp_path, name, inject=None):
    """Log in, mark CRASH_DELETE, QUIT with strace on the worker; returns
    (reply or None if killed, strace log path)."""
    from test_crash_server import quit_reply
    write_spool(srv, mbox_bytes(CRASH_MESSAGES))
    for f in os.listdir(srv.mail_root):
        if f.startswith("alice."):
            os.unlink(os.path.join(srv.mail_root, f))
    pid = worker_pid(srv)
    c = srv.session()
    for i in CRASH_DELETE:
        assert c.cmd("DELE %d" % i).startswith(b"+OK")
    log = str(tmp_path / ("strace-" + name))
    tracer = StraceNth(pid, ",".join(EXPUNGE_CALLS), inject, log)
    try:
        reply = quit_reply(c)
    finally:
        tracer.stop()
    if reply is None:
        worker_pid(srv, not_pid=pid)    # reaped and restarted by the master
    return reply, log


@pytest.mark.skipif(STRACE is None, reason="strace not installed")
def test_sigkill_at_every_write_of_expunge(mbox_server, tmp_path):
    """SIGKILL on entry to every write-side system call of the expunge
    (each pwrite, ftruncate, fsync, rename and unlink, counted in a traced
    run first); after each kill an MTA appends a message (it
    breaks our dead process's dot-lock at once), then a login must finish
    the job: through Python's mailbox module, every unmarked message is
    there unchanged and in order, the appended one too, and the marked
    ones are all there or all gone."""
    srv = mbox_server(workers=1)
    srv.start()
    reply, log = expunge_session(srv, tmp_path, "count")
    assert reply is not None and reply.startswith(b"+OK"), reply
    counts = {}
    with open(log) as f:
        for line in f:
            name = line.split(None, 1)[1].split("(", 1)[0] if " " in line else ""
            if name in EXPUNGE_CALLS:
                counts[name] = counts.get(name, 0) + 1
    assert counts.get("pwrite64", 0) >= 5 and counts.get("ftruncate") == 1, counts
    outcomes = []
    kills = 0
    for call in EXPUNGE_CALLS:
        for n in range(1, counts.get(call, 0) + 1):
            reply, _ = expunge_session(srv, tmp_path, "%s-%d" % (call, n),
                                       "%s:signal=SIGKILL:when=%d" % (call, n))
            killed = reply is None
            if killed:
                kills += 1
                if kills % 4 == 0:
                    # a fresh popboxd now and then: the master's restart
                    # back-off doubles with every kill
                    srv.stop()
                    srv.start()
            late = b"Subject: late %s %d\n\nappended after the crash\n" % (call.encode(), n)
            append_after_breaking(spool_path(srv), b"Thu Dec  3 12:00:00 2026", late)
            c = wait_until(srv.session, "login after the crash", step=0.1,
                           retry_on=(AssertionError, ConnectionClosed, OSError))
            try:
                count = c.stat()[0]
                c.cmd("QUIT")
            finally:
                c.close()
            done = check_spool(srv, reply, extra=[late])
            assert count == len(python_mailbox_messages(spool_path(srv)))
            assert not [f for f in os.listdir(srv.mail_root) if "expunge" in f]
            outcomes.append((call, n, killed, done))
    print("expunge kill points (call, n, killed, marked messages gone):", outcomes)
    assert all(k for _, _, k, _ in outcomes), outcomes
    # killed before the journal was durable (nothing gone) and after
    # (finished by the next login): both happened
    assert any(not d for _, _, _, d in outcomes) and any(d for _, _, _, d in outcomes), outcomes


class StraceNth:
    """strace -f on every thread of pid, tracing calls, with an optional
    fault injection."""

    def __init__(self, pid, calls, inject, log_path):
        from test_crash_server import tracer_of
        self.proc = subprocess.Popen(
            [STRACE, "-f", "-qq", "-o", log_path, "-p", str(pid), "-e", "trace=" + calls] +
            (["-e", "inject=" + inject] if inject else []),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def attached():
            try:
                tids = os.listdir("/proc/%d/task" % pid)
                return all(tracer_of("/proc/%d/task/%s/status" % (pid, t)) == self.proc.pid
                           for t in tids)
            except (FileNotFoundError, ProcessLookupError):
                return False
        wait_until(attached, "strace attached", step=0.02)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stderr.close()


def append_after_breaking(path, date, msg):
    """An MTA's append that breaks a dot-lock whose process is gone."""
    dot = path + ".lock"
    try:
        pid = int(open(dot).read().split(":")[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os.unlink(dot)
    except (FileNotFoundError, ValueError):
        pass
    append_like_postfix(path, date, msg)


def test_full_disk_during_expunge_loses_nothing(mbox_server):
    """The spool (400 KB) on a 512 KiB tmpfs: no room for the expunge
    journal (the 300 KB kept after the first message). QUIT says -ERR, the
    spool is unchanged and no journal is left; with room again the same
    expunge works."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    srv = mbox_server()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", srv.mail_root],
                   check=True)
    try:
        srv._own(srv.mail_root)
        big = [(b"Thu Dec  3 10:00:%02d 2026" % i, b"Subject: b%d\n\n" % i + b"y" * 100000 + b"\n")
               for i in range(4)]
        write_spool(srv, mbox_bytes(big))
        srv.start()
        before = open(spool_path(srv), "rb").read()
        c = srv.session()
        try:
            assert c.cmd("DELE 1").startswith(b"+OK")
            r = c.cmd("QUIT")
            assert r.startswith(b"-ERR [SYS/TEMP]"), r
        finally:
            c.close()
        assert open(spool_path(srv), "rb").read() == before
        assert not [f for f in os.listdir(srv.mail_root) if "expunge" in f]
        subprocess.run(["mount", "-o", "remount,size=4m", srv.mail_root], check=True)
        c = srv.session()
        try:
            assert c.cmd("DELE 1").startswith(b"+OK")
            assert c.cmd("QUIT") == b"+OK Bye, 1 messages deleted"
        finally:
            c.close()
        assert python_mailbox_messages(spool_path(srv)) == [m for _, m in big[1:]]
        srv.stop()
    finally:
        srv.stop()
        subprocess.run(["umount", srv.mail_root], check=True)


# ---------------------------------------------------------------- popbox deliver

def test_popbox_deliver_into_mbox_reads_back_byte_exact(mbox_server):
    """Every awkward body through `popbox deliver` into the mbox and back
    over POP3; mboxrd round-trips ">From " lines exactly, mboxo (Postfix's
    quoting) quotes only "From " lines; Python's mailbox module reads the
    spool; the From_ line names the envelope sender."""
    from mailin import AWKWARD_BODIES, deliver, fetch_all
    bodies = dict(AWKWARD_BODIES)
    bodies["from-lines"] = b"Subject: f\n\nFrom here\n>From there\n>>From far\nFrom\n"
    for fmt in ("mboxrd", "mboxo"):
        srv = mbox_server({"mbox_format": fmt})
        srv.start()
        names = sorted(bodies)
        for n in names:
            r = deliver(srv, "alice", bodies[n])
            assert r.returncode == 0, (n, r.stderr)
        r = deliver(srv, "alice", b"Subject: s\n\nx\n", "-f", "bob@example.org")
        assert r.returncode == 0, r.stderr
        got = fetch_all(srv)
        assert len(got) == len(names) + 1
        for n, g in zip(names, got):
            want = bodies[n]
            if fmt == "mboxo":
                # ">From " is read back as "From " (the quoting is ambiguous)
                want = want.replace(b"\n>From there", b"\nFrom there")
            assert g == wire_form(want), (fmt, n, g)
        assert got[-1] == wire_form(b"Return-Path: <bob@example.org>\nSubject: s\n\nx\n")
        spool = open(spool_path(srv), "rb").read()
        assert spool.startswith(b"From MAILER-DAEMON ")
        assert b"\n\nFrom bob@example.org " in spool
        assert len(python_mailbox_messages(spool_path(srv))) == len(names) + 1
        assert oct(os.stat(spool_path(srv)).st_mode & 0o777) == "0o600"
        srv.stop()


@pytest.mark.skipif(STRACE is None, reason="strace not installed")
def test_popbox_deliver_killed_at_every_system_call(mbox_server, tmp_path):
    """strace kills `popbox deliver` at each of its system calls in turn,
    into an mbox holding one message: after the next login (which repairs
    an interrupted append) the new message is there whole or not at all,
    the old one unchanged, and exit 0 came only with it there."""
    from mailin import popbox_path
    from test_deliver import syscall_sequence
    srv = mbox_server()
    old = (b"Thu Dec  3 10:00:00 2026", b"Subject: old\n\nkept\n")
    write_spool(srv, mbox_bytes([old]))
    srv.start()
    srv.write_config()
    data = b"Subject: kill\n\nFrom the middle\n" + b"0123456789abcdef\n" * 4096
    cmd = [popbox_path(), "deliver", "-c", srv.conf_path, "alice"]
    seq = syscall_sequence(cmd, data, str(tmp_path))
    # every call that writes or names a file, takes a lock or syncs (the
    # others only read; killing there is like killing before the next one)
    names = [n for n, _ in seq]
    assert "linkat" in names and "pwrite64" in names, names
    writing = {"write", "pwrite64", "fsync", "fdatasync", "linkat", "unlinkat", "ftruncate",
               "renameat", "renameat2", "fcntl", "openat"}
    # (the first openat calls load libraries and read the config: skipped)
    points = [(n, k) for n, k in seq
              if n in writing and not (n == "openat" and k < names.count("openat") - 8)]
    assert len(points) >= 20, points
    outcomes = {"absent": 0, "whole": 0}
    for name, nth in points:
        write_spool(srv, mbox_bytes([old]))
        for f in os.listdir(srv.mail_root):
            if f.startswith("alice."):
                os.unlink(os.path.join(srv.mail_root, f))
        r = subprocess.run([STRACE, "-f", "-qq", "-o", "/dev/null",
                            "-e", "inject=%s:signal=KILL:when=%d" % (name, nth)] + cmd,
                           input=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=RUNAWAY_SEC, env=traced_env())
        c = srv.session()
        try:
            n = c.stat()[0]
            msgs = [c.retr(i) for i in range(1, n + 1)]
            c.cmd("QUIT")
        finally:
            c.close()
        assert msgs[0] == wire_form(old[1]), (name, nth)
        assert n in (1, 2), (name, nth, n)
        if n == 2:
            assert msgs[1] == wire_form(data), "a partial message after a kill at %s #%d" % (name, nth)
        assert len(python_mailbox_messages(spool_path(srv))) == n
        assert not [f for f in os.listdir(srv.mail_root) if f.startswith("alice.popbox-append")]
        if r.returncode == 0:
            assert n == 2, "exit 0 without the message (kill at %s #%d)" % (name, nth)
        else:
            assert r.returncode == -signal.SIGKILL, (name, nth, r.returncode, r.stderr)
            outcomes["whole" if n == 2 else "absent"] += 1
    assert outcomes["absent"] > 5 and outcomes["whole"] >= 1, outcomes


def test_lmtp_into_mbox(server_factory):
    """LMTP (smtplib) into two users' mboxes through the same store code:
    the messages read back byte-exact, Python's mailbox module reads the
    spools, the From_ line names the envelope sender; while another program
    holds a spool's lock past lock_wait the recipient gets 451 and nothing
    is written."""
    import smtplib
    from test_lmtp import lmtp_server, rp
    srv = lmtp_server(server_factory, users={"alice": "secret", "bob": "pw"},
                      config={"lock_wait": "1"})
    srv.stop()
    srv.config["mail"] = "mbox:%s/%%u" % srv.mail_root
    srv.start()
    body = b"Subject: hi\r\n\r\nFrom a line\r\n.dot\r\nno final newline"
    lm = smtplib.LMTP("127.0.0.1", srv.lmtp_port)
    lm.ehlo("mta.example")
    assert lm.sendmail("sender@example.net", ["alice", "bob"], body) == {}
    want = wire_form(rp("sender@example.net") + body)
    assert [c for c in fetch(srv, "alice", "secret")] == [want]
    assert [c for c in fetch(srv, "bob", "pw")] == [want]
    alice = os.path.join(srv.mail_root, "alice")
    assert open(alice, "rb").read().startswith(b"From sender@example.net ")
    assert len(python_mailbox_messages(alice)) == 1
    lm.quit()
    from mailin import LMTPRaw, lmtp_transaction
    holder = MboxLock(alice)
    try:
        conn = LMTPRaw(srv.lmtp_port)
        conn.lhlo()
        _, rr, data, after = lmtp_transaction(conn, "s@example.net", ["alice", "bob"],
                                              b"Subject: 2\r\n\r\nx\r\n")
        conn.cmd("QUIT")
    finally:
        holder.release()
    assert [r[0] for r in rr] == [250, 250] and data[0] == 354
    assert [r[0] for r in after] == [451, 250], after
    assert len(python_mailbox_messages(alice)) == 1
    assert len(fetch(srv, "bob", "pw")) == 2


def fetch(srv, user, password):
    c = srv.session(user, password)
    try:
        n = c.stat()[0]
        return [c.retr(i) for i in range(1, n + 1)]
    finally:
        c.cmd("QUIT")
        c.close()
