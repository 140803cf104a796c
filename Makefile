# es-logging-plugin: build, package and test the Docker managed logging plugin.
# `make help` lists the targets. Every docker command talks to the engine DOCKER_HOST names
# (or the docker CLI's default), e.g. `make install DOCKER_HOST=unix:///tmp/d/docker.sock`.

# The plugin's name in the engine. `es-logging-plugin:latest` is what
# `docker run --log-driver es-logging-plugin` resolves to.
PLUGIN ?= es-logging-plugin:latest
# Host folder mounted as the plugin's state dir by `make install` (config.json's default).
STATE_SOURCE ?= /var/lib/es-logging-plugin
CARGO ?= cargo
DOCKER ?= docker
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
# The plugin folder `docker plugin create` takes: config.json beside rootfs/.
PLUGIN_DIR ?= $(TARGET_DIR)/plugin

BIN := $(TARGET_DIR)/release/es-logging-plugin
ROOTFS := $(PLUGIN_DIR)/rootfs
CA_BUNDLE := /etc/ssl/certs/ca-certificates.crt

# The engine's socket on the host, mounted into the plugin for the events collector.
DOCKER_SOCKET ?= $(if $(filter unix://%,$(DOCKER_HOST)),$(patsubst unix://%,%,$(DOCKER_HOST)),/var/run/docker.sock)

ifdef DOCKER_HOST
export DOCKER_HOST
endif

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.PHONY: help build rootfs plugin install push quick test e2e e2e-hardening e2e-trixie check soak fuzz-build fuzz

help: ## List the targets and the variables they take
	@echo 'Targets:'
	@awk 'BEGIN { FS = ":.*## " } /^[a-z0-9-]+:.*## / { printf "  %-13s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo 'Variables (current value):'
	@echo '  PLUGIN=$(PLUGIN)  STATE_SOURCE=$(STATE_SOURCE)  PLUGIN_DIR=$(PLUGIN_DIR)  DOCKER_SOCKET=$(DOCKER_SOCKET)'
	@echo '  DOCKER_HOST=$(or $(DOCKER_HOST),(docker CLI default))'

build: ## Build the release binary (cargo build --release)
	$(CARGO) build --release --locked

# $(call plugin-folder,DIR): the part of a plugin folder that does not depend on the
# architecture: config.json, and rootfs/ with its mount points and the CA certificates. The
# binary and its shared libraries go into DIR/rootfs after it.
define plugin-folder
	rm -rf '$(1)/rootfs' '$(1)/config.json'
	mkdir -p '$(1)/rootfs/bin' '$(1)/rootfs/etc/ssl/certs' '$(1)/rootfs/run/docker/plugins' \
		'$(1)/rootfs/var/lib/es-logging-plugin' '$(1)/rootfs/tmp' '$(1)/rootfs/var/run'
	@# The mount point of the engine socket (docker-socket mount, for EVENTS=true).
	touch '$(1)/rootfs/var/run/docker.sock'
	test -s '$(CA_BUNDLE)' || { echo 'missing $(CA_BUNDLE): apt-get install ca-certificates' >&2; exit 1; }
	cp -L '$(CA_BUNDLE)' '$(1)/rootfs/etc/ssl/certs/ca-certificates.crt'
	cp plugin/config.json '$(1)/config.json'
endef

rootfs: build ## Assemble the plugin folder (target/plugin): config.json, rootfs/ with the binary, its shared libraries, CA certificates
	$(call plugin-folder,$(PLUGIN_DIR))
	cp '$(BIN)' '$(ROOTFS)/bin/es-logging-plugin'
	@# Exactly the libraries the dynamic linker resolves for this binary, the loader included,
	@# at the paths the binary asks for.
	{ ldd '$(BIN)' || true; } | awk '$$2 == "=>" && $$3 ~ /^\// { print $$3 } $$1 ~ /^\// { print $$1 }' \
		| sort -u | while read -r lib; do cp --parents -L "$$lib" '$(ROOTFS)'; done

# The aarch64 plugin (README "arm64"), cross-built by Debian trixie's rustc 1.85 in a trixie tree
# made once with debootstrap (tools/arm64/tree): the machines' rustup toolchain has only the
# x86_64 standard library. Its own tree, not target/trixie (the e2e suite's engine).
ARM64_TREE ?= $(TARGET_DIR)/trixie-arm64-build
ARM64_PLUGIN_DIR ?= $(TARGET_DIR)/plugin-arm64
ARM64_TARGET_DIR := $(TARGET_DIR)/arm64
ARM64_BIN := $(ARM64_TARGET_DIR)/aarch64-unknown-linux-gnu/release/es-logging-plugin
ARM64_ROOTFS := $(ARM64_PLUGIN_DIR)/rootfs

.PHONY: build-arm64 rootfs-arm64 arm64-smoke
build-arm64: ## Cross-build the aarch64 release binary in a Debian trixie tree (root; installs debootstrap and qemu-user, builds the tree once)
	tools/arm64/cross host-tools
	tools/arm64/tree '$(ARM64_TREE)'
	tools/arm64/cross build '$(ARM64_TREE)' '$(ARM64_TARGET_DIR)'

rootfs-arm64: build-arm64 ## Assemble the aarch64 plugin folder (target/plugin-arm64), as rootfs does for x86_64
	$(call plugin-folder,$(ARM64_PLUGIN_DIR))
	cp '$(ARM64_BIN)' '$(ARM64_ROOTFS)/bin/es-logging-plugin'
	tools/arm64/cross libs '$(ARM64_TREE)' '$(ARM64_BIN)' '$(ARM64_ROOTFS)'

arm64-smoke: rootfs-arm64 ## Run the aarch64 plugin folder's binary under qemu-aarch64 through the plugin API (tests/arm64_smoke.rs)
	@# The rootfs is the emulated binary's whole library root: a library missing from it fails here.
	ESLP_PLUGIN_BIN='$(abspath $(ARM64_ROOTFS))/bin/es-logging-plugin' \
	ESLP_PLUGIN_RUNNER='qemu-aarch64 -L $(abspath $(ARM64_ROOTFS))' \
		$(CARGO) test --locked --test arm64_smoke -- --ignored --nocapture

plugin: rootfs ## Create the plugin PLUGIN in the engine from the plugin folder (docker plugin create)
	$(DOCKER) plugin create '$(PLUGIN)' '$(PLUGIN_DIR)'

# `make install` keeps the settings of the install it replaces and takes any plugin setting as a
# make variable: `make install ES_HOSTS=https://es:9200 ES_USER=shipper` (tools/install-plugin).
install: rootfs ## Create and enable PLUGIN, replacing an older install and keeping its settings; ES_HOSTS=... (any plugin setting) sets one
	tools/install-plugin '$(PLUGIN)' '$(PLUGIN_DIR)' '$(STATE_SOURCE)' '$(DOCKER_SOCKET)' \
		$(if $(filter command line environment,$(origin STATE_SOURCE)),--state-source-given)
	@echo 'Installed. Use it with: docker run --log-driver $(patsubst %:latest,%,$(PLUGIN)) ...'

push: rootfs ## Push the plugin to a registry: make push PLUGIN=registry/name:tag
	@[[ '$(PLUGIN)' == */* ]] || { echo 'push needs a registry name: make push PLUGIN=registry/name:tag' >&2; exit 1; }
	if $(DOCKER) plugin inspect '$(PLUGIN)' >/dev/null 2>&1; then $(DOCKER) plugin rm -f '$(PLUGIN)'; fi
	@# The engine keeps one plugin per rootfs content: with this very build installed under
	@# another name (make install), create answers "content sha256:... already exists".
	$(DOCKER) plugin create '$(PLUGIN)' '$(PLUGIN_DIR)' || { echo 'If the error says "already exists": this build is installed under another name; run docker plugin rm -f on it first, or push from another engine.' >&2; exit 1; }
	$(DOCKER) plugin push '$(PLUGIN)'

# osmem-server, the OpenSearch imitation some integration tests run (shared/docs/elasticsearch.md),
# taken from its PyPI wheel: a static binary, nothing installed.
OSMEM_VERSION := 0.1.6
OSMEM := $(abspath $(TARGET_DIR))/tools/osmem-server-$(OSMEM_VERSION)
export OSMEM_SERVER := $(OSMEM)

$(OSMEM):
	mkdir -p '$(dir $(OSMEM))wheel'
	python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--platform manylinux_2_17_x86_64 --python-version 3.11 \
		-d '$(dir $(OSMEM))wheel' 'osmem-server==$(OSMEM_VERSION)'
	python3 -c 'import sys, zipfile, glob; \
		w = glob.glob(sys.argv[1] + "/osmem_server-$(OSMEM_VERSION)-*.whl")[0]; \
		open(sys.argv[2], "wb").write(zipfile.ZipFile(w).read("osmem_server/bin/osmem-server"))' \
		'$(dir $(OSMEM))wheel' '$@.part'
	chmod +x '$@.part' && mv '$@.part' '$@'

# Real OpenSearch nodes for tests/opensearch.rs: the launcher and the server's jars, resolved by
# Maven from Maven Central into ~/.m2 (tools/opensearch/README.md). Nothing to do once built.
.PHONY: opensearch
opensearch: ## Build the real OpenSearch and Elasticsearch node launchers the integration tests start (Java 17, Maven)
	tools/opensearch/run-node build
	tools/opensearch/run-node build --engine elasticsearch

# The integration tests `make quick` leaves out: they need root (mount, loop devices, another
# uid), Java 17 with Maven, or a Docker Engine.
NOT_QUICK := disk_faults pipe_budget opensearch e2e_docker e2e_hardening
QUICK_TESTS := $(filter-out $(NOT_QUICK),$(basename $(notdir $(wildcard tests/*.rs))))

quick: $(OSMEM) ## The tests that need neither root, Docker nor Java: unit tests and most integration tests
	$(CARGO) test --locked --lib --bins
	$(CARGO) test --locked $(addprefix --test ,$(QUICK_TESTS)) -- --test-threads=1

# Under `make test` a test whose prerequisite is missing fails, naming it (tests/support/prereq.rs);
# outside it, plain `cargo test` skips that test with a line saying what it needs.
test: export ESLP_REQUIRE_ALL := 1
test: build $(OSMEM) opensearch ## Run every test: unit, integration (real OpenSearch nodes too) and the real-Docker end-to-end tests (root; see .ci/run)
	$(CARGO) test --locked --lib --bins
	@# Integration tests run real plugin processes at full rate: one at a time, so two cores
	@# are not shared by a dozen plugins (they test behaviour, never timing).
	$(CARGO) test --locked --tests -- --test-threads=1
	$(MAKE) e2e
	@# The benchmarks with small N and no timing checks, so they cannot rot.
	$(MAKE) bench-short
	@# The fuzz targets are built (not run), so they cannot rot either.
	$(MAKE) fuzz-build
	@# The aarch64 build, started under qemu-user and driven through the plugin API.
	$(MAKE) arm64-smoke

# The end-to-end suites, run against the engine ESLP_ENGINE names (tests/support/trixie.rs).
E2E_DOCKER := $(CARGO) test --locked --test e2e_docker -- --ignored --nocapture
E2E_HARDENING := $(CARGO) test --locked --test e2e_hardening -- --ignored --nocapture

e2e: build ## Run only the end-to-end tests against private, throwaway Docker Engines: the host's dockerd, then Docker 26.1 from Debian trixie (needs root)
	ESLP_ENGINE=host $(E2E_DOCKER)
	ESLP_ENGINE=host $(MAKE) e2e-hardening
	$(MAKE) e2e-trixie

e2e-hardening: build ## Run only the real-engine fault, plugin lifecycle and load tests, on the engine ESLP_ENGINE names (host by default; needs root)
	$(E2E_HARDENING)

e2e-trixie: build ## Run both end-to-end suites against Debian trixie's Docker 26.1 (its root tree is built once into target/trixie with debootstrap; needs root)
	ESLP_ENGINE=trixie $(E2E_DOCKER)
	ESLP_ENGINE=trixie $(E2E_HARDENING)

# The hardening tests, longer: every iteration count and duration they take from
# tests/support/soak.rs is multiplied by SOAK_SCALE.
SOAK_SCALE ?= 20
soak: export ESLP_REQUIRE_ALL := 1
soak: build $(OSMEM) opensearch ## Run the fault, crash and load tests SOAK_SCALE times longer (root; tens of minutes)
	ESLP_SOAK=$(SOAK_SCALE) $(CARGO) test --locked --tests -- --test-threads=1
	ESLP_SOAK=$(SOAK_SCALE) $(MAKE) e2e

check: ## fmt --check, clippy -D warnings, docs, then every test
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	RUSTDOCFLAGS='-D warnings' $(CARGO) doc --locked --no-deps
	$(MAKE) test

# Benchmarks (benches/, README "Performance"): results in BENCH_RESULTS as markdown and SVG.
BENCH_RESULTS ?= bench/results
BENCH_ENV = BENCH_RESULTS='$(abspath $(BENCH_RESULTS))'

.PHONY: bench bench-short
bench: ## Run every benchmark (about 15 min; engine part needs root) and write bench/results/
	$(CARGO) build --release --locked --example discard_plugin
	$(BENCH_ENV) $(CARGO) bench --locked --bench plugin
	$(BENCH_ENV) $(CARGO) bench --locked --bench engine
	cat '$(BENCH_RESULTS)/plugin.md' '$(BENCH_RESULTS)/engine.md' > '$(BENCH_RESULTS)/results.md'
	@echo 'Results: $(BENCH_RESULTS)/results.md, plugin.svg, engine.svg'

bench-short: ## The benchmarks with small N and one round (CI smoke run, no timing checks) into target/bench-short
	$(CARGO) build --release --locked --example discard_plugin
	BENCH_SHORT=1 BENCH_RESULTS='$(abspath $(TARGET_DIR)/bench-short)' $(CARGO) bench --locked --bench plugin
	BENCH_SHORT=1 BENCH_RESULTS='$(abspath $(TARGET_DIR)/bench-short)' $(CARGO) bench --locked --bench engine

# Fuzz targets (fuzz/, cargo-fuzz layout, its own workspace): the parsers of outside input.
# cargo-fuzz needs unstable rustc flags (-Z...) and this machine has only the stable toolchain,
# so RUSTC_BOOTSTRAP=1 lets stable rustc take them. No sanitizer: the code fuzzed is safe Rust,
# where AddressSanitizer finds nothing a panic does not, at half the speed; debug assertions on,
# so an arithmetic overflow is a crash. Corpora grow in fuzz/corpus (not committed); crashes land
# in fuzz/artifacts; fuzz/regressions keeps every input that once failed a target (a bug since
# fixed, or a property made exact), replayed first.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := frame_decoder fragments log_opts readlogs_request bulk_answer
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_ENV := RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR='$(abspath $(TARGET_DIR))/fuzz'
FUZZ_BUILD := fuzz build --sanitizer none --debug-assertions

fuzz-build: ## Build every fuzz target (installs cargo-fuzz if missing)
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)
	cd fuzz && $(FUZZ_ENV) $(CARGO) $(FUZZ_BUILD)

fuzz: fuzz-build ## Run each fuzz target for FUZZ_SECONDS (default 60) after replaying fuzz/regressions
	cd fuzz && for target in $(FUZZ_TARGETS); do \
		mkdir -p "corpus/$$target" "regressions/$$target"; \
		$(FUZZ_ENV) $(CARGO) $(subst build,run,$(FUZZ_BUILD)) "$$target" "corpus/$$target" "regressions/$$target" \
			-- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1; \
	done
