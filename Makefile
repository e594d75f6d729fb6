# popbox: GNU make + pkg-config, no autotools.
# Layout: src/common -> libpopbox_common.a, src/server -> popboxd, src/client -> popbox
# (popbox links the server archive too, for the subcommands that work on the store).
# Every src/<part>/*.c except main.c goes into that part's archive, so new files
# need no Makefile change; unit tests tests/unit/test_*.c link against all archives.

PREFIX  ?= /usr/local
DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
BINDIR  ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
# systemd units (contrib/systemd): system units and user units
SYSTEMD_UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSTEMD_USERUNITDIR ?= $(PREFIX)/lib/systemd/user
BUILD   ?= build
CC      ?= cc
PYTHON  ?= /usr/bin/python3

PKGS    := libevent libevent_openssl openssl libgsasl pam libsystemd libcurl jansson libmicrohttpd
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN    := -Wall -Wextra -Wformat=2 -Wshadow -Wpointer-arith -Wstrict-prototypes \
           -Wmissing-prototypes -Wno-unused-parameter -Wvla
ifeq ($(CI),true)
WERROR  ?= -Werror
endif
HARDEN  := -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE
OPT     ?= -O2 -g
SAN     ?=

CFLAGS  ?=
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(WERROR) $(HARDEN) $(SAN) \
           -Isrc $(PKG_CFLAGS)
LDFLAGS += -pie -Wl,-z,relro,-z,now $(SAN)
LDLIBS  += $(PKG_LIBS) -lcrypt -lpthread

COMMON_SRC := $(sort $(wildcard src/common/*.c))
SERVER_SRC := $(sort $(filter-out src/server/main.c,$(wildcard src/server/*.c)))
CLIENT_SRC := $(sort $(filter-out src/client/main.c,$(wildcard src/client/*.c)))
UNIT_SRC   := $(sort $(wildcard tests/unit/test_*.c))
BENCH_SRC  := $(sort $(wildcard bench/*.c))

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))

COMMON_LIB := $(BUILD)/libpopbox_common.a
SERVER_LIB := $(BUILD)/libpopbox_server.a
CLIENT_LIB := $(BUILD)/libpopbox_client.a
UNIT_BINS  := $(patsubst tests/unit/%.c,$(BUILD)/tests/unit/%,$(UNIT_SRC))
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

.PHONY: all check check-basic valgrind fuzz-ci unit integration demo sanitize install clean bench bench-full units \
	deb check-package
all: $(BUILD)/popboxd $(BUILD)/popbox $(BENCH_BINS) units

# systemd units with this build's paths: contrib/systemd/*.in get @SBINDIR@,
# @BINDIR@ and @SYSCONFDIR@ replaced; the rest are copied. Into
# $(BUILD)/systemd/{system,user} (popbox-fetch@* are user units), written
# anew every time. make install writes them straight into DESTDIR with its
# own paths (never through the build directory, which another make with
# other paths may be writing at the same moment).
UNIT_SED := sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g'
# $(call write_units,SYSTEM_DIR,USER_DIR): every unit with the paths of this
# invocation, written to a temporary name and renamed.
define write_units
	@mkdir -p $(1) $(2)
	@for f in contrib/systemd/*; do \
	    b=$${f##*/}; b=$${b%.in}; \
	    case $$b in popbox-fetch@*) d=$(2);; *) d=$(1);; esac; \
	    $(UNIT_SED) $$f > $$d/$$b.tmp && chmod 0644 $$d/$$b.tmp && mv $$d/$$b.tmp $$d/$$b || exit 1; \
	done
endef
units:
	$(call write_units,$(BUILD)/systemd/system,$(BUILD)/systemd/user)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(COMMON_LIB): $(call obj,$(COMMON_SRC))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
$(SERVER_LIB): $(call obj,$(SERVER_SRC))
	rm -f $@ && ar rcs $@ $^
$(CLIENT_LIB): $(call obj,$(CLIENT_SRC))
	rm -f $@ && ar rcs $@ $^

$(BUILD)/popboxd: $(BUILD)/src/server/main.o $(SERVER_LIB) $(COMMON_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/popbox: $(BUILD)/src/client/main.o $(CLIENT_LIB) $(SERVER_LIB) $(COMMON_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/bench/%: $(BUILD)/bench/%.o $(COMMON_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/tests/unit/%: $(BUILD)/tests/unit/%.o $(SERVER_LIB) $(CLIENT_LIB) $(COMMON_LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# make check: cmocka unit tests, pytest integration tests against the
# binaries in $(BUILD) and the fuzz corpus replay; then the same again in an
# ASan+UBSan build (sanitize), and the server suites with every popboxd
# process under valgrind memcheck (valgrind). Each runner prints its summary.
check: check-basic sanitize valgrind fuzz-ci check-package

check-basic: unit integration fuzz-replay

# The integration suites run in PYTEST_JOBS processes at once (pytest-xdist;
# most of a test's time is spent waiting on servers, penalties and timeouts,
# not on the CPU); PYTEST_JOBS=1 runs them in one process.
# The valgrind suites are bound by the CPU: VALGRIND_JOBS processes.
PYTEST_JOBS ?= 4
VALGRIND_JOBS ?= 2
xdist = $(if $(filter-out 1,$(1)),-n $(1))

# Integration suites whose servers run under valgrind; a memcheck error in
# any popboxd process fails the test that started it.
VALGRIND_SUITES ?= tests/integration/test_server_protocol.py \
	tests/integration/test_server_maildrop.py tests/integration/test_server_sasl.py \
	tests/integration/test_server_proxy.py
# Every fuzz target for a bounded time (libFuzzer, clang); make fuzz and
# fuzz-long fuzz longer.
fuzz-ci:
	$(MAKE) fuzz FUZZ_SECONDS=$(or $(FUZZ_CI_SECONDS),15)

valgrind: all
	POPBOX_VALGRIND=1 POPBOX_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q $(call xdist,$(VALGRIND_JOBS)) $(VALGRIND_SUITES)

unit: all $(UNIT_BINS)
	@fail=0; for t in $(UNIT_BINS); do echo "== $$t"; $$t || fail=1; done; exit $$fail

integration: all
	POPBOX_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q -rs $(call xdist,$(PYTEST_JOBS)) --durations=10 tests/integration $(PYTEST_ARGS)

# ASan + UBSan build of everything, running the whole test suite.
sanitize:
	$(MAKE) BUILD=build-san OPT="-O1 -g -fno-omit-frame-pointer" \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" unit integration

demo:
	sh tools/demo.sh

bench: all
	sh bench/run.sh quick
bench-full: all
	sh bench/run.sh full

install: $(BUILD)/popboxd $(BUILD)/popbox
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) \
	    $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5 \
	    $(DESTDIR)$(PREFIX)/share/man/man8 \
	    $(DESTDIR)$(SYSTEMD_UNITDIR) $(DESTDIR)$(SYSTEMD_USERUNITDIR)
	install -m 0755 $(BUILD)/popboxd $(DESTDIR)$(SBINDIR)/popboxd
	install -m 0755 $(BUILD)/popbox $(DESTDIR)$(BINDIR)/popbox
	$(call write_units,$(DESTDIR)$(SYSTEMD_UNITDIR),$(DESTDIR)$(SYSTEMD_USERUNITDIR))
	for m in docs/*.[158]; do [ -f "$$m" ] || continue; \
	    s=$${m##*.}; install -m 0644 $$m $(DESTDIR)$(PREFIX)/share/man/man$$s/; done
	@# The PAM service of users = pam; an admin's own copy is kept.
	install -d $(DESTDIR)/etc/pam.d
	@if [ -e $(DESTDIR)/etc/pam.d/popbox ]; then \
	    echo "make install: keeping $(DESTDIR)/etc/pam.d/popbox"; \
	else \
	    install -m 0644 contrib/pam.d/popbox $(DESTDIR)/etc/pam.d/popbox; \
	fi
	@# The users popboxd runs as when started as root (run_as, auth_user:
	@# popboxd.conf(5)); only for a real install by root, never in a DESTDIR.
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" -eq 0 ] && command -v useradd >/dev/null 2>&1; then \
	    for u in popbox popbox-auth; do \
	        if ! getent passwd $$u >/dev/null; then \
	            echo "useradd --system $$u"; \
	            useradd --system --user-group --no-create-home --home-dir /nonexistent \
	                --shell /usr/sbin/nologin $$u || exit 1; \
	        fi; \
	    done; \
	else \
	    echo "make install: not creating the users popbox and popbox-auth (DESTDIR set," \
	        "not root or no useradd): create them before starting popboxd as root"; \
	fi

# The Debian package (debian/): the files a build needs are copied to
# $(BUILD)/deb/popbox, where dpkg-buildpackage builds in obj-deb/ and leaves
# popbox_*.deb in $(BUILD)/deb. Nothing is written outside $(BUILD).
DEB_DIR := $(BUILD)/deb
DEB_FILES := Makefile mk src contrib docs debian README.md SECURITY.md
deb:
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/popbox
	cp -a $(DEB_FILES) $(DEB_DIR)/popbox/
	cd $(DEB_DIR)/popbox && DEB_BUILD_OPTIONS="nocheck parallel=$$(nproc)" \
	    dpkg-buildpackage -us -uc -b
	ls -l $(DEB_DIR)/*.deb

# Build the package, run lintian on it, and install, reinstall, remove and
# purge it on this machine (root only: it installs into the system), with
# the installed popboxd serving a POP3 session (tests/package).
check-package: deb
	POPBOX_DEB_DIR=$(abspath $(DEB_DIR)) $(PYTHON) -m pytest -q -rs tests/package

clean:
	rm -rf build build-san build-fuzz

include mk/fuzz.mk

# (the package build's tree in $(BUILD)/deb has its own, and a contrib/pam.d)
-include $(shell find $(BUILD) -path $(BUILD)/deb -prune -o -name '*.d' -type f -print 2>/dev/null)
