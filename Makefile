# hh front door. `make` builds, `make test` runs the test suite, `make demo` runs the
# whole pipeline. The real build is CMake (CMakeLists.txt); this file only drives it.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
PYTHON ?= /usr/bin/python3

.PHONY: all build test test-asan mutants bench demo demo-mini fixtures format clean

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

# Mutation check: each deliberate defect of tests/mutants.txt, alone, must fail a test
# (a scratch copy in build-mutants/; about 20 s a mutant on 2 cores).
mutants:
	$(PYTHON) scripts/mutation_check.py --jobs $(JOBS)

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
	rm -rf $(BUILD) build-asan
