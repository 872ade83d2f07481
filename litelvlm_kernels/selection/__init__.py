"""One selection path for every front end (docs/design.md section 11).

``settings`` (what to keep), ``text`` and ``folding`` (texts -> folded conditions, cached), ``scorer`` and
one file per tower kind (``clip``, ``siglip``; ``kinds`` picks one; ``paired``: a CLIP / SigLIP that scores
for a tower with neither, docs/design.md section 12), ``views`` (selection over the views
of an item) and ``layouts`` (one per LVLM family: views, placeholder counts, where kept rows go). Imports
torch only; the transformers front end is ``litelvlm_kernels.integrations``, vLLM's
``litelvlm_kernels.serving.vllm``.
"""
