# Fuzzing (reliability §4.9, tests/fuzz/README.md). Included from the
# Makefile after its variables:   include mk/fuzz.mk
#
#   make fuzz          build every harness with clang libFuzzer + ASan + UBSan
#                      into $(FUZZ_BUILD)/, replay the corpora, then fuzz each
#                      target for FUZZ_SECONDS (default 60); new inputs go to
#                      $(FUZZ_BUILD)/corpus/<target>, crashes to
#                      $(FUZZ_BUILD)/artifacts/
#   make fuzz-long     the same with FUZZ_SECONDS=3600 (override as you like)
#   make fuzz-replay   build the harnesses with $(CC) + ASan + UBSan and a plain
#                      main() (no libFuzzer runtime needed) and run each over its
#                      seed corpus and tests/fuzz/regressions/<target>*: fast,
#                      part of `make check`
#
# Targets are the tests/fuzz/fuzz_<name>.c files; each has a seed corpus
# tests/fuzz/corpus/<name>/ and a dictionary tests/fuzz/<name>.dict.

FUZZ_BUILD    ?= build-fuzz
FUZZ_SECONDS  ?= 60
FUZZ_CLANG    ?= clang
FUZZ_TARGETS  := $(sort $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c)))
# The session harness writes a Maildir per input and is slower; bigger inputs
# let it reach the SASL line limit (12 KiB).
FUZZ_MAXLEN_session ?= 20000
FUZZ_MAXLEN_default ?= 4096

# the same libraries as the programs (log.c, metrics_http.c, auth_pam.c
# need libsystemd, libmicrohttpd and PAM)
FUZZ_PKGS     := $(PKGS)
FUZZ_PKG_CFLAGS := $(shell pkg-config --cflags $(FUZZ_PKGS) 2>/dev/null)
FUZZ_PKG_LIBS   := $(shell pkg-config --libs $(FUZZ_PKGS) 2>/dev/null)
FUZZ_LIB_SRC  := $(sort $(wildcard src/common/*.c) $(filter-out src/server/main.c,$(wildcard src/server/*.c)))
FUZZ_SAN      := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Isrc -Itests/fuzz \
                 $(FUZZ_PKG_CFLAGS)
FUZZ_LDLIBS   := $(FUZZ_PKG_LIBS) -lcrypt -lpthread

# libFuzzer flavour: clang, coverage on everything, fuzzer runtime at link.
FUZZ_LF       := $(FUZZ_BUILD)/libfuzzer
FUZZ_LF_CFLAGS := $(FUZZ_BASE_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link
FUZZ_LF_LIB   := $(FUZZ_LF)/libpopbox_fuzz.a
FUZZ_LF_BINS  := $(addprefix $(FUZZ_LF)/fuzz_,$(FUZZ_TARGETS))

# Replay flavour: the ordinary compiler, sanitizers, replay_main.c as main().
FUZZ_RP       := $(FUZZ_BUILD)/replay
FUZZ_RP_CC    ?= $(CC)
FUZZ_RP_CFLAGS := $(FUZZ_BASE_CFLAGS) $(FUZZ_SAN)
FUZZ_RP_LIB   := $(FUZZ_RP)/libpopbox_fuzz.a
FUZZ_RP_BINS  := $(addprefix $(FUZZ_RP)/fuzz_,$(FUZZ_TARGETS))

# Keep the harness objects (make would delete them as intermediate).
.SECONDARY: $(patsubst %,$(FUZZ_LF)/obj/tests/fuzz/fuzz_%.o,$(FUZZ_TARGETS)) \
            $(patsubst %,$(FUZZ_RP)/obj/tests/fuzz/fuzz_%.o,$(FUZZ_TARGETS))

.PHONY: fuzz fuzz-long fuzz-build fuzz-replay fuzz-replay-build

$(FUZZ_LF)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CLANG) $(FUZZ_LF_CFLAGS) -MMD -MP -c -o $@ $<
$(FUZZ_LF_LIB): $(patsubst %.c,$(FUZZ_LF)/obj/%.o,$(FUZZ_LIB_SRC))
	rm -f $@ && ar rcs $@ $^
$(FUZZ_LF)/fuzz_%: $(FUZZ_LF)/obj/tests/fuzz/fuzz_%.o $(FUZZ_LF_LIB)
	$(FUZZ_CLANG) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(FUZZ_LDLIBS)

$(FUZZ_RP)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_RP_CC) $(FUZZ_RP_CFLAGS) -MMD -MP -c -o $@ $<
$(FUZZ_RP_LIB): $(patsubst %.c,$(FUZZ_RP)/obj/%.o,$(FUZZ_LIB_SRC))
	rm -f $@ && ar rcs $@ $^
$(FUZZ_RP)/fuzz_%: $(FUZZ_RP)/obj/tests/fuzz/fuzz_%.o $(FUZZ_RP)/obj/tests/fuzz/replay_main.o $(FUZZ_RP_LIB)
	$(FUZZ_RP_CC) $(FUZZ_SAN) -o $@ $^ $(FUZZ_LDLIBS)

fuzz-build: $(FUZZ_LF_BINS)
fuzz-replay-build: $(FUZZ_RP_BINS)

# Regression inputs are named <target>-<what>; a missing glob is fine.
fuzz-replay: fuzz-replay-build
	@fail=0; for t in $(FUZZ_TARGETS); do \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=detect_leaks=1 \
	    $(FUZZ_RP)/fuzz_$$t tests/fuzz/corpus/$$t \
	        $$(ls -d tests/fuzz/regressions/$$t-* 2>/dev/null) || fail=1; \
	done; exit $$fail

fuzz: fuzz-build
	@mkdir -p $(FUZZ_BUILD)/artifacts
	@fail=0; for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(FUZZ_BUILD)/corpus/$$t; \
	    len=$(FUZZ_MAXLEN_default); [ $$t = session ] && len=$(FUZZ_MAXLEN_session); \
	    dict=; [ -f tests/fuzz/$$t.dict ] && dict=-dict=tests/fuzz/$$t.dict; \
	    echo "== fuzz_$$t: replay"; \
	    regs=$$(ls -d tests/fuzz/regressions/$$t-* 2>/dev/null); \
	    { $(FUZZ_LF)/fuzz_$$t -runs=0 tests/fuzz/corpus/$$t && \
	      { [ -z "$$regs" ] || $(FUZZ_LF)/fuzz_$$t $$regs; }; } >$(FUZZ_BUILD)/fuzz_$$t.replay.log 2>&1 \
	        || { fail=1; tail -30 $(FUZZ_BUILD)/fuzz_$$t.replay.log; continue; }; \
	    echo "== fuzz_$$t: $(FUZZ_SECONDS) s"; \
	    $(FUZZ_LF)/fuzz_$$t $(FUZZ_BUILD)/corpus/$$t tests/fuzz/corpus/$$t $$dict \
	        -max_len=$$len -max_total_time=$(FUZZ_SECONDS) \
	        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
	        -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t- >$(FUZZ_BUILD)/fuzz_$$t.log 2>&1 \
	        || { fail=1; echo "fuzz_$$t FAILED, see $(FUZZ_BUILD)/fuzz_$$t.log"; tail -40 $(FUZZ_BUILD)/fuzz_$$t.log; }; \
	    grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' $(FUZZ_BUILD)/fuzz_$$t.log | tail -2; \
	done; exit $$fail

fuzz-long:
	$(MAKE) fuzz FUZZ_SECONDS=$(or $(FUZZ_LONG_SECONDS),3600)

-include $(shell find $(FUZZ_BUILD) -name '*.d' 2>/dev/null)
