"""FastV-style pruning inside the LLM, built from the litelvlm ops (a building-block example).

FastV (Chen et al., 2024) runs the first K decoder layers on the whole
sequence, ranks the image tokens by the attention they receive in layer K - 1
(from the last token, averaged over heads), keeps the top R and runs layers
K .. L-1 on the shorter sequence. Two ops do the token work:

    kept = torch.ops.litelvlm.select_tokens(no_text, received, R, order="spatial")[0]
    h    = torch.ops.litelvlm.gather_tokens(h, positions_to_keep)         # [B, n', h]

``select_tokens`` with T = 0 (s of shape [B, 0, n_img]) is a top-R by score
with the library's tie rule (larger first, then lower index) and "spatial"
order keeps the image tokens in raster order; ``gather_tokens`` compacts the
hidden states (and is differentiable, should you fine-tune through it). The
kept tokens keep their original position ids, so rotary embeddings see the
positions the model was trained with.

The model is a tiny randomly initialised LlamaForCausalLM (nothing is
downloaded) run layer by layer; ``--keep`` equal to the image token count
reproduces Hugging Face's own forward, which tests/test_examples.py checks.
Printed: the kept image tokens, the prefill MACs of the LLM before and after
(``litelvlm_kernels.flops.prefill_macs(..., prune_layer=K)``) and the
next-token logits' agreement with the unpruned model.

Run: ``python examples/fastv_style.py [--layer 2] [--keep 72]``
(needs ``transformers``).
"""

from __future__ import annotations

import argparse

import torch

try:
    import transformers
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv
except ImportError as exc:  # pragma: no cover
    raise SystemExit('this example needs transformers: pip install "litelvlm_kernels[hf]"') from exc

import litelvlm_kernels  # noqa: F401  (registers torch.ops.litelvlm)

try:
    from litelvlm_kernels.flops import DecoderConfig, prefill_macs
except ImportError:  # pragma: no cover
    DecoderConfig = prefill_macs = None

ops = torch.ops.litelvlm


def build_llm(seed: int = 0, attn_implementation: str = "sdpa"):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    cfg._attn_implementation = attn_implementation
    return transformers.LlamaForCausalLM(cfg).eval()


def make_sequence(llm, num_sys=5, num_image=144, num_question=11, batch=1, seed=1):
    """inputs_embeds [B, n, h]: system prompt, image tokens (a projector's output), question."""
    g = torch.Generator().manual_seed(seed)
    emb = llm.get_input_embeddings()
    sys_ids = torch.randint(0, llm.config.vocab_size, (batch, num_sys), generator=g)
    q_ids = torch.randint(0, llm.config.vocab_size, (batch, num_question), generator=g)
    image = torch.randn(batch, num_image, llm.config.hidden_size, generator=g) * emb.weight.std()
    return torch.cat([emb(sys_ids), image, emb(q_ids)], dim=1)


def causal_mask(n: int, dtype) -> torch.Tensor:
    """Additive [1, 1, n, n] mask: valid with every attention implementation."""
    m = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype).triu(1)
    return m[None, None]


def _layer(layer, h, mask, pos, pe):
    out = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=pe)
    return out[0] if isinstance(out, tuple) else out  # transformers 4.x returns a tuple


def attention_weights(layer, h_in, pos, pe, mask) -> torch.Tensor:
    """Layer's attention probabilities [B, heads, n, n] from its input (what FastV reads).

    Recomputed from q_proj / k_proj + rotary, so the model may run sdpa or
    flash attention; HF's eager attention with output_attentions gives the same.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(h_in)
    B, n, _ = x.shape
    d = attn.head_dim
    q = attn.q_proj(x).view(B, n, -1, d).transpose(1, 2)
    k = attn.k_proj(x).view(B, n, -1, d).transpose(1, 2)
    cos, sin = pe
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    scores = (q @ k.transpose(-1, -2)) * attn.scaling + mask
    return torch.softmax(scores.float(), dim=-1)


def fastv_forward(llm, embeds, image_start, num_image, *, layer=2, keep=72, rank="last"):
    """Prefill with FastV pruning after ``layer`` decoder layers. Returns (next-token logits [B, V], info)."""
    model = llm.model
    B, n, _ = embeds.shape
    pos = torch.arange(n).unsqueeze(0).expand(B, -1)
    mask = causal_mask(n, embeds.dtype)
    pe = model.rotary_emb(embeds, pos)
    h = embeds
    for i, lyr in enumerate(model.layers[:layer]):
        if i == layer - 1:
            probs = attention_weights(lyr, h, pos, pe, mask)  # [B, H, n, n]
        h = _layer(lyr, h, mask, pos, pe)
    info = dict(seq_before=n, seq_after=n)
    if layer > 0 and keep < num_image:
        avg = probs.mean(1)  # average over heads, [B, n, n]
        recv = avg[:, -1] if rank == "last" else avg.mean(1)  # from the last token (FastV) or all queries
        recv = recv[:, image_start:image_start + num_image].contiguous()  # [B, n_img]
        no_text = recv.new_empty(B, 0, num_image)  # T = 0: rank by score only
        kept_img, _, _ = ops.select_tokens(no_text, recv, keep, order="spatial")  # ascending image indices
        before = torch.arange(image_start).expand(B, -1)
        after = torch.arange(image_start + num_image, n).expand(B, -1)
        idx = torch.cat([before, kept_img + image_start, after], dim=1)  # [B, n']
        h = ops.gather_tokens(h, idx)
        pos = torch.gather(pos, 1, idx)  # kept tokens keep their position ids
        mask = causal_mask(idx.shape[1], embeds.dtype)
        pe = model.rotary_emb(h, pos)
        info.update(seq_after=idx.shape[1], kept_image=kept_img, received=recv, positions=idx)
    for lyr in model.layers[layer:]:
        h = _layer(lyr, h, mask, pos, pe)
    return llm.lm_head(model.norm(h[:, -1])), info


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", type=int, default=2, help="K: prune after this many decoder layers")
    p.add_argument("--keep", type=int, default=72, help="image tokens kept (of 144)")
    p.add_argument("--rank", default="last", choices=["last", "mean"],
                   help="attention received from the last token (FastV) or averaged over all queries")
    args = p.parse_args(argv)

    llm = build_llm()
    num_sys, num_image, num_q = 5, 144, 11
    embeds = make_sequence(llm, num_sys, num_image, num_q)
    with torch.no_grad():
        full = llm(inputs_embeds=embeds).logits[:, -1]  # Hugging Face's own forward, no pruning
        logits, info = fastv_forward(llm, embeds, num_sys, num_image, layer=args.layer, keep=args.keep,
                                     rank=args.rank)
    kept = info.get("kept_image")
    print(f"FastV-style pruning in a tiny Llama ({llm.config.num_hidden_layers} layers, h={llm.config.hidden_size}):"
          f" after layer {args.layer}, image tokens {num_image} -> {args.keep if kept is not None else num_image};"
          f" sequence {info['seq_before']} -> {info['seq_after']}")
    if kept is not None:
        print(f"kept image tokens of row 0 (raster order): {kept[0, :16].tolist()} ...")
    macs = {}
    if prefill_macs is not None:
        cfg = DecoderConfig.from_hf(llm.config)
        macs = dict(full=prefill_macs(cfg, num_image, num_sys + num_q, include_lm_head="last"),
                    pruned=prefill_macs(cfg, num_image, num_sys + num_q, keep=args.keep, prune_layer=args.layer,
                                        include_lm_head="last"))
        print(f"LLM prefill MACs: {macs['full']:,} -> {macs['pruned']:,} ({macs['pruned'] / macs['full']:.3f}x)")
    agree = torch.softmax(full, -1).sub(torch.softmax(logits, -1)).abs().sum(-1).max().item()
    print(f"next-token distribution vs the unpruned model: total variation {agree / 2:.4f}, "
          f"same top-1: {bool((full.argmax(-1) == logits.argmax(-1)).all())}")
    return dict(logits=logits, logits_full=full, info=info, macs=macs, embeds=embeds, llm=llm,
                num_sys=num_sys, num_image=num_image)


if __name__ == "__main__":
    main()
