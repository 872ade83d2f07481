"""Accuracy of LiteLVLM pruning on benchmarks (docs/accuracy.md).

* ``litelvlm_kernels.evaluation.lmms_eval``: the ``litelvlm`` model of lmms-eval (entry point
  ``lmms_eval.models``): lmms-eval's ``llava_hf`` with ``enable_litelvlm`` on its model and the
  referring expression of each sample read from the task's document;
* ``litelvlm_kernels.evaluation.sweep``: one model, several ``num_retain`` budgets (and keep-all)
  on one or more tasks -> JSON rows, a markdown table and a plot of accuracy against kept tokens,
  with the prefill FLOPs and KV-cache bytes of each budget (``report.py``).

Nothing here is imported by ``litelvlm_kernels`` itself; lmms-eval is needed only to run an
evaluation (``pip install ".[lmms-eval]"``; on a CPU machine ``scripts/install_lmms_eval.sh``).
"""
