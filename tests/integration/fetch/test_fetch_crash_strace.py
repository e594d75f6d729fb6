"""Crash consistency of `popbox fetch` (reliability.md §3.7, §4.8 item 1):
SIGKILL at the N-th relevant system call of a Maildir delivery, by strace
fault injection, for every N, then a run to completion.

The syscalls are not guessed: one recording run under strace lists what a
5-message fetch really does (fsync of each file, of new/ and of the state
directory; link tmp/→new/; unlink of the tmp name; rename of the state file;
write of each DELE/QUIT and of the state file). Then for each of them, and
for every N up to its count, a fresh 5-message mailbox is fetched with
`-e inject=SYSCALL:signal=SIGKILL:when=N` (strace kills the client on entry
to that call, before it runs). Socket writes are picked out of all writes by
their index in the recording (the command sequence is deterministic), so the
kill lands exactly on `write(sock, "DELE n")` or `write(sock, "QUIT")`.

After each kill: every message is on the server or in new/ (never neither),
never twice locally. After the run to completion: every message delivered
exactly once, byte-exact; the server is empty (delete mode) or unchanged
with a state file naming exactly the server's UIDLs (keep mode). A tmp/ file
left by the killed run is allowed (a SIGKILLed process cannot clean up; the
Maildir rule is that readers ignore tmp/ and delete files older than 36 h):
the next run ignores it (it does not count as delivered) and leaves none of
its own.
"""

import os
import poplib
import re
import shutil
import subprocess
import time

import pytest

from fetch_env import Client, digest_counts, make_message, read_maildir

pytestmark = pytest.mark.skipif(shutil.which("strace") is None,
                                reason="strace is not installed")

NMSG = 5
TRACED = "fsync,fdatasync,rename,renameat,renameat2,link,linkat,unlink,unlinkat,write,sendto,sendmsg"
DEADLINE_SEC = 55   # the whole file stays bounded even on a slow machine

SYSCALL_RE = re.compile(r'^(\d+) +(\w+)\((.*)$')


def strace_run(client, log, extra):
    cmd = ["strace", "-f", "-o", log, "-e", "trace=" + TRACED] + extra + [
        client.bin, "fetch", "--quiet"]
    # LeakSanitizer cannot run under ptrace (make sanitize): leaks are
    # checked by the other suites, here only the crash points matter
    env = dict(client.env)
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=0"]))
    p = subprocess.run(cmd, env=env, capture_output=True, timeout=60)
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
    every message with From:), the socket write of each DELE and of QUIT,
    the state file; not the login and listing commands before them."""
    return bool(re.match(r'\d+, "(From: |DELE |QUIT|# popbox state)', args))


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
    p = poplib.POP3("127.0.0.1", dovecot.pop3_port, timeout=10)
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


def finish(client):
    """Run to completion. Dovecot may hold the killed session for a moment."""
    for _ in range(10):
        p = client.fetch("--quiet")
        if p.returncode != 75:
            break
        time.sleep(0.3)
    assert p.returncode == 0, p.err
    return p


def clear_server(mb):
    for sub in ("new", "cur"):
        d = os.path.join(mb.path, sub)
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))


class Cycle:
    """One fresh local Maildir + client home + 5 fresh messages on the server."""

    def __init__(self, tmp_path, mailbox, idx, keep):
        self.dir = tmp_path / ("c%03d" % idx)
        self.client = Client(str(self.dir / "home"))
        self.maildir = self.dir / "Mail"
        self.msgs = [make_message(idx * 100 + i, body_size=200 + 150 * i) for i in range(NMSG)]
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
        # only the killed run may have left one (at most one in flight)
        assert re.search(r"P%dQ\d" % killed_pid, n), (
            "tmp/%s not from the killed run (kill at %s)" % (n, what))
    assert len(cyc.tmp_files()) <= 1, (what, cyc.tmp_files())


def run_crash_matrix(tmp_path, mailbox, keep):
    t0 = time.monotonic()
    # the recording run: what a 5-message fetch really calls
    rec = Cycle(tmp_path, mailbox, 0, keep)
    p, calls, killed, _ = strace_run(rec.client, str(rec.dir / "rec.strace"), [])
    assert p.returncode == 0 and not killed, p.stderr
    names = {c[0] for c in calls}
    # the Maildir delivery in this build: fsync + link + unlink (+ rename of
    # the state file); the *at variants are unused, sendto too (plain write)
    assert {"fsync", "link", "unlink", "rename", "write"} <= names, names
    points = injection_points(calls)
    per = {}
    for name, _, _ in points:
        per[name] = per.get(name, 0) + 1
    assert per["fsync"] >= 2 * NMSG and per["link"] == NMSG, per
    assert sum(1 for nm, _, a in points if nm == "write" and "DELE" in a) == (0 if keep else NMSG)
    if keep:
        clear_server(mailbox)

    results, stale_cases = [], []
    for idx, (name, n, what) in enumerate(points, start=1):
        assert time.monotonic() - t0 < DEADLINE_SEC, "crash matrix too slow at %d/%d" % (
            idx, len(points))
        cyc = Cycle(tmp_path, mailbox, idx, keep)
        label = "%s #%d %s" % (name, n, what)
        p, _, killed, pid = strace_run(
            cyc.client, str(cyc.dir / "kill.strace"),
            ["-e", "inject=%s:signal=SIGKILL:when=%d" % (name, n)])
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
            assert len(on_server) == NMSG
            assert {e[2]: int(e[1]) for e in entries} == on_server, label
            assert len(entries) == NMSG, "duplicate state entries after kill at %s" % label
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
                assert len({e[2] for e in entries}) == len(entries) <= NMSG, label
                extra = make_message(idx * 100 + 99)
                mailbox.deliver(extra)
                finish(cyc.client)
                assert digest_counts(cyc.local()) == digest_counts(cyc.msgs + [extra])
                state = open(cyc.client.state_file("crash")).read().splitlines()
                assert [ln for ln in state if ln and not ln.startswith("#")] == [], label
                stale_cases.append(label)
        results.append(label)
    return results, stale_cases


def test_sigkill_at_every_delivery_syscall_delete_mode(tmp_path, mailbox):
    done, stale = run_crash_matrix(tmp_path, mailbox, keep=False)
    assert any(d.startswith("write") for d in done)
    print("%d crash points; stale state lines (pruned next run) after: %s" % (len(done), stale))


def test_sigkill_at_every_delivery_syscall_keep_mode(tmp_path, mailbox):
    done, _ = run_crash_matrix(tmp_path, mailbox, keep=True)
    assert any(d.startswith("rename") for d in done)
    print("%d crash points" % len(done))
