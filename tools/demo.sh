#!/bin/sh
# make demo: build popboxd and run it in the foreground on 127.0.0.1:1110 with a
# demo user alice/secret whose Maildir holds three messages. Idempotent: run it
# again at any time (the three demo messages are put back). Ctrl-C stops it.
#
# Environment: DEMO_DIR (default ./demo), DEMO_PORT (default 1110),
# BUILD (build directory, default build); for the test of this script:
# DEMO_SKIP_PACKAGES=1 and DEMO_SKIP_BUILD=1.
set -eu

cd "$(dirname "$0")/.."
TOP=$(pwd)
PORT=${DEMO_PORT:-1110}
DEMO=${DEMO_DIR:-$TOP/demo}
BUILD=${BUILD:-build}
POPBOXD=$BUILD/popboxd

# What building and trying the server needs on Debian 12 (the tests need
# more: tools/debian-packages.txt).
PACKAGES="build-essential pkg-config libevent-dev libssl-dev libgsasl-dev libcrypt-dev curl python3"

say() { printf '%s\n' "$*"; }

# ---------------------------------------------------------------- packages
missing=""
if [ -z "${DEMO_SKIP_PACKAGES:-}" ] && command -v dpkg-query >/dev/null 2>&1; then
	for p in $PACKAGES; do
		status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
		case "$status" in
		*" installed") ;;
		*) missing="$missing $p" ;;
		esac
	done
fi
if [ -n "$missing" ]; then
	if [ "$(id -u)" -eq 0 ]; then
		say "demo: installing missing Debian packages:$missing"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		# shellcheck disable=SC2086
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
	else
		say "demo: these Debian packages are missing:$missing"
		say "demo: install them with:"
		say ""
		say "    sudo apt-get install -y$missing"
		say ""
		exit 1
	fi
fi

# ---------------------------------------------------------------- build
if [ -z "${DEMO_SKIP_BUILD:-}" ]; then
	make -s BUILD="$BUILD" all
fi

# ---------------------------------------------------------------- demo tree
if [ "$(id -u)" -eq 0 ]; then
	RUN_AS=nobody
	GROUP=$(id -gn nobody 2>/dev/null || echo nogroup)
	# the auth process needs a user of its own (auth_user, popboxd.conf(5)):
	# popbox-auth when `make install` made it, else the system user daemon
	if id popbox-auth >/dev/null 2>&1; then AUTH_USER=popbox-auth; else AUTH_USER=daemon; fi
else
	RUN_AS=$(id -un)
	GROUP=$(id -gn)
	AUTH_USER=$RUN_AS
fi

mkdir -p "$DEMO"
chmod 0755 "$DEMO"
DEMO=$(cd "$DEMO" && pwd)

if [ "$(id -u)" -eq 0 ] && command -v runuser >/dev/null 2>&1 &&
    ! runuser -u nobody -- test -x "$DEMO" 2>/dev/null; then
	# e.g. the repository is under /root (mode 0700): nobody cannot reach it.
	say "demo: user nobody cannot reach $DEMO; using /var/tmp/popbox-demo instead"
	DEMO=/var/tmp/popbox-demo
	mkdir -p "$DEMO"
	chmod 0755 "$DEMO"
fi

PIDFILE="$DEMO/state/popboxd.pid"
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
	say "demo: popboxd is already running (pid $(cat "$PIDFILE")); stop it first with:"
	say "    kill $(cat "$PIDFILE")"
	exit 1
fi

cat > "$DEMO/popboxd.conf" <<EOF
# popboxd demo configuration (tools/demo.sh); see popboxd.conf(5).
# Relative paths are relative to this file's directory.
listen = 127.0.0.1:$PORT
users = users
mail = maildir:mail/%u
state_dir = state
run_as = $RUN_AS
auth_user = $AUTH_USER
workers = 2
EOF

# users file in Dovecot passwd-file format; make real entries with `popbox hash`
umask 077
printf '%s\n' '# demo users: user:{SCHEME}secret (see popboxd.conf(5))' 'alice:{PLAIN}secret' > "$DEMO/users"
umask 022

MD="$DEMO/mail/alice"
mkdir -p "$MD/cur" "$MD/new" "$MD/tmp" "$DEMO/state"

deliver() { # name, then the message on stdin: written to tmp/, renamed into new/
	if [ ! -f "$MD/new/$1" ] && ! ls "$MD/cur/$1:"* >/dev/null 2>&1; then
		cat > "$MD/tmp/$1"
		mv "$MD/tmp/$1" "$MD/new/$1"
	else
		cat > /dev/null
	fi
}
deliver 1700000001.M1P1.demo <<'EOF'
From: Popbox Demo <demo@example.org>
To: alice@example.org
Subject: Welcome to popbox
Date: Tue, 14 Nov 2023 22:13:21 +0000
Message-ID: <demo-1@popbox.example.org>

Hello Alice,

this message was served by popboxd from a Maildir.
Try RETR, TOP, UIDL and DELE; QUIT makes deletions final.
EOF
deliver 1700000002.M2P1.demo <<'EOF'
From: Bob <bob@example.org>
To: alice@example.org
Subject: Lines that start with a dot
Date: Tue, 14 Nov 2023 22:13:22 +0000
Message-ID: <demo-2@popbox.example.org>

The next line is a single dot; POP3 sends it as "..":
.
..and this one starts with two.
EOF
deliver 1700000003.M3P1.demo <<'EOF'
From: Carol <carol@example.org>
To: alice@example.org
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=
Date: Tue, 14 Nov 2023 22:13:23 +0000
Message-ID: <demo-3@popbox.example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: 8bit

Grüße aus dem Maildir.
EOF

if [ "$(id -u)" -eq 0 ]; then
	chown -R "$RUN_AS:$GROUP" "$DEMO/mail" "$DEMO/state"
	# the users file stays root's: popboxd opens it for the auth process
	chown root:root "$DEMO/users"
fi
chmod 0600 "$DEMO/users"

"$POPBOXD" -t -c "$DEMO/popboxd.conf" >/dev/null

cat <<EOF

popboxd demo: user alice, password secret, 3 messages in $MD
listening on 127.0.0.1:$PORT; logs below; Ctrl-C stops the server.

Read the mail from another terminal:

    curl pop3://alice:secret@127.0.0.1:$PORT/        # list the messages
    curl pop3://alice:secret@127.0.0.1:$PORT/1       # message 1

    python3 -c 'import poplib; p = poplib.POP3("127.0.0.1", $PORT); p.user("alice"); p.pass_("secret"); print(p.stat()); print(b"\n".join(p.retr(1)[1]).decode()); p.quit()'

Run \`make demo\` again to get the three messages back after deleting them.

EOF

# popboxd runs as a background job so that this script can turn Ctrl-C into
# SIGTERM (a clean stop that never deletes mail) and wait for it to finish.
"$POPBOXD" -f -c "$DEMO/popboxd.conf" &
pid=$!
stop() {
	trap '' INT TERM
	kill -TERM "$pid" 2>/dev/null || true
}
trap stop INT TERM HUP
status=0
wait "$pid" || status=$?
# wait returns early when a trapped signal arrives: wait for the real end
while kill -0 "$pid" 2>/dev/null; do
	wait "$pid" || status=$?
done
say "demo: popboxd stopped"
exit 0
