"""The theory calculator against the paper's formulas, evaluated by hand for a small case."""

import math
import subprocess
import sys

import pytest

from pprs_mpi import optim, theory
from pprs_mpi.cli.theory import main as theory_main

# L = 2, R = 1, d = 16 (d^¼ = 2), ε = 0.5 (RL/ε = 4), Δ = 3, r = 0.5, D = 2, β = 4.
CASE = dict(L=2.0, R=1.0, d=16, eps=0.5, depth=3, r=0.5, D=2.0, beta=4.0)


def test_bounds_by_hand():
    b = theory.evaluate(**CASE)["bounds"]
    assert b["eq9_smooth_convex_lower"] == pytest.approx(math.sqrt(4 * 1 / 0.5) * 3)  # √(βR²/ε)Δ = 6√2
    assert b["eq10_smooth_nonconvex_lower"] == pytest.approx(96)  # βD/ε²·Δ = 4·2/0.25·3
    assert b["eq11_nonsmooth_convex_lower"] == pytest.approx(28)  # 4² + 4·3
    assert b["eq12_pprs_convex_upper"] == pytest.approx(40)  # 4² + 4·3·2
    # DL/(rε²) = 32, L²/ε² + Δ = 19
    assert b["eq14_pprs_nonconvex_upper"] == pytest.approx(32 * 19 * math.sqrt(16 + math.log(4)))
    # Theorem 3 preset from ε: T = ⌈3.5·2·1·2/0.5⌉ − 1 = 27, K = ⌈28/√16⌉ = 7; eq. (13) = 12/28 + 1/14 = 0.5 = ε.
    assert b["eq13_pprs_error_bound"] == pytest.approx(0.5)


def test_presets_and_times_by_hand():
    result = theory.evaluate(**CASE)
    t3, t4, times = result["presets"]["theorem3"], result["presets"]["theorem4"], result["times"]
    assert (t3["iters"], t3["K"], t3["mu"]) == (27, 7, "nesterov")
    assert times["pprs_theorem3"] == 27 * 2 * (7 + 3 - 1)  # T·2(K+Δ−1) = 486
    assert t4["K"] == 288  # 18L²/ε²
    preset4 = optim.theorem4(2.0, 2.0, 16, 0.5, 0.5)
    assert (t4["iters"], t4["gamma"]) == (preset4.iters, preset4.gamma)
    assert times["pprs_theorem4"] == preset4.iters * 2 * (288 + 3 - 1)
    assert times["nse_subgradient_nonsmooth_convex"] == pytest.approx(16 * 6)  # (RL/ε)² iterations · 2Δ
    assert times["nse_agd_smooth_convex"] == pytest.approx(math.sqrt(8) * 6)
    assert times["nse_gd_smooth_nonconvex"] == pytest.approx(32 * 6)


def test_cli_prints_labelled_bounds(capsys):
    assert theory_main(["--L", "1", "--R", "1", "--d", "100", "--eps", "0.01", "--depth", "20"]) == 0
    out = capsys.readouterr().out
    for text in ("eq. (9)", "eq. (10)", "eq. (11)", "eq. (12)", "eq. (13)", "eq. (14)", "constant 1",
                 "theorem3", "theorem4", "T·2(K+Δ−1)", "2Δ"):
        assert text in out
    assert "12000" in out  # eq. (11): 100² + 100·20


@pytest.mark.parametrize("argv", [
    ["--L", "-1", "--R", "1", "--d", "10", "--eps", "0.1", "--depth", "5"],
    ["--L", "1", "--R", "1", "--d", "10", "--eps", "0", "--depth", "5"],
    ["--L", "1", "--R", "1", "--d", "10", "--eps", "0.1"],
    ["--L", "1", "--R", "1", "--d", "ten", "--eps", "0.1", "--depth", "5"],
])
def test_bad_input_is_one_line_exit_2(capsys, argv):
    assert theory_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1


def test_plot_against_depth(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "theory.png"
    argv = ["--L", "1", "--R", "1", "--d", "100", "--eps", "0.01", "--depth", "20", "--plot", str(path)]
    assert theory_main(argv) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("command", [["pprs_mpi.theory", "--L", "1", "--R", "1", "--d", "10", "--eps", "0.1",
                                      "--depth", "4"], ["pprs_mpi.check", "lad"]])
def test_a_reader_closing_the_pipe_ends_the_command_quietly(command):
    """`python -m pprs_mpi.theory ... | head -1`: no BrokenPipeError traceback, exit 0."""
    process = subprocess.Popen([sys.executable, "-m", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the command writes anything: its every write finds the pipe closed
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0 and b"Traceback" not in err, err.decode()
