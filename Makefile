# Surge: the two commands are `make run` and `make test`. Both provision PostgreSQL and
# Redis first (scripts/services.sh: reuse running ones, else private instances in .local/).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ENV_FILE := .local/services.env
CARGO ?= cargo

.PHONY: help services run test lint fmt clean-services bench-journal

help:
	@echo "make run    build, provision PostgreSQL + Redis, migrate, seed the demo store, serve on http://127.0.0.1:8080"
	@echo "make test   provision PostgreSQL + Redis and run the whole test suite"
	@echo "make lint   rustfmt check and clippy with warnings as errors"
	@echo "make bench-journal   Journal vs one transaction per write, and PUT /api/cart latency (release build)"

services:
	@bash scripts/services.sh

run: services
	@echo "==> building surge (release)"
	@$(CARGO) build --release --bin surge
	@source $(ENV_FILE) && \
	  echo "==> migrating and seeding the demo store" && \
	  ./target/release/surge seed --demo && \
	  echo "==> serving on http://$${SURGE_BIND:-127.0.0.1:8080} (Ctrl-C to stop)" && \
	  exec ./target/release/surge serve

test: services
	@source $(ENV_FILE) && \
	  export SURGE_TEST_PG_URL="$$SURGE_PG_URL" SURGE_TEST_REDIS_URL="$$REDIS_URL" && \
	  unset DATABASE_URL REDIS_URL && \
	  echo "==> cargo test (PostgreSQL $$SURGE_TEST_PG_URL, Redis $$SURGE_TEST_REDIS_URL)" && \
	  $(CARGO) test --workspace --locked && \
	  echo "==> browser tests (headless Chromium)" && \
	  bash scripts/browser-test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

clean-services:
	@bash scripts/services.sh stop

bench-journal: services
	@source $(ENV_FILE) && SURGE_BENCH_PG_URL="$$SURGE_PG_URL" SURGE_LOG=warn $(CARGO) bench --bench journal
