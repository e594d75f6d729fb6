"""popbox deliver, the local delivery agent (docs/popbox.1, docs/DESIGN.md
"Mail in"): exit codes for MTAs, messages read back over POP3 byte-exact,
nothing partial on failure, bounded memory, the index kept warm."""

import os
import re
import shutil
import signal
import subprocess

import pytest

from popbox_server import sanitized, traced_env

from mailin import AWKWARD_BODIES, deliver, fetch_all, stray_files, wire_form, popbox_path

EX_USAGE, EX_NOUSER, EX_TEMPFAIL, EX_NOPERM, EX_CONFIG = 64, 67, 75, 77, 78


def test_every_kind_of_body_reads_back_byte_exact(server):
    names = sorted(AWKWARD_BODIES)
    for name in names:
        r = deliver(server, "alice", AWKWARD_BODIES[name])
        assert r.returncode == 0, (name, r.stderr)
    got = fetch_all(server)
    # Maildir names start with the time: same order as delivered when the
    # names' time and counter grow, which they do within one second and
    # across; compare as sets to stay independent of that.
    assert sorted(got) == sorted(wire_form(AWKWARD_BODIES[n]) for n in names)
    assert stray_files(server.maildir()) == []


def test_stored_with_lf_line_ends(server):
    assert deliver(server, "alice", b"Subject: x\r\n\r\nbody\r\n").returncode == 0
    (path,) = server.message_files().values()
    with open(path, "rb") as f:
        assert f.read() == b"Subject: x\n\nbody\n"
    st = os.stat(path)
    assert (st.st_uid, st.st_mode & 0o777) == (server.uid, 0o600)


@pytest.mark.parametrize("sender,line", [
    ("bob@example.org", b"Return-Path: <bob@example.org>\r\n"),
    ("<bob@example.org>", b"Return-Path: <bob@example.org>\r\n"),
    ("", b"Return-Path: <>\r\n"),
])
def test_return_path_from_f_and_nothing_else(server, sender, line):
    body = b"Subject: rp\n\nhello\n"
    assert deliver(server, "alice", body, "-f", sender).returncode == 0
    (got,) = fetch_all(server)
    assert got == line + wire_form(body)


def test_bad_sender_is_a_usage_error(server):
    r = deliver(server, "alice", b"x\n", "-f", "a b@c")
    assert r.returncode == EX_USAGE
    assert server.message_files() == {}


def test_address_forms_and_recipient_delimiter(server_factory):
    srv = server_factory(users={"alice": "secret", "bob@example.org": "pw"},
                         config={"recipient_delimiter": "+-"})
    for addr in ("alice", "alice@example.com", "alice+list@example.com", "alice-x"):
        r = deliver(srv, addr, b"Subject: %s\n\nx\n" % addr.encode())
        assert r.returncode == 0, (addr, r.stderr)
    for addr in ("bob@example.org", "bob+tag@EXAMPLE.Org"):
        r = deliver(srv, addr, b"Subject: bob\n\nx\n")
        assert r.returncode == 0, (addr, r.stderr)
    assert len(fetch_all(srv)) == 4
    assert len(fetch_all(srv, "bob@example.org", "pw")) == 2


def test_unknown_user_is_67_and_leaves_nothing(server):
    r = deliver(server, "carol@example.org", b"x\n")
    assert r.returncode == EX_NOUSER
    assert b"no such user" in r.stderr
    # Bob+x is not bob: local parts are compared exactly
    assert deliver(server, "Alice", b"x\n").returncode == EX_NOUSER
    assert not os.path.exists(os.path.join(server.mail_root, "carol@example.org"))


def test_config_errors_are_78(server, tmp_path):
    r = subprocess.run([popbox_path(), "deliver", "-c", str(tmp_path / "missing.conf"), "alice"],
                       input=b"x\n", capture_output=True)
    assert r.returncode == EX_CONFIG
    # a maildrop another user may write is refused (docs/RELIABILITY.md §3)
    md = server.maildir()
    os.chmod(md, 0o777)
    r = deliver(server, "alice", b"x\n")
    assert r.returncode == EX_CONFIG, r.stderr
    assert b"writable" in r.stderr
    os.chmod(md, 0o700)
    assert server.message_files() == {}


def test_maildrop_created_as_a_login_would(server):
    md = os.path.join(server.mail_root, "alice")
    assert not os.path.exists(md)
    assert deliver(server, "alice", b"Subject: first\n\nx\n").returncode == 0
    for sub in ("cur", "new", "tmp"):
        st = os.stat(os.path.join(md, sub))
        assert (st.st_uid, st.st_mode & 0o777) == (server.uid, 0o700)
    assert fetch_all(server) == [wire_form(b"Subject: first\n\nx\n")]


def test_over_max_maildrop_size_is_75_or_77_with_bounce(server_factory):
    srv = server_factory(config={"max_maildrop_size": "2K"})
    assert deliver(srv, "alice", b"a" * 1000 + b"\n").returncode == 0
    r = deliver(srv, "alice", b"b" * 1500 + b"\n")
    assert r.returncode == EX_TEMPFAIL
    assert b"max_maildrop_size" in r.stderr
    srv.config["max_maildrop_size_bounce"] = "yes"
    assert deliver(srv, "alice", b"b" * 1500 + b"\n").returncode == EX_NOPERM
    assert len(srv.message_files()) == 1
    assert stray_files(srv.maildir()) == []


def test_over_max_message_size_is_77(server_factory):
    srv = server_factory(config={"max_message_size": "4K"})
    assert deliver(srv, "alice", b"x" * 5000 + b"\n").returncode == EX_NOPERM
    assert deliver(srv, "alice", b"x" * 3000 + b"\n").returncode == 0
    assert len(srv.message_files()) == 1
    assert stray_files(srv.maildir()) == []


@pytest.fixture
def small_tmpfs(server):
    """server's mail root on a 256 KiB tmpfs (root only: mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs",
                    server.mail_root], check=True)
    server._own(server.mail_root)
    yield server
    subprocess.run(["umount", server.mail_root], check=True)


def test_full_disk_is_75_and_nothing_partial(small_tmpfs):
    srv = small_tmpfs
    assert deliver(srv, "alice", b"small\n").returncode == 0
    r = deliver(srv, "alice", b"y" * (400 * 1024))
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert b"No space left" in r.stderr
    assert len(srv.message_files()) == 1
    assert stray_files(srv.maildir()) == []
    # the space is back: nothing was left behind to hold it
    assert deliver(srv, "alice", b"z" * (100 * 1024)).returncode == 0
    assert len(fetch_all(srv)) == 2


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM for %d" % pid)


def test_big_message_streams_in_bounded_memory(server):
    """50 MB through a pipe: before the pipe is closed (everything but the
    last pipe buffer is delivered by then) the peak RSS of popbox deliver
    stays far below the message: it reads 64 KiB chunks. Skipped under
    sanitizers (their shadow memory is what RSS would measure)."""
    line = b"0123456789" * 7 + b"\n"
    chunk = line * 1024
    chunks = 50 * 1024 * 1024 // len(chunk)
    server.write_config()
    proc = subprocess.Popen([popbox_path(), "deliver", "-c", server.conf_path, "alice"],
                            stdin=subprocess.PIPE)
    for _ in range(chunks):
        proc.stdin.write(chunk)
    proc.stdin.flush()
    hwm = vm_hwm_kib(proc.pid)
    proc.stdin.close()
    assert proc.wait() == 0
    if not sanitized():
        assert hwm < 24 * 1024, hwm
    with server.connect() as c:
        c.login()
        assert c.list() == {1: len(wire_form(chunk)) * chunks}


def test_runs_as_run_as_when_started_as_root(server):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    assert deliver(server, "alice", b"x\n").returncode == 0
    for path in server.message_files().values():
        assert os.stat(path).st_uid == server.uid
    server.config["run_as"] = "root"
    r = deliver(server, "alice", b"x\n")
    assert r.returncode == EX_CONFIG
    assert b"as root" in r.stderr
    assert len(server.message_files()) == 1


def test_index_stays_warm_after_a_delivery(server):
    """After a delivery, the next login takes every earlier message's size
    from popbox.index and reads only the new file: the earlier files are
    made unreadable to popboxd's workers (run_as) and still listed with
    their sizes (docs/DESIGN.md "Mail in")."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the files are made unreadable to run_as")
    bodies = [b"Subject: %d\n\n%s\n" % (i, b"x" * i) for i in range(200)]
    for b in bodies:
        server.deliver(b)
    with server.connect() as c:
        c.login()
        first = {c.uidl()[n]: size for n, size in c.list().items()}
        c.quit()
    assert len(first) == 200
    for path in server.message_files().values():
        os.chmod(path, 0)
    new = b"Subject: new\n\nfresh\n"
    assert deliver(server, "alice", new).returncode == 0
    with server.connect() as c:
        c.login()
        uidls, sizes = c.uidl(), c.list()
        after = {uidls[n]: size for n, size in sizes.items()}
        (fresh,) = [n for n, u in uidls.items() if u not in first]
        assert c.retr(fresh) == wire_form(new)
        c.quit()
    assert after == dict(first, **{uidls[fresh]: len(wire_form(new))})


def syscall_sequence(cmd, data, tmp):
    """The system calls cmd makes, in order, as (name, nth call of that
    name): strace's injection counts each call separately."""
    trace = os.path.join(tmp, "trace")
    subprocess.run(["strace", "-f", "-qq", "-o", trace] + cmd, input=data, env=traced_env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=True)
    seen, seq = {}, []
    with open(trace) as f:
        for line in f:
            m = re.match(r"\d+\s+([a-z0-9_]+)\(", line)
            if m:
                name = m.group(1)
                seen[name] = seen.get(name, 0) + 1
                seq.append((name, seen[name]))
    return seq


def test_sigkill_at_every_system_call_is_all_or_nothing(server, tmp_path):
    """strace kills popbox deliver at each of its system calls in turn: after
    every run the message is in new/ whole or not at all, tmp/ is empty,
    and exit 0 comes only with the message there."""
    if shutil.which("strace") is None:
        pytest.fail("strace is needed: tools/debian-packages.txt")
    data = b"Subject: kill\n\n" + b"0123456789abcdef\n" * 4096
    server.write_config()
    cmd = [popbox_path(), "deliver", "-c", server.conf_path, "alice"]
    md = server.maildir()
    new = os.path.join(md, "new")

    def clear():
        for f in os.listdir(new):
            os.unlink(os.path.join(new, f))
    seq = syscall_sequence(cmd, data, str(tmp_path))
    clear()
    names = [n for n, _ in seq]
    assert "linkat" in names and "fsync" in names, names
    outcomes = {"absent": 0, "whole": 0}
    for name, nth in seq:
        r = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null",
                            "-e", "inject=%s:signal=KILL:when=%d" % (name, nth)] + cmd,
                           input=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=60, env=traced_env())
        files = os.listdir(new)
        assert len(files) <= 1, files
        if files:
            with open(os.path.join(new, files[0]), "rb") as f:
                assert f.read() == data, "a partial message after a kill at %s #%d" % (name, nth)
        assert stray_files(md) == []
        if r.returncode == 0:
            assert files, "exit 0 without the message (kill at %s #%d)" % (name, nth)
        else:
            assert r.returncode == -signal.SIGKILL, (name, nth, r.returncode, r.stderr)
            outcomes["whole" if files else "absent"] += 1
        clear()
    # the kills came before and after the message became visible
    assert outcomes["absent"] > 10 and outcomes["whole"] >= 1, outcomes
