"""examples/: each runs on the CPU in seconds and does what it says.

The examples are imported from their files and their ``main(argv)`` called
(it returns what it printed, as tensors and numbers); one is also run as a
script to check its ``__main__`` entry point.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from litelvlm_kernels import reference
from litelvlm_kernels.testing import assert_selection_close, assert_valid_indices

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- VisionZip-style


@pytest.mark.parametrize("score", ["attention", "contribution"])
def test_visionzip_style(score, capsys):
    vz = load("visionzip_style")
    r = vz.main(["--batch", "2", "--dominant", "54", "--contextual", "10", "--score", score])
    assert "576 -> 64 tokens" in capsys.readouterr().out
    x = r["inputs"]
    assert r["tokens"].shape == (2, 64, 1024) and r["tokens"].dtype == x.hidden.dtype
    # dominant tokens: the top-54 of the [CLS] score of the reference formula, in falling order
    # (equal up to near-ties: with unit q, k and scale 1/32 the a_j lie within a few percent)
    values = x.values if score == "contribution" else torch.full_like(x.values, 1024 ** -0.5)
    c = reference.contribution_direct(x.q_cls, x.keys, values)
    if score == "attention":
        torch.testing.assert_close(r["scores"].sum(1), torch.ones(2))  # a_j: a softmax
    torch.testing.assert_close(r["scores"], c, rtol=1e-5, atol=1e-9)
    no_text = c.new_empty(2, 0, 576)
    assert_selection_close((r["indices"], torch.zeros(2, dtype=torch.int32), torch.zeros(2, 54, dtype=torch.bool)),
                           no_text, c, 54, c_tol=1e-7)
    expected = r["indices"]
    assert r["same_indices"]
    assert torch.equal(r["tokens"][:, :54], torch.stack([x.hidden[b, expected[b]] for b in range(2)]))
    # contextual tokens: same groups and means as the plain-torch version
    torch.testing.assert_close(r["tokens"], r["reference_tokens"], rtol=1e-4, atol=1e-3)
    # every contextual token is a mean of tokens that were not dominant: it lies in their hull per channel
    for b in range(2):
        rest = torch.ones(576, dtype=torch.bool)
        rest[expected[b]] = False
        lo, hi = x.hidden[b, rest].min(0).values, x.hidden[b, rest].max(0).values
        ctx = r["tokens"][b, 54:]
        assert bool(((ctx >= lo - 1e-3) & (ctx <= hi + 1e-3)).all())


def m_rounds(r):
    """Rounds behind prefill_metrics' stock and pruned times (interleaved: as many of each)."""
    return [r["metrics"][side]["prefill_time"].rounds for side in ("stock", "pruned")]


def test_visionzip_times_are_interleaved_medians(capsys):
    vz = load("visionzip_style")
    r = vz.main(["--batch", "1", "--dominant", "20", "--contextual", "4", "--repeat", "3"])
    assert {k: t.rounds for k, t in r["times"].items()} == {"ops": 3, "plain": 3}
    assert all(t.p20_ms <= t.p50_ms <= t.p80_ms for t in r["times"].values())
    assert "p20-p80" in capsys.readouterr().out


def test_visionzip_helpers_small():
    vz = load("visionzip_style")
    idx = torch.tensor([[3, 0], [1, 2]])
    assert vz.remaining_indices(idx, 5).tolist() == [[1, 2, 4], [0, 3, 4]]
    with pytest.raises(ValueError, match="score"):
        vz.dominant_tokens(torch.zeros(1, 4, 2), torch.ones(1, 2), torch.ones(1, 4, 2), torch.ones(1, 4, 2), 2,
                           score="nope")


def test_visionzip_runs_as_a_script():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, str(EXAMPLES / "visionzip_style.py"), "--batch", "1", "--dominant", "20",
                        "--contextual", "4"], capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    assert "576 -> 24 tokens" in r.stdout and "same dominant tokens: True" in r.stdout


# --------------------------------------------------------------------------- LLaVA-style (needs transformers)


def test_llava_style_pipeline(capsys):
    pytest.importorskip("transformers")
    ex = load("llava_style_pipeline")
    r = ex.main(["--retain", "64", "--texts", "2", "--repeat", "1"])
    out = capsys.readouterr().out
    assert "576 -> 64" in out and "prefill MACs" in out
    assert r["num_visual"] == 576 and r["kept"] == 64
    assert r["seq_full"] == 576 + 32 and r["seq_pruned"] == 64 + 32  # the LLM saw only the kept tokens
    assert r["logits_full"].shape[1] == 608 and r["logits_pruned"].shape[1] == 96
    assert_valid_indices(r["indices"], 576, 64)
    assert 0 < r["num_similarity"] <= 64
    # analytic (flops.prefill_macs) and torch's flop counter agree, and pruning cuts the MACs
    assert r["macs_full"] == r["counted_full"] and r["macs_pruned"] == r["counted_pruned"]
    assert r["macs_pruned"] < 0.25 * r["macs_full"]
    for k in ("llm_ms_full", "llm_ms_pruned", "e2e_ms_full", "e2e_ms_pruned"):
        assert r[k] > 0
    assert all(t.rounds == 1 for t in r["times"].values())
    assert out.count("(too few rounds)") == 2  # one round: the two time ratios are flagged


# --------------------------------------------------------------------------- FastV-style (needs transformers)


def test_fastv_style(capsys):
    transformers = pytest.importorskip("transformers")
    fv = load("fastv_style")
    r = fv.main(["--layer", "2", "--keep", "72"])
    assert "144 -> 72" in capsys.readouterr().out
    info, llm, embeds = r["info"], r["llm"], r["embeds"]
    assert info["seq_before"] == 160 and info["seq_after"] == 5 + 72 + 11
    kept = info["kept_image"]
    assert_valid_indices(kept, 144, 72)
    assert torch.equal(kept, kept.sort(1).values)  # spatial order
    # positions: system prompt, kept image tokens (original positions), question
    assert info["positions"][0, :5].tolist() == list(range(5))
    assert info["positions"][0, -11:].tolist() == list(range(149, 160))
    assert r["macs"]["pruned"] < r["macs"]["full"]

    with torch.no_grad():
        # The ranking equals the attention Hugging Face's eager attention reports for layer K - 1.
        eager = fv.build_llm(attn_implementation="eager")
        eager.load_state_dict(llm.state_dict())
        att = eager(inputs_embeds=embeds, output_attentions=True).attentions[1]  # layer index K - 1 = 1
        recv = att.mean(1)[:, -1, 5:5 + 144]
        torch.testing.assert_close(info["received"], recv.float(), rtol=1e-4, atol=1e-6)
        top = torch.stack([reference.top_contribution_order(recv[b].float())[:72] for b in range(recv.shape[0])])
        assert torch.equal(kept, top.sort(1).values)

        # Keeping every image token reproduces Hugging Face's own forward.
        logits_all, info_all = fv.fastv_forward(llm, embeds, 5, 144, layer=2, keep=144)
        assert info_all["seq_after"] == 160
        torch.testing.assert_close(logits_all, r["logits_full"], rtol=1e-4, atol=1e-5)

        # Pruning with the ops equals pruning with plain index_select.
        ref_logits, _ = fastv_with_index_select(fv, llm, embeds, kept)
        torch.testing.assert_close(r["logits"], ref_logits, rtol=1e-5, atol=1e-6)
    assert transformers is not None


def fastv_with_index_select(fv, llm, embeds, kept_image):
    """fastv_forward's second half written with torch.index_select (B = 1) for comparison."""
    model = llm.model
    n = embeds.shape[1]
    pos = torch.arange(n).unsqueeze(0)
    mask = fv.causal_mask(n, embeds.dtype)
    pe = model.rotary_emb(embeds, pos)
    h = embeds
    for lyr in model.layers[:2]:
        h = fv._layer(lyr, h, mask, pos, pe)
    keep = torch.cat([torch.arange(5), kept_image[0] + 5, torch.arange(149, 160)])
    h = h.index_select(1, keep)
    pos = keep.unsqueeze(0)
    mask = fv.causal_mask(keep.numel(), embeds.dtype)
    pe = model.rotary_emb(h, pos)
    for lyr in model.layers[2:]:
        h = fv._layer(lyr, h, mask, pos, pe)
    return llm.lm_head(model.norm(h[:, -1])), keep


# --------------------------------------------------------------------------- stock LVLMs + enable_litelvlm


@pytest.mark.parametrize("name,argv,kind,kept", [
    ("llava_generate", ["--retain", "16"], "image", [16, 16, 16]),
    ("llava_interleave_generate", ["--retain", "16"], "image", [16, 16, 16]),
    ("llava_next_generate", ["--retain", "16", "--budget", "global"], "image", None),
    ("llava_next_video_generate", ["--retain", "4"], "video", [16, 16]),
    ("llava_onevision_generate", ["--retain", "8"], "image", None),
    ("llava_onevision_generate", ["--retain", "4", "--budget", "per_frame"], "video", [17, 17]),  # 4 x 4 + newline
    ("paligemma_generate", ["--retain", "16"], "image", [16, 16, 16]),
    ("qwen_vl_generate", ["--retain", "4"], "image", [4, 4, 4]),
    ("qwen_vl_generate", ["--retain", "3", "--family", "qwen3_vl"], "image", [3, 3, 3]),
])
def test_lvlm_generate_examples(name, argv, kind, kept, capsys):
    pytest.importorskip("transformers")
    r = load(name).main(argv + ["--repeat", "1", "--new-tokens", "3"])
    out = capsys.readouterr().out
    for word in ("visual tokens", "prefill FLOPs", "KV cache", "prefill time", "TFLOPs"):
        assert word in out
    # the time is shown with its spread, and a ratio from one round is flagged, not shown bare
    (time_row,) = [line for line in out.splitlines() if line.startswith("prefill time")]
    assert time_row.count("p20-p80") == 2 and time_row.endswith("(too few rounds)")
    assert m_rounds(r) == [1, 1]
    assert r["keep_all_equals_stock"]  # keeping every token in raster order changes nothing
    rep, m = r["report"][kind], r["metrics"]
    if kept is not None:
        assert rep["kept"] == kept
    assert sum(rep["kept"]) == m["pruned"]["visual_tokens"] < m["stock"]["visual_tokens"] == sum(rep["stock"])
    for key in ("prefill_flops", "kv_cache_bytes", "tokens"):
        assert 0 < m["pruned"][key] < m["stock"][key]
    assert r["pruned_ids"].shape == r["stock_ids"].shape  # prompt re-expanded in front of the new tokens


def test_paligemma_shows_the_effect_of_pruning(capsys):
    """With a sharpened Gemma (llm_std=0.3) the pruned ids differ from the stock ones, and other expressions keep
    other tokens and give other ids: the selection reaches the LLM (the ids were [108] * 8 either way before)."""
    pytest.importorskip("transformers")
    r = load("paligemma_generate").main(["--retain", "16", "--repeat", "1", "--new-tokens", "6"])
    out = capsys.readouterr().out
    L = r["stock_ids"].shape[1] - 6
    assert r["pruning_changes_ids"] and not torch.equal(r["pruned_ids"][:, L:], r["stock_ids"][:, L:])
    assert len(set(r["stock_ids"][:, L:].flatten().tolist())) > 2  # not one repeated token
    assert r["kept"] != r["other_kept"] and not torch.equal(r["other_ids"], r["pruned_ids"])
    assert [len(k) for k in r["kept"]] == [len(k) for k in r["other_kept"]] == [16] * 3
    assert "pruning changes the generated ids: True" in out and "other expressions keep other tokens: True" in out
    assert r["keep_all_equals_stock"]


def test_qwen_vl_generate_shows_the_paired_scorer(capsys):
    """The paired CLIP's grid per image, the selection reaching the ids, other expressions keeping other tokens,
    retain_ratio's counts (ceil(0.5 N)), and the scorer's share of the tower's MACs at full size."""
    pytest.importorskip("transformers")
    r = load("qwen_vl_generate").main(["--retain", "4", "--repeat", "1", "--new-tokens", "6"])
    out = capsys.readouterr().out
    assert "image 0: 3 x 4 tokens of 28 px; the scorer sees 7 x 9 patches" in out  # scaled up to ~64 patches
    assert r["pruning_changes_ids"] and r["kept"] != r["other_kept"]
    assert r["ratio_kept"] == [-(-n // 2) for n in r["report"]["image"]["stock"]]
    assert r["keep_all_equals_stock"] and 0.01 < r["cost"]["share"] < 0.05
    assert "other expressions keep other tokens: True" in out and "of the tower's MACs" in out


def test_llava_processor_generate(capsys):
    """The README's snippet through an offline LlavaProcessor: the processor expands <image> to M placeholders
    around the prompt's words, LiteLVLM shrinks them to R, keeping all reproduces the stock ids."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("PIL")
    ex = load("llava_processor_generate")
    r = ex.main(["--retain", "16", "--new-tokens", "4"])
    out = capsys.readouterr().out
    tl = ex.tl
    ids = r["inputs"]["input_ids"][0]
    image = (ids == tl.IMAGE_TOKEN).nonzero().flatten()
    assert image.numel() == tl.M and torch.equal(image, torch.arange(image[0], image[0] + tl.M))  # one run of M
    words = r["processor"].tokenizer.convert_ids_to_tokens(ids[ids != tl.IMAGE_TOKEN].tolist())
    assert words == ["<s>", "USER", ":", "What", "is", "the", "man", "on", "the", "left", "holding", "?",
                     "ASSISTANT", ":"]
    px = r["inputs"]["pixel_values"]
    assert px.shape == (1, 3, tl.IMAGE, tl.IMAGE) and px.dtype == torch.float32
    assert r["image"].size != (tl.IMAGE, tl.IMAGE)  # the processor resized and cropped it
    assert r["report"]["image"]["stock"] == [tl.M] and r["report"]["image"]["kept"] == [16]
    L = ids.shape[0]
    assert torch.equal(r["pruned_ids"][:, :L], r["inputs"]["input_ids"])  # the caller's prompt in front
    assert not torch.equal(r["pruned_ids"], r["stock_ids"]) and r["keep_all_equals_stock"]
    assert "64 <image> placeholders" in out and "stock [64] -> kept [16]" in out
    assert transformers.LlavaProcessor is type(r["processor"])
