"""Chapter 5's section "The full table on your GPU", as a reader runs it: its command, taken
from the notebook (the code cell that builds it, and the shell loop the text shows), cut to the
smoke budget on the CPU, stopped early by ``--max-minutes`` and run again: it continues from the
saved state and finishes. Also the loop of :func:`iwae_tutorial.pieces.run_in_pieces` and the
time estimate of :func:`iwae_tutorial.stagewise.time_left`."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from iwae_tutorial import pieces, stagewise

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "notebooks" / "05_density_estimation.ipynb"
SHOWN_MINUTES = "--max-minutes 60"
CPU = " --device cpu --threads 1 --no-download"


def _cells() -> list[dict]:
    return json.loads(CHAPTER.read_text())["cells"]


def command_cell() -> str:
    """The source of the section's code cell: the one code cell that holds ``--budget full``."""
    found = [("".join(c["source"])) for c in _cells()
             if c["cell_type"] == "code" and "--budget full" in "".join(c["source"])]
    assert len(found) == 1, f"{len(found)} code cells of chapter 5 hold --budget full"
    return found[0]


def shown_loop() -> str:
    """The shell loop the section's text shows (its fenced bash block)."""
    blocks = [b for c in _cells() if c["cell_type"] == "markdown"
              for b in re.findall(r"```bash\n(.*?)```", "".join(c["source"]), re.S)
              if b.startswith("until python -m iwae_tutorial reproduce")]
    assert len(blocks) == 1, f"{len(blocks)} shell loops in chapter 5"
    return blocks[0]


def loop_command(loop: str) -> str:
    """The command inside ``until COMMAND; do ...; done``, on one line."""
    one_line = " ".join(loop.replace("\\\n", " ").split())
    m = re.fullmatch(r"until (.*); do \[ \$\? -eq 75 \] \|\| break; done", one_line)
    assert m, one_line
    return m.group(1)


def cell_namespace(monkeypatch, run_root: str | None) -> dict:
    """The section's code cell executed as a reader's kernel would (smoke profile: it only
    prints the command), with ``$IWAE_RUN_ROOT`` = ``run_root`` (None: unset)."""
    monkeypatch.setenv("IWAE_PROFILE", "smoke")
    if run_root is None:
        monkeypatch.delenv("IWAE_RUN_ROOT", raising=False)
    else:
        monkeypatch.setenv("IWAE_RUN_ROOT", run_root)
    ns: dict = {}
    exec(compile(command_cell(), "chapter-5-full-table-cell", "exec"), ns)  # noqa: S102
    return ns


def to_smoke(command: str, minutes: str | None = None) -> str:
    """The reader's command cut to the smoke budget on one CPU thread, without downloads; with
    ``minutes``, another ``--max-minutes``."""
    assert "--budget full" in command and SHOWN_MINUTES in command, command
    out = command.replace("--budget full", "--budget smoke")
    if minutes is not None:
        out = out.replace(SHOWN_MINUTES, f"--max-minutes {minutes}")
    return out + CPU


def test_the_shell_loop_runs_the_cells_command(monkeypatch, capsys):
    ns = cell_namespace(monkeypatch, None)
    assert capsys.readouterr().out.strip() == ns["COMMAND"]  # shown, not run, in the book
    assert loop_command(shown_loop()) == ns["COMMAND"]
    assert pieces.result_path(ns["COMMAND"]) == Path("runs/results/mnist-full.json")
    assert "--run-root runs " in ns["COMMAND"]  # a folder that stays, not a temporary one


def test_result_path_follows_the_protocol_options():
    base = "python -m iwae_tutorial reproduce --dataset mnist --budget full --results-dir r"
    assert pieces.result_path(base) == Path("r/mnist-full.json")
    assert pieces.result_path(base + " --batch-size 500 --trainer fast") == Path(
        "r/mnist-full-b500-fast.json")
    assert pieces.result_path(base.replace("full", "121") + " --two-layer-epochs 40") == Path(
        "r/mnist-121-2L40.json")
    assert pieces.result_path(base + " --two-layer-epochs 4000") == Path("r/mnist-full.json")
    with pytest.raises(ValueError, match="not a"):
        pieces.result_path("python -m iwae_tutorial train --out x")


def _result(stages: list[tuple[int, dict]], ends=None, epochs=None) -> dict:
    ends = ends or {"1L": [1, 4, 13], "2L": [1, 4]}
    return {"protocol": {"name": "mnist-t", "stage_ends": ends,
                         "epochs_by_layers": epochs or {p: e[-1] for p, e in ends.items()}},
            "stages": [{"epochs": e, "wall_time_s": {
                p: {"train": t, "eval_nll": s, "active_units": 1.0} for p, (t, s) in w.items()},
                "provenance": {p: {"device": "cuda", "device_name": "GPU X"} for p in w}}
                for e, w in stages]}


def test_time_left_is_the_measured_pace_times_what_is_left():
    r = _result([(1, {"1L": (10.0, 4.0), "2L": (20.0, 9.0)}), (4, {"1L": (30.0, 6.0)})])
    left = stagewise.time_left(r)
    assert left["1L"] == {"seconds_per_epoch": 10.0, "epochs_left": 9,
                          "seconds_per_scoring": 6.0, "stages_left": 1,
                          "seconds_left": 10.0 * 9 + 6.0}
    assert left["2L"]["seconds_left"] == 20.0 * 3 + 10.0 * 1
    text = stagewise.time_left_text(r)
    assert "GPU X (cuda)" in text and "10.0 s per epoch" in text and "1 scoring left" in text
    assert text.endswith(f"in all about {(96 + 70) / 60:.0f} min.")
    only_1l = _result([(1, {"1L": (10.0, 4.0)})])
    assert set(stagewise.time_left(only_1l)) == {"1L"}
    assert "two-layer fleet, which has no scored stage yet" in stagewise.time_left_text(only_1l)
    assert "No stage" in stagewise.time_left_text(_result([]))


def test_the_loop_reruns_while_the_status_is_75_and_prints_the_estimate(monkeypatch, tmp_path):
    command = ("python -m iwae_tutorial reproduce --dataset mnist --budget full "
               f"--results-dir {tmp_path} --max-minutes 1")
    (tmp_path / "mnist-full.json").write_text(json.dumps(
        _result([(1, {"1L": (10.0, 4.0)})])))
    statuses, runs = iter([75, 75, 0]), []

    def fake_run(args, out):
        runs.append(args)
        return next(statuses)

    monkeypatch.setattr(pieces, "_run_showing_output", fake_run)
    out = io.StringIO()
    assert pieces.run_in_pieces(command, out=out) == 0
    assert len(runs) == 3 and runs[0][0] == sys.executable
    assert runs[0][1:] == shlex.split(command)[1:]
    assert out.getvalue().count("At the pace measured so far on GPU X (cuda)") == 2
    monkeypatch.setattr(pieces, "_run_showing_output", lambda args, out: 2)
    assert pieces.run_in_pieces(command, out=io.StringIO()) == 2  # an error ends the loop


def test_the_shown_output_keeps_split_characters(tmp_path):
    code = "import sys; b = '█ done'.encode(); sys.stdout.buffer.write(b[:1]); " \
           "sys.stdout.flush(); sys.stdout.buffer.write(b[1:]); sys.exit(3)"
    out = io.StringIO()
    assert pieces._run_showing_output([sys.executable, "-c", code], out) == 3
    assert out.getvalue() == "█ done"


def test_the_sections_command_stops_early_and_continues(monkeypatch, tmp_path, capsys):
    """The command as the section builds it, on the smoke budget: a piece stopped by a tiny
    --max-minutes exits with 75 and leaves its state; the cell's loop runs it again, it
    continues from that state and finishes; then the text's shell loop, run on the finished
    run, ends at once with status 0."""
    from iwae_tutorial.data import DataError, load_mnist

    try:
        load_mnist(download=False)
    except DataError as e:
        pytest.skip(f"MNIST is not available here (set IWAE_DATA_DIR): {str(e)[:100]}")
    run_root = str(tmp_path / "runs")
    ns = cell_namespace(monkeypatch, run_root)
    capsys.readouterr()
    command = ns["COMMAND"]
    assert f"--run-root {run_root} " in command and f"--results-dir {run_root}/results" in command
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = pieces.result_path(to_smoke(command))
    assert result == Path(run_root) / "results" / "mnist-smoke.json"

    # 1. a piece with a tiny time limit: one training step, then it stops, state saved
    first = to_smoke(command, minutes="0.0001")
    proc = subprocess.run([sys.executable, "-m", "iwae_tutorial", "reproduce",
                           *pieces.reproduce_argv(first)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert "Run the same command again to continue" in proc.stderr
    assert (Path(run_root) / "mnist-smoke" / "1L" / "fleet.pt").exists()
    assert not result.exists()

    # 2. the cell's loop, with the section's --max-minutes: it continues and finishes
    out = io.StringIO()
    assert ns["run_in_pieces"](to_smoke(command), out=out) == 0, out.getvalue()[-2000:]
    shown = out.getvalue()
    assert "1L: continuing from the saved state" in shown, shown[-2000:]
    assert f"wrote {result}" in shown
    table = json.loads(result.read_text())
    assert table["status"] == "complete"
    assert [s["epochs"] for s in table["stages"]] == [1]
    assert len(table["configurations"]) == 12

    # 3. the text's shell loop (its command cut the same way), on the finished run: status 0
    shown_command = loop_command(shown_loop())
    assert shown_command.replace("--run-root runs --results-dir runs/results",
                                 f"--run-root {run_root} --results-dir {run_root}/results"
                                 ) == command
    loop = (f"until {shlex.quote(sys.executable)} {to_smoke(command).split(' ', 1)[1]}; "
            "do [ $? -eq 75 ] || break; done; echo loop-ended $?")
    proc = subprocess.run(["bash", "-c", loop], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0 and "loop-ended 0" in proc.stdout, proc.stderr[-2000:]
    assert json.loads(result.read_text())["status"] == "complete"
