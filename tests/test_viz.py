"""litelvlm_kernels.viz: the PNG exists, has the right pixel size, and kept cells differ from dropped ones."""

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
    assert (m[sim, 0] > m[sim, 2] + 0.2).all()  # orange: red >> blue
    assert (m[ctx, 2] > m[ctx, 0] + 0.2).all()  # blue: blue >> red
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
    assert a[0, 0, 2] > a[0, 0, 0]  # no from_similarity: all kept are context (blue)
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
