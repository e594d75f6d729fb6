"""Independent POP3 clients retrieving from popboxd: fetchmail, mpop, getmail6
and Perl's Net::POP3. Plaintext USER/PASS on loopback (allowed by default)."""

import os
import shutil
import subprocess

import pytest

from popbox_server import RUNAWAY_SEC, wire_form

MESSAGES = [
    b"From: one@example.org\nTo: alice@example.org\nSubject: first\nMessage-ID: <m1@example.org>\n\n"
    b"marker-AAA-111\n.dot line\n",
    b"From: two@example.org\nTo: alice@example.org\nSubject: second\nMessage-ID: <m2@example.org>\n\n"
    b"marker-BBB-222\n\xc3\xa4 8-bit\n",
    b"From: three@example.org\nTo: alice@example.org\nSubject: third\nMessage-ID: <m3@example.org>\n\n"
    b"marker-CCC-333\nno final newline",
]
MARKERS = [b"marker-AAA-111", b"marker-BBB-222", b"marker-CCC-333"]
# the clients' own network timeouts and the wait for them: runaway guards
# (runaway.py); popboxd answers each of them at once
TIMEOUT = RUNAWAY_SEC


@pytest.fixture
def mailbox(server):
    for m in MESSAGES:
        server.deliver(m)
    return server


def need(prog):
    path = shutil.which(prog)
    if path is None:
        pytest.skip("%s not installed (see tools/debian-packages.txt)" % prog)
    return path


def private_dir(server, name):
    d = os.path.join(server.base, name)
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def run(cmd, env=None, cwd=None):
    r = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, env=env, cwd=cwd)
    return r


def client_env(home):
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["HOME"] = home
    env["LC_ALL"] = "C"
    return env


def assert_all_retrieved(blobs):
    joined = b"\n".join(blobs)
    for mk in MARKERS:
        assert joined.count(mk) == 1, (mk, joined[:2000])


# ------------------------------------------------------------------ fetchmail

def test_fetchmail_retrieves_and_deletes(mailbox):
    fetchmail = need("fetchmail")
    home = private_dir(mailbox, "fm-home")
    out_dir = os.path.join(home, "out")
    os.mkdir(out_dir)
    mda = os.path.join(home, "mda.sh")
    with open(mda, "w") as f:
        f.write('#!/bin/sh\nexec cat > "%s/msg.$$"\n' % out_dir)
    os.chmod(mda, 0o755)
    rc = os.path.join(home, ".fetchmailrc")
    with open(rc, "w") as f:
        f.write('set no syslog\n'
                'poll 127.0.0.1 protocol pop3 port %d timeout %d auth password\n'
                '  user "alice" there with password "secret"\n'
                '  sslproto "" no sslcertck fetchall nokeep mda "%s"\n'
                % (mailbox.port, TIMEOUT, mda))
    os.chmod(rc, 0o600)
    r = run([fetchmail, "-f", rc, "--idfile", os.path.join(home, ".fetchids"),
             "--pidfile", os.path.join(home, "fetchmail.pid"), "-v", "--nodetach"],
            env=client_env(home))
    assert r.returncode == 0, (r.returncode, r.stdout.decode(errors="replace"),
                               r.stderr.decode(errors="replace"))
    blobs = [open(os.path.join(out_dir, n), "rb").read() for n in sorted(os.listdir(out_dir))]
    assert len(blobs) == 3
    assert_all_retrieved(blobs)
    assert mailbox.message_files() == {}, "fetchmail deleted the messages at QUIT"


# ------------------------------------------------------------------ mpop

def test_mpop_retrieves_and_deletes(mailbox):
    mpop = need("mpop")
    home = private_dir(mailbox, "mpop-home")
    mbox = os.path.join(home, "out.mbox")
    open(mbox, "wb").close()
    conf = os.path.join(home, "mpoprc")
    with open(conf, "w") as f:
        f.write("defaults\n"
                "timeout %d\n"
                "account popbox\n"
                "host 127.0.0.1\n"
                "port %d\n"
                "user alice\n"
                "password secret\n"
                "auth user\n"
                "tls off\n"
                "keep off\n"
                "uidls_file %s\n"
                "delivery mbox %s\n"
                "account default : popbox\n"
                % (TIMEOUT, mailbox.port, os.path.join(home, "uidls"), mbox))
    os.chmod(conf, 0o600)
    r = run([mpop, "-C", conf, "-q", "popbox"], env=client_env(home))
    assert r.returncode == 0, (r.returncode, r.stdout.decode(errors="replace"),
                               r.stderr.decode(errors="replace"))
    data = open(mbox, "rb").read()
    assert data.count(b"\nFrom ") + data.startswith(b"From ") == 3, data[:500]
    assert_all_retrieved([data])
    assert mailbox.message_files() == {}


def test_mpop_keep_mode_uses_uidl(mailbox):
    mpop = need("mpop")
    home = private_dir(mailbox, "mpop-keep")
    mbox = os.path.join(home, "out.mbox")
    open(mbox, "wb").close()
    conf = os.path.join(home, "mpoprc")
    with open(conf, "w") as f:
        f.write("account default\nhost 127.0.0.1\nport %d\nuser alice\npassword secret\n"
                "auth user\ntls off\nkeep on\nonly_new on\ntimeout %d\nuidls_file %s\n"
                "delivery mbox %s\n" % (mailbox.port, TIMEOUT, os.path.join(home, "uidls"), mbox))
    os.chmod(conf, 0o600)
    for _ in range(2):
        r = run([mpop, "-C", conf, "-q"], env=client_env(home))
        assert r.returncode == 0, r.stderr
    data = open(mbox, "rb").read()
    assert_all_retrieved([data])   # each exactly once across two runs
    assert len(mailbox.message_files()) == 3


# ------------------------------------------------------------------ getmail6

def test_getmail_retrieves(mailbox):
    getmail = need("getmail")
    home = private_dir(mailbox, "gm-home")
    md = os.path.join(home, "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, sub))
    as_user = ""
    if os.geteuid() == 0:
        # getmail refuses to deliver as root: deliver as nobody
        os.chmod(home, 0o755)
        for d in (md,) + tuple(os.path.join(md, s) for s in ("cur", "new", "tmp")):
            os.chown(d, mailbox.uid, mailbox.gid)
        as_user = "user = nobody\n"
    rc = os.path.join(home, "getmailrc")
    with open(rc, "w") as f:
        f.write("[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\nport = %d\n"
                "username = alice\npassword = secret\ntimeout = %d\n\n"
                "[destination]\ntype = Maildir\npath = %s/\n%s\n"
                "[options]\nread_all = true\ndelete = true\nverbose = 0\nmessage_log_syslog = false\n"
                % (mailbox.port, TIMEOUT, md, as_user))
    r = run([getmail, "--getmaildir", home, "--rcfile", rc], env=client_env(home))
    assert r.returncode == 0, (r.returncode, r.stdout.decode(errors="replace"),
                               r.stderr.decode(errors="replace"))
    blobs = [open(os.path.join(md, "new", n), "rb").read() for n in os.listdir(os.path.join(md, "new"))]
    assert len(blobs) == 3
    assert_all_retrieved(blobs)
    assert mailbox.message_files() == {}


# ------------------------------------------------------------------ Net::POP3

PERL_SCRIPT = r'''
use strict; use warnings;
use Net::POP3;
my ($port, $out) = @ARGV;
my $pop = Net::POP3->new("127.0.0.1", Port => $port, Timeout => 20) or die "connect: $@";
defined($pop->login("alice", "secret")) or die "login failed: " . $pop->message;
my ($n, $size) = $pop->popstat;
my $list = $pop->list or die "list";
my $uidl = $pop->uidl or die "uidl";
open(my $fh, ">:raw", $out) or die;
print $fh "STAT $n $size\n";
for my $i (sort { $a <=> $b } keys %$list) {
    my $lines = $pop->get($i) or die "get $i";
    my $msg = join("", @$lines);
    print $fh "MSG $i $list->{$i} $uidl->{$i} " . length($msg) . "\n";
    print $fh $msg;
    print $fh "\nEND\n";
    $pop->delete($i) or die "delete $i";
}
close $fh;
$pop->quit or die "quit";
'''


def test_perl_net_pop3(mailbox):
    perl = need("perl")
    if run([perl, "-MNet::POP3", "-e", "1"]).returncode != 0:
        pytest.skip("Net::POP3 not available")
    home = private_dir(mailbox, "perl")
    script = os.path.join(home, "get.pl")
    out = os.path.join(home, "out")
    with open(script, "w") as f:
        f.write(PERL_SCRIPT)
    r = run([perl, script, str(mailbox.port), out], env=client_env(home))
    assert r.returncode == 0, (r.stdout, r.stderr)
    data = open(out, "rb").read()
    first = data.split(b"\n", 1)[0].split()
    assert first[:2] == [b"STAT", b"3"]
    assert int(first[2]) == sum(len(wire_form(m)) for m in MESSAGES)
    assert_all_retrieved([data])
    names = set(mailbox.message_files())
    assert names == set(), "Net::POP3 deleted every message at QUIT"
    # each message's LIST size equals the wire size of the stored message
    sizes = sorted(int(l.split()[2]) for l in data.splitlines() if l.startswith(b"MSG "))
    assert sizes == sorted(len(wire_form(m)) for m in MESSAGES)
