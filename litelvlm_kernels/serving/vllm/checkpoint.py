"""The scorer checkpoint named by ``litelvlm.scorer``: its folder, tokenizer, config and tensors.

An LVLM checkpoint holds the vision tower but not what the scorer needs besides (docs/design.md 11.1):
CLIP's text tower, ``text_projection`` and ``visual_projection`` (LLaVA-1.5 / NeXT: the CLIP checkpoint
the LVLM was built on, e.g. ``openai/clip-vit-large-patch14-336``), or SigLIP's text tower, pooling head,
post-layernorm and the layers the LVLM's tower dropped (LLaVA-OneVision, -Interleave, PaliGemma: the
original SigLIP checkpoint, e.g. ``google/siglip-so400m-patch14-384``). A local folder is used as is; a
hub id is resolved with ``huggingface_hub.snapshot_download`` (which honours ``HF_HUB_OFFLINE``).
Weights are read from ``*.safetensors`` (one file or an index of shards) or ``pytorch_model.bin``,
and only the tensors asked for are loaded.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable

import torch

_WEIGHT_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "pytorch_model.bin", "*.json", "*.txt", "*.model"]


@functools.lru_cache(maxsize=8)
def resolve(clip: str) -> str:
    """The local folder of the checkpoint (downloaded for a hub id)."""
    if os.path.isdir(clip):
        return clip
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(clip, allow_patterns=_WEIGHT_PATTERNS)
    except Exception as e:
        raise ValueError(f"litelvlm.scorer={clip!r}: not a folder, and not a checkpoint that could be fetched "
                         f"({type(e).__name__}: {e})") from None


@functools.lru_cache(maxsize=8)
def config(path: str):
    """The checkpoint's CLIPConfig or SiglipConfig (text_config, vision_config), by its model_type."""
    import transformers

    return transformers.AutoConfig.from_pretrained(resolve(path))  # engine_parts_for checks its kind


@functools.lru_cache(maxsize=8)
def tokenizer(path: str):
    """The checkpoint's tokenizer, checked against its text tower (``check_tokenizer`` /
    ``check_siglip_tokenizer``)."""
    import transformers

    from ...selection.kinds import check_scorer_tokenizer

    tok = transformers.AutoTokenizer.from_pretrained(resolve(path))
    check_scorer_tokenizer(tok, config(path))
    return tok


def _weight_files(folder: str) -> list:
    names = sorted(os.listdir(folder))
    index = [n for n in names if n.endswith(".safetensors.index.json")]
    if index:
        with open(os.path.join(folder, index[0])) as f:
            return sorted({os.path.join(folder, v) for v in json.load(f)["weight_map"].values()})
    st = [os.path.join(folder, n) for n in names if n.endswith(".safetensors")]
    if st:
        return st
    if "pytorch_model.bin" in names:
        return [os.path.join(folder, "pytorch_model.bin")]
    raise ValueError(f"litelvlm.scorer: no *.safetensors or pytorch_model.bin in {folder}")


def read_tensors(clip: str, wanted: Callable[[str], bool]) -> dict:
    """{name: tensor} of the checkpoint's tensors whose name ``wanted`` accepts (CPU, stored dtype)."""
    out = {}
    for path in _weight_files(resolve(clip)):
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                for name in f.keys():
                    if wanted(name):
                        out[name] = f.get_tensor(name)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            out.update({k: v for k, v in state.items() if wanted(k)})
    return out
