"""Running the tiny task through lmms-eval in this process: stock ``llava_hf`` or the ``litelvlm`` model."""

from __future__ import annotations

import tiny_task

from litelvlm_kernels.evaluation.lmms_eval.runner import evaluate


def model_args(tiny, *, clip: bool = True, **litelvlm) -> str:
    """``--model_args`` for the tiny checkpoint on the CPU in fp32 (``litelvlm``: the plugin's arguments)."""
    parts = [f"pretrained={tiny.llava_dir}", "device_map=cpu", "dtype=float32"]
    if clip:
        parts.append(f"clip={tiny.clip_dir}")
    parts += [f"{k}={v}" for k, v in litelvlm.items()]
    return ",".join(parts)


def load(name: str, args: str, force_simple: bool = False):
    """The lmms-eval model ``name`` built as ``--model name --model_args args --device cpu`` builds it."""
    from lmms_eval.models import get_model

    return get_model(name, force_simple).create_from_arg_string(args, {"batch_size": 1, "device": "cpu"})


def run(lm, task_dir, name: str = "litelvlm") -> dict:
    """lmms-eval's result dict of ``lm`` on the tiny task (with its samples); lmms-eval's own tasks are not indexed
    (seconds each time): the tiny task includes the RefCOCO template by its path."""
    return evaluate(lm, [tiny_task.TASK], include_path=str(task_dir), model_name=name, include_defaults=False)


def responses(result: dict) -> list:
    """The generated text of each sample of the tiny task, by doc_id."""
    samples = sorted(result["samples"][tiny_task.TASK], key=lambda s: s["doc_id"])
    return [s["resps"][0][0] if isinstance(s["resps"][0], list) else s["resps"][0] for s in samples]
