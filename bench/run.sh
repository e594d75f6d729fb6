#!/bin/sh
# bench/run.sh smoke|quick|full — the popbox benchmarks (see bench/README.md).
#   smoke  seconds, popboxd only, no targets: checks the harness (make check)
#   quick  a few minutes: popboxd, Dovecot and popa3d side by side, one table
#          (make bench)
#   full   everything at the sizes issue 6 names (make bench-full)
# As root it installs what is missing (dovecot-pop3d, mpop, fetchmail,
# gnuplot-nox, socat) with apt-get, and fetches popa3d with apt-get download
# (unpacked in the temp dir, not installed: it conflicts with dovecot-pop3d);
# popa3d needs root (system users pbb*, mbox spools in /var/mail, removed at
# exit) and is skipped otherwise. The driver, bench/bench.py, stops every
# process it starts by PID, also on failure or on a signal.
set -eu
cd "$(dirname "$0")/.."
mode="${1:-quick}"
case "$mode" in
smoke|quick|full) ;;
*) echo "usage: sh bench/run.sh smoke|quick|full" >&2; exit 2 ;;
esac
b="${POPBOX_BUILD:-build}"
[ -x "$b/bench/pop3load" ] && [ -x "$b/popboxd" ] || make BUILD="$b" all >&2
python3 bench/bench.py "$mode"
# mail in: LMTP and the delivery agents, popboxd beside Dovecot (issue 12)
python3 bench/mailin.py "$mode"
# issue 11: what per-device views cost (a classic and a device session on
# one big maildrop)
POPBOX_BUILD="$b" python3 bench/devices.py "$mode"
# issue 5: a fresh client stays fast with 1000 slowloris connections open
if [ "$mode" != smoke ]; then
	python3 bench/slowloris.py --build "$b"
fi
