# Two commands on a fresh machine (Python 3.11, no torch): `make demo`, `make test`.
PYTHON ?= python3
export PYTHON

.PHONY: install demo test bench clean

install:
	bash scripts/install.sh

demo: install
	$(PYTHON) -m litelvlm_kernels.demo

test: install
	bash scripts/test.sh

bench: install
	$(PYTHON) -m benchmarks.bench_select --quick
	$(PYTHON) -m benchmarks.bench_gather --quick
	$(PYTHON) -m benchmarks.report

clean:
	rm -rf build *.egg-info litelvlm_kernels/_C*.so
