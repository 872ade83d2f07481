# Two commands on a fresh machine (Python 3.11, no torch): `make demo`, `make test`.
PYTHON ?= python3
export PYTHON

.PHONY: install demo test bench examples flops bench-prefill report clean

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

examples: install
	$(PYTHON) examples/llava_style_pipeline.py
	$(PYTHON) examples/visionzip_style.py
	$(PYTHON) examples/fastv_style.py
	$(PYTHON) -m litelvlm_kernels.viz --out viz_demo.png

flops:
	$(PYTHON) -m litelvlm_kernels.flops --model vicuna-7b --visual 576 --keep 192 128 64 --text 64

bench-prefill:
	$(PYTHON) -m benchmarks.bench_prefill --threads 1 --rounds 10 --batch 1 2 4

report:
	$(PYTHON) -m benchmarks.report

clean:
	rm -rf build *.egg-info litelvlm_kernels/_C*.so
