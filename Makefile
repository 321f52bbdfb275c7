# evq - the two commands a newcomer needs are `make demo` and `make check`.
#
#   make demo      install missing packages, build, run the seed's example
#   make check     install missing packages, build and run every test twice
#                  (gcc; clang with AddressSanitizer + UBSan), the threaded
#                  tests a third time under ThreadSanitizer, then an install
#   make bench     each backend's figures beside its baselines
#   make format    apply .clang-format to the sources
#   make install   install into PREFIX (default /usr/local), honouring DESTDIR

PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BUILD := build
ASAN_BUILD := build-asan
TSAN_BUILD := build-tsan
CTEST_FLAGS := --output-on-failure --timeout 600 -j $(JOBS)

.PHONY: bench all deps build demo check check-normal check-asan check-tsan check-install \
        format install clean

all: build

deps:
	@scripts/deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEVQ_BUILD_TESTS=ON >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	./$(BUILD)/evq demo

check: deps check-normal check-asan check-tsan check-install
	@echo "make check: all tests passed (gcc; clang ASan+UBSan; TSan; install)"

check-normal: build
	cd $(BUILD) && ctest $(CTEST_FLAGS)

check-asan: deps
	CC=clang cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug \
	  -DEVQ_SANITIZE=address,undefined >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest $(CTEST_FLAGS)

check-tsan: deps
	CC=clang cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=Debug \
	  -DEVQ_SANITIZE=thread >/dev/null
	cmake --build $(TSAN_BUILD) -j $(JOBS)
	cd $(TSAN_BUILD) && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	  ctest $(CTEST_FLAGS) -L tsan

# Installs into a staging folder and builds a program against the result
# with pkg-config and with CMake's find_package.
check-install: build
	tests/install/check.sh $(BUILD)

# Throughput, latency and memory of memory://, beside the mutex ring baseline.
bench: build
	bench/run.sh $(BUILD)
	bench/redis.sh $(BUILD)
	bench/nats.sh $(BUILD)
	bench/kafka.sh $(BUILD)

format:
	clang-format -i include/*.h src/*.c src/*.h src/backends/*.c \
	  tests/*.c tests/*.h examples/*.c

install: build
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) build-*
