"""A private, real Postfix for the mail-in tests (docs/DESIGN.md "Mail in"):
its own config directory, queue and data directory and log file inside a
test's temporary tree, SMTP on a free loopback port, nothing chrooted, no
local delivery. Its master runs in the foreground (`master -d`) as this
test's child, so it is stopped by its PID, and every Postfix process it
started (found by parent PID) is stopped by PID after it.

Needs root (Postfix's master drops to mail_owner = postfix) and the
Debian package postfix (tools/debian-packages.txt).

Nothing here depends on pytest.
"""

import os
import pwd
import shutil
import signal
import smtplib
import subprocess
import time

from runaway import RUNAWAY_SEC, wait_until

DAEMON_DIR = "/usr/lib/postfix/sbin"
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

# Every service this test's Postfix needs, none chrooted (the LMTP socket
# is in the test's tree): smtpd on the port, the queue manager and its
# helpers, the lmtp client, postlogd for maillog_file.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def available():
    """Why this machine cannot run the test's Postfix, or None."""
    if os.geteuid() != 0:
        return "a private Postfix needs root (its master drops to user postfix)"
    if not os.access(os.path.join(DAEMON_DIR, "master"), os.X_OK) or shutil.which("postfix") is None:
        return "Postfix is not installed (tools/debian-packages.txt: postfix)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no user postfix (the package makes it)"
    return None


class PostfixInstance:
    """main: extra main.cf lines (the transports to popboxd)."""

    def __init__(self, base, smtp_port, main):
        self.base = os.path.join(base, "postfix")
        self.conf = os.path.join(self.base, "conf")
        self.queue = os.path.join(self.base, "queue")
        self.data = os.path.join(self.base, "data")
        self.log_path = os.path.join(self.base, "postfix.log")
        self.port = smtp_port
        self.proc = None
        self.known = set()
        for d in (self.conf, self.queue, self.data):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.base, 0o755)
        pw = pwd.getpwnam("postfix")
        os.chown(self.data, pw.pw_uid, pw.pw_gid)
        lines = [
            "compatibility_level = 3.6",
            "queue_directory = " + self.queue,
            "data_directory = " + self.data,
            "maillog_file = " + self.log_path,
            "maillog_file_prefixes = " + self.base,
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "myhostname = mta.popbox.test",
            "mydomain = popbox.test",
            "mydestination =",
            "local_transport = error:5.1.1 no local delivery in this test",
            "alias_maps =",
            "alias_database =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            "smtputf8_enable = no",
            "biff = no",
            # retry deferred mail at once when asked; a flush does the rest
            "queue_run_delay = 1s",
            "minimal_backoff_time = 1s",
            "maximal_backoff_time = 2s",
        ] + list(main)
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=smtp_port))

    def _postfix_env(self):
        env = dict(os.environ)
        env["MAIL_CONFIG"] = self.conf
        return env

    def start(self):
        """Make the queue directories, start the master, wait for SMTP."""
        subprocess.run([os.path.join(DAEMON_DIR, "post-install"),
                        "config_directory=" + self.conf, "meta_directory=/etc/postfix",
                        "daemon_directory=" + DAEMON_DIR, "command_directory=/usr/sbin",
                        "queue_directory=" + self.queue, "data_directory=" + self.data,
                        "create-missing"], check=True, capture_output=True, timeout=RUNAWAY_SEC)
        self.proc = subprocess.Popen([os.path.join(DAEMON_DIR, "master"), "-c", self.conf, "-d"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=self._postfix_env())
        wait_until(self._smtp_answers, "the test's Postfix answering SMTP",
                   retry_on=(OSError, smtplib.SMTPException))

    def _smtp_answers(self):
        if self.proc.poll() is not None:
            raise AssertionError("Postfix master exited (%s):\n%s" % (self.proc.returncode, self.log()))
        with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as s:
            return s.noop()[0] == 250

    def smtp(self):
        return smtplib.SMTP("127.0.0.1", self.port, timeout=RUNAWAY_SEC)

    def queued(self):
        """Messages in Postfix's queues (files under the queue directories)."""
        n = 0
        for q in QUEUES:
            for _, _, files in os.walk(os.path.join(self.queue, q)):
                n += len(files)
        return n

    def flush(self):
        """postqueue -f: deliver the deferred mail now."""
        subprocess.run(["postqueue", "-c", self.conf, "-f"], check=True, capture_output=True,
                       timeout=RUNAWAY_SEC)

    def mailq(self):
        """postqueue -p: each queued message and why it waits."""
        r = subprocess.run(["postqueue", "-c", self.conf, "-p"], capture_output=True,
                           timeout=RUNAWAY_SEC)
        return (r.stdout + r.stderr).decode(errors="replace")

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def _children(self):
        """(pid, start time) of each process whose parent is the master."""
        out = set()
        if self.proc is None:
            return out
        for d in os.listdir("/proc"):
            if d.isdigit():
                st = _stat(int(d))
                if st is not None and st[1] == self.proc.pid:
                    out.add((int(d), st[2]))
        return out

    def stop(self):
        """SIGTERM to the master (it stops its services), then SIGKILL by
        PID to any of its processes still there."""
        if self.proc is None:
            return
        self.known |= self._children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=RUNAWAY_SEC)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10
        for pid, start in sorted(self.known):
            while time.monotonic() < deadline and _same_process_alive(pid, start):
                time.sleep(0.05)
            if _same_process_alive(pid, start):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None


def _stat(pid):
    """(state, parent pid, start time) of pid, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _same_process_alive(pid, start):
    """pid is still the process seen (same start time), and not a zombie."""
    st = _stat(pid)
    return st is not None and st[2] == start and st[0] != "Z"
