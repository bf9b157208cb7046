# hh front door. `make` builds, `make test` runs the test suite, `make demo` runs the
# whole pipeline. The real build is CMake (CMakeLists.txt); this file only drives it.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
PYTHON ?= /usr/bin/python3

.PHONY: all build test test-asan coverage mutants fuzz bench demo demo-mini fixtures format clean

all: build

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# CPU tests under AddressSanitizer + UndefinedBehaviorSanitizer (CUDA off).
test-asan:
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHH_SANITIZE=ON
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  HH_TEST_FAST=1 ctest --output-on-failure -j $(JOBS)

# Line coverage of src/ by the CPU tests (gcc --coverage, CUDA off; needs lcov): a table
# per file, and HTML in build-cov/html. Lines no test runs are where to look for a missing
# test (docs/decisions.md, "Coverage").
coverage:
	@command -v lcov >/dev/null || { echo "make coverage needs lcov: apt-get install lcov" >&2; exit 1; }
	cmake -S . -B build-cov -DCMAKE_BUILD_TYPE=Debug -DHH_CUDA=OFF \
	  -DCMAKE_CXX_FLAGS="-O1 --coverage" -DCMAKE_EXE_LINKER_FLAGS="--coverage"
	cmake --build build-cov -j $(JOBS)
	lcov --zerocounters --directory build-cov -q
	cd build-cov && ctest --output-on-failure -j $(JOBS)
	lcov --capture --directory build-cov --output-file build-cov/all.info -q
	lcov --extract build-cov/all.info '$(CURDIR)/src/*' --output-file build-cov/src.info -q
	lcov --list build-cov/src.info
	genhtml -q build-cov/src.info --output-directory build-cov/html

# Mutation check: each deliberate defect of tests/mutants.txt, alone, must fail a test
# (a scratch copy in build-mutants/; about 20 s a mutant on 2 cores).
mutants:
	$(PYTHON) scripts/mutation_check.py --jobs $(JOBS)

# Coverage-guided fuzzing of every reader of outside input (fuzz/, docs/fuzzing.md): clang's
# libFuzzer with ASan + UBSan, FUZZ_SECONDS per target (FUZZ_TARGETS to choose). The corpus
# grows in build-fuzz/corpus/; a failing input is saved in build-fuzz/ and named.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(patsubst fuzz/fuzz_%.cpp,%,$(filter-out fuzz/fuzz_common.cpp,$(wildcard fuzz/fuzz_*.cpp)))
fuzz:
	@command -v clang++ >/dev/null || { echo "make fuzz needs clang and its fuzzer runtime:" \
	  "apt-get install clang libclang-rt-14-dev" >&2; exit 1; }
	CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHH_FUZZ=ON \
	  -DBUILD_TESTING=OFF
	cmake --build build-fuzz -j $(JOBS) --target $(addprefix fuzz_,$(FUZZ_TARGETS))
	bash scripts/fuzz.sh build-fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

bench: build
	$(BUILD)/hh-bench train --device cpu --layers 4 --heads 4 --width 256 --vocab 8192 --batch 8 --seq 256

demo: build
	bash scripts/demo.sh

demo-mini: build
	HH_DEMO_SIZE=mini bash scripts/demo.sh

# Regenerate the PyTorch reference fixtures in tests/fixtures (needs python3-torch).
fixtures:
	for s in scripts/reference/*_reference.py; do $(PYTHON) $$s tests/fixtures || exit 1; done

format:
	clang-format -i $$(git ls-files '*.h' '*.cpp' '*.cu' '*.cuh')

clean:
	rm -rf $(BUILD) build-asan build-fuzz build-cov
