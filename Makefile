# Two commands on a fresh machine (Python 3.11, no torch): `make demo`, `make test`.
PYTHON ?= python3
export PYTHON

.PHONY: install demo test bench examples flops bench-prefill report publish-bench publish-bench-vllm clean

install:
	bash scripts/install.sh

demo: install
	$(PYTHON) -m litelvlm_kernels.demo

test: install
	bash scripts/test.sh

# Quick runs: rows, report and plots go to benchmarks/out/ (git-ignored), never to benchmarks/results/.
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

# rows to benchmarks/out/prefill-cpu.json (git-ignored)
bench-prefill:
	$(PYTHON) -m benchmarks.bench_prefill --threads 1 --rounds 10 --batch 1 2 4

# report + plots of benchmarks/out/*.json, written there
report:
	$(PYTHON) -m benchmarks.report

# PUBLISHES: reruns the committed CPU benchmarks (docs/benchmarks.md) into benchmarks/results/ and redraws
# REPORT-cpu.md and plots there (tens of minutes; run on a quiet machine, then review and commit the diff).
publish-bench: install
	$(PYTHON) -m benchmarks.bench_select --publish
	$(PYTHON) -m benchmarks.bench_select --vs-release --publish
	THP_MEM_ALLOC_ENABLE=1 $(PYTHON) -m benchmarks.bench_select --vs-release --publish
	$(PYTHON) -m benchmarks.bench_gather --device cpu --publish
	$(PYTHON) -m benchmarks.bench_dispatch --publish
	$(PYTHON) -m benchmarks.bench_prefill --threads 1 --rounds 10 --batch 1 2 4 --publish
	$(PYTHON) -m benchmarks.bench_capture --towers tiny vit-l siglip-tiny so400m --batch 1 --threads 1 --rounds 5 --publish
	$(PYTHON) -m benchmarks.bench_map_head --threads 1 --rounds 5 --publish
	$(PYTHON) -m benchmarks.report --publish

# PUBLISHES: the vLLM serving rows (benchmarks/results/vllm-serving-cpu.* and vllm-qwen-cpu.*, the README's serving
# tables; about 25 min on a quiet 2-core machine), then the report
publish-bench-vllm:
	.venv-vllm/bin/python -m benchmarks.bench_vllm --publish
	OMP_NUM_THREADS=1 .venv-vllm/bin/python -m benchmarks.bench_vllm_qwen --publish
	$(PYTHON) -m benchmarks.report --publish

clean:
	rm -rf build *.egg-info litelvlm_kernels/_C*.so
