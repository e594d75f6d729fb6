"""Crash consistency of `popbox fetch` (docs/RELIABILITY.md §1, §6):
SIGKILL at the N-th relevant system call of a Maildir delivery, by strace
fault injection, for every N, then a run to completion.

The syscalls are not guessed: one recording run under strace lists what a
5-message fetch really does. The five messages are one batch: written in
tmp/, made durable together (one syncfs() on a local file system that
qualifies, or an fsync of each file: both modes are run), moved into new/
(one renameat2(RENAME_NOREPLACE) each), new/ fsynced once, and only then a
DELE for each; plus the fsyncs of the state directory, the rename of the
state file, the write of each DELE/QUIT and of the state file. The "link"
mode runs the same matrix with renameat2 failing EINVAL (strace error
injection, as on a file system without RENAME_NOREPLACE): the client falls
back to linkat() into new/ + unlinkat() of the tmp/ name, and a kill lands
at each of those too. Then for each of them, and
for every N up to its count, a fresh 5-message mailbox is fetched with
`-e inject=SYSCALL:signal=SIGKILL:when=N` (strace kills the client on entry
to that call, before it runs). Socket writes are picked out of all writes by
their index in the recording (the command sequence is deterministic), so the
kill lands exactly on `write(sock, "DELE n")` or `write(sock, "QUIT")`.

After each kill: every message is on the server or in new/ (never neither),
never twice locally. After the run to completion: every message delivered
exactly once, byte-exact; the server is empty (delete mode) or unchanged
with a state file naming exactly the server's UIDLs (keep mode). A tmp/ file
left by the killed run is allowed, up to one batch of them (a SIGKILLed
process cannot clean up; the Maildir rule is that readers ignore tmp/ and
delete files older than 36 h): the next run ignores them (they do not count
as delivered) and leaves none of its own.

The recording also serves as a trace-order oracle (docs/RELIABILITY.md §8,
the order oracle): with strace -y, every data write of a message is followed by the sync
of its file (syncfs, or fsync of that file) before its move into new/
(renameat2, or linkat in the fallback), every move by an fsync of new/, and
that before the message's DELE.

test_sigkill_at_batch_boundaries does the same for a fetch of several
batches at the points between them: each sync, the first and last move of
each batch, each fsync of new/ and the first DELE write after each batch.
test_name_taken_in_new_is_an_error: a move that finds its name taken in
new/ (EEXIST, injected) ends the run with nothing of the batch deleted.
"""

import os
import poplib
import re
import shutil
import subprocess

import pytest

from fetch_env import (RUNAWAY_SEC, Client, digest_counts, make_message, read_maildir,
                       wait_until)

pytestmark = pytest.mark.skipif(shutil.which("strace") is None,
                                reason="strace is not installed")

NMSG = 5
TRACED = ("fsync,fdatasync,syncfs,sync_file_range,rename,renameat,renameat2,link,linkat,"
          "unlink,unlinkat,write,sendto,sendmsg")
BATCH = 64          # FETCH_BATCH_MSGS in src/client/fetch.c

SYSCALL_RE = re.compile(r'^(\d+) +(\w+)\((.*)$')

# the system call that moves a synced file into new/, per mode
MOVE = {"auto": "renameat2", "fsync": "renameat2", "link": "linkat"}
# "link": renameat2 fails as on a file system without RENAME_NOREPLACE
NO_RENAMEAT2 = ["-e", "inject=renameat2:error=EINVAL"]


def mode_args(sync):
    return NO_RENAMEAT2 if sync == "link" else []


def strace_run(client, log, extra, trace=TRACED):
    cmd = ["strace", "-f", "-o", log, "-e", "trace=" + trace] + extra + [
        client.bin, "fetch", "--quiet"]
    # LeakSanitizer cannot run under ptrace (make sanitize): leaks are
    # checked by the other suites, here only the crash points matter
    env = dict(client.env)
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=0"]))
    p = subprocess.run(cmd, env=env, capture_output=True, timeout=RUNAWAY_SEC)
    with open(log, errors="replace") as f:
        lines = f.read().splitlines()
    calls = []
    pid = None
    for ln in lines:
        m = SYSCALL_RE.match(ln)
        if m:
            pid = pid or int(m.group(1))
            calls.append((m.group(2), m.group(3)))
    killed = p.returncode == -9 or any("killed by SIGKILL" in ln for ln in lines)
    return p, calls, killed, pid


def write_is_interesting(args):
    """The writes of the delivery phase: message data (make_message starts
    every message with From:), the socket writes of the DELEs (pipelined
    commands go out in groups: a group with a DELE) and of QUIT, the state
    file; not the login and listing commands before them."""
    return bool(re.match(r'\d+, "(From: |QUIT|# popbox state)', args) or
                re.match(r'\d+, "(RETR \d+\\r\\n)*DELE \d', args))


def short(args):
    """A syscall's arguments for a label, with paths cut to their last part."""
    return re.sub(r'"/[^"]*/([^/"]+/[^/"]+)"', r'"\1"', args)[:60]


def injection_points(calls):
    """(syscall, N, what) for every relevant call of a recorded run."""
    counts = {}
    points = []
    for name, args in calls:
        counts[name] = counts.get(name, 0) + 1
        n = counts[name]
        if name in ("write", "sendto", "sendmsg"):
            if write_is_interesting(args):
                points.append((name, n, short(args)))
        else:
            points.append((name, n, short(args)))
    return points


def server_uidls(dovecot, mb):
    p = poplib.POP3("127.0.0.1", dovecot.pop3_port, timeout=RUNAWAY_SEC)
    try:
        p.user(mb.user)
        p.pass_(mb.password)
        out = {}
        for ln in p.uidl()[1]:
            n, u = ln.decode().split()
            out[int(n)] = u
        sizes = {}
        for ln in p.list()[1]:
            n, s = ln.decode().split()
            sizes[int(n)] = int(s)
        return {out[n]: sizes[n] for n in out}
    finally:
        p.quit()


def until_not_75(run, what):
    """run() again while it ends in 75 (temporary): Dovecot may still hold
    the killed client's session for a moment. The last result; a 75 that
    never goes away fails at the runaway guard."""
    results = []

    def attempt():
        results.append(run())
        return results[-1][0].returncode != 75
    wait_until(attempt, "a run not refused with 75 (temporary) %s" % what, step=0.3)
    return results[-1]


def finish(client):
    """Run to completion."""
    p, = until_not_75(lambda: (client.fetch("--quiet"),), "after the kill")
    assert p.returncode == 0, p.err
    return p


def clear_server(mb):
    for sub in ("new", "cur"):
        d = os.path.join(mb.path, sub)
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))


class Cycle:
    """One fresh local Maildir + client home + nmsg fresh messages on the server."""

    def __init__(self, tmp_path, mailbox, idx, keep, sync="auto", nmsg=NMSG):
        self.dir = tmp_path / ("c%03d" % idx)
        self.client = Client(str(self.dir / "home"))
        if sync == "fsync":
            self.client.env["POPBOX_MAILDIR_FSYNC"] = "1"
        self.sync = sync
        self.maildir = self.dir / "Mail"
        self.msgs = [make_message(idx * 1000 + i, body_size=200 + 150 * (i % 10))
                     for i in range(nmsg)]
        mailbox.deliver_many(self.msgs)
        keys = {"host": "127.0.0.1", "port": str(mailbox.dovecot.pop3_port), "tls": "off",
                "allow_plaintext": "yes", "user": mailbox.user, "password": mailbox.password,
                "deliver": "maildir:%s" % self.maildir}
        if keep:
            keys["keep"] = "yes"
        self.client.write_config("[account crash]\n" + "".join(
            "%s = %s\n" % kv for kv in keys.items()))

    def local(self):
        return list(read_maildir(str(self.maildir)).values())

    def tmp_files(self):
        d = self.maildir / "tmp"
        return sorted(os.listdir(str(d))) if d.is_dir() else []


def check_after_kill(cyc, mailbox, what):
    """§3.7 client rule at the moment of the crash: each message is on the
    server or durable locally, and never twice locally."""
    local = digest_counts(cyc.local())
    remote = digest_counts(mailbox.contents())
    for h in digest_counts(cyc.msgs):
        assert h in local or h in remote, "message lost after kill at %s" % what
        assert local.get(h, 0) <= 1, "message delivered twice after kill at %s" % what
    assert set(local) <= set(digest_counts(cyc.msgs)), "a partial message in new/ (%s)" % what


def check_tmp(cyc, killed_pid, what):
    for n in cyc.tmp_files():
        # only the killed run may have left some (at most one batch)
        assert re.search(r"P%dQ\d" % killed_pid, n), (
            "tmp/%s not from the killed run (kill at %s)" % (n, what))
    assert len(cyc.tmp_files()) <= BATCH, (what, cyc.tmp_files())


def moved_file(name, args):
    """The tmp/ path a move (renameat2, linkat, link) takes from, with -y."""
    if name in ("renameat2", "linkat"):
        m = re.match(r'\d+<([^>]*)>, "([^"]*)", \d+<([^>]*)>, "([^"]*)"', args)
        assert m and m.group(3).endswith("/Mail/new"), args
        return m.group(1) + "/" + m.group(2)
    return re.match(r'"([^"]*)"', args).group(1)


def traced_lines(log):
    with open(log, errors="replace") as f:
        return [ln for ln in f.read().splitlines() if SYSCALL_RE.match(ln)]


def new_dir_fsyncs(log):
    """Indexes (in traced_lines) of the successful fsyncs of new/ (-y)."""
    return [k for k, ln in enumerate(traced_lines(log))
            if re.match(r'\d+ +fsync\(\d+<[^>]*/Mail/new>\) += 0', ln)]


def socket_deles(log):
    """Indexes of the socket writes that carry a DELE (-y, -s 4096)."""
    return [k for k, ln in enumerate(traced_lines(log))
            if re.match(r'\d+ +write\(\d+<(TCP|socket)', ln) and "DELE " in ln]


def check_trace_order(log):
    """The trace-order oracle on an strace -y recording: for each message
    file, data write < sync < move into new/ < fsync(new/) < its DELE."""
    with open(log, errors="replace") as f:
        lines = [ln for ln in f.read().splitlines() if SYSCALL_RE.match(ln)]
    fd_file = {}          # fd -> tmp path, while open for writing
    written = {}          # tmp path -> index of its last data write
    synced = {}           # tmp path -> index of the sync covering it
    linked = []           # (index, tmp path)
    new_fsyncs, deles = [], []
    for k, ln in enumerate(lines):
        name, args = SYSCALL_RE.match(ln).group(2, 3)
        m = re.match(r'(\d+)<([^>]*)>', args)
        path = m.group(2) if m else ""
        if name == "write" and "/Mail/tmp/" in path:
            fd_file[m.group(1)] = path
            written[path] = k
        elif name == "write" and re.match(r'\d+<(TCP|socket)', args):
            deles.extend((k, int(n)) for n in re.findall(r'DELE (\d+)', args))
        elif name == "syncfs":
            for p in written:
                synced.setdefault(p, k)
        elif name == "fsync" and "/Mail/tmp/" in path:
            synced.setdefault(path, k)
        elif name == "fsync" and path.endswith("/Mail/new"):
            new_fsyncs.append(k)
        elif name in ("renameat2", "linkat", "link") and not re.search(r'= -1 E', args):
            linked.append((k, moved_file(name, args)))
    assert linked, "no move into new/ in the recording"
    for k, src in linked:
        assert src in written and written[src] < synced.get(src, 10**9) < k, (
            "%s moved into new/ before its data was synced" % src)
        assert any(f > k for f in new_fsyncs), "%s moved, new/ never fsynced" % src
    # every message is fetched, in order: message n is the n-th move
    for d, n in deles:
        k = linked[n - 1][0]
        assert any(k < f < d for f in new_fsyncs), "DELE %d before its link was durable" % n
    return deles


def record(tmp_path, mailbox, keep, sync, nmsg=NMSG):
    """The recording run: what an nmsg-message fetch really calls. Checks
    the trace order on a second, strace -y, recording."""
    rec = Cycle(tmp_path, mailbox, 0, keep, sync, nmsg)
    p, calls, killed, _ = strace_run(rec.client, str(rec.dir / "rec.strace"), mode_args(sync))
    assert p.returncode == 0 and not killed, p.stderr
    if keep:
        clear_server(mailbox)
    orc = Cycle(tmp_path, mailbox, 9999, keep, sync, nmsg)
    log = str(orc.dir / "order.strace")
    p, _, _, _ = strace_run(orc.client, log, ["-y", "-s", "4096"] + mode_args(sync),
                            trace="write,fsync,syncfs,renameat2,linkat,link")
    assert p.returncode == 0, p.stderr
    deles = check_trace_order(log)
    assert len(deles) == (0 if keep else nmsg), deles
    new_syncs = len(new_dir_fsyncs(log))
    if keep:
        clear_server(mailbox)
    names = [c[0] for c in calls]
    # the Maildir delivery in this build: fsync + renameat2 (+ rename of the
    # state file), or after one failed renameat2 linkat + unlinkat; the
    # path-based link/unlink are unused, sendto too (plain write)
    assert {"fsync", "rename", "write", MOVE[sync]} <= set(names), names
    assert "link" not in names and "unlink" not in names, names
    if sync == "link":
        # tried once, not once per message
        assert names.count("renameat2") == 1, names
        assert names.count("unlinkat") == names.count("linkat") == nmsg, names
    else:
        assert "linkat" not in names and "unlinkat" not in names, names
    if sync == "fsync":
        assert "syncfs" not in names, names
    return calls, new_syncs


def run_crash_matrix(tmp_path, mailbox, keep, sync="auto"):
    calls, _ = record(tmp_path, mailbox, keep, sync)
    points = injection_points(calls)
    per = {}
    for name, _, _ in points:
        per[name] = per.get(name, 0) + 1
    # one batch: one sync for all five (syncfs, or one fsync per file), one
    # fsync of new/, then the state directory
    if "syncfs" in per:
        assert per["syncfs"] == 1 and per["fsync"] >= 2, per
    else:
        assert per["fsync"] >= NMSG + 2, per
    assert per[MOVE[sync]] == NMSG, per
    if sync == "link":
        # the failing renameat2 probe: a kill there is a kill before the
        # first linkat (and strace cannot inject twice into one call)
        points = [pt for pt in points if pt[0] != "renameat2"]
    # the five DELEs leave in one pipelined write
    assert sum(1 for nm, _, a in points if nm == "write" and "DELE" in a) == (0 if keep else 1)
    return run_points(tmp_path, mailbox, keep, sync, points, NMSG), per


def run_points(tmp_path, mailbox, keep, sync, points, nmsg):
    results, stale_cases = [], []
    for idx, (name, n, what) in enumerate(points, start=1):
        cyc = Cycle(tmp_path, mailbox, idx, keep, sync, nmsg)
        label = "%s #%d %s" % (name, n, what)
        p, _, killed, pid = strace_run(
            cyc.client, str(cyc.dir / "kill.strace"),
            ["-e", "inject=%s:signal=SIGKILL:when=%d" % (name, n)] + mode_args(sync))
        assert killed, "injection at %s did not land (the syscall sequence changed?)" % label
        check_after_kill(cyc, mailbox, label)
        finish(cyc.client)
        # exactly once, byte-exact (CRLF->LF and unstuffing undone)
        got = digest_counts(cyc.local())
        assert got == digest_counts(cyc.msgs), "after kill at %s: %r" % (label, got)
        check_tmp(cyc, pid, label)
        state = open(cyc.client.state_file("crash")).read().splitlines()
        entries = [ln.split() for ln in state if ln and not ln.startswith("#")]
        if keep:
            on_server = server_uidls(mailbox.dovecot, mailbox)
            assert len(on_server) == nmsg
            assert {e[2]: int(e[1]) for e in entries} == on_server, label
            assert len(entries) == nmsg, "duplicate state entries after kill at %s" % label
            again = cyc.client.fetch(check=0)
            assert "fetched 0" in again.out, label
            clear_server(mailbox)
        else:
            assert mailbox.count() == 0, "server not empty after kill at %s" % label
            if entries:
                # killed in the state save after QUIT's +OK: the server already
                # deleted them. A run that finds the server empty sends no UIDL
                # and keeps these stale lines; they are harmless (nothing on the
                # server matches) and the next run that lists messages prunes them.
                assert len({e[2] for e in entries}) == len(entries) <= nmsg, label
                extra = make_message(idx * 100 + 99)
                mailbox.deliver(extra)
                finish(cyc.client)
                assert digest_counts(cyc.local()) == digest_counts(cyc.msgs + [extra])
                state = open(cyc.client.state_file("crash")).read().splitlines()
                assert [ln for ln in state if ln and not ln.startswith("#")] == [], label
                stale_cases.append(label)
        results.append(label)
    return results, stale_cases


@pytest.mark.parametrize("sync", ["auto", "fsync", "link"])
def test_sigkill_at_every_delivery_syscall_delete_mode(tmp_path, mailbox, sync):
    (done, stale), per = run_crash_matrix(tmp_path, mailbox, keep=False, sync=sync)
    assert any(d.startswith("write") for d in done)
    # the batch points: written in tmp/ but not synced (at the sync), synced
    # but not moved (first move), moved but no DELE (fsync of new/, DELE)
    assert any(d.startswith("syncfs #1" if "syncfs" in per else "fsync #1") for d in done)
    for n in range(1, NMSG + 1):
        assert any(d.startswith("%s #%d " % (MOVE[sync], n)) for d in done), (n, done)
    if sync == "link":
        # linked into new/ but still in tmp/ too
        assert any(d.startswith("unlinkat #%d " % NMSG) for d in done), done
    assert any(d.startswith("write") and "DELE" in d for d in done)
    print("%d crash points; stale state lines (pruned next run) after: %s" % (len(done), stale))


def test_sigkill_at_every_delivery_syscall_keep_mode(tmp_path, mailbox):
    (done, _), _ = run_crash_matrix(tmp_path, mailbox, keep=True)
    assert any(d.startswith("rename") for d in done)
    print("%d crash points" % len(done))


def test_sigkill_at_batch_boundaries(tmp_path, mailbox):
    """A fetch of 2.5 batches: kill at each sync, at the first and last move
    into new/ of each batch, at each fsync, at the first DELE after each
    batch."""
    nmsg = 2 * BATCH + BATCH // 2
    calls, new_syncs = record(tmp_path, mailbox, False, "auto", nmsg)
    counts, points, last = {}, [], {}
    dele_seen = False
    for name, args in calls:
        counts[name] = counts.get(name, 0) + 1
        n = counts[name]
        if name in ("syncfs", "fsync"):
            points.append((name, n, short(args)))
            dele_seen = False
        elif name == "renameat2":
            if n % BATCH in (0, 1):
                points.append((name, n, short(args)))
            last["move"] = (name, n, short(args))
        elif name == "write" and "DELE" in args and write_is_interesting(args) and not dele_seen:
            points.append((name, n, short(args)))
            dele_seen = True
    points.append(last["move"])
    points = sorted(set(points), key=lambda p: (p[0], p[1]))
    # one fsync of new/ per batch (the run starts without a Maildir: its
    # scan has no new/ to fsync), whichever way the files were synced
    assert new_syncs == 3 and counts["renameat2"] == nmsg, (new_syncs, counts)
    # first and last of each batch
    assert sorted(p[1] for p in points if p[0] == "renameat2") == [
        1, BATCH, BATCH + 1, 2 * BATCH, 2 * BATCH + 1, nmsg], points
    assert sum(1 for p in points if p[0] == "write") == 3, points
    done, _ = run_points(tmp_path, mailbox, False, "auto", points, nmsg)
    print("%d crash points: %s" % (len(done), done))


def traced_finish(cyc, tag):
    """Run to completion under strace -y; the log, for the order checks."""
    log = str(cyc.dir / ("%s.strace" % tag))
    p, _, killed, _ = until_not_75(
        lambda: strace_run(cyc.client, log, ["-y", "-s", "4096"] + mode_args(cyc.sync),
                           trace="write,fsync,syncfs,renameat2,linkat"), "to completion")
    assert p.returncode == 0 and not killed, (p.returncode, p.stderr)
    return log


def check_new_synced_before_dele(log, what):
    """The run's first DELE (by a marker found in new/) comes after an
    fsync of new/ in this run: names left there unsynced by the failed or
    killed run are durable before the server deletes anything."""
    deles = socket_deles(log)
    assert deles, "no DELE in the run after %s" % what
    assert any(k < deles[0] for k in new_dir_fsyncs(log)), (
        "DELE before any fsync of new/ after %s" % what)


def check_done(cyc, mailbox, what, killed_pid=None):
    got = digest_counts(cyc.local())
    assert got == digest_counts(cyc.msgs), "after %s: %r" % (what, got)
    assert mailbox.count() == 0, what
    if killed_pid is None:
        assert cyc.tmp_files() == [], what
    else:
        check_tmp(cyc, killed_pid, what)


@pytest.mark.parametrize("sync,error", [("auto", "EEXIST"), ("link", "EEXIST"), ("auto", "EIO")])
def test_failed_move_in_new_is_an_error(tmp_path, mailbox, sync, error):
    """The third move of a 5-message batch fails (EEXIST: its name is taken
    in new/, or EIO; injected into renameat2, or into linkat in the
    fallback): no file is replaced, the run fails with nothing deleted on
    the server, the rest of the batch is dropped from tmp/, and the two
    moved files are made durable all the same (new/ fsynced after them).
    The next run fsyncs new/ before it trusts their markers, and delivers
    every message exactly once (the two moved ones by their markers)."""
    cyc = Cycle(tmp_path, mailbox, 1, keep=False, sync=sync)
    log = str(cyc.dir / "fail.strace")
    p, calls, killed, _ = strace_run(
        cyc.client, log,
        ["-y"] + mode_args(sync) + ["-e", "inject=%s:error=%s:when=3" % (MOVE[sync], error)])
    assert not killed and p.returncode == 74, (p.returncode, p.stderr)
    assert b"cannot move message to" in p.stderr, p.stderr
    assert (b"File exists" if error == "EEXIST" else b"Input/output error") in p.stderr
    names = [c[0] for c in calls]
    assert names.count(MOVE[sync]) == 3, calls
    assert len(cyc.local()) == 2 and cyc.tmp_files() == []
    assert mailbox.count() == NMSG, "a DELE went out for a batch that was not delivered"
    assert not any(n in ("write", "sendto") and "DELE" in a for n, a in calls)
    # the two moved files: new/ fsynced after the failed move
    last_move = max(k for k, ln in enumerate(traced_lines(log))
                    if re.match(r'\d+ +%s\(' % MOVE[sync], ln))
    assert any(k > last_move for k in new_dir_fsyncs(log)), "new/ not fsynced after a failed move"
    check_new_synced_before_dele(traced_finish(cyc, "finish"), "a failed move")
    check_done(cyc, mailbox, "a failed move")


def test_fsync_of_new_fails(tmp_path, mailbox):
    """100 messages, two batches; the fsync of new/ after the second batch's
    moves fails (EIO, injected). The run fails with nothing deleted; batch
    1 (new/ fsynced) stays in new/, batch 2's names are removed from new/
    again (never durable: nothing may find them). The next run fsyncs new/
    before its first DELE, deletes batch 1 by its markers, downloads batch 2
    again: every message exactly once."""
    nmsg = BATCH + 36
    rec = Cycle(tmp_path, mailbox, 0, keep=False, nmsg=nmsg)
    log = str(rec.dir / "rec.strace")
    p, calls, _, _ = strace_run(rec.client, log, ["-y"], trace="fsync,syncfs,renameat2")
    assert p.returncode == 0, p.stderr
    fsyncs = [k for k, (n, _) in enumerate(calls) if n == "fsync"]
    new_fsyncs = [k for k, (n, a) in enumerate(calls)
                  if n == "fsync" and re.match(r'\d+<[^>]*/Mail/new>', a)]
    assert len(new_fsyncs) == 2, calls
    when = fsyncs.index(new_fsyncs[1]) + 1

    cyc = Cycle(tmp_path, mailbox, 1, keep=False, nmsg=nmsg)
    log = str(cyc.dir / "eio.strace")
    p, calls, killed, _ = strace_run(cyc.client, log,
                                     ["-y", "-s", "4096", "-e",
                                      "inject=fsync:error=EIO:when=%d" % when],
                                     trace="fsync,syncfs,renameat2,unlinkat,write")
    failed = [a for n, a in calls if n == "fsync" and "(INJECTED)" in a]
    assert len(failed) == 1 and "/Mail/new>" in failed[0], failed
    assert not killed and p.returncode == 74, (p.returncode, p.stderr)
    assert b"cannot fsync directory" in p.stderr, p.stderr
    # DELEs for batch 1 only (durable; not committed: no QUIT)
    assert max(int(d) for n, a in calls if n == "write"
               for d in re.findall(r'DELE (\d+)', a)) <= BATCH
    assert mailbox.count() == nmsg
    # batch 1 durable in new/, batch 2 gone from new/ and tmp/
    assert digest_counts(cyc.local()) == digest_counts(cyc.msgs[:BATCH])
    assert cyc.tmp_files() == []
    check_new_synced_before_dele(traced_finish(cyc, "finish"), "a failed fsync of new/")
    check_done(cyc, mailbox, "a failed fsync of new/")


@pytest.mark.parametrize("k", [1, NMSG - 1])
def test_sigkill_after_some_moves_next_run_fsyncs_new_first(tmp_path, mailbox, k):
    """SIGKILL right after the k-th move of a batch, before the fsync of
    new/: the moved names may not be durable. The next run must fsync new/
    before the DELE their markers call for."""
    cyc = Cycle(tmp_path, mailbox, 1, keep=False)
    p, _, killed, pid = strace_run(cyc.client, str(cyc.dir / "kill.strace"),
                                   ["-e", "inject=renameat2:signal=SIGKILL:when=%d" % (k + 1)])
    assert killed, p.stderr
    assert len(cyc.local()) == k and mailbox.count() == NMSG
    check_new_synced_before_dele(traced_finish(cyc, "finish"), "a kill after move %d" % k)
    check_done(cyc, mailbox, "a kill after move %d" % k, pid)


def test_tmp_name_taken_is_not_unlinked(tmp_path, mailbox):
    """The open of a new tmp/ file fails with EEXIST (injected: as if
    another writer had the name): the run fails with nothing deleted, and
    never unlinks that name (it is the other writer's file)."""
    rec = Cycle(tmp_path, mailbox, 0, keep=False)
    p, calls, _, _ = strace_run(rec.client, str(rec.dir / "rec.strace"), ["-y"], trace="openat")
    assert p.returncode == 0, p.stderr
    first = [k for k, (n, a) in enumerate(calls) if re.match(r'\d+<[^>]*/Mail/tmp>, "', a)][0]
    cyc = Cycle(tmp_path, mailbox, 1, keep=False)
    p, calls, killed, _ = strace_run(
        cyc.client, str(cyc.dir / "eexist.strace"),
        ["-y", "-e", "inject=openat:error=EEXIST:when=%d" % (first + 1)],
        trace="openat,unlink,unlinkat")
    assert not killed and p.returncode == 74, (p.returncode, p.stderr)
    failed = [a for n, a in calls if n == "openat" and "(INJECTED)" in a]
    assert len(failed) == 1 and "/Mail/tmp>" in failed[0], failed
    name = re.search(r'"([^"]+)"', failed[0]).group(1)
    assert not any(n in ("unlink", "unlinkat") and name in a for n, a in calls), calls
    assert mailbox.count() == NMSG
    finish(cyc.client)
    check_done(cyc, mailbox, "a taken tmp/ name")
