# Enlace: local runs without Docker. `make up`, `make down`, `make test`, `make token AGENCY=…`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: contracts up down test token kafka-up kafka-down zipkin-up zipkin-down topics services-up services-down demo venv bench

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@{ test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	   $(PY) -m pip install -q --upgrade pip==25.3; \
	   $(PY) -m pip install -q --require-hashes -r requirements.lock; \
	   $(PY) -m pip install -q --no-deps -e .; } 1>&2
	@touch $@

up: venv kafka-up zipkin-up topics services-up demo
	@echo "Traces: http://127.0.0.1:9411/zipkin/  (each demo journey is one trace)" >&2

down: services-down zipkin-down kafka-down

kafka-up:
	@deploy/kafka/kafka.sh start

kafka-down:
	@deploy/kafka/kafka.sh stop

zipkin-up:
	@deploy/zipkin/zipkin.sh start

zipkin-down:
	@deploy/zipkin/zipkin.sh stop

topics: venv
	@$(PY) -m enlace_platform.topics 1>&2

services-up: venv
	@$(PY) -m enlace_platform.dev_issuer --agency MX-INM >/dev/null  # creates the dev issuer key first
	@OTEL_TRACES_EXPORTER=$${OTEL_TRACES_EXPORTER:-zipkin} \
	 OTEL_EXPORTER_ZIPKIN_ENDPOINT=$${OTEL_EXPORTER_ZIPKIN_ENDPOINT:-http://127.0.0.1:9411/api/v2/spans} \
	 deploy/services.sh start

services-down:
	@deploy/services.sh stop

demo: venv
	@$(PY) deploy/demo/run_demo.py

test: venv
	@deploy/kafka/kafka.sh fetch
	@deploy/zipkin/zipkin.sh fetch
	$(PY) -m pytest

# Regenerates contracts/openapi/*.json and contracts/asyncapi.yaml from the code (CI checks they match).
contracts: venv
	@$(PY) deploy/export_openapi.py
	@$(PY) deploy/export_asyncapi.py

# Prints only the token on stdout.
token: venv
	@$(PY) -m enlace_platform.dev_issuer --agency $(AGENCY)

# Benchmarks of the eventing plumbing against the local broker (see docs/benchmarks.md).
bench: venv kafka-up topics
	$(PY) bench/eventing_bench.py
