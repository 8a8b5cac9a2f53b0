"""`chaosgen plot`: PNGs from a real training log and from a bench JSON built from real
measurements; one-line errors for bad input; the hint when matplotlib is missing."""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

from chaosgen.cli import main

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CHAOSGEN_DATA") or ROOT.parent / "shared" / "data" / "mnist")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 10_000 and path.read_bytes()[:8] == PNG_MAGIC


def _one_line_error(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chaosgen: error:"), err


@pytest.fixture(scope="module")
def run_log(tmp_path_factory) -> Path:
    """A real two-epoch run of the small net, logged by `chaosgen train --log`."""
    tmp = tmp_path_factory.mktemp("run")
    old, env = os.getcwd(), os.environ.get("CHAOSGEN_DATA")
    os.chdir(ROOT)
    os.environ["CHAOSGEN_DATA"] = str(DATA)
    try:
        rc = main(
            [
                "train",
                "specs/small.net",
                "--epochs",
                "2",
                "--limit",
                "2000",
                "--val-limit",
                "2000",
                "--test-limit",
                "1000",
                "--threads",
                "2",
                "--log",
                str(tmp / "run.jsonl"),
                "--quiet",
                "--checkpoint-dir",
                str(tmp / "ck"),
            ]
        )
    finally:
        os.chdir(old)
        if env is None:
            os.environ.pop("CHAOSGEN_DATA")
        else:
            os.environ["CHAOSGEN_DATA"] = env
    assert rc == 0
    return tmp / "run.jsonl"


def test_run_plots(run_log, tmp_path, capsys):
    assert main(["plot", str(run_log), "--out", str(tmp_path)]) == 0
    names = ["run-error-rate.png", "run-loss.png", "run-speed.png"]
    assert capsys.readouterr().out.split() == [str(tmp_path / n) for n in names]
    assert all(_is_png(tmp_path / n) for n in names)


def test_several_runs_overlay(run_log, tmp_path):
    other = tmp_path / "other.jsonl"
    recs = [json.loads(line) for line in run_log.read_text().splitlines()]
    other.write_text(
        "".join(json.dumps(r | {"config": r["config"] | {"threads": 1}}) + "\n" for r in recs)
    )
    assert main(["plot", str(run_log), str(other), "--out", str(tmp_path)]) == 0
    assert _is_png(tmp_path / "runs-loss.png")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """bench/speed.py's format, filled with real measurements of the small net at 1 and 2
    threads (three repeats each: median, min, max)."""
    import chaosgen
    from chaosgen.data import load_mnist
    from chaosgen.train import Config, Runtime

    d = load_mnist(DATA)
    rt = Runtime(chaosgen.compile(ROOT / "specs" / "small.net"))
    n = 1500
    x, y, order = rt.images(d.train_images[:n]), d.train_labels[:n], np.arange(n, dtype=np.int32)
    rows = []
    for p in (1, 2):
        tr = [rt.train(x, y, order, Config(threads=p), 1e-4).images_per_s for _ in range(3)]
        ev = [rt.evaluate(x, y, p).images_per_s for _ in range(3)]
        stat = lambda v: {"median": statistics.median(v), "min": min(v), "max": max(v)}  # noqa: E731
        rows.append(
            {
                "net": "small",
                "scheme": "chaos",
                "threads": p,
                "images": n,
                "train_images_per_s": stat(tr),
                "infer_images_per_s": stat(ev),
                "gflops": 0.0,
                "percent_peak": 0.0,
                "test_error_rate": None,
            }
        )
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    path.write_text(
        json.dumps(
            {
                "machine": {"cpu": "test", "cores": 2},
                "peak_gflops": {"1": 1.0},
                "chaosgen": rows,
                "torch": [],
            }
        )
    )
    return path


def test_speedup_plots_with_the_model(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the model finds specs/small.net
    assert (
        main(
            [
                "plot",
                "--speedup",
                str(bench),
                "--predicted",
                "--machine",
                "knc",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.split() == [
        str(tmp_path / "bench-speedup.png"),
        str(tmp_path / "bench-throughput.png"),
    ]
    assert _is_png(tmp_path / "bench-speedup.png") and _is_png(tmp_path / "bench-throughput.png")


def test_speedup_plot_defaults_beside_the_input(bench):
    assert main(["plot", "--speedup", str(bench)]) == 0
    assert _is_png(bench.parent / "bench-speedup.png")


@pytest.mark.parametrize(
    "content,what",
    [
        (None, "no such file"),
        ('{"epoch": 1, "train_loss": 1.0}\nnot json\n', ":2: not JSON"),
        ("", "no epochs"),
        ("\n\n", "no epochs"),
        ("[1, 2]\n", "not an epoch record"),
    ],
)
def test_bad_run_logs(tmp_path, capsys, content, what):
    path = tmp_path / "run.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["plot", str(path), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    _one_line_error(err)
    assert what in err


@pytest.mark.parametrize(
    "content", [None, "{oops", '{"chaosgen": []}', '{"chaosgen": [{"net": "small"}]}']
)
def test_bad_bench(tmp_path, capsys, content):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    assert main(["plot", "--speedup", str(path)]) == 1
    _one_line_error(capsys.readouterr().err)


def test_usage_errors(tmp_path):
    assert main(["plot"]) == 2
    assert main(["plot", "a.jsonl", "--predicted"]) == 2
    assert main(["plot", "a.jsonl", "--speedup", "b.json"]) == 2


def test_missing_matplotlib_says_how_to_install(run_log, monkeypatch, capsys, tmp_path):
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["plot", str(run_log), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    _one_line_error(err)
    assert "pip install 'chaosgen[plot]'" in err
