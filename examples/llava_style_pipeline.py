"""A LLaVA-style pipeline with LiteLVLM pruning between the vision tower and the LLM.

    image -> CLIP vision tower -> [prune 576 -> R tokens] -> projector -> LLM

Everything is tiny and randomly initialised (nothing is downloaded), with the
shapes that matter for the token count: a CLIP tower at 336 px / patch 14
(M = 576 patch tokens, as ViT-L/14-336 in LLaVA-1.5), a two-layer MLP
projector and a small LlamaForCausalLM. The LLM receives only the kept tokens
through ``inputs_embeds``. Printed: prefill multiply-accumulates of the LLM
(analytic, ``litelvlm_kernels.flops``, and counted by
``torch.utils.flop_counter``) and wall time, before and after pruning (medians
and p20-p80 of interleaved rounds; a time ratio whose intervals overlap is
marked "within noise").

Run: ``python examples/llava_style_pipeline.py [--retain 192] [--texts 2]``
(needs ``transformers``: ``pip install "litelvlm_kernels[hf]"``).

With real weights, swap the tiny models for
``CLIPModel.from_pretrained("openai/clip-vit-large-patch14-336")`` and its
``CLIPTokenizer``, pass ``texts=[...]`` instead of ``input_ids``, and use your
LLaVA's projector and language model.
"""

from __future__ import annotations

import argparse

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

try:
    import transformers
except ImportError as exc:  # pragma: no cover
    raise SystemExit('this example needs transformers: pip install "litelvlm_kernels[hf]"') from exc

from litelvlm_kernels.integrations.hf import LiteLVLMPruner, capture_vision
from litelvlm_kernels.timing import format_ratio, interleaved

try:  # the analytic counter (docs/design.md section 7)
    from litelvlm_kernels.flops import DecoderConfig, prefill_macs
except ImportError:  # pragma: no cover
    DecoderConfig = prefill_macs = None

BOS, EOS = 1, 2  # tiny CLIP text vocabulary: ids 3.. are "words"


def build_models(seed: int = 0):
    torch.manual_seed(seed)
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        vision_config=dict(image_size=336, patch_size=14, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=3, num_attention_heads=4),
        text_config=dict(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=BOS,
                         eos_token_id=EOS, pad_token_id=EOS),
        projection_dim=32)).eval()
    llm_cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=344,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                       max_position_embeddings=1024)
    llm = transformers.LlamaForCausalLM(llm_cfg).eval()
    dv = clip.config.vision_config.hidden_size
    # LLaVA-1.5's projector: Linear -> GELU -> Linear
    projector = torch.nn.Sequential(torch.nn.Linear(dv, llm_cfg.hidden_size), torch.nn.GELU(),
                                    torch.nn.Linear(llm_cfg.hidden_size, llm_cfg.hidden_size)).eval()
    return clip, projector, llm


def referring_expressions(num_texts: int, length: int = 6, seed: int = 0) -> torch.Tensor:
    """[num_texts, length] CLIP input_ids: <bos> words... <eos> (a tokenizer's output)."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(3, 64, (num_texts, length - 2), generator=g)
    return torch.cat([torch.full((num_texts, 1), BOS), words, torch.full((num_texts, 1), EOS)], dim=1)


def llm_inputs(llm, visual: torch.Tensor, prompt: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
    """LLaVA's layout: system prompt, image tokens, question."""
    emb = llm.get_input_embeddings()
    B = visual.shape[0]
    return torch.cat([emb(prompt).expand(B, -1, -1), visual, emb(question).expand(B, -1, -1)], dim=1)


def _counted_macs(fn) -> int:
    # The math backend of sdpa decomposes into matmuls the flop counter sees; the
    # fused CPU flash kernel is not counted by torch 2.13's FlopCounterMode.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() // 2  # FLOPs = 2 x MACs


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--retain", type=int, default=192, help="visual tokens kept (of 576)")
    p.add_argument("--texts", type=int, default=2, help="referring expressions for the image")
    p.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds (median, p20-p80)")
    args = p.parse_args(argv)

    clip, projector, llm = build_models()
    pruner = LiteLVLMPruner(clip)  # select_layer=-2, text tower and projection from the CLIPModel
    pixel_values = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(1))
    text_ids = referring_expressions(args.texts)
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 512, (1, 8), generator=g)     # system prompt tokens
    question = torch.randint(0, 512, (1, 24), generator=g)  # the user's question

    def baseline():  # stock LLaVA: all 576 select-layer patch tokens go to the LLM
        feats = clip.vision_model(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        embeds = llm_inputs(llm, projector(feats), prompt, question)
        return llm(inputs_embeds=embeds).logits, embeds.shape[1]

    def pruned():  # only the kept tokens go to the LLM
        out = pruner.prune(pixel_values, text_ids, num_retain=args.retain)
        embeds = llm_inputs(llm, projector(out.tokens), prompt, question)
        return llm(inputs_embeds=embeds).logits, embeds.shape[1], out

    with torch.no_grad():
        pruner.prepare_text(text_ids)  # the text is folded once and cached; later calls reuse it
        logits_full, n_full = baseline()
        logits_pruned, n_pruned, out = pruned()
        num_visual = n_full - prompt.shape[1] - question.shape[1]
        num_text = prompt.shape[1] + question.shape[1]
        kept = out.tokens.shape[1]
        assert n_pruned == kept + num_text, "the LLM must see only the kept visual tokens"

        feats = capture_vision(clip, pixel_values).hidden  # the same tensor as hidden_states[-2][:, 1:]
        emb_full = llm_inputs(llm, projector(feats), prompt, question)
        emb_pruned = llm_inputs(llm, projector(out.tokens), prompt, question)
        counted_full = _counted_macs(lambda: llm(inputs_embeds=emb_full))
        counted_pruned = _counted_macs(lambda: llm(inputs_embeds=emb_pruned))
        if prefill_macs is not None:
            cfg = DecoderConfig.from_hf(llm.config)
            # a plain forward computes logits at every position: count the LM head for all of them
            analytic_full = prefill_macs(cfg, num_visual, num_text, include_lm_head="all")
            analytic_pruned = prefill_macs(cfg, num_visual, num_text, keep=args.retain, include_lm_head="all")
        else:  # pragma: no cover
            analytic_full, analytic_pruned = counted_full, counted_pruned

        times = interleaved({"llm_full": lambda: llm(inputs_embeds=emb_full),
                             "llm_pruned": lambda: llm(inputs_embeds=emb_pruned),
                             "e2e_full": baseline, "e2e_pruned": pruned}, rounds=args.repeat)

    sim = int(out.num_similarity[0])
    print(f"LLaVA-style pipeline, tiny random CLIP (M={num_visual}) + projector + Llama "
          f"(h={llm.config.hidden_size}, {llm.config.num_hidden_layers} layers); {args.texts} referring expressions")
    print(f"visual tokens to the LLM: {num_visual} -> {kept} ({sim} by text similarity, {kept - sim} by [CLS] "
          f"context); LLM sequence {n_full} -> {n_pruned}")
    print(f"{'':24}{'before':>30}{'after':>30}  ratio")
    rows = [("prefill MACs (analytic)", analytic_full, analytic_pruned),
            ("prefill MACs (counted)", counted_full, counted_pruned)]
    for name, a, b in rows:
        print(f"{name:24}{a:>30,}{b:>30,}  {b / a:.3f}")
    for name, key in [("LLM prefill time", "llm"), ("end-to-end time", "e2e")]:
        a, b = times[f"{key}_full"], times[f"{key}_pruned"]
        print(f"{name:24}{str(a):>30}{str(b):>30}  {format_ratio(b, a, '.3f')}")
    print(f"(times: median (p20-p80) of {args.repeat} interleaved rounds; end-to-end: vision tower + pruning + "
          "projector + LLM, the pruned path also skips the unused tail of the tower.\n CPU wall times on a tiny "
          "model: indicative only; the MAC ratio is what carries over to 7B.)")
    return dict(num_visual=num_visual, kept=kept, num_similarity=sim, seq_full=n_full, seq_pruned=n_pruned,
                macs_full=analytic_full, macs_pruned=analytic_pruned, counted_full=counted_full,
                counted_pruned=counted_pruned, times=times, llm_ms_full=times["llm_full"].p50_ms,
                llm_ms_pruned=times["llm_pruned"].p50_ms, e2e_ms_full=times["e2e_full"].p50_ms,
                e2e_ms_pruned=times["e2e_pruned"].p50_ms, indices=out.indices,
                logits_full=logits_full, logits_pruned=logits_pruned)


if __name__ == "__main__":
    main()
