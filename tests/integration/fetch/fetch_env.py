"""Test environment for `popbox fetch`: a real Dovecot on loopback, a test CA,
message generation, and helpers to run the client and read what it delivered.

Dovecot is started from our own config in a private temp dir as the current
user (root in CI: mail is then owned by `nobody`), listeners on free
127.0.0.1 ports, stopped by PID. Each test gets its own POP3 user (added to
the passwd-file, which Dovecot re-reads), so one Dovecot serves a whole run.
"""

import hashlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))

sys.path.insert(0, os.path.dirname(HERE))      # tests/integration: runaway.py
from runaway import RUNAWAY_SEC, wait_until  # noqa: E402,F401
from ports import free_port  # noqa: E402,F401


def popbox_path():
    build = os.environ.get("POPBOX_BUILD", os.path.join(REPO, "build"))
    return os.path.join(build, "popbox")


_sanitized = {}


def sanitized():
    """Whether build/popbox (POPBOX_BUILD: build, or build-san for `make
    sanitize`) is an ASan build. Read from the binary, not guessed from the
    directory name, so any BUILD= directory is classified right."""
    path = popbox_path()
    if path not in _sanitized:
        try:
            with open(path, "rb") as f:
                _sanitized[path] = b"__asan_init" in f.read()
        except OSError:
            _sanitized[path] = False
    return _sanitized[path]


def wait_port(port, timeout=RUNAWAY_SEC):
    """True once something listens on port; False only at the runaway guard."""
    def listening():
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    try:
        return wait_until(listening, "a listener on port %d" % port, limit=timeout,
                          retry_on=(OSError,))
    except AssertionError:
        return False


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


class CertAuthority:
    """A CA and a server certificate for localhost / 127.0.0.1, plus a
    self-signed certificate nobody trusts."""

    def __init__(self, d):
        self.dir = d
        p = lambda n: os.path.join(d, n)  # noqa: E731
        self.ca, self.ca_key = p("ca.pem"), p("ca.key")
        self.cert, self.key = p("server.pem"), p("server.key")
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
             self.ca_key, "-out", self.ca, "-days", "3", "-subj", "/CN=popbox test CA"])
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
             "-out", p("server.csr"), "-subj", "/CN=localhost"])
        with open(p("ext"), "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run(["openssl", "x509", "-req", "-in", p("server.csr"), "-CA", self.ca, "-CAkey",
             self.ca_key, "-CAcreateserial", "-out", self.cert, "-days", "3", "-extfile",
             p("ext")])
        out = run(["openssl", "x509", "-in", self.cert, "-noout", "-fingerprint",
                   "-sha256"]).stdout.decode()
        self.fingerprint = out.strip().split("=", 1)[1]
        # signed by the CA, but for another name
        self.wrong_cert, self.wrong_key = p("wrong.pem"), p("wrong.key")
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", self.wrong_key,
             "-out", p("wrong.csr"), "-subj", "/CN=mail.wrong.example"])
        with open(p("ext2"), "w") as f:
            f.write("subjectAltName=DNS:mail.wrong.example\n")
        run(["openssl", "x509", "-req", "-in", p("wrong.csr"), "-CA", self.ca, "-CAkey",
             self.ca_key, "-CAcreateserial", "-out", self.wrong_cert, "-days", "3",
             "-extfile", p("ext2")])
        # signed by the CA, right name, expired in 2020
        self.expired_cert, self.expired_key = p("expired.pem"), p("expired.key")
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", self.expired_key,
             "-out", p("expired.csr"), "-subj", "/CN=localhost"])
        os.makedirs(p("newcerts"), exist_ok=True)
        open(p("index.txt"), "w").close()
        with open(p("serial"), "w") as f:
            f.write("1000\n")
        with open(p("ca.cnf"), "w") as f:
            f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = %s\nnew_certs_dir = %s\n"
                    "serial = %s\ndefault_md = sha256\npolicy = p\n[p]\n"
                    "commonName = supplied\n" % (p("index.txt"), p("newcerts"), p("serial")))
        run(["openssl", "ca", "-batch", "-config", p("ca.cnf"), "-cert", self.ca, "-keyfile",
             self.ca_key, "-in", p("expired.csr"), "-out", self.expired_cert,
             "-startdate", "20200101000000Z", "-enddate", "20200201000000Z",
             "-extfile", p("ext")])


class Dovecot:
    def __init__(self, mechanisms="plain login scram-sha-256 scram-sha-1 apop cram-md5",
                 lock_session=False, extra_config=""):
        """extra_config: more dovecot.conf lines (e.g. pop3_uidl_format)."""
        self.dir = tempfile.mkdtemp(prefix="popbox-dovecot-")
        os.chmod(self.dir, 0o755)  # login/auth processes run as other users
        self.ca = CertAuthority(self.dir)
        self.pop3_port = free_port()
        self.pop3s_port = free_port()
        self.users_file = os.path.join(self.dir, "users")
        self.mail_root = os.path.join(self.dir, "mail")
        os.mkdir(self.mail_root)
        os.chmod(self.mail_root, 0o755)
        open(self.users_file, "w").close()
        os.chmod(self.users_file, 0o644)
        self.log = os.path.join(self.dir, "dovecot.log")
        if os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            extra = ""
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            me = pwd.getpwuid(self.uid).pw_name
            extra = ("default_internal_user = %s\ndefault_login_user = %s\n"
                     "service pop3-login {\n  chroot =\n}\n" % (me, me))
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write("""
base_dir = {d}/run
state_dir = {d}/state
instance_name = popbox-test-{port}
protocols = pop3
listen = 127.0.0.1
log_path = {log}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = {mechs}
auth_failure_delay = 0
auth_verbose = yes
passdb {{
  driver = passwd-file
  args = {users}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail}/%u
}}
mail_location = maildir:{mail}/%u
first_valid_uid = 1
first_valid_gid = 1
pop3_lock_session = {lock}
service pop3-login {{
  inet_listener pop3 {{
    port = {port}
  }}
  inet_listener pop3s {{
    port = {sport}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
{extra}
""".format(d=self.dir, log=self.log, cert=self.ca.cert, key=self.ca.key,
           mechs=mechanisms, users=self.users_file, uid=self.uid, gid=self.gid,
           mail=self.mail_root, port=self.pop3_port, sport=self.pop3s_port,
           lock="yes" if lock_session else "no", extra=extra + extra_config))
        self.proc = None

    def start(self):
        self._write_users()
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", self.conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not (wait_port(self.pop3_port) and wait_port(self.pop3s_port)):
            self.stop()
            raise RuntimeError("dovecot did not start: %s" % self.log_text())

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    # Dovecot re-reads a changed passwd-file only now and then, so every
    # user a run needs is written before it starts and handed out from a pool.
    POOL = {"PLAIN": 80, "SCRAM-SHA-256": 4}

    def _write_users(self):
        self.pool = {k: [] for k in self.POOL}
        lines = []
        for scheme, n in self.POOL.items():
            for i in range(n):
                name = "%s%d" % ("u" if scheme == "PLAIN" else "scram", i + 1)
                password = "pw %s %d" % (scheme.lower(), i + 1)
                if scheme == "PLAIN":
                    stored = "{PLAIN}" + password
                else:
                    stored = run(["doveadm", "pw", "-s", scheme, "-p", password]
                                 ).stdout.decode().strip()
                lines.append("%s:%s::::::\n" % (name, stored))
                self.pool[scheme].append((name, password))
        with open(self.users_file, "w") as f:
            f.writelines(lines)

    def add_user(self, scheme="PLAIN"):
        """A fresh user (name, password) with an empty Maildir."""
        name, password = self.pool[scheme].pop(0)
        return Mailbox(self, name, password)


class Mailbox:
    """One user's Maildir on the Dovecot side."""

    def __init__(self, dovecot, user, password):
        self.dovecot = dovecot
        self.user = user
        self.password = password
        self.path = os.path.join(dovecot.mail_root, user)
        for sub in ("", "tmp", "new", "cur"):
            p = os.path.join(self.path, sub)
            os.makedirs(p, exist_ok=True)
            os.chown(p, dovecot.uid, dovecot.gid)
        self.seq = 0

    def deliver(self, data):
        """Put one message (bytes, LF line ends) into new/ the Maildir way."""
        self.seq += 1
        name = "%d.M%dP%dQ%d.testhost" % (time.time(), self.seq, os.getpid(), self.seq)
        tmp = os.path.join(self.path, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.chown(tmp, self.dovecot.uid, self.dovecot.gid)
        os.rename(tmp, os.path.join(self.path, "new", name))

    def deliver_many(self, messages):
        for m in messages:
            self.deliver(m)

    def count(self):
        return sum(len(os.listdir(os.path.join(self.path, s))) for s in ("new", "cur"))

    def contents(self):
        out = []
        for s in ("new", "cur"):
            d = os.path.join(self.path, s)
            for n in sorted(os.listdir(d)):
                with open(os.path.join(d, n), "rb") as f:
                    out.append(f.read())
        return out


def make_message(i, body_size=300, rnd=None):
    """A message with the lines that test dot-stuffing and mbox quoting."""
    rnd = rnd or random.Random(i)
    lines = [b"From: sender%d@example.org" % i, b"To: user@example.net",
             b"Subject: test message %d" % i, b"Message-ID: <%d.%d@example.org>" % (i, rnd.randrange(10**9)),
             b"", b"Body of message %d." % i, b".a line with a leading dot", b"..two dots",
             b".", b"From the start of a line", b">From quoted once", b">>From quoted twice",
             b"tab\there and 8-bit \xc3\xa9\xff", b""]
    filler = b""
    while len(filler) < body_size:
        filler += b"%08x filler text line with some words\n" % rnd.randrange(2**32)
    return b"\n".join(lines) + filler + b"end\n"


def read_maildir(path):
    out = {}
    for s in ("new", "cur"):
        d = os.path.join(path, s)
        if not os.path.isdir(d):
            continue
        for n in os.listdir(d):
            with open(os.path.join(d, n), "rb") as f:
                out[n] = f.read()
    return out


def read_mboxrd(path):
    """Split an mboxrd file into messages and undo the >From quoting."""
    msgs = []
    cur = None
    with open(path, "rb") as f:
        data = f.read()
    for line in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        if line.startswith(b"From "):
            if cur is not None:
                msgs.append(cur)
            cur = []
            continue
        assert cur is not None, "mbox does not start with a From_ line"
        stripped = line.lstrip(b">")
        if stripped.startswith(b"From ") and len(stripped) < len(line):
            line = line[1:]
        cur.append(line)
    if cur is not None:
        msgs.append(cur)
    out = []
    for m in msgs:
        assert m and m[-1] == b"", "message not followed by an empty line"
        out.append(b"\n".join(m[:-1]) + b"\n")
    return out


def digest_counts(blobs):
    counts = {}
    for b in blobs:
        h = hashlib.sha256(b).hexdigest()
        counts[h] = counts.get(h, 0) + 1
    return counts


class Client:
    """Runs build/popbox with a private HOME/XDG dirs."""

    def __init__(self, home):
        self.home = home
        self.bin = popbox_path()
        self.env = dict(os.environ)
        self.env.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                        XDG_STATE_HOME=os.path.join(home, ".state"), LC_ALL="C")
        os.makedirs(os.path.join(home, ".config", "popbox"), exist_ok=True)
        self.config = os.path.join(home, ".config", "popbox", "accounts.conf")
        self.state_dir = os.path.join(home, ".state", "popbox")

    def write_config(self, text, mode=0o600):
        with open(self.config, "w") as f:
            f.write(text)
        os.chmod(self.config, mode)

    def fetch(self, *args, timeout=RUNAWAY_SEC, check=None):
        p = subprocess.run([self.bin, "fetch"] + list(args), env=self.env, capture_output=True,
                           timeout=timeout)
        p.out = p.stdout.decode(errors="replace")
        p.err = p.stderr.decode(errors="replace")
        if check is not None:
            assert p.returncode == check, "exit %d, expected %d\nstdout:\n%s\nstderr:\n%s" % (
                p.returncode, check, p.out, p.err)
        return p

    def popen(self, *args):
        return subprocess.Popen([self.bin, "fetch"] + list(args), env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def state_file(self, account):
        return os.path.join(self.state_dir, account + ".state")


class LatencyProxy:
    """A TCP relay on 127.0.0.1 that delays every chunk by `delay` seconds in
    each direction: a long link, to show what pipelining buys.

    It counts, per connection (self.flights, in accept order), the chunks
    the client sent: each is one flight of commands, and a client that waits
    for an answer before it sends again pays one round trip per flight. A
    count of round trips, unlike a duration, does not depend on how loaded
    the machine is."""

    def __init__(self, target_port, delay=0.02):
        import threading
        self.delay = delay
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.flights = []
        self.stopping = False
        self.threading = threading
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target_port))
            self.flights.append(0)
            self._pump(c, s, len(self.flights) - 1)
            self._pump(s, c)

    def _pump(self, src, dst, count_in=None):
        q = []
        cv = self.threading.Condition()

        def reader():
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                with cv:
                    if data and count_in is not None:
                        self.flights[count_in] += 1
                    q.append((time.monotonic() + self.delay, data))
                    cv.notify()
                if not data:
                    return

        def writer():
            while True:
                with cv:
                    while not q:
                        cv.wait(timeout=30)
                    due, data = q.pop(0)
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return
        self.threading.Thread(target=reader, daemon=True).start()
        self.threading.Thread(target=writer, daemon=True).start()
