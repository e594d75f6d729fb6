"""The one runaway guard of the integration tests (server and fetch client).

A test decides pass or fail by behaviour: answers, log lines, files, exit
statuses, counts of events or of system calls. It never decides by how fast
the machine is: `make check` runs on loaded 2-core machines, under ASan and
under valgrind, next to other builds.

Where a test has to wait for something (a server to come up, a log line, a
process to exit, an answer), it waits for that event itself. RUNAWAY_SEC
only turns an event that never comes into a failure instead of a `make
check` that hangs: it is minutes, far beyond what any of these waits needs
even on a loaded machine, so reaching it means "never happened", not "too
slow". Every subprocess and socket timeout in the suites is this value or
derived from a behaviour the test names next to it.

Nothing here depends on pytest or on popboxd.
"""

import time

RUNAWAY_SEC = 120.0


def wait_until(pred, what, limit=RUNAWAY_SEC, step=0.05, retry_on=()):
    """Poll pred() until it returns a true value, and return that value. An
    exception of a type in retry_on counts as "not yet" (the last one is
    named if the guard is reached). limit is a runaway guard only (see
    above): reaching it fails with "`what` never happened"."""
    end = time.monotonic() + limit
    last = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except retry_on as e:
            last = e
        if time.monotonic() > end:
            raise AssertionError("runaway guard: %s never happened (gave up after %.0f s)%s"
                                 % (what, limit, "; last error: %r" % last if last else ""))
        time.sleep(step)
