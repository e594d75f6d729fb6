"""The documentation matches the server: every config key documented, man
pages render without warnings, the README's commands exist, demo.sh is sh."""

import os
import re
import shutil
import subprocess

import pytest

from popbox_server import REPO, RUNAWAY_SEC, popboxd_path, wait_until


def read(rel):
    with open(os.path.join(REPO, rel), encoding="utf-8") as f:
        return f.read()


def config_keys():
    keys = re.findall(r'\{\s*"([a-z_]+)",\s*config_key_', read("src/server/config.c"))
    assert len(keys) >= 15, keys
    return keys


def man_text(rel):
    """The man page with font escapes and hyphen escapes removed."""
    t = read(rel)
    return re.sub(r"\\f[BIRP]", "", t).replace("\\-", "-")


@pytest.mark.parametrize("key", config_keys())
def test_every_config_key_documented(key):
    assert re.search(r"^\.BI? %s\b" % re.escape(key), man_text("docs/popboxd.conf.5"), re.M), \
        "%s missing from docs/popboxd.conf.5" % key
    assert "`%s`" % key in read("README.md"), "%s missing from the README's table" % key


def documented_keys():
    return sorted(set(re.findall(r"^\.BI? ([a-z_]+) (?:\" = |=)", man_text("docs/popboxd.conf.5"), re.M)))


def test_documented_keys_found():
    assert len(documented_keys()) >= 15, documented_keys()


@pytest.mark.parametrize("key", documented_keys())
def test_documented_keys_are_known_to_the_server(server_factory, key):
    """No key is documented that the server would reject as unknown."""
    srv = server_factory(start=False)
    srv.port = 1
    srv.write_config(extra_lines=["%s = @@@" % key])
    r = subprocess.run([popboxd_path(), "-t", "-c", srv.conf_path], capture_output=True,
                       timeout=RUNAWAY_SEC)
    assert b"unknown key" not in r.stderr, r.stderr


def test_every_option_documented():
    usage = subprocess.run([popboxd_path(), "-h"], capture_output=True,
                           timeout=RUNAWAY_SEC).stdout.decode()
    opts = set(re.findall(r"(?<![\w-])-([a-zA-Z])\b", usage))
    assert {"c", "f", "t", "d"} <= opts, usage
    page = man_text("docs/popboxd.8")
    for o in opts:
        assert re.search(r"^\.(B|BI|TP)?\s*-%s\b" % o, page, re.M) or ".B -%s" % o in page, o


@pytest.mark.parametrize("page", ["docs/popboxd.8", "docs/popboxd.conf.5"])
def test_man_page_renders_without_warnings(page):
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff not installed (groff-base)")
    r = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", os.path.join(REPO, page)],
                       capture_output=True, timeout=RUNAWAY_SEC)
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()


def test_readme_commands():
    readme = read("README.md")
    assert "make demo" in readme and "make check" in readme
    assert "curl pop3://alice:secret@127.0.0.1:1110/1" in readme
    assert "## Fetching mail: popbox fetch" in readme
    make = read("Makefile")
    for target in ("demo", "check", "sanitize", "install"):
        assert re.search(r"^%s:" % target, make, re.M), target


def test_demo_script_is_posix_sh():
    r = subprocess.run(["sh", "-n", os.path.join(REPO, "tools/demo.sh")], capture_output=True,
                       timeout=RUNAWAY_SEC)
    assert r.returncode == 0, r.stderr
    if shutil.which("checkbashisms"):
        r = subprocess.run(["checkbashisms", os.path.join(REPO, "tools/demo.sh")],
                           capture_output=True, timeout=RUNAWAY_SEC)
        assert r.returncode == 0, r.stdout + r.stderr


def test_ci_runs_make_check():
    """.ci/run installs the listed packages and ends with the README's test
    command; the package test is part of make check."""
    ci = read(".ci/run")
    lines = [l.strip() for l in ci.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    # exactly the README's test command, last
    assert lines[-1] == "make check", lines
    assert "```sh\nmake check\n```" in read("README.md")
    assert "tools/debian-packages.txt" in ci
    check = [l for l in read("Makefile").splitlines() if l.startswith("check:")]
    assert check and "check-package" in check[0].split(), check


def test_make_demo_script(popboxd_bin):
    """tools/demo.sh (make demo) sets up alice's three messages, serves them
    on DEMO_PORT, and stops cleanly on SIGTERM; run twice it is the same."""
    import poplib
    import signal
    import socket
    import tempfile
    from popbox_server import build_dir, free_port

    base = tempfile.mkdtemp(prefix="popbox-demo-test-", dir="/tmp")
    os.chmod(base, 0o755)
    try:
        for run in range(2):
            port = free_port()
            env = dict(os.environ, DEMO_DIR=os.path.join(base, "demo"), DEMO_PORT=str(port),
                       BUILD=build_dir(), DEMO_SKIP_BUILD="1", DEMO_SKIP_PACKAGES="1")
            out = open(os.path.join(base, "out%d" % run), "w+b")
            p = subprocess.Popen(["sh", os.path.join(REPO, "tools/demo.sh")], env=env,
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                def demo_up():
                    assert p.poll() is None, open(out.name, "rb").read().decode(errors="replace")
                    return poplib.POP3("127.0.0.1", port, timeout=RUNAWAY_SEC)
                pop = wait_until(demo_up, "the demo server up", step=0.1, retry_on=(OSError,))
                pop.user("alice")
                pop.pass_("secret")
                assert pop.stat()[0] == 3
                body = b"\n".join(pop.retr(1)[1])
                assert b"Subject:" in body
                if run == 0:
                    pop.dele(1)   # the next run puts it back
                pop.quit()
            finally:
                p.send_signal(signal.SIGTERM)
                try:
                    rc = p.wait(RUNAWAY_SEC)
                except subprocess.TimeoutExpired:
                    p.kill()
                    rc = p.wait(5)
            text = open(out.name, "rb").read().decode(errors="replace")
            assert rc == 0, text
            assert "curl pop3://alice:secret@127.0.0.1:%d/1" % port in text
            assert "poplib" in text
            with socket.socket() as s:   # the server is gone
                assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_make_install_honours_prefix_and_destdir(popboxd_bin):
    import tempfile
    from popbox_server import build_dir
    dest = tempfile.mkdtemp(prefix="popbox-install-")
    try:
        r = subprocess.run(["make", "-s", "-C", REPO, "install", "BUILD=" + build_dir(),
                            "DESTDIR=" + dest, "PREFIX=/opt/pb"], capture_output=True, timeout=300)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        root = os.path.join(dest, "opt/pb")
        for rel in ("sbin/popboxd", "bin/popbox", "share/man/man8/popboxd.8",
                    "share/man/man5/popboxd.conf.5"):
            assert os.path.exists(os.path.join(root, rel)), rel
        assert os.access(os.path.join(root, "sbin/popboxd"), os.X_OK)
        # systemd units, with the paths of this PREFIX
        with open(os.path.join(root, "lib/systemd/system/popboxd.service")) as f:
            assert "ExecStart=/opt/pb/sbin/popboxd -f -c /etc/popbox/popboxd.conf\n" in f.read()
        with open(os.path.join(root, "lib/systemd/user/popbox-fetch@.service")) as f:
            assert "ExecStart=/opt/pb/bin/popbox fetch %i\n" in f.read()
        for unit in ("popboxd.socket", "popboxd-pop3s.socket", "popboxd-lmtp.socket"):
            assert os.path.exists(os.path.join(root, "lib/systemd/system", unit)), unit
        assert os.path.exists(os.path.join(root, "lib/systemd/user/popbox-fetch@.timer"))
        # the PAM service of users = pam (test_server_pam.py uses the same file)
        with open(os.path.join(dest, "etc/pam.d/popbox")) as f, \
                open(os.path.join(REPO, "contrib/pam.d/popbox")) as g:
            assert f.read() == g.read()
    finally:
        shutil.rmtree(dest, ignore_errors=True)
