"""README "Running in production" (issue 15 item 6): the sample files it
shows are the ones in contrib/, verbatim, and the tools they are for accept
them: promtool (the scrape configuration and the alert rules) and haproxy
(the balancer configuration)."""

import os
import shutil
import subprocess

import pytest

from popbox_server import REPO
from runaway import RUNAWAY_SEC

SAMPLES = ("contrib/prometheus/prometheus.yml", "contrib/prometheus/popbox-alerts.yml",
           "contrib/haproxy/haproxy.cfg")


def run(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=RUNAWAY_SEC)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r.stdout


def test_readme_samples_are_contrib_files_and_valid(tmp_path):
    readme = open(os.path.join(REPO, "README.md")).read()
    assert "## Running in production" in readme
    section = readme.split("## Running in production", 1)[1].split("\n## ", 1)[0]
    for rel in SAMPLES:
        text = open(os.path.join(REPO, rel)).read().rstrip("\n")
        assert "\n" + text + "\n```" in section, "%s is not shown verbatim" % rel
        assert "(%s)" % rel in section, rel
    for tool in ("promtool", "haproxy"):
        if shutil.which(tool) is None:
            pytest.fail("%s is needed (tools/debian-packages.txt)" % tool)
    for rel in SAMPLES[:2]:
        shutil.copy(os.path.join(REPO, rel), tmp_path)
    out = run("promtool", "check", "config", str(tmp_path / "prometheus.yml"))
    assert "1 rule files found" in out, out
    out = run("promtool", "check", "rules", str(tmp_path / "popbox-alerts.yml"))
    assert "3 rules found" in out, out
    run("haproxy", "-c", "-f", os.path.join(REPO, SAMPLES[2]))
    # the metric names the alerts use are ones popboxd serves
    import re
    alerts = open(os.path.join(REPO, SAMPLES[1])).read()
    served = open(os.path.join(REPO, "src/server/metrics.c")).read()
    names = set(re.findall(r"\b(popbox_[a-z_]+)", alerts))
    assert names, alerts
    for name in names:
        assert '"%s' % name in served, name
