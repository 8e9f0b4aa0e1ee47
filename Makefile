# btcstream: the two commands a new user needs.
#   make demo   set up everything, then run the offline end-to-end demo (report in reports/)
#   make test   set up everything, then run the whole test suite against the real local stack
#               (PYTEST_ARGS="-k producer" narrows it)
# Both create .venv, install the package, and resolve the JVM jars (Kafka, HDFS, Spark's Kafka
# connector, Delta Lake) from Maven Central into ~/.cache/btcstream on the first run; later runs are offline.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup jars demo test test-fast test-chaos lint-notebooks clean-state chaos

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11 (or run make PYTHON=/path/to/python3.11)"; exit 2; }
	@command -v java >/dev/null || { echo "error: java not found: install a Java 17 runtime (apt-get install openjdk-17-jdk-headless)"; exit 2; }
	@command -v mvn >/dev/null || { echo "error: mvn not found: install Maven (apt-get install maven); it fetches the Kafka/HDFS jars once"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

jars: setup
	$(BIN)/btcstream infra resolve

demo: jars
	$(BIN)/btcstream demo

test: jars
	-@[ "$$(id -u)" = 0 ] && bash .ci/install-compose.sh || echo "note: not root, docker-compose not installed; its validation test will say so"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# No JVM: leaves out `integration` and `spark` tests, and BTCSTREAM_TEST_NO_JVM=1 makes the run fail
# if anything started java or a Spark launcher all the same (tests/helpers/no_jvm.py).
test-fast: setup
	@start=$$(date +%s); \
	BTCSTREAM_TEST_NO_JVM=1 $(BIN)/python -m pytest -m "not integration and not spark" $(PYTEST_ARGS); status=$$?; \
	seconds=$$(( $$(date +%s) - start )); \
	if [ $$status = 0 ]; then echo "test-fast: passed in $$seconds s, no JVM started"; \
	else echo "test-fast: FAILED (pytest exit $$status) after $$seconds s"; fi; \
	exit $$status

# The short chaos run CI makes after `make test` (tests/streaming/test_chaos.py: bench/chaos.py --minutes 5
# --each-once --seed 7, one fault of each kind; 11 minutes on a quiet 2-core machine). Opt-in in `make test`.
test-chaos: jars
	BTCSTREAM_TEST_CHAOS=1 $(BIN)/python -m pytest -m chaos tests/streaming/test_chaos.py $(PYTEST_ARGS)

# The pipeline under a seeded schedule of faults on a stack of its own (ports 19092/19000/19870), then a check
# that nothing was lost or duplicated (bench/chaos.py; CHAOS_ARGS="--minutes 5 --each-once --seed 7").
chaos: jars
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)

lint-notebooks: setup
	$(BIN)/nbstripout --verify notebooks/*.ipynb

clean-state:
	$(BIN)/btcstream infra down || true
	rm -rf ~/.local/state/btcstream
