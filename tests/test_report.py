"""The report: summary numbers against values computed from synthetic traces, and the command line."""

import json
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

import pprs_mpi
from pprs_mpi import analysis, report
from pprs_mpi.cli.report import main as report_main
from pprs_mpi.trace import TIMELINE_DTYPE, TraceWriter, edited, load

P, M = 3, 4  # ranks (a chain of 3 nodes, one per rank) and microbatches
F, B, W = 0, 1, 2
CONFIG = {"problem": "quadratic", "algo": "pprs", "K": 8, "gamma": 0.1, "lr": 0.5, "mu": "nesterov", "iters": 40,
          "seed": 0, "schedule": "gpipe", "microbatch_size": 2, "eval_every": 5, "engine": "mpi", "device": "cpu",
          "dtype": "float64", "simulated_depth": None}
META = {"ranks": P, "device": "cpu", "mpi_library": "Open MPI 5.0", "engine": "mpi", "depth": P,
        "makespan": 2 * (M + P - 1), "n_microbatches": M}


def gpipe_timeline(iterations, unit, latency, gap=0.5):
    """GPipe fill-drain on a chain: rank r runs F0..F(M-1) then B0..B(M-1), each action `unit` seconds,
    every message `latency` seconds; idle time before an action is a wait. After each iteration every
    rank runs an evaluation forward (microbatch M), which the report must leave out."""
    rows = []
    period = 2 * (M + P - 1) * unit + 2 * (P - 1) * latency + gap
    for t in range(iterations):
        origin = t * period
        for r in range(P):
            starts = [(F, m, r * (unit + latency) + m * unit) for m in range(M)]
            starts += [(B, m, (2 * P - 2 - r) * (unit + latency) + M * unit + m * unit) for m in range(M)]
            clock = 0.0
            for phase, m, start in starts:
                if start > clock:
                    rows.append((r, t, m, W, -1, origin + clock, origin + start))
                rows.append((r, t, m, phase, r, origin + start, origin + start + unit))
                clock = start + unit
            evaluation = origin + period - gap / 2
            rows.append((r, t, M, W, -1, evaluation, evaluation + r * unit))
            rows.append((r, t, M, F, r, evaluation + r * unit, evaluation + (r + 1) * unit))
    return np.array(rows, dtype=TIMELINE_DTYPE)


def f_of(t):
    return 10.0 * 0.7 ** t


def write_trace(path, n_rows=40, unit=1e-3, latency=0.0, meta=META, config=CONFIG, timeline=True):
    with TraceWriter(path, config, meta) as writer:
        writer.write_graph(["a", "b", "c"], ["linear", "relu", "sum"], [["theta"], ["a"], ["b"]], [0, 1, 2],
                           dim=4, depth=P, root="theta")
        for t in range(n_rows):
            writer.append(iteration=t, pipeline_time=2.0 * (M + P - 1) * (t + 1), wall_time=0.02 * (t + 1),
                          f_smoothed=f_of(t) * 1.1, f_eval=f_of(t) if t % 5 == 0 or t == n_rows - 1 else np.nan)
        if timeline:
            writer.write_timeline(gpipe_timeline(3, unit, latency))
    return path


def test_objective_time_to_targets_and_best(tmp_path):
    summary = report.summarize(load(write_trace(tmp_path / "run.h5")), targets=[1.0, 0.05, 1e-9])
    evaluated = [t for t in range(40) if t % 5 == 0 or t == 39]
    assert summary["f_source"] == "f_eval"
    assert summary["f_final"] == f_of(39) and summary["f_best"] == f_of(39) and summary["best_iteration"] == 39
    assert summary["pipeline_time"] == 12.0 * 40 and summary["wall_time"] == pytest.approx(0.8)
    for target, reached in zip([1.0, 0.05], summary["targets"]):
        first = next(t for t in evaluated if f_of(t) <= target)
        assert reached == {"target": target, "iteration": first, "pipeline_time": 12.0 * (first + 1),
                           "wall_time": pytest.approx(0.02 * (first + 1))}
    assert summary["targets"][2]["iteration"] is None
    assert (summary["problem"], summary["algo"], summary["K"], summary["mu"], summary["depth"]) == (
        "quadratic", "pprs", 8, "nesterov", P)


def test_f_smoothed_is_the_objective_without_evaluations(tmp_path):
    path = tmp_path / "run.h5"
    with TraceWriter(path, CONFIG, META) as writer:
        for t, f in enumerate([5.0, 3.0, 4.0]):
            writer.append(iteration=t, pipeline_time=t, wall_time=t, f_smoothed=f)
    summary = report.summarize(load(path), targets=[3.5])
    assert (summary["f_source"], summary["f_final"], summary["f_best"], summary["best_iteration"]) == (
        "f_smoothed", 4.0, 3.0, 1)
    assert summary["targets"][0]["iteration"] == 1


def test_a_trace_without_rows_or_timeline_is_summarized(tmp_path):
    summary = report.summarize(load(write_trace(tmp_path / "run.h5", n_rows=0, timeline=False)))
    assert (summary["rows"], summary["f_final"], summary["targets"], summary["rank_fractions"]) == (0, None, [], [])
    assert summary["pipeline_efficiency"] is None and summary["makespan"] == 2 * (M + P - 1)
    assert "iterations" in report.format_summary(summary, "none")


def test_default_targets_close_fractions_of_the_gap_across_runs(tmp_path):
    first = load(write_trace(tmp_path / "a.h5", n_rows=40))
    second = load(write_trace(tmp_path / "b.h5", n_rows=20))
    low, high = f_of(39), f_of(0)
    assert analysis.default_targets([first, second]) == pytest.approx(
        [low + 0.1 * (high - low), low + 0.01 * (high - low), low + 0.001 * (high - low)])


@pytest.mark.parametrize("latency", [0.0, 3e-4])
def test_rank_fractions_and_efficiency_of_a_gpipe_timeline(tmp_path, latency):
    unit = 1e-3
    summary = report.summarize(load(write_trace(tmp_path / "run.h5", unit=unit, latency=latency)))
    # rank r is busy 2M units and its iteration ends with its last backward: (2P-2-r)(unit+latency) + 2M unit
    for r, fractions in enumerate(summary["rank_fractions"]):
        span = (2 * P - 2 - r) * (unit + latency) + 2 * M * unit
        assert fractions["rank"] == r
        assert fractions["compute"] == pytest.approx(2 * M * unit / span)
        assert fractions["wait"] == pytest.approx(1 - 2 * M * unit / span)
    ideal = 2 * (M + P - 1) * unit
    assert summary["unit_cost"] == pytest.approx(unit)
    assert summary["iteration_time"] == pytest.approx(ideal + 2 * (P - 1) * latency)
    assert summary["pipeline_efficiency"] == pytest.approx(ideal / (ideal + 2 * (P - 1) * latency))
    assert summary["wall_per_iteration"] == pytest.approx(0.02)
    assert summary["end_to_end_efficiency"] == pytest.approx(ideal / 0.02)


def test_makespan_falls_back_to_the_configuration_and_graph(tmp_path):
    meta = {key: value for key, value in META.items() if key not in ("makespan", "n_microbatches", "depth")}
    summary = report.summarize(load(write_trace(tmp_path / "run.h5", meta=meta)))
    assert (summary["n_microbatches"], summary["depth"], summary["makespan"]) == (M, P, 2 * (M + P - 1))
    assert summary["pipeline_efficiency"] == pytest.approx(1.0)


def test_text_summary_and_comparison_table(tmp_path):
    one = report.summarize(load(write_trace(tmp_path / "a.h5")))
    text = report.format_summary(one, "rule")
    assert "(f_eval)" in text and "rank 2: compute 80.0%, wait 20.0%" in text and "pipeline 100.0%" in text
    two = report.summarize(load(write_trace(tmp_path / "b.h5", config={**CONFIG, "simulated_depth": 10})))
    table = report.format_table([one, two], "rule")
    lines = table.splitlines()
    assert lines[2].startswith("b ") and "(sim 10)" in lines[2]
    header = lines[0]
    for line in lines[1:3]:  # aligned: every row's status starts under the header's
        assert line[header.index("status"):].split()[0] == "completed"
    assert max(map(len, table.splitlines())) <= 100 and max(map(len, text.splitlines())) <= 100


def test_the_summary_counts_ranks_in_the_singular_and_calls_serial_stages_stages(tmp_path):
    mpi = report.format_summary(report.summarize(load(write_trace(tmp_path / "mpi.h5"))), "rule")
    assert "3 ranks," in mpi and re.search(r"per rank +rank 0: compute", mpi)
    serial = write_trace(tmp_path / "serial.h5", meta={**META, "engine": "serial", "ranks": 1})
    text = report.format_summary(report.summarize(load(serial)), "rule")
    assert "1 rank," in text and "1 ranks" not in text
    assert re.search(r"per stage +stage 0: compute", text) and "rank 0" not in text


def test_an_unwritable_plot_directory_is_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert report_main([str(write_trace(tmp_path / "a.h5")), "--plot", "/dev/null/x"]) == 2
    assert capsys.readouterr().err == "error: --plot /dev/null/x: cannot write /dev/null/x (Not a directory)\n"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pprs_mpi.report", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_summary_json_and_comparison(tmp_path, capsys):
    a, b = write_trace(tmp_path / "a.h5"), write_trace(tmp_path / "b.h5", n_rows=20, latency=1e-4)
    result = cli(a, b, "--json", "--targets", "1,0.1")
    assert result.returncode == 0, result.stderr
    summaries = json.loads(result.stdout)
    assert [s["name"] for s in summaries] == ["a", "b"]
    assert [t["target"] for t in summaries[0]["targets"]] == [1.0, 0.1]
    assert summaries[1]["pipeline_efficiency"] < 1.0 < summaries[0]["pipeline_efficiency"] + 1e-9
    assert report_main([str(a)]) == 0 and "quadratic" in capsys.readouterr().out
    assert report_main([str(a), str(b)]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[:3]] == ["run", "a", "b"]


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_text("hello"), "not an HDF5 file"),
    (lambda p: h5py.File(p, "w").close(), "not a pprs_mpi trace"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, make, words):
    path = tmp_path / "bad.h5"
    make(path)
    result = cli(path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and words in result.stderr and "Traceback" not in result.stderr


def test_truncated_and_newer_traces_are_one_line_errors(tmp_path, capsys):
    truncated = write_trace(tmp_path / "truncated.h5")
    truncated.write_bytes(truncated.read_bytes()[:3000])
    newer = write_trace(tmp_path / "newer.h5")
    with edited(newer) as f:
        f.attrs["format_version"] = 99
    good = write_trace(tmp_path / "good.h5")
    for path, words in ((truncated, "truncated"), (newer, "newer")):
        assert report_main([str(good), str(path)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and words in captured.err and captured.err.count("\n") == 1


def test_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = [write_trace(tmp_path / "a.h5"), write_trace(tmp_path / "b.h5", latency=2e-4,
                                                        config={**CONFIG, "simulated_depth": 10})]
    out = tmp_path / "plots"
    assert report_main([*map(str, runs), "--plot", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a_f_smoothed_vs_f_eval.png", "a_gantt_iteration2.png", "b_f_smoothed_vs_f_eval.png",
                     "b_gantt_iteration2.png", "f_vs_pipeline_time.png", "f_vs_wall_time.png"]
    assert all((out / name).read_bytes().startswith(b"\x89PNG") for name in names)
    capsys.readouterr()
    assert report_main([str(runs[0]), "--plot", str(tmp_path / "none"), "--iteration", "7"]) == 2
    assert "no records for iteration 7" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_last_complete_iteration_skips_a_partial_one():
    records = gpipe_timeline(3, 1e-3, 0.0)
    partial = records[(records["iteration"] < 2) | (records["phase"] != B) | (records["microbatch"] < 2)]
    assert analysis.last_complete_iteration(records) == 2 and analysis.last_complete_iteration(partial) == 1


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch, capsys):
    for name in [name for name in sys.modules if name.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # a None entry makes `import` raise ImportError
    monkeypatch.delitem(sys.modules, "pprs_mpi.plots", raising=False)
    monkeypatch.delattr(pprs_mpi, "plots", raising=False)
    assert report_main([str(write_trace(tmp_path / "a.h5")), "--plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'pprs_mpi[plot]'" in err


def words(text):
    """The text with every run of whitespace (line wrapping, alignment) as one space."""
    return " ".join(text.split())


def test_the_targets_line_says_how_the_default_targets_were_chosen(tmp_path):
    trace = load(write_trace(tmp_path / "run.h5"))
    first, best = f_of(0), f_of(39)
    expected = [best + fraction * (first - best) for fraction in (0.1, 0.01, 0.001)]
    text = words(report.render([trace], None, as_json=False)[0])
    assert (f"targets best + 10% / 1% / 0.1% of the gap between first f {first:.4g} and best f {best:.4g}; "
            "choose others with --targets 0.1,0.05") in text
    for target in expected:
        first_row = next(t for t in range(40) if (t % 5 == 0 or t == 39) and f_of(t) <= target)
        assert f"f ≤ {target:.4g} pipeline {12.0 * (first_row + 1):.4g} units" in text
    given = words(report.render([trace], [1.0, 0.05], as_json=False)[0])
    assert "targets given with --targets f ≤ 1 pipeline" in given and "f ≤ 0.05 pipeline" in given
    assert "of the gap" not in given


def test_f_minus_f_star_when_the_trace_knows_f_star(tmp_path):
    known = load(write_trace(tmp_path / "known.h5", meta={**META, "f_star": -1.0}))
    summary = report.summarize(known, targets=[])
    assert summary["f_star"] == -1.0
    assert summary["gap_final"] == f_of(39) + 1.0 and summary["gap_best"] == f_of(39) + 1.0
    text = words(report.format_summary(summary, "rule"))
    assert "problem quadratic, f* = -1" in text and f"final {f_of(39):.4g} at iteration 39 (f − f* = 1)" in text
    unknown = report.summarize(load(write_trace(tmp_path / "unknown.h5", meta={**META, "f_star": np.nan})), [])
    assert unknown["f_star"] is None and unknown["gap_final"] is None
    assert "f* unknown" in report.format_summary(unknown, "rule") and "f − f*" not in report.format_summary(
        unknown, "rule")


def test_a_final_f_above_the_best_is_explained(tmp_path):
    path = tmp_path / "run.h5"
    with TraceWriter(path, CONFIG, META) as writer:
        for t, f in enumerate([5.0, 1.0, 0.5, 0.8, 0.6]):
            writer.append(iteration=10 * t, pipeline_time=t, wall_time=t, f_smoothed=f, f_eval=f)
    text = words(report.format_summary(report.summarize(load(path), []), "rule"))
    assert "final 0.6 at iteration 40" in text and "best 0.5 at iteration 20" in text
    assert "final above best by 0.1: with a constant step η and smoothing γ" in text
    monotone = words(report.format_summary(report.summarize(load(write_trace(tmp_path / "m.h5")), []), "rule"))
    assert "final above best" not in monotone


def test_comparison_tables_fit_in_100_columns(tmp_path):
    names = ["lr0.003_gamma0.001_K16_depth200_seed7", "b"]
    runs = [load(write_trace(tmp_path / f"{name}.h5", latency=1e-4 * i)) for i, name in enumerate(names)]
    table = report.render(runs, [3.0, 1.0, 0.5, 0.1, 0.05, 0.01, 1e-3], as_json=False)[0]
    assert max(len(line) for line in table.splitlines()) <= 100
    rows = [line for line in table.splitlines() if line.startswith("lr0.003_")]
    assert len(rows) >= 4 and all(row.startswith("lr0.003_gam…pth200_seed7 ") for row in rows)
    for value in (3.0, 1.0, 0.5, 0.1, 0.05, 0.01, 1e-3):  # every target has a column, in some group
        assert re.search(rf"f ≤ {re.escape(f'{value:.4g}')}(  |$)", table, re.M)


def test_report_piped_into_head_exits_cleanly(tmp_path):
    run = write_trace(tmp_path / "a.h5")
    for command in (f"{sys.executable} -m pprs_mpi.report {run} | head -1",
                    # more than a pipe holds (64 KiB): the writer certainly meets the closed pipe
                    f"{sys.executable} -m pprs_mpi.report --json {' '.join([str(run)] * 60)} | head -1"):
        result = subprocess.run(["bash", "-c", "set -o pipefail; " + command], capture_output=True, text=True,
                                timeout=120)
        assert (result.returncode, result.stderr) == (0, ""), command
        assert result.stdout.count("\n") == 1


def bar_widths(ax):
    """Drawn width of every bar of the Gantt chart's bar collections, with their face colours."""
    for collection in ax.collections:
        assert collection.get_linewidths().max() == 0 or len(collection.get_edgecolors()) == 0
        for path, colour in zip(collection.get_paths(), np.resize(collection.get_facecolors(), (len(
                collection.get_paths()), 4))):
            xs = path.vertices[:, 0]
            yield xs.max() - xs.min(), tuple(colour)


@pytest.mark.parametrize("engine, word", [("mpi", "rank"), ("serial", "stage")])
def test_gantt_bars_have_no_edges_a_minimum_width_and_name_stages_or_ranks(tmp_path, engine, word):
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgba

    from pprs_mpi import plots
    path = write_trace(tmp_path / "run.h5", meta={**META, "engine": engine})
    with edited(path) as f:  # one forward action 1000 times shorter than the others
        timeline = f["timeline"][()]
        tiny = np.flatnonzero((timeline["iteration"] == 2) & (timeline["phase"] == F))[0]
        timeline["end"][tiny] = timeline["start"][tiny] + 1e-6
        f["timeline"][...] = timeline
    trace = load(path)
    records = analysis.pipeline_records(trace)
    records = records[records["iteration"] == 2]
    span = records["end"].max() - records["start"].min()
    ax = plots.plot_gantt(trace, report.summarize(trace, []), "run", 2).axes[0]
    drawn_span = ax.get_xlim()[1]  # the x axis covers the iteration, in its own unit
    actions = [width / drawn_span for width, colour in bar_widths(ax) if colour != to_rgba(plots.COLOURS[W])]
    assert len(actions) == P * 2 * M
    assert min(actions) == pytest.approx(plots.MIN_BAR)  # the 1 µs forward, drawn wider
    assert sorted(actions)[1] == pytest.approx(1e-3 / span)  # the others at their length, 1 ms
    assert [label.get_text() for label in ax.get_yticklabels()] == [f"{word} {r} (1 node)" for r in range(P)]
    assert "drawn that wide" in ax.get_xlabel()
    numbered = len(ax.texts)  # the 1 µs forward is too narrow for its number: the title must not promise all
    assert 0 < numbered < P * 2 * M
    assert f"(numbered on the {numbered} of {P * 2 * M} bars wide enough)" in ax.get_title()


def test_objective_plot_labels_legend_and_f_star(tmp_path):
    pytest.importorskip("matplotlib")
    from pprs_mpi import plots
    runs = [load(write_trace(tmp_path / "a.h5", meta={**META, "f_star": -1.0})),
            load(write_trace(tmp_path / "b.h5", meta={**META, "f_star": -1.0, "makespan": 30},
                             config={**CONFIG, "lr": 0.1, "K": 16}))]
    summaries = [report.summarize(trace, []) for trace in runs]
    ax = plots.plot_objective(runs, summaries, ["a", "b"], "pipeline_time").axes[0]
    assert ax.get_xlabel() == "pipeline time (units of one forward of one node on one microbatch)"
    assert ax.get_ylabel().startswith("$f(y_t) - f^*$") and "= -1" in ax.get_ylabel()
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [
        "a: K=8 lr=0.5 (mpi, 3 stages, 12 units/iteration)", "b: K=16 lr=0.1 (mpi, 3 stages, 30 units/iteration)"]
    assert ax.get_title() == "quadratic — pprs γ=0.1 μ=nesterov"
    assert ax.lines[0].get_ydata()[0] == pytest.approx(f_of(0) + 1.0)  # f − f*
    wall = plots.plot_objective(runs, summaries, ["a", "b"], "wall_time").axes[0]
    assert wall.get_xlabel() == "wall time (s)" and "units/iteration" not in wall.get_legend().get_texts()[0].get_text()


def test_f_star_line_on_a_linear_axis(tmp_path):
    pytest.importorskip("matplotlib")
    from pprs_mpi import plots
    path = tmp_path / "run.h5"
    with TraceWriter(path, CONFIG, {**META, "f_star": 0.2}) as writer:  # f − f* from 0.75 to 0.27: no log axis
        for t in range(30):
            writer.append(iteration=t, pipeline_time=t, wall_time=t, f_smoothed=1.0, f_eval=0.45 + 0.5 * 0.9 ** t)
    trace = load(path)
    ax = plots.plot_objective([trace], [report.summarize(trace, [])], ["run"], "wall_time").axes[0]
    assert ax.get_yscale() == "linear"
    star = [line for line in ax.lines if line.get_label() == "$f^*$ = 0.2"]
    assert len(star) == 1 and set(star[0].get_ydata()) == {0.0}
    assert ax.lines[0].get_ydata()[0] == pytest.approx(0.75)


def test_dollar_signs_in_names_are_drawn_as_text_not_mathtext(tmp_path):
    """A problem named '$\\frac{' (or a file stem with a $) once crashed --plot in matplotlib's mathtext."""
    pytest.importorskip("matplotlib")
    run = write_trace(tmp_path / "cost$.h5", config={**CONFIG, "problem": "price_$\\frac{x"})
    assert report_main([str(run), "--plot", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "cost$_f_smoothed_vs_f_eval.png").read_bytes().startswith(b"\x89PNG")


def test_a_builder_reference_is_titled_without_its_directories(tmp_path):
    """A long FILE.py:FUNCTION path cut the plot titles off: they show the file's name and the function."""
    pytest.importorskip("matplotlib")
    from pprs_mpi import plots
    deep = "/home/someone/projects/a/rather/long/path/to/the/experiments/of/this/week/my_objective.py:build"
    trace = load(write_trace(tmp_path / "a.h5", config={**CONFIG, "problem": deep}))
    ax = plots.plot_objective([trace], [report.summarize(trace, [])], ["a"], "pipeline_time").axes[0]
    assert ax.get_title() == "my_objective.py:build — pprs K=8 γ=0.1 lr=0.5 μ=nesterov"
