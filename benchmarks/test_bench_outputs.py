"""Where every benchmark writes (issue 28): benchmarks/out/ by default, benchmarks/results/ only when published,
never for a quick / smoke run.

Each main runs for real on the cheapest arguments it has, with ``measure`` calling each provider once
(``untimed``) and the two folders moved to ``tmp_path`` (``bench_dirs``, which also checks that the real
benchmarks/results/ is untouched). The vLLM benchmark's paths are tested in test_bench_vllm.py.
"""

import importlib
import os

import pytest

from benchmarks import common, report

#: module: (argv of a cheap real run, the flag that makes it a smoke run or None, files it writes, needs)
SCRIPTS = {
    "bench_select": (["--max-gb", "0.01", "--no-compile", "--rounds", "1"], "--quick", ["select-cpu.json"], None),
    "bench_gather": (["--device", "cpu"], "--quick", ["gather-cpu.json"], None),
    "bench_dispatch": (["--rounds", "1"], None, ["dispatch-cpu.json"], None),
    "bench_map_head": (["--rounds", "1", "--batch", "1"], "--quick", ["map-head-cpu.json", "map-head-cpu.md"], None),
    "bench_capture": (["--towers", "tiny", "--rounds", "1"], None, ["capture-cpu.json", "capture-cpu.md"],
                      "transformers"),
    "bench_prefill": (["--config", "small", "--layers", "1", "--visual", "48", "--keep", "16", "--text", "8",
                       "--rounds", "1"], None, ["prefill-cpu.json"], "transformers"),
}
SMOKE = [name for name, (_, smoke, _, _) in SCRIPTS.items() if smoke]


def _run(name, extra, monkeypatch, untimed):
    """``<name>.main(cheap argv + extra)`` with the timing taken out."""
    argv, _, _, needs = SCRIPTS[name]
    if needs:
        pytest.importorskip(needs)
    mod = importlib.import_module(f"benchmarks.{name}")
    if hasattr(mod, "measure"):
        untimed(mod)
    if name == "bench_gather":  # one tiny shape: the CPU path times its providers itself
        monkeypatch.setattr(mod, "shapes", lambda quick, device: [(1, 64, 8)])
    return mod.main(argv + extra)


def _files(folder):
    return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_default_run_writes_the_ignored_folder(name, bench_dirs, monkeypatch, untimed):
    _run(name, [], monkeypatch, untimed)
    assert _files(bench_dirs.out) == SCRIPTS[name][2] and not bench_dirs.results.exists()


@pytest.mark.parametrize("name", SMOKE)
def test_quick_run_writes_the_ignored_folder(name, bench_dirs, monkeypatch, untimed):
    _run(name, [SCRIPTS[name][1]], monkeypatch, untimed)
    assert _files(bench_dirs.out) == SCRIPTS[name][2] and not bench_dirs.results.exists()


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_publish_writes_the_results_folder(name, bench_dirs, monkeypatch, untimed):
    _run(name, ["--publish"], monkeypatch, untimed)
    assert _files(bench_dirs.results) == SCRIPTS[name][2] and not bench_dirs.out.exists()


@pytest.mark.parametrize("form", ["--publish", "--out", "--out-subfolder"])
@pytest.mark.parametrize("name", SMOKE)
def test_quick_publish_is_refused(name, form, bench_dirs, monkeypatch, untimed, capsys):
    smoke = SCRIPTS[name][1]
    flags = {"--publish": ["--publish"], "--out": ["--out", str(bench_dirs.results)],
             "--out-subfolder": ["--out", os.path.join(str(bench_dirs.out), "..", "results", "sub")]}[form]
    with pytest.raises(SystemExit) as e:
        _run(name, [smoke, *flags], monkeypatch, untimed)
    err = capsys.readouterr().err
    assert e.value.code == 2 and smoke in err and flags[0] in err and "benchmarks/results/" in err
    assert not bench_dirs.results.exists() and not bench_dirs.out.exists()


def test_out_dir_is_used(bench_dirs, tmp_path, monkeypatch, untimed):
    _run("bench_dispatch", ["--out", str(tmp_path / "mine")], monkeypatch, untimed)
    assert _files(tmp_path / "mine") == ["dispatch-cpu.json"] and not bench_dirs.out.exists()


def test_out_and_publish_exclude_each_other(bench_dirs, monkeypatch, untimed, capsys):
    with pytest.raises(SystemExit):
        _run("bench_dispatch", ["--publish", "--out", str(bench_dirs.out)], monkeypatch, untimed)
    assert "not allowed with argument" in capsys.readouterr().err


def test_publishes_resolves_the_path(bench_dirs, tmp_path):
    os.makedirs(bench_dirs.results)
    os.symlink(bench_dirs.results, tmp_path / "link")
    assert common.publishes(str(bench_dirs.results)) and common.publishes(str(tmp_path / "link" / "plots"))
    assert common.publishes(str(bench_dirs.out / ".." / "results"))
    assert not common.publishes(str(bench_dirs.out)) and not common.publishes(str(tmp_path / "results-old"))


def test_gpu_bench_tiny_never_publishes(bench_dirs, capsys):
    from benchmarks import gpu_bench

    with pytest.raises(SystemExit):
        gpu_bench.main(["gather", "--tiny", "--device", "cpu", "--out", str(bench_dirs.results)])
    assert "--tiny is a smoke run" in capsys.readouterr().err and not bench_dirs.results.exists()


# ----------------------------------------------------------------------------------------------- report


def _rows_in(folder):
    """Select rows at two M (a varying token key: the report draws a plot) written to ``folder``."""
    t = {"p50_ms": 2.0, "p20_ms": 1.9, "p80_ms": 2.1}
    rows = [common.make_row("select", prov, {"B": 1, "M": M}, "float32", {**t, "p50_ms": t["p50_ms"] / k})
            for M in (100, 200) for prov, k in (("reference", 1), ("ops", 4))]
    return common.write_rows(rows, "select", directory=str(folder))


def _report_files(folder):
    files = _files(folder)
    return files + [f"plots/{p}" for p in _files(folder / "plots")]


def test_report_default_reads_and_writes_the_ignored_folder(bench_dirs):
    _rows_in(bench_dirs.out)
    _rows_in(bench_dirs.results)  # published rows are not read by default
    assert report.main([]) == 0
    files = _report_files(bench_dirs.out)
    assert "REPORT-cpu.md" in files and _files(bench_dirs.results) == ["select-cpu.json"]
    assert "`select-cpu.json`" in (bench_dirs.out / "REPORT-cpu.md").read_text()
    if importlib.util.find_spec("matplotlib"):
        assert "plots/cpu-select-time-vs-M.png" in files


def test_report_publish_reads_and_writes_the_results_folder(bench_dirs):
    _rows_in(bench_dirs.results)
    assert report.main(["--publish", "--no-plots"]) == 0
    assert _files(bench_dirs.results) == ["REPORT-cpu.md", "select-cpu.json"] and not bench_dirs.out.exists()
    assert report.main(["--out", str(bench_dirs.results), "--no-plots"]) == 0  # the same as --publish


@pytest.mark.parametrize("flag", ["--publish", "--out"])
def test_report_publish_refuses_unpublished_rows(flag, bench_dirs, capsys):
    path = _rows_in(bench_dirs.out)
    argv = [path, "--publish"] if flag == "--publish" else [path, "--out", str(bench_dirs.results)]
    with pytest.raises(SystemExit) as e:
        report.main(argv)
    assert e.value.code == 2 and flag in capsys.readouterr().err
    assert _files(bench_dirs.results) == []
