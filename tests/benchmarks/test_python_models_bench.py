"""The Python-model benchmark's repository and report (no servers: the bench itself runs them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.common import load_model_spec
from benchmarks.loadgen import CellResult
from benchmarks.python_models import report, write_repository
from shipyard.serving_runtime.config import load_config
from shipyard.serving_runtime.ensemble import plan_ensemble


def test_one_model_py_for_both_servers_and_a_valid_ensemble(tmp_path: Path) -> None:
    mlp = load_model_spec("wide_mlp")
    triton = write_repository(tmp_path / "t", mlp, for_triton=True)
    shipyard = write_repository(tmp_path / "s", mlp, for_triton=False)
    assert (triton / "mlp_py" / "1" / "model.py").read_bytes() == (shipyard / "mlp_py" / "1" / "model.py").read_bytes()
    assert load_config(shipyard / "mlp_step" / "config.pbtxt").backend == "onnxruntime"
    assert load_config(triton / "mlp_step" / "config.pbtxt").backend == "python"  # no ONNX Runtime backend there
    config = load_config(shipyard / "pipeline" / "config.pbtxt")
    config.name = "pipeline"
    plan = plan_ensemble(config, "pipeline/config.pbtxt")
    assert [s.model_name for s in plan.steps] == ["normalize", "mlp_step", "topk"]


def _cell(throughput: float, p50: float) -> dict[str, object]:
    return CellResult(1, 1.0, int(throughput), 0, throughput, p50, p50, p50, p50).as_dict()


def test_report_rows_say_whether_each_target_is_met() -> None:
    triton = {"mlp_py/c1": _cell(300, 3.0), "mlp_py/c16": _cell(1000, 10), "pipeline/c64": _cell(800, 50)}
    shipyard = {"mlp_py/c1": _cell(350, 2.5), "mlp_py/c16": _cell(1400, 8), "pipeline/c64": _cell(1300, 30)}
    triton["mlp_py/c16"]["avg_batch"] = 4.4
    shipyard["crash"] = {"mlp_py_c16": _cell(1000, 9), "crashy": {"sent": 20, "failed": 20, "errors": ["INTERNAL: x"]}}
    ceiling = {"1": 400.0, "8": 2000.0, "16": 2600.0, "32": 3000.0, "64": 3300.0}
    table = report({"servers": {"triton": triton, "shipyard": shipyard}, "ceiling": ceiling}, [1, 16, 64])
    assert "| mlp_py | 1 | 300 | 350 | 1.17x | 3.00 | 2.50 | - / - | p50 no worse | yes |" in table
    assert "| mlp_py | 16 | 1,000 | 1,400 | 1.40x | 10.00 | 8.00 | 4.4 / - | >= 1.5x | NO |" in table
    assert "| pipeline | 64 | 800 | 1,300 | 1.62x | 50.00 | 30.00 | - / - | >= 1.5x | yes |" in table
    # the compute ceiling: batch c/2 against Triton's measured throughput (c=64: no Triton cell here)
    # and how much of it shipyard used, and 1.5x Triton would take
    assert "| 16 | 2,000 | 2,600 | 1,000 | 2.00x | 70% | 75% |" in table
    assert "| 64 | 3,000 | 3,300 | - | - | - | - |" in table
    assert "0 failed `mlp_py` requests (target 0: met)" in table


def test_the_c1_probe_times_the_same_model_and_pairs_rounds(tmp_path: Path) -> None:
    """``benchmarks.py_c1_env`` serves the benchmark's own ``model.py`` with a timer appended (the
    model is otherwise unchanged), and its summary compares servers round by round."""
    from benchmarks import py_c1_env
    from benchmarks.python_models import ORT_MODEL_PY

    repo = py_c1_env._timed_repo(tmp_path / "r", for_triton=False)
    source = (repo / "mlp_py" / "1" / "model.py").read_text()
    assert source.startswith(ORT_MODEL_PY.read_text()) and "_timed_run" in source
    compile(source, "model.py", "exec")
    assert py_c1_env._names("triton;shipyard:A=1,B=2") == ["triton", "shipyard:A=1,B=2"]
    assert py_c1_env._names("triton,shipyard") == ["triton", "shipyard"]

    def result(p50: float, ort: float) -> dict[str, float]:
        return {"p50_ms": p50, "ort_wall_ms": ort, "ort_cpu_ms": ort, "execute_ms": ort + 0.1, "slices": 3.0,
                "cpu_ms": ort - 1.0, "wait_ms": 0.5}  # fmt: skip

    rounds = {"triton": [result(3.0, 2.0), result(5.0, 4.0)], "shipyard": [result(3.5, 2.0), result(5.3, 4.0)]}
    summary = py_c1_env._summary(rounds)
    assert "| triton | 4.000 | 3.000 | 3.000 | 3.100 | 0.900 | 3.0 | -1.000 | 0.500 |" in summary
    assert "shipyard - triton, client p50, median of the rounds' differences: +0.400 ms" in summary
    assert "shipyard - triton, outside execute, median of the rounds' differences: +0.400 ms" in summary


def test_servers_are_measured_cell_by_cell_in_alternating_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cell runs on one server and then at once on the other (the order alternating), a server
    that fails to start is reported and the other still measured, and every server is stopped."""
    import argparse

    from benchmarks import python_models

    calls: list[tuple[str, str]] = []
    stopped: list[str] = []

    class Server:
        def __init__(self, name: str) -> None:
            self.name = name

        def stop(self) -> None:
            stopped.append(self.name)

    def cell(server: Server, port: int, model: str, spec: object, c: int, args: object) -> dict[str, object]:
        calls.append((server.name, f"{model}/c{c}"))
        return {}

    monkeypatch.setattr(python_models, "_measure_cell", cell)
    monkeypatch.setattr(python_models, "_crash_scenario", lambda server, *_: {"by": server.name})

    def broken(repo: Path, workdir: Path) -> tuple[Server, int]:
        raise RuntimeError("no tritonserver here\nmore")

    args = argparse.Namespace(concurrency=[1, 16])
    mlp = load_model_spec("wide_mlp")
    starters = {"triton": lambda repo, work: (Server("t"), 1), "shipyard": lambda repo, work: (Server("s"), 2)}
    cells, errors = python_models.measure_servers(
        starters, {"triton": tmp_path, "shipyard": tmp_path}, tmp_path, mlp, args
    )  # type: ignore[arg-type]
    assert errors == {}
    assert [name for name, _ in calls] == ["t", "s", "s", "t", "t", "s", "s", "t"]
    assert [key for _, key in calls[::2]] == ["mlp_py/c1", "mlp_py/c16", "pipeline/c1", "pipeline/c16"]
    assert cells["shipyard"]["crash"] == {"by": "s"} and sorted(stopped) == ["s", "t"]
    cells, errors = python_models.measure_servers(
        {"triton": broken, "shipyard": starters["shipyard"]},
        {"triton": tmp_path, "shipyard": tmp_path},
        tmp_path,
        mlp,
        args,  # type: ignore[arg-type]
    )
    assert errors == {"triton": "no tritonserver here"} and set(cells) == {"shipyard"}


def test_the_ort_gap_probe_prints_one_row_per_round(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import ort_gap

    assert ort_gap.main(["--rounds", "1", "--runs", "3", "--gap-us", "100"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 1 and len(rows[0].split("|")) == 8  # five timed blocks


def test_the_stub_profile_counts_onnx_runtime_and_names_the_rest() -> None:
    from benchmarks.stub_profile import fold

    raw = (
        "thread (1): MainThread;main (stub.py:378);execute (model.py:41);Session.run (onnxruntime/x.py:406) 80\n"
        "thread (1): MainThread;main (stub.py:378);send (ipc.py:36) 15\n"
        "thread (1): MainThread;main (stub.py:378);_respond (model.py:61) 5\n"
        "garbage line\n"
    )
    folded = fold(raw)
    assert folded["samples"] == 100
    assert folded["in_run"] == 80
    assert folded["other"] == [("send (ipc.py:36)", 15), ("_respond (model.py:61)", 5)]


def test_the_readme_copy_of_the_table_is_replaced_between_its_markers_only(tmp_path: Path) -> None:
    """``make bench`` rewrites the README's Python-model table; the text around it stays, and the
    main table's block (other markers) is not touched."""
    from benchmarks import python_models
    from benchmarks import report as bench_report

    start, end = python_models.README_MARKERS
    readme = tmp_path / "README.md"
    readme.write_text(
        f"intro\n{bench_report.README_START}\nmain\n{bench_report.README_END}\n{start}\nold\n{end}\nafter\n"
    )
    block = python_models.readme_block("| model | c |\n|---|---|\n| mlp_py | 16 |\n", ["--quick"])
    assert bench_report.update_readme(readme, block, python_models.README_MARKERS)
    text = readme.read_text()
    assert "old" not in text and "| mlp_py | 16 |" in text and "`python -m benchmarks.python_models --quick`" in text
    assert text.startswith(f"intro\n{bench_report.README_START}\nmain\n") and text.endswith(f"{end}\nafter\n")
    assert not bench_report.update_readme(tmp_path / "README.md", block, ("<!-- nowhere -->", end))
