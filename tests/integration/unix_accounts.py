"""Real Unix accounts for the tests that need them (PAM logins, session
processes running as the user). Root only.

Every command that changes /etc/passwd, /etc/shadow or /etc/group runs under
one flock shared by every test process on the machine: the shadow tools
lock those files, but a password set by chpasswd (through PAM) and a
usermod or useradd running at the same moment in another process can still
lose one of the two updates, and the suites may run in several processes at
once (pytest-xdist, or two builds' suites side by side).
"""

import contextlib
import fcntl
import secrets
import subprocess

PASSWORD = "Right-Horse-7"
LOCKS = ("/run/lock/popbox-test-accounts.lock", "/tmp/popbox-test-accounts.lock")


@contextlib.contextmanager
def _accounts_lock():
    try:
        f = open(LOCKS[0], "a")
    except FileNotFoundError:          # no /run/lock
        f = open(LOCKS[1], "a")
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def run(*argv, stdin=None):
    """One account command, serialised with every other test process's."""
    with _accounts_lock():
        subprocess.run(argv, input=stdin, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=120)


class Accounts:
    """Unix accounts made for one test module (names start with "pbt" and a
    random part); remove_all(), which the fixtures call even on failure,
    deletes them."""

    def __init__(self):
        self.prefix = "pbt" + secrets.token_hex(3)
        self.names = []

    def add(self, tag, system=False, password=PASSWORD, home=None, groups=()):
        name = self.prefix + tag
        argv = ["useradd", "--shell", "/usr/sbin/nologin", "--user-group"]
        if home is None:
            argv += ["--no-create-home", "--home-dir", "/nonexistent"]
        else:
            argv += ["--create-home", "--home-dir", home]
        if groups:
            argv += ["--groups", ",".join(groups)]
        if system:
            argv.append("--system")
        run(*(argv + [name]))
        self.names.append(name)
        run("chpasswd", stdin=("%s:%s\n" % (name, password)).encode())
        return name

    def remove_all(self):
        with _accounts_lock():
            for name in self.names:
                subprocess.run(["userdel", name], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=120)
        self.names = []
