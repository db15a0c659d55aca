"""`python -m pprs_mpi.experiments anytime`: its verdict rule, its bad input, and the whole path on a tiny grid."""

import json

import numpy as np
import pytest

from pprs_mpi.experiments import anytime
from pprs_mpi.experiments.__main__ import main as experiments_main


def test_the_main_question_needs_a_median_below_half_and_a_significant_sign_test():
    constant = np.full(10, 1.0)
    met = anytime.main_question(list(np.full(10, 0.3)), list(constant))  # 10 of 10 below 0.5: p = 2/1024
    assert met["met"] and met["below"] == 10 and met["sign_p"] == pytest.approx(2 / 1024)
    assert met["median_ratio"] == pytest.approx(0.3)
    close = anytime.main_question([0.4] * 6 + [0.6] * 4, list(constant))  # below on 6 of 10: not significant
    assert not close["met"] and close["below"] == 6
    assert not anytime.main_question([0.7] * 10, list(constant))["met"]  # significant, but above half


def test_time_to_a_target_is_the_first_evaluation_at_or_below_it():
    run = {"status": "completed", "time": [0.0, 10.0, 20.0, 30.0], "f": [3.0, 1.0, 2.0, 0.5]}
    assert anytime.time_to(run, 1.0) == 10.0 and anytime.time_to(run, 0.1) == np.inf
    assert anytime.final(run) == 0.5 and anytime.final({**run, "status": "diverged"}) == np.inf


@pytest.mark.parametrize("argv, named", [
    (["--problems", "lad,rosenbrock"], "unknown problem 'rosenbrock'"),
    (["-K", "5"], "-K even"),
    (["--tune-seeds", "3:1"], "FIRST < STOP"),
])
def test_bad_input_is_one_line_and_exit_2(argv, named, tmp_path, capsys):
    assert experiments_main(["anytime", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "results.json").exists()


def test_a_tiny_study_writes_its_results_and_document(tmp_path):
    doc = tmp_path / "anytime.md"
    assert experiments_main(["anytime", "--out", str(tmp_path), "--problems", "linf", "--iters", "12",
                             "--tune-seeds", "0:1", "--report-seeds", "5:8", "--doc", str(doc)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    (record,) = results["problems"]
    assert record["report_seeds"] == [5, 6, 7] and set(record["gaps"]) == set(anytime.METHODS)
    assert record["best_variant"] in anytime.METHODS and record["best_variant"] != "constant"
    assert len(record["tuning"]["constant"]) == len(anytime.configs("linf"))
    text = doc.read_text()
    assert "| linf |" in text and record["best_variant"] in text
    assert experiments_main(["anytime", "--out", str(tmp_path), "--document", "--doc", str(doc)]) == 0
    assert doc.read_text() == text
    written = (tmp_path / "results.json").stat().st_mtime_ns  # the same command again: nothing left to run
    assert experiments_main(["anytime", "--out", str(tmp_path), "--problems", "linf", "--iters", "12",
                             "--tune-seeds", "0:1", "--report-seeds", "5:8", "--doc", str(doc)]) == 0
    assert (tmp_path / "results.json").stat().st_mtime_ns == written and "in 2 session(s)" in doc.read_text()
