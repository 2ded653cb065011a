"""--rounds=N: the grid measured N times interleaved, each point's rounds combined."""

import os
import shutil

import pytest
from conftest import make_config, run_cli, run_in_process

from batchlab import record, results, summary

BATCHES = ("1", "2", "4")
ID = "mlp/depth=2,input_width=0,width=32/b={}"


def _round(medians_ms, spread, batch=1):
    """Round records of one point with these medians, from a hand-made base record."""
    base = {
        "id": ID.format(batch),
        "status": "ok",
        "batch": batch,
        "cost": {"flops": 1e6, "total_bytes": 1e5},
        "ceilings": {"peak_flops": 1e11, "bandwidth": 1e10},
        "prediction": {"lower_s": 1e-4, "model_s": 5e-4},
    }
    out = []
    for r, m in enumerate(medians_ms):
        t = m * 1e-3
        time = {"median_s": t, "min_s": 0.9 * t, "mean_s": t, "iqr_s": spread * t}
        time |= {"count": 10, "spread": spread, "unstable": False, "p99_s": 1.5 * t}
        time |= {"ci95_s": [0.98 * t, 1.02 * t]}
        out.append(record.as_round(base | {"time": time}, r, len(medians_ms)))
    return out


def test_rounds_combine_into_the_median_of_their_medians():
    # Rounds 1.0, 1.2, 1.1 ms, each with a 5% spread: they disagree (18% apart).
    rec = record.combine_rounds(_round([1.0, 1.2, 1.1], 0.05)[::-1])  # any order in
    t = rec["time"]
    assert rec["kind"] == record.SWEEP and rec["id"] == ID.format(1)
    assert t["median_s"] == pytest.approx(1.1e-3)
    assert t["round_medians_s"] == pytest.approx([1.0e-3, 1.2e-3, 1.1e-3])
    assert t["between_round_spread"] == pytest.approx(0.2 / 1.1)
    assert t["rounds_disagree"] and t["rounds"] == 3 and t["count"] == 30
    assert t["ci95_s"] == pytest.approx([0.98e-3, 1.2 * 1.02e-3])  # holds every round's
    assert rec["prediction"]["rel_error"] == pytest.approx(1.1e-3 / 1e-4 - 1)
    assert rec["prediction"]["model_error"] == pytest.approx(1.1e-3 / 5e-4 - 1)
    assert rec["attained"]["flops_per_s"] == pytest.approx(1e6 / 1.1e-3)
    assert "round" not in rec and "point_id" not in rec
    # Rounds that agree within their own spread do not disagree.
    calm = record.combine_rounds(_round([1.0, 1.001, 1.0005], 0.05))
    assert not calm["time"]["rounds_disagree"]
    assert "exceeds the spread within them at 0 of 1" in "\n".join(summary._rounds_lines([calm]))


def _cfg(out, **kw):
    return make_config(str(out), batch_sizes=BATCHES, rounds=3, **kw)


def _records(out):
    return results.load(os.path.join(out, results.RESULTS), complete=False)


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory):
    """(OUT_DIR, the sweep's log lines) of one finished sweep of three rounds, to copy."""
    out, lines = tmp_path_factory.mktemp("rounds"), []
    assert run_in_process(_cfg(out), log=lines.append) == 0
    return out, lines


def test_a_sweep_of_three_rounds_interleaves_them_and_combines_each_point(three_rounds, tmp_path):
    done, lines = three_rounds
    shutil.copytree(done, tmp_path, dirs_exist_ok=True)
    recs = _records(tmp_path)
    rounds = [r for r in recs if r["kind"] == record.ROUND]
    # Every point once per round; rounds alternate direction.
    assert [(r["round"], r["batch"]) for r in rounds] == [
        (0, 1), (0, 2), (0, 4), (1, 4), (1, 2), (1, 1), (2, 1), (2, 2), (2, 4),
    ]  # fmt: skip
    points = [r for r in recs if r["kind"] == record.SWEEP]
    assert sorted(r["batch"] for r in points) == [1, 2, 4]
    for p in points:
        mine = sorted((r for r in rounds if r["point_id"] == p["id"]), key=lambda r: r["round"])
        medians = sorted(r["time"]["median_s"] for r in mine)
        assert p["time"]["median_s"] == medians[1]  # independently: the middle one
        assert p["time"]["round_medians_s"] == [r["time"]["median_s"] for r in mine]
    assert any("(round 2/3)" in line for line in lines)
    # Readers see one record per point; the rounds are for the sweep.
    readable = results.load(os.path.join(tmp_path, results.RESULTS))
    assert sorted(r["batch"] for r in readable if record.is_point(r)) == [1, 2, 4]
    text = summary.table(readable)
    assert "3 rounds per point" in text
    # Nothing is left to do: a rerun measures nothing.
    assert run_in_process(_cfg(tmp_path)) == 0
    assert len(_records(tmp_path)) == len(recs)


def test_a_killed_sweep_resumes_the_missing_rounds_only(three_rounds, tmp_path):
    shutil.copytree(three_rounds[0], tmp_path, dirs_exist_ok=True)
    path = os.path.join(tmp_path, results.RESULTS)
    with open(path) as f:
        full = f.readlines()
    rounds = [line for line in full if '"kind": "round"' in line]
    # Killed after round 0 and the first point of round 1 (b=4); nothing combined yet.
    with open(path, "w") as f:
        f.writelines(rounds[:4])
    assert run_in_process(_cfg(tmp_path)) == 0
    recs = _records(tmp_path)
    again = [r for r in recs if r["kind"] == record.ROUND][4:]
    assert [(r["round"], r["batch"]) for r in again] == [(1, 2), (1, 1), (2, 1), (2, 2), (2, 4)]
    assert sorted(r["batch"] for r in recs if r["kind"] == record.SWEEP) == [1, 2, 4]
    # Killed after every round but before the combined record: it is written, not measured.
    with open(path, "w") as f:
        f.writelines(rounds)
    assert run_in_process(_cfg(tmp_path)) == 0
    recs = _records(tmp_path)
    assert len([r for r in recs if r["kind"] == record.ROUND]) == 9
    assert sorted(r["batch"] for r in recs if r["kind"] == record.SWEEP) == [1, 2, 4]


def test_a_point_failing_in_a_round_is_recorded_failed_once(tmp_path):
    cfg = make_config(
        str(tmp_path),
        model="fault",
        grid={"fault_sizes": ["16"]},
        batch_sizes=("1", "3"),
        family_modules=("fault_family",),
        rounds=2,
    )
    assert run_in_process(cfg) == 0
    recs = _records(tmp_path)
    failed = [r for r in recs if r["status"] != "ok"]
    assert [(r["batch"], r["kind"]) for r in failed] == [(3, record.SWEEP)]
    assert sorted(r["round"] for r in recs if r["kind"] == record.ROUND) == [0, 1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rounds=0"], "error: --rounds"),
        (["--rounds=2", "--distributed", "--num_processes=2", "--process_id=0"], "--rounds"),
    ],
)
def test_bad_rounds_are_refused(args, message, tmp_path):
    proc = run_cli("--model=mlp", *args, f"--out_dir={tmp_path / 'o'}", "--dry_run")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
