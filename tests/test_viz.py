"""litelvlm_kernels.viz: the PNG exists, has the right pixel size, kept cells differ from dropped ones on any
background, the grid is never guessed, and the CLI rejects bad arguments as usage errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from litelvlm_kernels import viz

mpimg = pytest.importorskip("matplotlib.image")

ROOT = Path(__file__).resolve().parents[1]


def cell_means(img, rows, cols):
    """Mean RGB of the interior of each cell (grid lines excluded), [rows * cols, 3] in [0, 1]."""
    H, W = img.shape[:2]
    out = []
    for r in range(rows):
        for c in range(cols):
            r0, r1 = r * H // rows, (r + 1) * H // rows
            c0, c1 = c * W // cols, (c + 1) * W // cols
            out.append(img[r0 + 1:r1 - 1, c0 + 1:c1 - 1, :3].reshape(-1, 3).mean(0))
    return np.stack(out)


def read_png(path):
    img = mpimg.imread(str(path))
    assert img.dtype == np.float32 and img.max() <= 1.0
    return img


def test_png_size_and_cell_colours(tmp_path):
    grey = np.full((96, 120, 3), 128, dtype=np.uint8)
    idx = torch.tensor([0, 5, 9, 17, 30, 47])
    fs = torch.tensor([True, True, False, False, True, False])
    path = viz.save_kept_tokens(tmp_path / "k.png", grey, idx, fs, grid=(6, 8))
    assert Path(path).is_file()
    img = read_png(path)
    assert img.shape[:2] == (96, 120)
    # the file holds exactly what render() computed
    np.testing.assert_array_equal(np.rint(img[:, :, :3] * 255).astype(np.uint8),
                                  viz.render(grey, idx, fs, grid=(6, 8)))
    m = cell_means(img, 6, 8)
    bright = m.mean(1)
    sim = [0, 5, 30]
    ctx = [9, 17, 47]
    dropped = [j for j in range(48) if j not in sim + ctx]
    assert bright[dropped].max() < bright[sim + ctx].min() - 0.1  # dropped cells are dimmed
    np.testing.assert_allclose(m[dropped], 0.3 * 128 / 255, atol=2 / 255)  # uniformly
    assert (np.minimum(m[sim, 0], m[sim, 2]) > m[sim, 1] + 0.2).all()  # magenta: red, blue >> green
    assert (np.minimum(m[ctx, 1], m[ctx, 2]) > m[ctx, 0] + 0.2).all()  # cyan: green, blue >> red
    np.testing.assert_allclose(m[sim], m[sim[0]][None].repeat(3, 0), atol=1 / 255)


def test_caption_strip_and_square_default(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((3, 72, 72)).astype(np.float32)  # CHW floats in [0, 1]
    idx = np.array([1, 2, 3, 30])
    path = viz.save_kept_tokens(tmp_path / "c.png", img, idx, np.array([1, 0, 0, 1], bool), num_tokens=36,
                                caption=True)
    out = read_png(path)
    assert out.shape[:2] == (72 + viz.CAPTION_PX, 72)  # the image, then the caption strip
    strip = out[72:, :, :3]
    assert strip.max() == 1.0 and strip.min() < 0.5  # white strip with dark text on it


def test_batched_inputs_and_results():
    idx = torch.tensor([[0, 1], [2, 3]])
    fs = torch.tensor([[True, False], [False, True]])
    a = viz.token_states(idx, fs, 4, row=1)
    assert a.tolist() == [0, 0, viz.CONTEXT, viz.SIMILARITY]

    class Result:  # anything with .indices and .from_similarity (PruneResult, HFPruneResult)
        indices, from_similarity = idx, fs

    np.testing.assert_array_equal(viz.render(None, Result(), grid=2, row=1), viz.render(None, idx[1], fs[1], grid=2))
    with pytest.raises(ValueError, match="indices"):
        viz.token_states(torch.zeros(1, 1, 2, dtype=torch.long), None, 4)


def test_render_inputs():
    idx = torch.tensor([[0, 3]])  # [1, R] rows are accepted
    a = viz.render(None, idx, grid=2, grid_lines=False)
    assert a.shape == (28, 28, 3) and a.dtype == np.uint8  # None: grey canvas, 14 px per cell
    assert a[0, 0].tolist() == list(viz.CONTEXT_COLOR)  # no from_similarity: all kept are context (cyan rim)
    assert a[0, 27].sum() < a[0, 0].sum()  # token 1 (top right) dropped
    normalised = torch.randn(3, 8, 8) * 2  # CLIP-normalised pixels: rescaled for display
    b = viz.render(normalised, [0], grid=(2, 2), scale=3)
    assert b.shape == (24, 24, 3)
    with pytest.raises(ValueError, match="indices"):
        viz.token_states([0, 36], None, 36)
    with pytest.raises(ValueError, match="from_similarity"):
        viz.token_states([0, 1], [True], 36)
    with pytest.raises(ValueError, match="grid"):
        viz.render(None, [0], num_tokens=10)
    with pytest.raises(ValueError, match="image"):
        viz.render(np.zeros((4, 4, 5)), [0], grid=2)


def test_demo_cli_in_process(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert viz.main(["--out", str(out), "--retain", "60", "--grid", "12", "12", "--size", "120"]) == 0
    assert "60 of 144 tokens kept" in capsys.readouterr().out
    assert read_png(out).shape[:2] == (120 + viz.CAPTION_PX, 120)
    path, res = viz.demo(str(tmp_path / "d.png"), retain=60, grid=(12, 12), size=120)
    _, ball, _ = viz._synthetic_scene(120, 12, 12, 0)
    sim = set(res.indices[0][res.from_similarity[0]].tolist())
    assert set(np.flatnonzero(ball).tolist()) <= sim  # the texts' referent is found by similarity
    assert 0 < int(res.num_similarity[0]) < 60  # and context tokens fill the rest


def test_pillow_fallback(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rgb = viz.render(None, [0, 1], grid=(3, 3))
    path = viz.save_png(tmp_path / "p.png", rgb)
    monkeypatch.undo()
    assert read_png(path).shape[:2] == rgb.shape[:2]


def test_module_cli(tmp_path):
    out = tmp_path / "cli.png"
    r = subprocess.run([sys.executable, "-m", "litelvlm_kernels.viz", "--out", str(out), "--retain", "100"],
                       capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    assert out.is_file() and "wrote" in r.stdout
    assert read_png(out).shape[:2] == (336 + viz.CAPTION_PX, 336)


# -- the grid is never guessed (a 64-token result drawn as 24 x 24 filled the top 3 rows) ---------------------

class _Result:
    """A result that knows M (HFPruneResult has num_tokens; PruneResult does not)."""

    def __init__(self, indices, from_similarity, num_tokens=None):
        self.indices, self.from_similarity, self.num_tokens = indices, from_similarity, num_tokens


def test_grid_from_num_tokens_or_an_error():
    idx = torch.tensor([[0, 9, 63]])
    fs = torch.tensor([[True, False, True]])
    want = viz.render(None, idx, fs, grid=(8, 8))
    np.testing.assert_array_equal(viz.render(None, _Result(idx, fs, 64)), want)  # M = 64 -> 8 x 8
    np.testing.assert_array_equal(viz.render(None, idx, fs, num_tokens=64), want)
    np.testing.assert_array_equal(viz.render(None, idx, fs, grid=[8, 8]), want)  # any (rows, cols) pair
    assert viz.token_states(_Result(idx, fs, 64)).shape == (64,)
    for call in (lambda: viz.render(None, idx, fs), lambda: viz.token_states(idx, fs),
                 lambda: viz.render(None, _Result(idx, fs))):  # a result without M: PruneResult
        with pytest.raises(ValueError, match=r"grid=\(rows, cols\) or num_tokens="):
            call()
    with pytest.raises(ValueError, match="grid 4x4 has 16 cells but there are num_tokens=64"):
        viz.render(None, _Result(idx, fs, 64), grid=4)
    with pytest.raises(ValueError, match="grid: 60 tokens are not a square"):
        viz.render(None, _Result(idx, fs, 60))
    with pytest.raises(ValueError, match="grid must be"):
        viz.render(None, idx, fs, grid=(8, 8, 1))
    with pytest.raises(ValueError, match="num_tokens must be a positive int"):
        viz.render(None, idx, fs, num_tokens=0)


def test_save_kept_tokens_needs_the_grid(tmp_path):
    import litelvlm_kernels as lk
    from litelvlm_kernels.synthetic import clip_inputs

    x = clip_inputs(1, 2, 64, 32, 16, 16, seed=0)
    out = lk.prune(x.hidden, x.text_embeds, x.q_cls, x.keys, x.values, num_retain=16, proj_weight=x.proj_weight,
                   ln_weight=x.ln_weight, ln_bias=x.ln_bias)
    with pytest.raises(ValueError, match="grid"):  # a PruneResult does not say M = 64
        viz.save_kept_tokens(tmp_path / "k.png", None, out)
    assert not (tmp_path / "k.png").exists()
    path = viz.save_kept_tokens(tmp_path / "k.png", None, out, grid=(8, 8), caption=True)
    assert read_png(path).shape[:2] == (8 * 14 + viz.CAPTION_PX, 8 * 14)


def test_view_dict_of_an_lvlm_report(tmp_path):
    # The shape of enable_litelvlm's last_report["image"]["views"][i][v]: the keywords save_kept_tokens takes.
    views = [[{"indices": torch.tensor([0, 5, 23]), "from_similarity": torch.tensor([True, False, True]),
               "grid": (4, 6)}]]
    image = np.full((48, 72, 3), 200, dtype=np.uint8)
    view = views[0][0]
    path = viz.save_kept_tokens(tmp_path / "v.png", image, **view)
    np.testing.assert_array_equal(np.rint(read_png(path)[:, :, :3] * 255).astype(np.uint8),
                                  viz.render(image, view["indices"], view["from_similarity"], grid=(4, 6)))
    path = viz.save_kept_tokens(tmp_path / "c.png", image, **view, caption=True)
    assert read_png(path).shape[:2] == (48 + viz.CAPTION_PX, 72)


# -- colours legible on any background ---------------------------------------------------------------------------

BACKGROUNDS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255),
               "black": (0, 0, 0), "grey": (128, 128, 128)}


@pytest.mark.parametrize("name", list(BACKGROUNDS))
def test_categories_stay_apart_on_plain_backgrounds(name):
    bg = np.array(BACKGROUNDS[name], dtype=np.float64) / 255
    image = np.tile(np.array(BACKGROUNDS[name], dtype=np.uint8), (84, 84, 1))
    idx = np.array([0, 2, 7, 9, 14, 16, 21, 23, 28, 30, 35])
    fs = np.arange(idx.size) % 2 == 0
    states = viz.token_states(idx, fs, 36)
    rgb = viz.render(image, idx, fs, grid=(6, 6))
    m = cell_means(rgb / 255.0, 6, 6)
    cats = {s: m[states == s].mean(0) for s in (viz.DROPPED, viz.CONTEXT, viz.SIMILARITY)}
    # Measured with magenta / cyan, alpha 0.45 and a 2 px rim: pairwise >= 0.875 on all six backgrounds
    # (orange / blue gave 0.51 on black).
    for a, b in ((viz.DROPPED, viz.CONTEXT), (viz.DROPPED, viz.SIMILARITY), (viz.CONTEXT, viz.SIMILARITY)):
        assert np.linalg.norm(cats[a] - cats[b]) >= 0.6, (name, a, b)
    # A kept cell must visibly differ from the image it tints, or it reads as "untouched": measured >= 0.535
    # (on grey); orange over red gave 0.247 (CIELAB dE 11, the finding) and blue over blue 0.26.
    for s in (viz.CONTEXT, viz.SIMILARITY):
        assert np.linalg.norm(cats[s] - bg) >= 0.45, (name, s)
    # Each kept cell's rim is its category colour at full opacity (14 px cells: 2 px).
    assert rgb[0, 0].tolist() == list(viz.SIMILARITY_COLOR) and rgb[13, 13].tolist() == list(viz.SIMILARITY_COLOR)
    assert rgb[1, 2 * 14 + 1].tolist() == list(viz.CONTEXT_COLOR)  # token 2
    assert rgb[7, 7].tolist() != list(viz.SIMILARITY_COLOR)  # the interior is the blend
    no_rim = viz.render(image, idx, fs, grid=(6, 6), border=0)
    np.testing.assert_array_equal(no_rim[7, 7], rgb[7, 7])


# -- CLI arguments and its output file ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--retain", "0"], "--retain must be in 1..144"),
    (["--retain", "145"], "--retain must be in 1..144"),
    (["--texts", "-1"], "--texts must be in 0..60"),
    (["--texts", "61"], "--texts must be in 0..60"),
    (["--grid", "0", "12"], "--grid must be two positive ints"),
    (["--size", "11"], "--size must be at least the grid's larger side"),
])
def test_cli_rejects_bad_arguments(tmp_path, capsys, args, message):
    base = ["--out", str(tmp_path / "d.png"), "--grid", "12", "12", "--size", "120", "--retain", "60"]
    with pytest.raises(SystemExit) as exc:
        viz.main(base + args)  # later flags win
    assert exc.value.code == 2  # argparse's usage error, not a traceback
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d.png").exists()


def test_cli_without_texts_keeps_context_only(tmp_path, capsys):
    out = tmp_path / "d.png"
    assert viz.main(["--out", str(out), "--grid", "12", "12", "--size", "120", "--retain", "60", "--texts", "0"]) == 0
    assert "0 similarity in magenta, 60 context in cyan" in capsys.readouterr().out
    assert out.is_file()


def test_default_demo_outputs_are_git_ignored():
    lines = {ln.strip() for ln in (ROOT / ".gitignore").read_text().splitlines()}
    assert "viz_demo.png" in lines  # make examples
    default = viz._parser().get_default("out")  # python -m litelvlm_kernels.viz
    assert default == "litelvlm_viz_demo.png" and default in lines


# -- errors name the argument: row (with the batch size), grid (before any index is read against it) ----------

@pytest.mark.parametrize("row", [2, 5, -1])
def test_row_out_of_range_names_row_and_batch(tmp_path, row):
    idx = torch.tensor([[0, 5, 63], [1, 2, 3]])
    fs = torch.tensor([[True, False, True], [False, True, False]])
    with pytest.raises(ValueError, match=rf"row={row} is out of range: .* B=2 rows"):
        viz.save_kept_tokens(tmp_path / "k.png", None, idx, fs, grid=(8, 8), row=row)
    with pytest.raises(ValueError, match=rf"row={row} .* B=2"):
        viz.token_states(_Result(idx, fs, 64), row=row)
    assert not (tmp_path / "k.png").exists()
    with pytest.raises(ValueError, match="row=1: the indices are a single row"):
        viz.render(None, idx[0], fs[0], grid=(8, 8), row=1)
    with pytest.raises(TypeError, match="row must be an int"):
        viz.render(None, idx, fs, grid=(8, 8), row=1.0)


def test_a_grid_too_small_for_the_indices_is_named_grid(tmp_path):
    """Without M (plain indices, PruneResult) the grid is checked against every row's indices, up front: the drawn
    row 0 fits a 4 x 4 grid, row 1 does not; the error names grid, not an index of row 0."""
    idx = torch.tensor([[0, 5, 9], [1, 2, 40]])
    with pytest.raises(ValueError, match=r"grid 4x4 has 16 cells but the indices reach 40 \(at least 41 tokens\)"):
        viz.save_kept_tokens(tmp_path / "k.png", None, idx, grid=(4, 4), caption=True)
    with pytest.raises(ValueError, match="grid 4x4 has 16 cells"):
        viz.render(None, _Result(idx, None), grid=4)
    assert not (tmp_path / "k.png").exists()
    assert viz.render(None, idx, grid=(7, 6)).shape == (7 * 14, 6 * 14, 3)  # 42 cells hold them
