"""The benchmark harness must not rot: `sh bench/run.sh smoke` (seconds,
popboxd only, no targets) builds a small corpus, starts popboxd, drives it with
build/bench/pop3load in every smoke scenario (also on a 300-message mbox) and exits 0 only if pop3load did
work without errors; then bench/mailin.py smoke delivers over LMTP with
build/bench/lmtpload and with popbox deliver."""

import os
import subprocess

import pytest

from popbox_server import RUNAWAY_SEC

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_bench_smoke():
    build = os.environ.get("POPBOX_BUILD") or os.path.join(REPO, "build")
    if not os.access(os.path.join(build, "bench", "pop3load"), os.X_OK):
        pytest.skip("build/bench/pop3load not built")
    r = subprocess.run(["sh", os.path.join(REPO, "bench", "run.sh"), "smoke"], cwd=REPO,
                       env=dict(os.environ, POPBOX_BUILD=build), capture_output=True,
                       text=True, timeout=5 * RUNAWAY_SEC)  # runaway guard: many sections
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sessions/s" in r.stdout and "RETR 4 KiB" in r.stdout, r.stdout
    # the RETR floors (pop3load file-server, threads and event loops) served
    # the same Maildirs without an error and have a figure in every RETR row
    hdr = next(l for l in r.stdout.splitlines() if l.startswith("| scenario |"))
    cols = [c.strip() for c in hdr.strip("|").split("|")]
    assert "floor, thread per connection" in cols and "floor, 2 event loops" in cols, hdr
    for row in ("RETR 4 KiB msgs/s, 8 clients (msgs/s)", "server CPU µs per RETR 4 KiB, 1 client (µs)"):
        line = next(l for l in r.stdout.splitlines() if l.startswith("| " + row + " |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name in ("floor, thread per connection", "floor, 2 event loops"):
            v = cells[cols.index(name)].replace(",", "")
            assert float(v) > 0, (name, line)
    # section mbox: popboxd with mail = mbox: (first and warm login, RETR)
    assert "| mbox 300: warm login..LIST ms (ms) |" in r.stdout, r.stdout
    assert "| mbox RETR 4 KiB msgs/s, 1 client (msgs/s) |" in r.stdout, r.stdout
    # bench/mailin.py smoke: LMTP and popbox deliver rows
    assert "| LMTP, 8 connections, 1 MiB |" in r.stdout, r.stdout
    assert "| delivery agent, 4 KiB |" in r.stdout, r.stdout
    # bench/devices.py smoke: a classic and a device session side by side
    assert "| QUIT after one DELE ms |" in r.stdout, r.stdout
