"""Start and drive real popboxd processes for integration tests.

Importable by every integration test (server and fetch client):

    from popbox_server import PopboxServer, POP3Raw, wire_form, dot_stuff

A PopboxServer owns a temporary tree (config, users file, Maildirs, state
directory, log file), starts `popboxd -c CONF -f` on a free 127.0.0.1 port and
stops it by PID. When the tests run as root (CI), the tree lives in a directory
that user `nobody` can traverse, is owned by nobody:nogroup and the config sets
`run_as = nobody` and `auth_user` to another existing unprivileged system user
(`daemon`: the auth process has a uid of its own, see AUTH_USERS); otherwise
everything runs as the invoking user.

Nothing here depends on pytest.
"""

import grp
import hashlib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from runaway import RUNAWAY_SEC, wait_until
from ports import free_port  # noqa: F401  (re-exported: tests import it from here)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# Runaway guards (runaway.py), not expectations of speed: popboxd starts,
# stops and answers in far less, also under ASan or valgrind on a loaded
# machine; these only turn a hang into a failure.
START_TIMEOUT = RUNAWAY_SEC     # until the greeting arrives
STOP_TIMEOUT = RUNAWAY_SEC      # between SIGTERM and SIGKILL
IO_TIMEOUT = RUNAWAY_SEC        # per socket operation


def build_dir():
    return os.environ.get("POPBOX_BUILD") or os.path.join(REPO, "build")


def popboxd_path():
    return os.path.join(build_dir(), "popboxd")


# ---------------------------------------------------------------- wire forms

def wire_form(data):
    """The exact octets RETR must deliver for a stored message (before
    dot-stuffing, without the terminating ".CRLF"), per src/common/wire.h:
    split at LF, a CR right before the LF belongs to the line end, every other
    byte passes unchanged, each line is sent with CRLF, a final segment without
    LF is a line too (a CR at its very end is its line end); empty file: no
    lines."""
    return b"".join(wire_lines(data))


def wire_lines(data):
    if not data:
        return []
    parts = data.split(b"\n")
    last = parts.pop()
    lines = []
    for p in parts:
        if p.endswith(b"\r"):
            p = p[:-1]
        lines.append(p + b"\r\n")
    if last:
        if last.endswith(b"\r"):
            last = last[:-1]
        lines.append(last + b"\r\n")
    return lines


def top_form(data, n):
    """Octets TOP msg n must deliver (before dot-stuffing): the headers, the
    blank line, and the first n body lines."""
    out = []
    in_body = False
    count = 0
    for line in wire_lines(data):
        if in_body:
            if count >= n:
                break
            count += 1
        elif line == b"\r\n":
            in_body = True
        out.append(line)
    return b"".join(out)


def dot_stuff(wire):
    """Byte-stuff a wire form: lines starting with '.' get one more."""
    if not wire:
        return wire
    lines = wire.split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)


def dot_stuff_inverse(raw):
    if not raw:
        return raw
    lines = raw.split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)


# ---------------------------------------------------------------- raw client

class ConnectionClosed(Exception):
    pass


class POP3Raw:
    """A POP3 client on a raw socket that keeps every byte: for byte-exact
    checks, pipelining and deliberately broken input."""

    def __init__(self, port, host="127.0.0.1", timeout=IO_TIMEOUT, read_greeting=True, source=None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = bytearray()
        self.greeting = self.readline().rstrip(b"\r\n") if read_greeting else None

    # -- low level
    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionClosed("server closed the connection")
        self.buf += chunk

    def readline(self):
        """One line including its CRLF."""
        start = 0
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                line = bytes(self.buf[:i + 2])
                del self.buf[:i + 2]
                return line
            start = max(0, len(self.buf) - 1)
            if len(self.buf) > 1 << 16:
                raise AssertionError("status line longer than 64 KiB: %r..." % bytes(self.buf[:100]))
            self._fill()

    def read_multiline_raw(self):
        """Body of a multi-line response, still dot-stuffed, every line with
        its CRLF, without the terminating ".CRLF" line."""
        if self.buf[:3] == b".\r\n":
            del self.buf[:3]
            return b""
        start = 0
        while True:
            if self.buf[:3] == b".\r\n":
                del self.buf[:3]
                return b""
            i = self.buf.find(b"\r\n.\r\n", start)
            if i >= 0:
                body = bytes(self.buf[:i + 2])
                del self.buf[:i + 5]
                return body
            start = max(0, len(self.buf) - 4)
            self._fill()

    # -- commands
    def cmd(self, line):
        """Send one command line, return its status line without CRLF."""
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.readline().rstrip(b"\r\n")

    def multi(self, line):
        """Send a multi-line command: (status, raw stuffed body) where body is
        None when the status is -ERR."""
        status = self.cmd(line)
        if not status.startswith(b"+OK"):
            return status, None
        return status, self.read_multiline_raw()

    def login(self, user="alice", password="secret"):
        st = self.cmd("USER " + user)
        assert st.startswith(b"+OK"), st
        st = self.cmd("PASS " + password)
        assert st.startswith(b"+OK"), st
        return st

    def stat(self):
        st = self.cmd("STAT")
        assert st.startswith(b"+OK "), st
        f = st.split()
        return int(f[1]), int(f[2])

    def list(self):
        """{msgno: size} from LIST."""
        st, body = self.multi("LIST")
        assert st.startswith(b"+OK"), st
        return {int(a): int(b) for a, b in (l.split()[:2] for l in body.split(b"\r\n") if l)}

    def uidl(self):
        """{msgno: uidl} from UIDL."""
        st, body = self.multi("UIDL")
        assert st.startswith(b"+OK"), st
        out = {}
        for l in body.split(b"\r\n"):
            if l:
                n, u = l.split(b" ", 1)
                out[int(n)] = u.decode("ascii")
        return out

    def retr(self, n):
        """Unstuffed wire octets of message n."""
        st, body = self.multi("RETR %d" % n)
        assert st.startswith(b"+OK"), st
        return dot_stuff_inverse(body)

    def quit(self):
        st = self.cmd("QUIT")
        self.wait_closed()
        return st

    def wait_closed(self, timeout=IO_TIMEOUT):
        """Wait until the server closes; returns the bytes it sent meanwhile."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        got = bytes(self.buf)
        self.buf.clear()
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return got
                got += chunk
        except ConnectionResetError:
            return got
        finally:
            self.sock.settimeout(old)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- server

_counter = itertools.count(1)
_source_counter = itertools.count(1)


def fresh_source(host="127.0.0.1"):
    """A loopback source address not used before in this test run
    (127.1.0.1, 127.1.0.2, ...). popboxd throttles failed logins per client
    address; giving every test connection its own address keeps one test's
    deliberate failures from slowing the next login. All of 127/8 is
    loopback, so plaintext_auth = tls-or-loopback still allows USER/PASS."""
    if host != "127.0.0.1":
        return None
    n = next(_source_counter)
    return "127.%d.%d.%d" % (1 + (n >> 16) % 254, (n >> 8) & 255, 1 + (n & 255) % 254)


class StartError(Exception):
    pass


# When root: users that Debian's base-passwd always has, none of them nobody;
# the first that exists runs the auth process (auth_user).
AUTH_USERS = ("daemon", "bin")


def auth_user_for_tests():
    for name in AUTH_USERS:
        try:
            return pwd.getpwnam(name).pw_name
        except KeyError:
            pass
    raise RuntimeError("none of the users %r exists for auth_user" % (AUTH_USERS,))


class PopboxServer:
    """One popboxd instance with its own temporary tree.

    tree (base):  popboxd.conf  users  mail/<user>/{cur,new,tmp}  state/  popboxd.log
    """

    def __init__(self, users=None, config=None, base=None, workers=2):
        self.as_root = os.geteuid() == 0
        if base is None:
            if self.as_root:
                # /tmp/pytest-of-root is 0700: nobody could not reach the maildirs.
                base = tempfile.mkdtemp(prefix="popbox-test-", dir="/tmp")
            else:
                base = tempfile.mkdtemp(prefix="popbox-test-")
            os.chmod(base, 0o755)
            self.own_base = True
        else:
            os.makedirs(base, exist_ok=True)
            self.own_base = False
        self.base = base
        if self.as_root:
            self.run_as = "nobody"
            self.auth_user = auth_user_for_tests()
            self.uid = pwd.getpwnam("nobody").pw_uid
            try:
                self.gid = grp.getgrnam("nogroup").gr_gid
            except KeyError:
                self.gid = pwd.getpwnam("nobody").pw_gid
        else:
            self.run_as = pwd.getpwuid(os.geteuid()).pw_name
            self.auth_user = self.run_as    # not root: everything runs as the invoking user
            self.uid = os.geteuid()
            self.gid = os.getegid()
        self.conf_path = os.path.join(base, "popboxd.conf")
        self.users_path = os.path.join(base, "users")
        self.mail_root = os.path.join(base, "mail")
        self.state_dir = os.path.join(base, "state")
        self.log_path = os.path.join(base, "popboxd.log")
        self.host = "127.0.0.1"
        self.cwd = base          # working directory of popboxd
        self.port = None
        self.proc = None
        self.logf = None
        self.known_children = set()
        self.env = None          # popboxd's environment (None: ours)
        self.users = {}          # name -> password field as written
        self.config = {
            "mail": "maildir:%s/%%u" % self.mail_root,
            "users": self.users_path,
            "state_dir": self.state_dir,
            "run_as": self.run_as,
        }
        if self.as_root:
            self.config["auth_user"] = self.auth_user
        if workers is not None:
            self.config["workers"] = str(workers)
        if config:
            self.config.update(config)
        os.makedirs(self.mail_root, exist_ok=True)
        os.makedirs(self.state_dir, exist_ok=True)
        self._own(self.mail_root)
        self._own(self.state_dir)
        for name, secret in (users if users is not None else {"alice": "secret"}).items():
            self.add_user(name, secret, write=False)
        self.write_users()

    # -- files
    def _own(self, path):
        if self.as_root:
            os.chown(path, self.uid, self.gid)

    def write_file(self, path, data, mode=0o644, own=True):
        if isinstance(data, str):
            data = data.encode()
        tmp = path + ".tmp%d" % next(_counter)
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        if own:
            self._own(tmp)
        os.rename(tmp, path)

    def add_user(self, name, secret, scheme="PLAIN", extra="", write=True):
        """secret is the plaintext; scheme PLAIN, SHA512-CRYPT, or RAW (the
        secret is written as given)."""
        if scheme == "PLAIN":
            field = "{PLAIN}" + secret
        elif scheme == "SHA512-CRYPT":
            field = "{SHA512-CRYPT}" + crypt_sha512(secret)
        elif scheme == "BARE-CRYPT":
            field = crypt_sha512(secret)
        elif scheme == "RAW":
            field = secret
        else:
            raise ValueError(scheme)
        self.users[name] = field + extra
        if write:
            self.write_users()

    def users_text(self):
        return "".join("%s:%s\n" % (n, f) for n, f in self.users.items())

    def write_users(self):
        self.write_file(self.users_path, self.users_text(), mode=0o600)

    def write_config(self, extra_lines=()):
        lines = ["# written by tests/integration/popbox_server.py"]
        listen = self.config.get("listen", "%s:%d" % (self.host, self.port or 0))
        lines.append("listen = %s" % listen)
        for k, v in self.config.items():
            if k == "listen":
                continue
            lines.append("%s = %s" % (k, v))
        lines.extend(extra_lines)
        self.write_file(self.conf_path, "\n".join(lines) + "\n", mode=0o644, own=False)

    def maildir(self, user="alice"):
        """Path of user's Maildir, created with cur/new/tmp if missing."""
        path = os.path.join(self.mail_root, user)
        for sub in ("", "cur", "new", "tmp"):
            p = os.path.join(path, sub)
            if not os.path.isdir(p):
                os.makedirs(p, exist_ok=True)
                self._own(p)
        return path

    def deliver(self, data, user="alice", name=None, subdir="new", info=None):
        """Put one message file into user's Maildir (via tmp/ and rename, as
        an MDA does). Returns the base name (the expected UIDL when it is
        1..70 printable characters)."""
        md = self.maildir(user)
        if name is None:
            name = "%d.M%dP%d.popboxtest" % (time.time(), next(_counter), os.getpid())
        fname = name if info is None else name + ":" + info
        tmp = os.path.join(md, "tmp", fname)
        with open(tmp, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        os.chmod(tmp, 0o644)
        self._own(tmp)
        os.rename(tmp, os.path.join(md, subdir, fname))
        return name

    def message_files(self, user="alice"):
        """{base name: path} of the messages in new/ and cur/."""
        md = os.path.join(self.mail_root, user)
        out = {}
        for sub in ("new", "cur"):
            d = os.path.join(md, sub)
            if os.path.isdir(d):
                for f in os.listdir(d):
                    out[f.split(":", 1)[0]] = os.path.join(d, f)
        return out

    # -- process
    def command(self, *extra):
        cmd = [popboxd_path(), "-c", self.conf_path] + list(extra)
        if os.environ.get("POPBOX_VALGRIND") and "-t" not in extra:
            # memcheck over the master and every forked child; a report is
            # found in the log by sanitizer_report() and fails the test
            cmd = ["valgrind", "--quiet", "--error-exitcode=99", "--leak-check=no",
                   "--track-fds=no", "--trace-children=no",
                   "--log-file=%s.valgrind.%%p" % self.log_path] + cmd
        return cmd

    def valgrind_reports(self):
        """Text of every valgrind log of this server that holds an error."""
        out = []
        d = os.path.dirname(self.log_path)
        for f in sorted(os.listdir(d)):
            if f.startswith(os.path.basename(self.log_path) + ".valgrind."):
                t = open(os.path.join(d, f), errors="replace").read()
                # memcheck's error kinds; plain warnings do not count
                if re.search(r"Invalid (read|write|free)|uninitialised|Mismatched free|"
                             r"Syscall param|overlap|Jump to the invalid", t):
                    out.append(t)
        return out

    def start(self, extra_args=("-f",), wait=True, tries=5):
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("already running")
        last = ""
        for _ in range(tries):
            if "listen" not in self.config:
                self.port = free_port(self.host)
            self.write_config()
            self.logf = open(self.log_path, "ab")
            self.log_offset = self.logf.tell()
            self.proc = subprocess.Popen(self.command(*extra_args), stdin=subprocess.DEVNULL,
                                         stdout=self.logf, stderr=subprocess.STDOUT,
                                         cwd=self.cwd, env=self.env, preexec_fn=_die_with_parent)
            if not wait:
                return self
            try:
                self.wait_ready()
                self.known_children |= set(self.children())
                return self
            except StartError as e:
                last = str(e)
                self.stop()
                if "in use" not in last.lower() or "listen" in self.config:
                    break
        raise StartError(last)

    def wait_ready(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        why = "no greeting"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError("popboxd exited with status %s during start-up:\n%s"
                                 % (self.proc.returncode, self.log()))
            try:
                with socket.create_connection((self.host, self.port), timeout=IO_TIMEOUT) as s:
                    f = s.makefile("rb")
                    line = f.readline()
                    if line.startswith(b"+OK"):
                        s.sendall(b"QUIT\r\n")
                        f.readline()
                        return
                    why = "greeting %r" % line
            except OSError as e:
                why = str(e)
            time.sleep(0.05)
        raise StartError("popboxd not ready after %.0fs (%s):\n%s" % (timeout, why, self.log()))

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def reload(self):
        self.signal(signal.SIGHUP)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM by PID, wait, SIGKILL if needed (and any children we saw,
        by PID). Returns the exit status."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.known_children |= set(self.children())
            try:
                self.proc.send_signal(signal.SIGTERM)
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait(5)
        self._reap_children()
        if self.logf:
            self.logf.close()
            self.logf = None
        return rc

    def _reap_children(self):
        # children exit after the master; those still there at the runaway
        # guard are killed (clean-up, not a check)
        deadline = time.monotonic() + RUNAWAY_SEC
        for pid in list(self.known_children):
            while _pid_alive_with_comm_prefix(pid, "popboxd") and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive_with_comm_prefix(pid, "popboxd"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.known_children.clear()

    def restart(self):
        port = self.port
        self.stop()
        self.config.setdefault("listen", "%s:%d" % (self.host, port))
        try:
            self.start()
        finally:
            if self.config.get("listen") == "%s:%d" % (self.host, port):
                del self.config["listen"]
        return self

    def cleanup(self):
        self.stop()
        if self.own_base and not os.environ.get("POPBOX_KEEP_TMP"):
            shutil.rmtree(self.base, ignore_errors=True)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # -- /proc
    def children(self, pid=None):
        """{pid: comm} of the master's direct children."""
        return children_of(pid or self.pid)

    def children_by_comm(self, comm):
        return sorted(p for p, c in self.children().items() if c == comm)

    def wait_children(self, predicate, timeout=RUNAWAY_SEC):
        """The master's children once predicate(children) holds; at the
        runaway guard, the children as they are (the caller's check fails)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ch = self.children()
            if predicate(ch):
                return ch
            time.sleep(0.05)
        return self.children()

    # -- clients
    def connect(self, source="fresh", **kw):
        """A POP3Raw connection. source: "fresh" (default) a new loopback
        source address per connection (see fresh_source), None the kernel's
        choice (127.0.0.1), or an address."""
        if source == "fresh":
            source = fresh_source(self.host)
        return POP3Raw(self.port, self.host, source=source, **kw)

    def poplib(self, timeout=IO_TIMEOUT, source="fresh"):
        import poplib
        if source == "fresh":
            source = fresh_source(self.host)

        class POP3(poplib.POP3):
            def _create_socket(self, t):
                return socket.create_connection((self.host, self.port), t,
                                                source_address=(source, 0) if source else None)
        return POP3(self.host, self.port, timeout=timeout)

    def session(self, user="alice", password="secret"):
        c = self.connect()
        c.login(user, password)
        return c

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()


def traced_env():
    """The environment for a program started under strace (fault injection):
    LeakSanitizer, in the ASan build of make sanitize, refuses to run under
    ptrace and exits 1 at the end of an otherwise good run."""
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=0"]))
    return env


def sanitized():
    """Whether popboxd is an ASan build (or runs under valgrind): memory
    figures (RSS) then measure the tool's quarantine and shadow memory, not
    popboxd, so tests skip their memory bounds."""
    if os.environ.get("POPBOX_VALGRIND"):
        return True
    try:
        with open(popboxd_path(), "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def peer_name(sock):
    """How popboxd's log names the client at our end of sock: ADDR:PORT."""
    host, port = sock.getsockname()[:2]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def peer_lines(log, peer):
    """The lines of a popboxd log whose peer= is peer: ADDR:PORT (or
    [ADDR6]:PORT) for one connection's session lines, ADDR (or [ADDR6])
    for every line about that address (the auth process names the address
    only)."""
    pat = re.compile(r"peer=%s(?![\w.])" % re.escape(peer))
    return [ln for ln in log.splitlines() if pat.search(ln)]


def session_end(srv, peer):
    """The end= reason of the line popboxd logs when the session of peer
    (ADDR:PORT) ends (popboxd(8), LOGGING); waited for, runaway guard only."""
    def reason():
        for ln in peer_lines(srv.log(), peer):
            if " end=" in ln:
                return ln.rsplit(" end=", 1)[1].split()[0]
    return wait_until(reason, "the end-of-session log line of %s" % peer)


SANITIZER_MARKERS = ("valgrind: ERROR SUMMARY", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer")


def sanitizer_report(log):
    """The first sanitizer marker found in a popboxd log, or None."""
    for m in SANITIZER_MARKERS:
        if m in log:
            return m
    return None


def _die_with_parent():
    """preexec_fn: SIGTERM popboxd when the test process dies (e.g. killed by a
    timeout), so no server outlives its test run."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def children_of(pid):
    out = {}
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            kids = [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return out
    for k in kids:
        c = comm_of(k)
        if c is not None:
            out[k] = c
    return out


def comm_of(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _pid_alive_with_comm_prefix(pid, prefix):
    c = comm_of(pid)
    if c is None:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (FileNotFoundError, IndexError):
        return False
    return c.startswith(prefix)


def crypt_sha512(secret):
    """A $6$ crypt string made by openssl (python's crypt module is going away)."""
    out = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=secret.encode(),
                         capture_output=True, check=True, timeout=RUNAWAY_SEC).stdout
    return out.decode().strip()


def apop_digest(greeting, secret):
    """MD5 hex of the <timestamp> in greeting followed by secret (RFC 1939 §7)."""
    if isinstance(greeting, bytes):
        greeting = greeting.decode("ascii", "replace")
    start = greeting.index("<")
    end = greeting.index(">", start)
    return hashlib.md5((greeting[start:end + 1] + secret).encode()).hexdigest()


def socket_owner(server_port, client_sock, pids):
    """Which of pids holds the server side of client_sock (via /proc/net/tcp
    inodes), or None."""
    caddr, cport = client_sock.getsockname()[:2]
    saddr = client_sock.getpeername()[0]

    def hexaddr(a):
        return "%08X" % int.from_bytes(socket.inet_aton(a), "little")
    want_local = "%s:%04X" % (hexaddr(saddr), server_port)
    want_remote = "%s:%04X" % (hexaddr(caddr), cport)
    inode = None
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want_local and fields[2] == want_remote:
                inode = fields[9]
                break
    if inode is None:
        return None
    target = "socket:[%s]" % inode
    for pid in pids:
        d = "/proc/%d/fd" % pid
        try:
            for fd in os.listdir(d):
                try:
                    if os.readlink(os.path.join(d, fd)) == target:
                        return pid
                except OSError:
                    pass
        except OSError:
            pass
    return None
