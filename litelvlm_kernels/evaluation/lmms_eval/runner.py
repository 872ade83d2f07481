"""One lmms-eval evaluation in this process, on a model already loaded (the sweep loads it once).

``load_model`` builds the ``litelvlm`` model from a ``--model_args`` string, as ``--model litelvlm``
does; ``evaluate`` runs ``lmms_eval.evaluator.simple_evaluate`` on it and returns lmms-eval's
result dict (``results`` per task, and ``samples`` with ``log_samples``).
"""

from __future__ import annotations

import functools

__all__ = ["evaluate", "load_model"]


def load_model(model_args: str, *, device: str | None = None, batch_size: int = 1, force_simple: bool = False):
    """The ``litelvlm`` model (the chat class, or the simple one with ``force_simple``) from ``model_args``."""
    from lmms_eval.models import get_model

    from . import MODEL_ID

    extra = {"batch_size": batch_size, "device": device}
    return get_model(MODEL_ID, force_simple).create_from_arg_string(model_args, extra)


@functools.lru_cache(maxsize=4)
def _task_manager(verbosity: str, include_path, model_name: str, include_defaults: bool):
    """One task index per setting and process: indexing lmms-eval's ~2000 task files takes seconds."""
    from lmms_eval.tasks import TaskManager

    return TaskManager(verbosity, include_path=include_path, include_defaults=include_defaults, model_name=model_name)


def evaluate(model, tasks, *, include_path=None, limit=None, gen_kwargs: str | None = None,
             log_samples: bool = True, verbosity: str = "WARNING", model_name: str = "litelvlm",
             include_defaults: bool = True) -> dict:
    """lmms-eval's ``simple_evaluate`` of ``model`` (an lmms instance) on ``tasks`` (names).

    ``model_name`` picks each task's model-specific prompt variant (``lmms_eval_specific_kwargs``), as
    ``--model`` does on the command line; ``include_path``: a folder of extra task yaml files;
    ``include_defaults=False`` indexes only those (lmms-eval's own tasks are then unknown).
    """
    from lmms_eval.evaluator import simple_evaluate

    manager = _task_manager(verbosity, include_path, model_name, include_defaults)
    out = simple_evaluate(model=model, tasks=list(tasks), task_manager=manager, limit=limit, gen_kwargs=gen_kwargs,
                          log_samples=log_samples, verbosity=verbosity, batch_size=1)
    if out is None:  # simple_evaluate returns None on ranks other than 0
        raise RuntimeError("lmms-eval returned no results (a non-main process of a distributed run)")
    return out
