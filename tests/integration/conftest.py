"""Shared pytest fixtures for the integration tests (server and fetch client).

Fixtures:
  popboxd_bin      path of the built popboxd (fails clearly when missing)
  server_factory   make(users=None, config=None, start=True, workers=2) -> PopboxServer;
                   every server made is stopped and its tree removed afterwards
  server           a started popboxd with user alice/secret and an empty Maildir
On a failed test the log of every server it used is printed in the report; a
sanitizer report (ASan, LSan, UBSan) in any server's log fails the test.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import popbox_server  # noqa: E402
from popbox_server import PopboxServer  # noqa: E402


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def popboxd_bin():
    path = popbox_server.popboxd_path()
    if not os.access(path, os.X_OK):
        pytest.fail("%s is not built: run `make` first (or set POPBOX_BUILD)" % path)
    return path


@pytest.fixture
def server_factory(request, popboxd_bin):
    made = []

    def make(users=None, config=None, start=True, workers=2, extra_args=("-f",)):
        srv = PopboxServer(users=users, config=config, workers=workers)
        made.append(srv)
        if start:
            srv.start(extra_args=extra_args)
        return srv

    yield make
    failed = any(getattr(request.node, "rep_" + w, None) is not None
                 and getattr(request.node, "rep_" + w).failed for w in ("setup", "call"))
    reports = []
    for srv in made:
        try:
            srv.stop()
        finally:
            log = srv.log()
            if hasattr(srv, "valgrind_reports"):
                vg = srv.valgrind_reports()
                if vg:
                    log += "\nvalgrind: ERROR SUMMARY\n" + "\n".join(vg)
            found = popbox_server.sanitizer_report(log)
            if found:
                reports.append("%s in popboxd (%s):\n%s" % (found, srv.base, log[-20000:]))
            elif failed:
                sys.stdout.write("\n----- popboxd log (%s) -----\n%s\n" % (srv.base, log[-20000:]))
            srv.cleanup()
    if reports:
        # make sanitize: a sanitizer error in any popboxd process fails the test
        pytest.fail("\n\n".join(reports), pytrace=False)


@pytest.fixture
def server(server_factory):
    return server_factory()
