"""litelvlm_kernels.flops: hand counts, torch's flop counter on a real HF decoder, CLI."""

import json
import os
import subprocess
import sys

import pytest

from litelvlm_kernels.flops import (
    PRESETS,
    DecoderConfig,
    layer_macs,
    prefill_breakdown,
    prefill_flops,
    prefill_macs,
)
from litelvlm_kernels.flops.cli import main  # noqa: E402

# h=8, h_ff=12, L=2, heads=2, kv_heads=1 -> head_dim=4, h_q=8, h_kv=4
TINY = DecoderConfig(hidden=8, intermediate=12, layers=2, heads=2, kv_heads=1, vocab=10)


# ----------------------------------------------------------------- hand counts


def test_hand_count_tiny():
    # per token: q,o 2*8*8=128; k,v 2*8*4=64; MLP 3*8*12=288 -> 480
    # n=5 (3 visual + 2 text): 5*480 = 2400, attention 2*5*5*8 = 400 -> 2800 per layer
    assert layer_macs(TINY, 5) == 2800
    assert prefill_macs(TINY, 3, 2) == 2 * 2800 == 5600
    assert prefill_flops(TINY, 3, 2) == 11200
    # keep=1 before the LLM: n=3: 3*480 = 1440, attention 2*9*8 = 144 -> 1584 per layer
    assert layer_macs(TINY, 3) == 1584
    assert prefill_macs(TINY, 3, 2, keep=1) == 2 * 1584 == 3168
    # FastV-style after layer 1: layer 0 sees 5 tokens, layer 1 sees 3
    assert prefill_macs(TINY, 3, 2, keep=1, prune_layer=1) == 2800 + 1584 == 4384
    # prune_layer = L: pruning never happens
    assert prefill_macs(TINY, 3, 2, keep=1, prune_layer=2) == 5600
    # LM head 8 x 10: every kept position (3*80) or only the last (80)
    assert prefill_macs(TINY, 3, 2, keep=1, include_lm_head=True) == 3168 + 240
    assert prefill_macs(TINY, 3, 2, keep=1, include_lm_head="all") == 3168 + 240
    assert prefill_macs(TINY, 3, 2, keep=1, include_lm_head="last") == 3168 + 80
    assert prefill_macs(TINY, 3, 2, keep=1, prune_layer=1, include_lm_head="all") == 4384 + 240


def test_hand_count_vicuna_7b():
    cfg = DecoderConfig.preset("vicuna-7b")
    h, f, L = 4096, 11008, 32
    for n in (640, 256, 192, 128):
        want = L * (n * (2 * h * h + 2 * h * h + 3 * h * f) + 2 * n * n * h)
        assert prefill_macs(cfg, n - 64, 64) == want
    assert prefill_macs(cfg, 576, 64) == 4_252_017_623_040  # the docs' number
    assert prefill_macs(cfg, 576, 64, keep=192) == 1_675_037_245_440


def test_head_dim_and_gqa():
    # head_dim given and != h/heads (Gemma-style): h_q = 4*8 = 32, h_kv = 2*8 = 16
    cfg = DecoderConfig(hidden=64, intermediate=96, layers=1, heads=4, kv_heads=2, vocab=10, head_dim=8)
    n = 7
    assert layer_macs(cfg, n) == n * (2 * 64 * 32 + 2 * 64 * 16 + 3 * 64 * 96) + 2 * n * n * 32


def test_breakdown_sums():
    br = prefill_breakdown(TINY, 3, 2, keep=1, prune_layer=1, include_lm_head="all")
    assert br["total"] == br["projections"] + br["attention"] + br["mlp"] + br["lm_head"]
    assert (br["tokens_full"], br["tokens_kept"], br["layers_full"], br["layers_pruned"]) == (5, 3, 1, 1)
    assert br["attention"] == 400 + 144


def test_keep_clamped_and_monotone():
    cfg = DecoderConfig.preset("qwen2-7b")
    full = prefill_macs(cfg, 576, 32)
    assert prefill_macs(cfg, 576, 32, keep=576) == full
    assert prefill_macs(cfg, 576, 32, keep=10_000) == full
    assert prefill_macs(cfg, 576, 32, keep=0) == prefill_macs(cfg, 0, 32)
    vals = [prefill_macs(cfg, 576, 32, keep=k) for k in (0, 64, 128, 192, 576)]
    assert vals == sorted(vals) and len(set(vals)) == 5
    # keep=None ignores prune_layer
    assert prefill_macs(cfg, 576, 32, prune_layer=3) == full
    assert prefill_macs(cfg, 0, 0) == 0


def test_presets():
    assert PRESETS["vicuna-7b"] == DecoderConfig(4096, 11008, 32, 32, 32, 32000)
    assert DecoderConfig.preset("LLaMA-7B") == PRESETS["llama-7b"]
    assert DecoderConfig.preset("llama-13b") == DecoderConfig(5120, 13824, 40, 40, 40, 32000)
    q = DecoderConfig.preset("qwen2-7b")
    assert q == DecoderConfig(3584, 18944, 28, 28, 4, 152064)
    assert (q.dim_head, q.kv_width) == (128, 512)


def test_from_hf_dict_and_text_config():
    d = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
         "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064}
    assert DecoderConfig.from_hf(d) == PRESETS["qwen2-7b"]
    assert DecoderConfig.from_hf({"model_type": "llava", "text_config": d}) == PRESETS["qwen2-7b"]
    no_kv = {k: v for k, v in d.items() if k != "num_key_value_heads"}
    assert DecoderConfig.from_hf(no_kv).kv_heads == 28
    assert DecoderConfig.from_hf({**d, "head_dim": 128}) == PRESETS["qwen2-7b"]  # default head_dim
    assert DecoderConfig.from_hf({**d, "head_dim": 256}).q_width == 28 * 256
    with pytest.raises(ValueError, match="intermediate_size"):
        DecoderConfig.from_hf({k: v for k, v in d.items() if k != "intermediate_size"})


# ----------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(num_visual=-1), ValueError, "num_visual"),
        (dict(num_text=-2), ValueError, "num_text"),
        (dict(keep=-1), ValueError, "keep"),
        (dict(keep=1.5), TypeError, "keep"),
        (dict(keep=True), TypeError, "keep"),
        (dict(keep=1, prune_layer=-1), ValueError, "prune_layer"),
        (dict(keep=1, prune_layer=3), ValueError, "prune_layer"),
        (dict(prune_layer=3), ValueError, "prune_layer"),
        (dict(include_lm_head="first"), ValueError, "include_lm_head"),
    ],
)
def test_errors(kwargs, exc, match):
    args = dict(num_visual=3, num_text=2)
    args.update(kwargs)
    nv, nt = args.pop("num_visual"), args.pop("num_text")
    with pytest.raises(exc, match=match):
        prefill_macs(TINY, nv, nt, **args)


def test_config_errors():
    with pytest.raises(ValueError, match="hidden"):
        DecoderConfig(0, 12, 2, 2, 1, 10)
    with pytest.raises(ValueError, match="divisible"):
        DecoderConfig(10, 12, 2, 3, 1, 10)
    with pytest.raises(ValueError, match="kv_heads"):
        DecoderConfig(8, 12, 2, 2, 3, 10)
    with pytest.raises(TypeError, match="layers"):
        DecoderConfig(8, 12, 2.0, 2, 1, 10)
    with pytest.raises(ValueError, match="unknown model preset"):
        DecoderConfig.preset("gpt-5")
    with pytest.raises(TypeError, match="cfg"):
        prefill_macs({"hidden": 8}, 3, 2)


# -------------------------------------------- against torch's flop counter + HF


def _hf_flops(cfg_kwargs, n, *, lm_head=False, attn="eager", math_sdpa=False, layers=None):
    """FLOPs torch.utils.flop_counter counts for one forward of a random HF Llama."""
    transformers = pytest.importorskip("transformers")
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    kw = dict(cfg_kwargs)
    if layers is not None:
        kw["num_hidden_layers"] = layers
    config = transformers.LlamaConfig(**kw, attn_implementation=attn)
    torch.manual_seed(0)
    cls = transformers.LlamaForCausalLM if lm_head else transformers.LlamaModel
    model = cls(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, n))
    ctx = []
    if math_sdpa:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        ctx.append(sdpa_kernel(SDPBackend.MATH))
    import contextlib

    with contextlib.ExitStack() as stack:
        for c in ctx:
            stack.enter_context(c)
        stack.enter_context(torch.no_grad())
        fc = stack.enter_context(FlopCounterMode(display=False))
        model(input_ids=ids)
    return fc.get_total_flops(), config


HF_TINY = dict(hidden_size=64, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=96)


@pytest.mark.parametrize("attn, math_sdpa", [("eager", False), ("sdpa", True)])
def test_matches_flop_counter_exactly(attn, math_sdpa):
    # eager attention: two bmm per layer; sdpa forced onto its math backend: the
    # same bmm. Norms, rotary, softmax, SiLU are not matmuls and the counter
    # skips them just as the formula does: exact equality.
    flops, config = _hf_flops(HF_TINY, 13, attn=attn, math_sdpa=math_sdpa)
    cfg = DecoderConfig.from_hf(config)
    assert cfg == DecoderConfig(64, 88, 2, 4, 2, 96)
    assert flops == prefill_flops(cfg, 9, 4) == 2 * prefill_macs(cfg, 9, 4)


def test_matches_flop_counter_lm_head_and_head_dim():
    # LlamaForCausalLM.forward computes logits for every position (logits_to_keep=0)
    kw = dict(HF_TINY, head_dim=8)  # h_q = 32 != h
    flops, config = _hf_flops(kw, 11, lm_head=True)
    cfg = DecoderConfig.from_hf(config)
    assert cfg.head_dim == 8
    assert flops == prefill_flops(cfg, 11, 0, include_lm_head="all")


def test_flop_counter_cpu_sdpa_skips_attention():
    # On the CPU, sdpa dispatches to aten._scaled_dot_product_flash_attention_for_cpu,
    # which torch's flop registry (2.13) does not list: the counter then sees only
    # the projections and the MLP. (CUDA's flash/efficient/cudnn sdpa are listed and
    # counted as 4 n^2 d per head, no causal halving, i.e. our formula.)
    flops, config = _hf_flops(HF_TINY, 13, attn="sdpa")
    cfg = DecoderConfig.from_hf(config)
    br = prefill_breakdown(cfg, 13, 0)
    assert flops in (2 * br["total"], 2 * (br["total"] - br["attention"]))


def test_matches_flop_counter_cuda_sdpa():
    # On CUDA, sdpa runs a flash / efficient / cuDNN kernel, all in torch's flop
    # registry, counted as 4 s_q s_k d per head without causal halving: the formula.
    # Multi-head (kv_heads = heads): older torch (2.11) asserts equal q/k heads there.
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    transformers = pytest.importorskip("transformers")
    from torch.utils.flop_counter import FlopCounterMode

    config = transformers.LlamaConfig(**dict(HF_TINY, num_key_value_heads=4), attn_implementation="sdpa")
    model = transformers.LlamaModel(config).to("cuda", torch.float16).eval()
    ids = torch.randint(0, config.vocab_size, (2, 37), device="cuda")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(input_ids=ids)
    cfg = DecoderConfig.from_hf(config)
    assert fc.get_total_flops() == 2 * prefill_flops(cfg, 30, 7)  # batch of 2


def test_fastv_matches_flop_counter_by_layers():
    # FastV after layer K: K layers see n0 tokens, L-K layers see n1. A model's
    # layers are independent in the count, so count a K-layer model at n0 and an
    # (L-K)-layer model at n1.
    L, K, nv, nt, keep = 3, 1, 10, 3, 4
    f0, config = _hf_flops(HF_TINY, nv + nt, layers=K)
    f1, _ = _hf_flops(HF_TINY, keep + nt, layers=L - K)
    cfg = DecoderConfig.from_hf(config)
    cfg = DecoderConfig(cfg.hidden, cfg.intermediate, L, cfg.heads, cfg.kv_heads, cfg.vocab)
    assert f0 + f1 == prefill_flops(cfg, nv, nt, keep=keep, prune_layer=K)


def test_from_hf_transformers_configs():
    transformers = pytest.importorskip("transformers")
    assert DecoderConfig.from_hf(transformers.LlamaConfig()) == PRESETS["llama-7b"]
    q = transformers.Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                 num_attention_heads=28, num_key_value_heads=4, vocab_size=152064)
    assert DecoderConfig.from_hf(q) == PRESETS["qwen2-7b"]


# -------------------------------------------------------------------------- CLI

CLI = ["--model", "vicuna-7b", "--visual", "576", "--keep", "192", "128", "64", "--text", "64"]


def test_cli_table(capsys):
    assert main(CLI) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "vicuna-7b" in lines[0] and "FLOPs (T)" in lines[1]
    assert len(lines) == 3 + 4  # title, header, rule, unpruned + 3 keeps
    assert "4,252,017,623,040" in out and "8.504" in out and "100.0" in out
    assert "39.4" in out and "29.5" in out and "19.6" in out


def test_cli_json(capsys):
    assert main(CLI + ["--json", "--prune-layer", "2", "--lm-head", "last"]) == 0
    data = json.loads(capsys.readouterr().out)
    cfg = DecoderConfig.preset("vicuna-7b")
    assert data["config"]["hidden"] == 4096 and data["prune_layer"] == 2
    assert [r["keep"] for r in data["rows"]] == [None, 192, 128, 64]
    for r in data["rows"]:
        want = prefill_macs(cfg, 576, 64, keep=r["keep"], prune_layer=2 if r["keep"] else 0,
                            include_lm_head="last")
        assert r["macs"] == want and r["flops"] == 2 * want
    assert data["rows"][0]["percent_of_unpruned"] == 100.0
    assert data["rows"][1]["tokens"] == 256


def test_cli_hf_config(tmp_path, capsys):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"text_config": {
        "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10}}))
    assert main(["--hf-config", str(p), "--visual", "3", "--text", "2", "--keep", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["macs"] for r in rows] == [5600, 3168]


@pytest.mark.parametrize("bad, match", [
    (["--keep", "-1"], "keep"),
    (["--prune-layer", "33"], "prune_layer"),
    (["--visual", "-5"], "num_visual"),
    (["--model", "nope"], "unknown model preset"),
])
def test_cli_errors(bad, match, capsys):
    with pytest.raises(SystemExit) as e:
        main(bad)
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_cli_module_entry_point():
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "litelvlm_kernels.flops", *CLI, "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"][0]["macs"] == 4_252_017_623_040


# -------------------------------------------------------------------- memory (litelvlm_kernels.memory)


def test_kv_cache_and_activation_hand_count():
    from litelvlm_kernels.memory import activation_bytes, kv_cache_bytes

    # TINY: h_kv = 1 * 4 = 4; 2 (K, V) * 4 * 2 bytes = 16 bytes per token per layer
    assert kv_cache_bytes(TINY, 3, 2) == 16 * 2 * 5 == 160
    assert kv_cache_bytes(TINY, 3, 2, keep=1) == 16 * 2 * 3
    assert kv_cache_bytes(TINY, 3, 2, keep=1, prune_layer=1) == 16 * (5 + 3)
    assert kv_cache_bytes(TINY, 3, 2, dtype_bytes=4) == 320
    # n = 5: attention block 5 * (2*8 + 2*8) = 160 (+ eager 2 heads * 25 = 50); MLP 5 * (3*8 + 3*12) = 300
    assert activation_bytes(TINY, 3, 2) == 2 * 300
    assert activation_bytes(TINY, 3, 2, attention="eager") == 2 * 300
    # n = 3 after pruning; FastV-style pruning after layer 1 keeps the widest layer at n = 5
    assert activation_bytes(TINY, 3, 2, keep=1) == 2 * 180
    assert activation_bytes(TINY, 3, 2, keep=1, prune_layer=1) == 2 * 300
    wide = DecoderConfig(hidden=8, intermediate=2, layers=1, heads=2, kv_heads=2, vocab=10)
    # attention dominates: 50 * (16 + 16) = 1600, eager + 2 * 2500 = 6600; MLP 50 * (24 + 6) = 1500
    assert activation_bytes(wide, 50, 0, dtype_bytes=1) == 1600
    assert activation_bytes(wide, 50, 0, dtype_bytes=1, attention="eager") == 6600
    with pytest.raises(ValueError, match="attention"):
        activation_bytes(TINY, 3, 2, attention="flash")
    with pytest.raises(ValueError, match="dtype_bytes"):
        kv_cache_bytes(TINY, 3, 2, dtype_bytes=0)
    with pytest.raises(ValueError, match="keep"):
        kv_cache_bytes(TINY, 3, 2, keep=-1)


def test_kv_cache_bytes_equal_a_real_cache():
    transformers = pytest.importorskip("transformers")
    import torch

    from litelvlm_kernels.memory import kv_cache_bytes

    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaModel(cfg).eval()
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, 32, (1, 11)), use_cache=True)
    cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers >= 4.56: one object per layer
        got = sum(t.numel() * t.element_size() for lyr in layers for t in (lyr.keys, lyr.values))
    else:
        got = sum(t.numel() * t.element_size() for kv in cache.to_legacy_cache() for t in kv)
    assert got == kv_cache_bytes(DecoderConfig.from_hf(cfg), 7, 4, dtype_bytes=4)


def test_cli_memory_columns(capsys):
    assert main(CLI + ["--json", "--dtype-bytes", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["kv_cache_bytes"] == 2 * 32 * 4096 * 2 * 640  # 0.5 MiB per token
    assert rows[1]["kv_cache_bytes"] == 2 * 32 * 4096 * 2 * 256
    assert main(CLI) == 0
    assert "KV cache (MB)" in capsys.readouterr().out
