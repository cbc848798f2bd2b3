# Surge: the two commands are `make run` and `make test`. Both provision PostgreSQL and
# Redis first (scripts/services.sh: reuse running ones, else private instances in .local/).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ENV_FILE := .local/services.env
CARGO ?= cargo

.PHONY: help services run test lint fmt clean-services bench-journal

# `make help` prints every target of this file with the text after `## ` on its line, so
# the list cannot fall behind the targets; a target without that text still shows up.
help: ## list the targets
	@awk -F':' '/^[a-zA-Z][a-zA-Z0-9_-]*:([^=]|$$)/ { \
	    desc = ""; i = index($$0, "## "); if (i) desc = substr($$0, i + 3); \
	    printf "  make %-18s %s\n", $$1, desc }' $(MAKEFILE_LIST)

services: ## make sure PostgreSQL and Redis answer (private instances in .local/ if not); write .local/services.env
	@bash scripts/services.sh

run: services ## build, provision PostgreSQL + Redis, migrate, seed the demo store, serve on http://127.0.0.1:8080
	@bash scripts/build-deps.sh
	@echo "==> building surge (release)"
	@$(CARGO) build --release --bin surge
	@source $(ENV_FILE) && \
	  echo "==> migrating and seeding the demo store" && \
	  ./target/release/surge seed --demo && \
	  echo "==> serving on http://$${SURGE_BIND:-127.0.0.1:8080} (Ctrl-C to stop)" && \
	  exec ./target/release/surge serve

test: services ## provision PostgreSQL + Redis and run the whole test suite (cargo, Schemathesis, browser, load-test smoke)
	@source $(ENV_FILE) && \
	  export SURGE_TEST_PG_URL="$$SURGE_PG_URL" SURGE_TEST_REDIS_URL="$$REDIS_URL" && \
	  unset DATABASE_URL REDIS_URL && \
	  bash scripts/test-tools.sh && \
	  echo "==> architecture (docs/ARCHITECTURE.md)" && \
	  bash scripts/check-architecture.sh && \
	  echo "==> deployment (k8s/ rendered and validated offline, monitoring, docker-compose.yml)" && \
	  bash scripts/check-k8s.sh && \
	  echo "==> cargo test (PostgreSQL $$SURGE_TEST_PG_URL, Redis $$SURGE_TEST_REDIS_URL)" && \
	  $(CARGO) test --workspace --locked && \
	  echo "==> API contract (Schemathesis against a live node)" && \
	  bash scripts/schemathesis.sh && \
	  echo "==> browser tests (headless Chromium)" && \
	  bash scripts/browser-test.sh && \
	  echo "==> load-test smoke (correctness only)" && \
	  bash scripts/loadtest-smoke.sh

lint: ## rustfmt check, clippy with warnings as errors, the architecture and deployment checks
	bash scripts/check-architecture.sh
	bash scripts/check-k8s.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## format the workspace with rustfmt
	$(CARGO) fmt --all

clean-services: ## stop the private PostgreSQL and Redis that `make services` started
	@bash scripts/services.sh stop

bench-journal: services ## Journal vs one transaction per write, and PUT /api/cart latency (release build)
	@source $(ENV_FILE) && SURGE_BENCH_PG_URL="$$SURGE_PG_URL" SURGE_LOG=warn $(CARGO) bench --bench journal

# ---- Load tests: surge-loadtest (loadtests/, see loadtests/README.md) -----------------
# Release builds. Each bench runs against `surge serve` on a database of its own that is
# dropped afterwards (loadtests/node.sh); reports go to artifacts/loadtest/*.json.
LT_BIN := target/release/surge-loadtest
LT_NODE := bash loadtests/node.sh target/release/surge
LT_OUT := artifacts/loadtest

.PHONY: loadtest-release loadtest-smoke bench-browse bench-flash-sale bench-fanout bench-cluster bench-campaign

loadtest-release: ## build surge and surge-loadtest (release)
	@echo "==> building surge and surge-loadtest (release)"
	@$(CARGO) build --release --locked -p surge -p surge-loadtest

loadtest-smoke: services ## every load-test scenario for a few seconds against a debug node; correctness only
	@source $(ENV_FILE) && bash scripts/loadtest-smoke.sh

bench-browse: services loadtest-release ## browse, 64 concurrent for 15 s, then the HTTP ceiling for as long
	@source $(ENV_FILE) && $(LT_NODE) browse -- \
	  $(LT_BIN) browse --duration 15s --concurrency 64 --report $(LT_OUT)/browse.json

bench-flash-sale: services loadtest-release ## 20,000 buyers for 1,000 units, cold and with warm sessions
	@source $(ENV_FILE); status=0; \
	  $(LT_NODE) flash-sale -- \
	    $(LT_BIN) flash-sale --buyers 20000 --units 1000 --concurrency 1000 --duration 120s \
	      --report $(LT_OUT)/flash-sale.json || status=1; \
	  echo "==> the same sale, every buyer's session and cart made before it starts (--warm-sessions)"; \
	  $(LT_NODE) flash-sale-warm -- \
	    $(LT_BIN) flash-sale --buyers 20000 --units 1000 --concurrency 1000 --duration 120s \
	      --warm-sessions --report $(LT_OUT)/flash-sale-warm.json || status=1; \
	  exit $$status

# The fan-out's subscribers are read by FANOUT_THREADS load threads: one thread reading
# 19,800 sockets measured its own queue more than the server's delivery.
FANOUT_THREADS ?= 2

bench-fanout: services loadtest-release ## 1,000 / 10,000 / 50,000 WebSocket subscribers (as many as the limits allow)
	@ulimit -n 200000 2>/dev/null || { \
	    echo "==> cannot raise the open-file limit to 200000 (hard limit $$(ulimit -Hn)); using $$(ulimit -Hn)"; \
	    ulimit -n "$$(ulimit -Hn)"; }; \
	  echo "==> open-file limit: $$(ulimit -n)"; \
	  source $(ENV_FILE); status=0; \
	  for n in 1000 10000 50000; do \
	    $(LT_NODE) fanout-$$n -- $(LT_BIN) fanout --subscribers $$n --changes 20 \
	      --threads $(FANOUT_THREADS) --duration 300s --fit-fd-limit --source-ips 127.0.0.2,127.0.0.3,127.0.0.4 \
	      --report $(LT_OUT)/fanout-$$n.json || status=1; \
	  done; \
	  exit $$status

bench-cluster: services loadtest-release ## 3 nodes + Redis + nginx, the flash sale through nginx and straight at the nodes
	@source $(ENV_FILE) && LT_SKIP_BUILD=1 bash scripts/cluster.sh

# The campaign bench: sizes and rates can be overridden, e.g. `make bench-campaign
# CAMPAIGN_BUYERS=5000`. CAMPAIGN_JOIN_RATE is the join rate the start is planned for
# (the report prints the rate measured; the run fails if the joins overrun the lead).
# Each node batches the joins that arrive while one commits (docs/QUEUE.md), so joins
# in flight cost one database connection per node, however many there are.
CAMPAIGN_BUYERS ?= 20000
CAMPAIGN_UNITS ?= 1000
CAMPAIGN_ADMIT ?= 500
CAMPAIGN_SOCKETS ?= 2000
CAMPAIGN_JOIN_RATE ?= 150
CAMPAIGN_LEAD ?= 5s

bench-campaign: services loadtest-release ## campaign with a waiting room: 20,000 buyers join, 1,000 units, 3 nodes behind nginx
	@source $(ENV_FILE) && bash loadtests/cluster.sh target/release/surge campaign -- \
	  $(LT_BIN) campaign --buyers $(CAMPAIGN_BUYERS) --units $(CAMPAIGN_UNITS) \
	    --admit-per-second $(CAMPAIGN_ADMIT) --socket-sample $(CAMPAIGN_SOCKETS) \
	    --join-rate $(CAMPAIGN_JOIN_RATE) --lead $(CAMPAIGN_LEAD) --concurrency 32 \
	    --connections 1024 --threads 2 --duration 120s --strict \
	    --report $(LT_OUT)/campaign.json

.PHONY: bench-reads
bench-reads: services loadtest-release ## product JSON, list of 24 and a 304 page: Surge beside a bare actix-web handler (wrk, info and warn logs)
	@source $(ENV_FILE) && bash loadtests/reads.sh target/release/surge $(LT_BIN)

# Reservations plus checkouts through HTTP against the same writes handed straight to a
# Journal, alternating in one run on one database (benches/journal.rs,
# SURGE_BENCH_PART=writes); SURGE_BENCH_SECONDS, SURGE_BENCH_ROUNDS,
# SURGE_BENCH_SESSIONS and SURGE_BENCH_WARMUP_SECONDS change the size.
.PHONY: bench-writes
bench-writes: services ## reserve + checkout through HTTP against the Journal alone, side by side, and the ratio
	@source $(ENV_FILE) && SURGE_BENCH_PART=writes SURGE_BENCH_PG_URL="$$SURGE_PG_URL" SURGE_LOG=warn \
	  $(CARGO) bench --bench journal
