# evq - the two commands a newcomer needs are `make demo` and `make check`.
#
#   make demo      install missing packages, build, run the seed's example
#   make check     install missing packages, build and run every test twice
#                  (gcc; clang with AddressSanitizer + UBSan; the slowest
#                  fault tests where they suffice: NORMAL_SKIP, TSAN_SKIP),
#                  the unit tests under valgrind, every test again under
#                  TSan, each fuzzer for 16 s, then an install
#   make fuzz      run each libFuzzer target for FUZZ_SECONDS (default 60;
#                  make check runs each for 16)
#   make soak      every backend for SOAK_SECONDS each (default 360; or
#                  SOAK_EVENTS events): random failures and delays, RSS
#   make bench     each backend's figures beside its baselines, BENCH_RUNS
#                  times (default 3): bench/results.md and results.png
#   make format    apply .clang-format to the sources
#   make install   install into PREFIX (default /usr/local), honouring DESTDIR

PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BUILD := build
ASAN_BUILD := build-asan
TSAN_BUILD := build-tsan
FUZZ_BUILD := build-fuzz
FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 360
BENCH_RUNS ?= 3
SOAK_EVENTS ?= 100000000
CTEST_FLAGS := --output-on-failure --timeout 600 -j $(JOBS)
# The slowest fault tests run where they suffice, to keep make check
# under 45 minutes on two cores: test_kafka (brokers stopped and
# restarted, consumers killed: four minutes, mostly the client's
# reconnect timers) in the ASan+UBSan phase only, where its fault paths
# get the memory checks, beside conformance_kafka in every phase; the
# tool under signals, pipes and outages on every backend (tool_servers)
# in the gcc and ASan+UBSan phases, and under TSan the tool test covers
# the tool's threads.
NORMAL_SKIP := ^test_kafka$$
TSAN_SKIP := ^(tool_servers|test_kafka)$$
# make's builds have every backend (cmake/backends.cmake): a missing client
# library is an error here, not a backend quietly left out.
WITH_ALL := -DEVQ_WITH_SQLITE=ON -DEVQ_WITH_REDIS=ON -DEVQ_WITH_NATS=ON \
            -DEVQ_WITH_KAFKA=ON -DEVQ_WITH_POSTGRES=ON -DEVQ_WITH_AMQP=ON \
            -DEVQ_WITH_SERVE=ON

.PHONY: bench all deps build demo check check-normal check-asan check-tsan check-install \
        check-fuzz check-valgrind check-man check-abi check-deb deb fuzz soak format install \
        clean

all: build

deps:
	@scripts/deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEVQ_BUILD_TESTS=ON \
	  $(WITH_ALL) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	./$(BUILD)/evq demo

check: deps check-man check-normal check-abi check-valgrind check-asan check-tsan check-fuzz check-install check-deb
	@echo "make check: all tests passed (gcc; ABI; valgrind; clang ASan+UBSan; TSan; fuzzers; install)"

# Debian packages (cmake/package.cmake): libevq0, libevq-dev, evq-tools
# in build-deb/, built for /usr with every backend.
DEB_BUILD := build-deb
deb: deps
	cmake -S . -B $(DEB_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_INSTALL_PREFIX=/usr -DEVQ_BUILD_TESTS=OFF $(WITH_ALL) >/dev/null
	cmake --build $(DEB_BUILD) -j $(JOBS) --target evq evq_static evq_tool evq_man
	cd $(DEB_BUILD) && cpack -G DEB >/dev/null
	@ls $(DEB_BUILD)/*.deb

# The packages unpacked in a scratch root: their files and dependencies,
# the README's program built and run against them, the manual and the
# completion where they belong.
check-deb: deb
	tests/install/deb.sh $(DEB_BUILD)

# The manual: mandoc finds no warning, and every function of the header
# has a page (its name in a page's NAME).
check-man: build
	mandoc -T lint -W warning man/*.1 man/*.3 $(BUILD)/man/*.7
	@missing=$$(grep -o 'EVQ_API[^(]*\bevq_[a-z0-9_]*(' include/evq.h | \
	  sed 's/.*[^a-z0-9_]\(evq_[a-z0-9_]*\)($$/\1/' | while read -r fn; do \
	    grep -q "^\.Nm $$fn\( ,\)\?$$" man/*.3 || echo "$$fn"; done); \
	if [ -n "$$missing" ]; then \
	  echo "check-man: no man page names: $$missing" >&2; exit 1; fi
	@echo "check-man: the pages are clean and name every function"

# The library's ABI against abi/libevq.so.0.abi (scripts/abi.sh, abidiff).
check-abi: build
	scripts/abi.sh check $(BUILD)/libevq.so

# tool_schedule sleeps through three minute boundaries: it runs beside
# the others rather than holding one of their places.
check-normal: build
	cd $(BUILD) && { \
	  ctest $(CTEST_FLAGS) -R '^tool_schedule$$' >tool_schedule.log 2>&1 & \
	  sched=$$!; ctest $(CTEST_FLAGS) -E '^tool_schedule$$|$(NORMAL_SKIP)'; \
	  rc=$$?; \
	  wait $$sched; src=$$?; cat tool_schedule.log; \
	  [ $$rc -eq 0 ] && [ $$src -eq 0 ]; }

check-asan: deps
	CC=clang CXX=clang++ cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug \
	  -DEVQ_SANITIZE=address,undefined $(WITH_ALL) >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest $(CTEST_FLAGS)

check-tsan: deps
	CC=clang CXX=clang++ cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=Debug \
	  -DEVQ_SANITIZE=thread $(WITH_ALL) >/dev/null
	cmake --build $(TSAN_BUILD) -j $(JOBS)
	cd $(TSAN_BUILD) && \
	  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$(CURDIR)/tests/tsan.supp \
	  ctest $(CTEST_FLAGS) -E '$(TSAN_SKIP)'

fuzz: deps
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug \
	  -DEVQ_SANITIZE=address,undefined -DEVQ_FUZZ=ON -DEVQ_BUILD_TESTS=OFF \
	  $(WITH_ALL) >/dev/null
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_json fuzz_msgpack \
	  fuzz_url fuzz_ce_binary fuzz_cron
	scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

check-fuzz:
	$(MAKE) fuzz FUZZ_SECONDS=16

# memcheck over the unit tests of the gcc build: no error, no leak.
check-valgrind: build
	scripts/valgrind.sh $(BUILD)

soak: build
	scripts/soak.sh $(BUILD) $(SOAK_SECONDS) $(SOAK_EVENTS)

# Installs into a staging folder and builds a program against the result
# with pkg-config and with CMake's find_package; then builds evq with only
# memory:// and sqlite:// and checks what the others say.
check-install: build
	tests/install/check.sh $(BUILD)
	tests/install/minimal.sh

# Every backend's figures beside its baselines: bench/results.md, .png.
bench: build
	@scripts/deps.sh bench
	bench/all.sh $(BUILD) $(BENCH_RUNS)

format:
	clang-format -i include/*.h src/*.c src/*.h src/backends/*.c \
	  tests/*.c tests/*.h tests/fuzz/*.c examples/*.c tools/*.c tools/*.h

install: build
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) build-*
