"""The ``litelvlm`` model of lmms-eval (docs/accuracy.md).

``--model litelvlm --model_args pretrained=llava-hf/llava-1.5-7b-hf,clip=openai/clip-vit-large-patch14-336,``
``num_retain=192`` runs lmms-eval's ``llava_hf`` model (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision checkpoints of
``transformers``) with ``enable_litelvlm`` on it. Files, one job each:

* ``expressions.py``: which field of a task's document holds the referring expression (per task,
  overridable), e.g. RefCOCO REC: the expression; GQA / POPE: the question, never the answer;
* ``arguments.py``: the plugin's own ``--model_args`` (split from ``llava_hf``'s, validated);
* ``model.py``: the model classes (subclasses of lmms-eval's simple and chat ``llava_hf``);
* ``runner.py``: one lmms-eval evaluation in this process (used by ``evaluation.sweep``).

lmms-eval (0.7.3) finds the model through the entry point group ``lmms_eval.models``, whose
payload is ``manifest`` below. Importing this package imports neither lmms-eval nor torch.
"""

MODEL_ID = "litelvlm"
SIMPLE_CLASS = "litelvlm_kernels.evaluation.lmms_eval.model.LiteLVLMLlavaHf"
CHAT_CLASS = "litelvlm_kernels.evaluation.lmms_eval.model.LiteLVLMLlavaHfChat"

__all__ = ["CHAT_CLASS", "MODEL_ID", "SIMPLE_CLASS", "manifest"]


def manifest():
    """The ``lmms_eval.models`` entry point: the ``litelvlm`` model, a chat and a simple class as ``llava_hf``.

    lmms-eval prefers the chat class, and takes the simple one with ``--force_simple``, as for ``llava_hf``.
    """
    from lmms_eval.models.registry_v2 import ModelManifest  # imported by lmms-eval while it loads its registry

    return ModelManifest(model_id=MODEL_ID, simple_class_path=SIMPLE_CLASS, chat_class_path=CHAT_CLASS)
