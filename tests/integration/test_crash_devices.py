"""Crash consistency of a device's UPDATE (issue 11; docs/DESIGN.md "Every
device gets every message"): the worker is killed with SIGKILL at the N-th
relevant system call of the phone's UPDATE, for every N, by strace fault
injection (as tests/integration/test_crash_server.py does for the classic
expunge). The laptop has deleted messages 1 and 2 before; the phone deletes
2 and 3 and quits. After each cycle, against a model:

  - no file that an active device has not deleted is gone (1, 3, 4 stay);
  - the laptop never sees again what it deleted (1, 2);
  - the phone sees its deletions all or none (one journal group), all of
    them once QUIT said +OK; a file is gone only if the phone's deletion
    of it is recorded;
  - a file both devices deleted that a kill left behind is removed by
    `popbox expire`;
  - the next login works at once.

Needs strace and ptrace permission (tests run as root in CI)."""

import os

import pytest

from popbox_server import build_dir
from test_crash_server import STRACE, Strace, login_at_once, quit_reply, worker_pid

pytestmark = pytest.mark.skipif(STRACE is None, reason="strace not installed")

NAMES = ["1700000001.M1.devcrash", "1700000002.M2.devcrash", "1700000003.M3.devcrash",
         "1700000004.M4.devcrash"]


def reset(srv):
    md = srv.maildir()
    for sub in ("new", "cur", "tmp"):
        for f in os.listdir(os.path.join(md, sub)):
            os.unlink(os.path.join(md, sub, f))
    for f in ("popbox.devices", "popbox.devices.mark", "popbox.index"):
        if os.path.exists(os.path.join(md, f)):
            os.unlink(os.path.join(md, f))
    for i, n in enumerate(NAMES):
        srv.deliver(b"Subject: %d\n\nbody %d\n" % (i, i), name=n)


def device(srv, name):
    c = login_at_once_as(srv, "alice#" + name)
    return c


def login_at_once_as(srv, user):
    import popbox_server
    orig = srv.session
    try:
        srv.session = lambda: popbox_server.PopboxServer.session(srv, user=user)
        return login_at_once(srv)
    finally:
        srv.session = orig


def view(srv, name):
    c = device(srv, name)
    got = sorted(c.uidl().values())
    assert c.cmd("QUIT").startswith(b"+OK")
    c.wait_closed()
    c.close()
    return got


def dele(c, names):
    by = {u: n for n, u in c.uidl().items()}
    for name in names:
        assert c.cmd("DELE %d" % by[name]).startswith(b"+OK")


CRASH_POINTS = [("write", 1), ("fdatasync", 1), ("unlinkat", 1), ("fsync", 1), ("fsync", 2),
                ("unlinkat", 2)]


def test_sigkill_at_every_syscall_of_a_device_update(server_factory, tmp_path):
    import subprocess
    srv = server_factory(workers=1)
    results = []
    for syscall, n in CRASH_POINTS:
        reset(srv)
        for dev in ("phone", "laptop"):
            view(srv, dev)
        c = device(srv, "laptop")
        dele(c, NAMES[:2])
        assert c.cmd("QUIT").startswith(b"+OK")
        c.close()
        assert sorted(srv.message_files()) == NAMES     # the phone holds 1 and 2
        pid = worker_pid(srv)
        c = device(srv, "phone")
        dele(c, NAMES[1:3])
        tracer = Strace(pid, "write,fdatasync,unlinkat,fsync,rename,renameat,renameat2",
                        "%s:signal=SIGKILL:when=%d" % (syscall, n),
                        str(tmp_path / ("strace-%s-%d" % (syscall, n))))
        try:
            reply = quit_reply(c)
        finally:
            tracer.stop()
        killed = reply is None
        if killed:
            worker_pid(srv, not_pid=pid)
        files = sorted(srv.message_files())
        # Never gone: what an active device has not deleted.
        for keep in (NAMES[0], NAMES[2], NAMES[3]):
            assert keep in files, (syscall, n, files)
        laptop = view(srv, "laptop")
        assert laptop == [NAMES[2], NAMES[3]], (syscall, n, laptop)
        phone = view(srv, "phone")
        recorded = phone == [NAMES[0], NAMES[3]]
        assert recorded or phone == NAMES, (syscall, n, phone)   # all or nothing
        if NAMES[1] not in files:
            assert recorded, (syscall, n, "file removed before the deletion was recorded")
        if reply is not None and reply.startswith(b"+OK"):
            assert recorded and NAMES[1] not in files, (syscall, n, reply, files)
        # A file both devices deleted that the kill left is removed by the
        # expire run.
        r = subprocess.run([os.path.join(build_dir(), "popbox"), "expire", "-c", srv.conf_path],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        if recorded:
            assert NAMES[1] not in srv.message_files(), (syscall, n)
        results.append((syscall, n, killed, recorded, NAMES[1] in files))
    # The kill points were hit: the journal write kills before anything is
    # recorded; after the fdatasync the deletion is recorded; the file goes
    # only at the unlink; past the end, no kill.
    expect = {("write", 1): (True, False, True), ("fdatasync", 1): (True, True, True),
              ("unlinkat", 1): (True, True, True), ("fsync", 1): (True, True, False),
              ("fsync", 2): (True, True, False), ("unlinkat", 2): (False, True, False)}
    for syscall, n, killed, recorded, left in results:
        assert (killed, recorded, left) == expect[(syscall, n)], results
