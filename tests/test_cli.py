"""The command line: shipped flagfiles dry-run, bad input fails cleanly, flags re-run, --help
shows each script's flags."""

import glob
import os
import re
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from batchlab import results
from experiments import sweep_flags

FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.flags"), recursive=True))


def test_configs_exist():
    names = {os.path.relpath(f, ROOT) for f in FLAGFILES}
    assert {
        "configs/base.flags",
        "configs/smoke.flags",
        "configs/seed/mlp.flags",
        "configs/seed/mlp_widths.flags",
    } <= names


@pytest.mark.parametrize("flagfile", FLAGFILES, ids=lambda f: os.path.relpath(f, ROOT))
def test_every_shipped_flagfile_dry_runs(flagfile, tmp_path):
    """Each flagfile is headed by its command; that command dry-runs it, writing nothing."""
    text = Path(flagfile).read_text()
    module = "experiments.sweep"
    if os.path.basename(flagfile) != "base.flags":
        found = re.search(r"python -m (experiments\.\w+) --flagfile=(\S+)", text)
        assert text.startswith("#") and found, "no header naming the command"
        assert found.group(2) == os.path.relpath(flagfile, ROOT)
        module = found.group(1)
    proc = run_cli(
        f"--flagfile={flagfile}", "--dry_run", f"--out_dir={tmp_path / 'x'}", module=module
    )
    assert proc.returncode == 0, proc.stderr
    if module == "experiments.sweep":
        assert " points, " in proc.stdout
    assert not os.path.exists(tmp_path / "x")  # a dry run writes nothing


def test_dry_run_prints_the_whole_grid(tmp_path):
    proc = run_cli(
        "--flagfile=configs/seed/mlp_widths.flags",
        "--dry_run",
        "--explain",
        f"--out_dir={tmp_path}",
    )
    assert "50 points" in proc.stdout  # 5 widths x 10 batches
    assert "mlp/depth=8,input_width=0,width=8192/b=512" in proc.stdout
    assert "b* = P·s_w/(2·BW)" in proc.stdout


BAD_INPUTS = [
    (["--batch_sizes=0,4"], "--batch_sizes"),
    (["--batch_sizes=-2"], "--batch_sizes"),
    (["--batch_sizes=two"], "--batch_sizes"),
    (["--model=transformerz"], "--model"),
    (["--dtype=int3"], "--dtype"),
    (["--predict_for=t5"], "--predict_for"),
    (["--widths=-64"], "--widths"),
    (["--depths=0"], "--depths"),
    (["--time_budget_s=0"], "--time_budget_s"),
    (["--flagfile=configs/does_not_exist.flags"], "does_not_exist.flags"),
    (["--noplot", "stray"], "unexpected argument"),
]


@pytest.mark.parametrize("args,names", BAD_INPUTS, ids=lambda a: str(a))
def test_bad_input_gets_one_clear_line(args, names, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(*args, f"--out_dir={out}", "--noplot")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if names in ln]
    assert lines, proc.stderr
    assert not os.path.exists(out)  # nothing written


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_cli("--flagfile=configs/smoke.flags", f"--out_dir={blocker / 'sub'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: --out_dir=")
    assert blocker.read_text() == "not a directory"


def test_different_config_in_out_dir_is_refused_and_nothing_overwritten(tmp_path):
    out = tmp_path / "run"
    common = [
        "--flagfile=configs/smoke.flags",
        f"--out_dir={out}",
        "--peak_flops=1e11",
        "--bandwidth=1e10",
        "--noplot",
        "--noisolate",
    ]
    first = run_cli(*common)
    assert first.returncode == 0, first.stderr
    before = {p: (out / p).read_bytes() for p in os.listdir(out)}
    second = run_cli(*common, "--dtype=bfloat16")
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1 and "--out_dir" in second.stderr
    assert "dtype 'float32' there, 'bfloat16' now" in second.stderr
    assert before == {p: (out / p).read_bytes() for p in os.listdir(out)}

    # The saved flagfile re-runs the same sweep: nothing left to measure.
    again = run_cli(f"--flagfile={out / 'flags.txt'}")
    assert again.returncode == 0, again.stderr
    assert "nothing to measure" in again.stdout
    assert "critical batch: predicted" in again.stdout


def test_plot_command(tmp_path):
    proc = run_cli(str(tmp_path), module="experiments.plot")
    assert proc.returncode == 2 and "no results.jsonl" in proc.stderr


def _refusal_args(tmp_path, where):
    if where == "command line":
        return ["--model=decode", "--image_sizes=32"]
    flagfile = tmp_path / "decode.flags"
    flagfile.write_text("--model=decode\n--image_sizes=32\n")
    return [f"--flagfile={flagfile}"]


@pytest.mark.parametrize("where", ["command line", "flagfile"])
def test_flag_of_a_family_not_swept_is_refused(where, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(*_refusal_args(tmp_path, where), f"--out_dir={out}", "--noplot")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --image_sizes"), proc.stderr
    assert "decode takes --contexts" in lines[0]
    assert not os.path.exists(out)


def test_a_family_flag_emptied_is_not_given(monkeypatch):
    """The smoke flagfile sets the MLP's --depths; moe_layer has none, and `--depths=` clears it."""
    monkeypatch.chdir(ROOT)  # the flagfile names configs/base.flags from the root
    cfg = sweep_flags.parse(["--flagfile=configs/smoke.flags", "--model=moe_layer", "--depths="])
    assert cfg.model == "moe_layer" and cfg.grid["width"] == (64,) and "depth" not in cfg.grid


def test_supervised_records_carry_the_command_typed(tmp_path):
    """The measuring child records its parent's argv, not `python -m batchlab.worker JOB`."""
    out = tmp_path / "run"
    proc = run_cli(
        "--flagfile=configs/smoke.flags",
        f"--out_dir={out}",
        "--peak_flops=1e11",
        "--bandwidth=1e10",
        "--noplot",
    )
    assert proc.returncode == 0, proc.stderr
    records = results.load(str(out / results.RESULTS))
    assert records
    for r in records:
        argv = r["provenance"]["argv"]
        assert argv[0].endswith(os.path.join("experiments", "sweep.py")), argv
        assert "--flagfile=configs/smoke.flags" in argv
        assert not any("worker.py" in a or "batchlab-job-" in a for a in argv), argv


def _help_entry(text, group, flag):
    """The lines of `flag` in the --help group whose title starts with `group`, joined."""
    block = next(b for b in text.split("\n\n") if b.startswith(group))
    entries = re.split(r"\n(?=  --)", block)
    found = [e for e in entries if e.lstrip().startswith(f"--{flag}:")]
    assert len(found) == 1, block
    return " ".join(found[0].split())


def test_sweep_help_groups_flags_by_family():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("Times a model over batch sizes")
    assert "(default: 512; at least 1)" in _help_entry(text, "family decode:", "widths")
    assert "(default: 1024; at least 1)" in _help_entry(text, "family mlp:", "widths")
    assert "one of gated, plain" in _help_entry(text, "family decode:", "ffn_kinds")
    assert "default: 1,2,4,8" in _help_entry(text, "sweep flags", "batch_sizes")
    assert "(default: false)" in _help_entry(text, "flags:", "[no]dry_run")
    assert "--xla_" not in text and "--verbosity" not in text  # JAX's and absl's: --helpfull


# Each entry point, with a line of its usage and one of its own flags (merge and plot
# have none). Beside the help flag sits one absl would refuse: help is read first.
ENTRY_POINTS = [
    ("experiments.sweep", "-h", "--[no]dry_run:"),
    ("experiments.plot", "--helpshort", "python -m experiments.plot RESULTS_DIR"),
    ("experiments.report", "--help", "--predict_for:"),
    ("experiments.merge", "-h", "python -m experiments.merge OUT_DIR"),
    ("experiments.reproduce", "--helpshort", "--budget:"),
    ("experiments.routing", "--help", "--routers:"),
    ("experiments.train_router", "-h", "--methods:"),
]


@pytest.mark.parametrize("module,help_flag,shows", ENTRY_POINTS, ids=[m for m, *_ in ENTRY_POINTS])
def test_every_entry_point_has_help(module, help_flag, shows):
    # A new interpreter: each script imports what it needs (run_cli's others are forked
    # from one that has batchlab imported).
    proc = run_cli("--no_such_flag=1", help_flag, module=module, fresh=True)
    assert proc.returncode == 0, proc.stderr
    assert shows in proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
