"""Random cases for tests/test_fuzz.py: one integer seed determines one case completely.

``draw(seed)`` picks the target op, the sizes, dtype, layouts, multi-text mode, order,
num_texts, k_per_text and the hazards (duplicated tokens, outlier channels, NaN/inf),
all as plain Python values kept in the ``Case`` so that a failure can print them.
``build(case)`` then makes the tensors from a torch.Generator seeded with the same
seed, so ``build(draw(seed))`` is the same on every run and every machine.

Sizes: 86.5% small (M <= 40, Dv <= 48: ~4 ms a case), 12% medium (M <= 300: ~15 ms),
1.5% CLIP-sized (M in {196, 576, 577}, Dv up to 1024: ~50 ms): the reference projects
every token through W_p and ranks each row in a Python loop, so it, not the op, sets
the cost of a case (CPU times on the shared 2-core machine under load).
"""

from __future__ import annotations

import dataclasses
import random

import torch

TARGETS = ("prune", "fused_select", "select_tokens")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "strided", "transposed", "offset")


@dataclasses.dataclass
class Case:
    seed: int
    target: str
    threads: int  # torch.set_num_threads while the op and the reference run
    B: int
    M: int
    T: int
    R: int
    Dv: int
    D: int
    P: int
    Bt: int  # text batch: 1 (shared by all rows, as video frames) or B
    dtype: torch.dtype
    min_votes: int  # 1 union, 0 intersection, >= 2 votes
    multi_text: object  # prune's spelling of min_votes
    k_per_text: int  # 0: R' // n_b
    order: str
    num_texts: list | None
    num_texts_dtype: torch.dtype
    scale: float | None
    ln_eps: float
    folded: bool  # prune: FoldedText (True) or raw text embeddings with the weights
    return_tokens: bool
    value_scale: float  # hidden's magnitude
    layouts: dict  # tensor name -> one of LAYOUTS
    hazards: list  # (kind, details...) tuples, applied in build()
    repeat: bool = False  # call the op twice: results must be bit-identical run to run (design section 2)
    illegal: tuple | None = None  # (argument, bad value or description) for a draw that must raise

    def describe(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)]
        return "Case(" + ", ".join(parts) + ")"


def legal_k(k: int, T: int, M: int, r: int, min_votes: int) -> bool:
    """docs/design.md section 2: an explicit k must not let |S| exceed R'."""
    if k <= 0:
        return True
    ke = min(k, M)
    return ke * T <= r * max(1, min_votes) and not (min_votes == 0 and ke > r)


def _sizes(rng: random.Random, target: str, threads: int):
    u = rng.random() if threads == 1 else 0.865 + 0.135 * rng.random()  # threaded cases: medium or large
    if u < 0.865:
        B = 0 if rng.random() < 0.03 else rng.randint(1, 4)
        M = 0 if rng.random() < 0.03 else rng.randint(1, 40)
        Dv, D, P = rng.randint(1, 48), rng.randint(1, 32), rng.randint(1, 24)
    elif u < 0.985:
        B, M = rng.randint(1, 6), rng.randint(41, 300)
        Dv, D, P = rng.randint(16, 300), rng.randint(8, 128), rng.randint(8, 128)
    else:
        B, M = rng.randint(1, 2), rng.choice([196, 576, 577])
        Dv, D, P = rng.choice([(1024, 1024, 768), (768, 768, 512), (1000, 72, 40)])
    if target == "select_tokens":
        Dv = D = P = 0
    return B, M, Dv, D, P


def _budget(rng: random.Random, M: int, target: str) -> int:
    u = rng.random()
    if u < 0.15:
        return M + rng.randint(1, 20)  # M < R: R' = M
    if u < 0.25:
        return M
    if u < 0.28:
        return 0  # the ops accept R = 0 (empty outputs); prune requires R > 0
    return rng.randint(1, max(M, 1))


def _texts(rng: random.Random, r: int) -> int:
    if r > 0 and r <= 16 and rng.random() < 0.12:
        return r  # T = R': one token per text
    cap = min(r, 16 if rng.random() < 0.1 else 5)
    return rng.randint(0, cap)


def _hazards(rng: random.Random, target: str, B: int, M: int, T: int, Dv: int, D: int):
    hz = []
    offset = target != "select_tokens" and Dv >= 2 and rng.random() < 0.25
    if M >= 2 and (offset or rng.random() < 0.25):  # offsets matter most between near-copies
        # Letterbox padding: a band of identical patches (the same hidden, key and value rows).
        n = rng.randint(max(2, M // 2), M)  # a band wide enough that cut-offs fall inside it
        start = rng.randint(0, M - n)
        rows = list(range(start, start + n)) if rng.random() < 0.7 else sorted(rng.sample(range(M), n))
        # jitter 0: exact copies (exact ties). Else near-copies, relative noise 1e-4..3e-3: score gaps
        # then sit just above the near-tie tolerance, so a kernel that loses more precision than an
        # exact fp32 evaluation swaps them and fails.
        jitter = 0.0 if rng.random() < (0.2 if offset else 0.6) else float(f"{10 ** rng.uniform(-4, -2.5):.2g}")
        hz.append(("duplicate_tokens", rows, jitter))
    if target != "select_tokens" and Dv >= 2 and rng.random() < 0.4:
        # CLIP-like: two channels 50-300x larger than the rest, either with a steady sign over
        # the tokens (a large mean in that channel, as CLIP ViT-L/14's) or zero-mean.
        ch = rng.sample(range(Dv), 2)
        hz.append(("outlier_channels", ch, [round(rng.uniform(50, 300), 1) for _ in ch], rng.random() < 0.5))
    if offset:
        # A large common offset (30-1000x the spread) in every channel of a token: the ill-conditioned
        # case for layer-norm statistics (docs/design.md section 3). Measured on these draws, the
        # uncentred x . w - mu sum(w) errs by at most 2e-4 of max|s|, 1-15x the reference's own fp32
        # error, so the selection check does not tell it from the centred form.
        hz.append(("token_offset", round(10 ** rng.uniform(1.5, 3), 1), rng.random() < 0.5))
    if B and M and rng.random() < 0.12:
        names = ["s", "c"] if target == "select_tokens" else ["hidden", "keys", "values", "q_cls", "text_embeds"]
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(names)
            if name == "text_embeds" and T == 0:
                continue
            # Text embeddings get NaN only: an infinite e_t has no agreed meaning, since the folded
            # form spreads it over Dv (u = W_p^T e_t) before the token dot product, so which scores
            # come out +-inf or NaN depends on the order of the algebra, not on a rule.
            bad = [float("nan")] if name == "text_embeds" else [float("nan"), float("inf"), float("-inf")]
            hz.append(("nonfinite", name, rng.random(), rng.choice(bad)))
    if target == "select_tokens" and rng.random() < 0.5:
        # Scores on a coarse grid (many exact ties), with -0.0 and special values mixed in.
        hz.append(("coarse_scores", rng.choice([0.5, 0.25, 1.0]), rng.random() < 0.5))
    if target == "select_tokens" and rng.random() < 0.3:
        # A share of the scores replaced by NaN, +-inf and -0.0: the order rules of design section 2.
        hz.append(("special_scores", round(rng.uniform(0.02, 0.3), 3)))
    return hz


def draw(seed: int) -> Case:
    """One legal case (or, 5% of the time, a case with one illegal argument: ``case.illegal``)."""
    rng = random.Random(seed)
    target = rng.choices(TARGETS, weights=(4, 4, 2))[0]
    # 0.5% of the cases run with 2 threads (the kernels' parallel paths); the rest with 1: the
    # reference is hundreds of tiny ops, and on a busy 2-core machine each pays an OpenMP wake-up
    # with 2 threads (measured 9-47 ms against 0.1 ms for three small ops under load).
    threads = 2 if rng.random() < 0.005 else 1
    B, M, Dv, D, P = _sizes(rng, target, threads)
    R = _budget(rng, M, target)
    if target == "prune":
        R = max(R, 1)  # prune requires num_retain > 0 (R = 0 is an illegal draw there)
    r = min(R, M)
    T = _texts(rng, r)
    mode = rng.random()
    min_votes = 1 if mode < 0.4 else 0 if mode < 0.7 else rng.randint(1, T + 1)
    multi_text = {1: "union", 0: "intersection"}[min_votes] if mode < 0.7 else min_votes
    k = 0
    if rng.random() < 0.3:
        k = rng.randint(1, max(1, r))
        if not legal_k(k, T, M, r, min_votes):
            k = 0
    num_texts = None
    if rng.random() < 0.4:
        num_texts = [rng.randint(-2, T + 3) for _ in range(B)]  # values outside [0, T] are clamped
    layout_names = ("s", "c") if target == "select_tokens" else \
        ("hidden", "keys", "values", "q_cls", "text_embeds", "proj_weight", "w")
    layouts = {n: rng.choices(LAYOUTS, weights=(6, 2, 2, 1))[0] for n in layout_names}
    case = Case(
        seed=seed, target=target, threads=threads, B=B, M=M, T=T, R=R, Dv=Dv, D=D, P=P,
        Bt=1 if rng.random() < 0.35 else B, dtype=rng.choice(DTYPES), min_votes=min_votes,
        multi_text=multi_text, k_per_text=k, order=rng.choice(["official", "spatial"]),
        num_texts=num_texts, num_texts_dtype=rng.choice([torch.int32, torch.int64]),
        scale=None if rng.random() < 0.7 else round(rng.uniform(0.01, 4.0), 4),
        ln_eps=rng.choice([1e-5, 1e-5, 1e-6, 1e-2, 0.0]),
        folded=rng.random() < 0.5, return_tokens=rng.random() < 0.8,
        value_scale=10 ** rng.uniform(-2, 1.3), layouts=layouts,
        hazards=_hazards(rng, target, B, M, T, Dv, D))
    case.repeat = threads > 1 or rng.random() < 0.05
    if rng.random() < 0.05:
        from _fuzz_illegal import make_illegal  # lazy: only these draws need it

        case.illegal = make_illegal(rng, case)
    return case


# -- tensors -----------------------------------------------------------------

def lay_out(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values in another memory layout (a view, never a copy the op could tell from the original)."""
    if kind == "strided":  # every dimension stepped by 2
        y = torch.zeros(*[2 * d for d in x.shape], dtype=x.dtype)
        v = y[tuple(slice(None, None, 2) for _ in x.shape)]
    elif kind == "transposed" and x.dim() >= 2:  # last two dimensions swapped in memory
        v = torch.zeros(*x.shape[:-2], x.shape[-1], x.shape[-2], dtype=x.dtype).transpose(-1, -2)
    elif kind == "offset" or kind == "transposed":  # padded rows and a storage offset
        v = torch.zeros(*x.shape[:-1], x.shape[-1] + 3, dtype=x.dtype)[..., 1:1 + x.shape[-1]]
    else:
        return x.contiguous()
    v.copy_(x)
    return v


def _set_nonfinite(t: torch.Tensor, where: float, value: float) -> None:
    if t.numel():
        t.view(-1)[min(int(where * t.numel()), t.numel() - 1)] = value


def build(case: Case) -> dict:
    """fp32 master tensors for the case (hazards applied), before dtype and layout."""
    g = torch.Generator().manual_seed(case.seed % (1 << 63))
    B, M, T = case.B, case.M, case.T
    hz = {h[0]: h[1:] for h in case.hazards}
    if case.target == "select_tokens":
        t = {"s": torch.randn(B, T, M, generator=g), "c": torch.rand(B, M, generator=g) * case.value_scale}
        if "coarse_scores" in hz:
            step, signed_zero = hz["coarse_scores"]
            t["s"] = torch.round(t["s"] / step) * step
            t["c"] = torch.round(t["c"] / (step * case.value_scale)) * step
            if signed_zero:
                t["s"][t["s"] == 0] = -0.0
        if "special_scores" in hz:
            special = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0])
            for name in ("s", "c"):
                x = t[name]
                pick = torch.rand(x.shape, generator=g) < hz["special_scores"][0]
                x[pick] = special[torch.randint(0, 4, (int(pick.sum()),), generator=g)]
        if "duplicate_tokens" in hz:
            rows = hz["duplicate_tokens"][0]  # exact ties only: select_tokens must match exactly
            t["s"][:, :, rows] = t["s"][:, :, rows[:1]]
            t["c"][:, rows] = t["c"][:, rows[:1]]
    else:
        Dv, D, P = case.Dv, case.D, case.P
        t = {
            "hidden": torch.randn(B, M, Dv, generator=g) * case.value_scale,
            "text_embeds": torch.randn(case.Bt, 1, P, generator=g) + 0.6 * torch.randn(case.Bt, T, P, generator=g),
            "proj_weight": torch.randn(P, Dv, generator=g) * max(Dv, 1) ** -0.5,
            "ln_weight": 1.0 + 0.1 * torch.randn(Dv, generator=g),
            "ln_bias": 0.1 * torch.randn(Dv, generator=g),
            "q_cls": torch.randn(B, D, generator=g),
            "keys": torch.randn(B, M, D, generator=g),
            "values": torch.randn(B, M, D, generator=g) * (1.0 + torch.rand(B, M, 1, generator=g)),
        }
        rows, jitter = hz.get("duplicate_tokens", ([], 0.0))
        if rows:  # first, so that the jitter is relative to the token-to-token variation
            for name in ("hidden", "keys", "values"):
                x = t[name]
                spread = float(x.std(correction=0)) if x.numel() else 0.0
                x[:, rows] = x[:, rows[:1]] + jitter * spread * torch.randn(x[:, rows].shape, generator=g)
        if "outlier_channels" in hz:
            ch, factors, steady = hz["outlier_channels"]
            for j, f in zip(ch, factors):
                x = t["hidden"][:, :, j]
                x.copy_(f * (case.value_scale + 0.1 * x) if steady else f * x)
        if "token_offset" in hz:  # the same offset for every token, or one per token
            size, per_token = hz["token_offset"]
            off = torch.rand(B, M, 1, generator=g) if per_token else torch.ones(1)
            if per_token and rows:
                off[:, rows] = off[:, rows[:1]]  # duplicated tokens stay duplicates
            t["hidden"] += size * case.value_scale * off
    for h in case.hazards:
        if h[0] == "nonfinite":
            _set_nonfinite(t[h[1]], h[2], h[3])
    if case.num_texts is not None:
        t["num_texts"] = torch.tensor(case.num_texts, dtype=case.num_texts_dtype).reshape(case.B)
    return t


def as_inputs(case: Case, t: dict) -> dict:
    """Cast the master tensors to the case's dtype (the reference upcasts these same values) and lay them out."""
    out = dict(t)
    for name, x in t.items():
        if x.is_floating_point():
            x = x.to(case.dtype)
            out[name] = lay_out(x, case.layouts.get(name, "contiguous"))
    return out
