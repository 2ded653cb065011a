"""benchmarks/device_run.sh, the one prepared device check, on this CPU with its tiny budget."""

import json
import os
import subprocess
import sys

from conftest import ROOT

from batchlab import results


def test_the_device_script_runs_every_step_on_a_tiny_budget(tmp_path):
    out = tmp_path / "device"
    env = dict(os.environ, BUDGET="tiny", PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", "benchmarks/device_run.sh", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    log = (out / "log").read_text()
    for step in ("device facts", "sweep mlp", "prediction benchmark", "report"):
        assert f"== {step}: exit 0" in log, log[-3000:]
    assert "0 failed" in log
    facts = json.loads((out / "device_facts.json").read_text())
    assert facts["platform"] == "cpu"
    recs = results.load(str(out / "mlp" / results.RESULTS))
    assert [r["batch"] for r in recs] == [1, 2] and all(r["prediction"]["model_s"] for r in recs)
    assert (out / "profile.json").exists() and not (out / "mlp" / results.PROFILE).exists()
    table = (out / "prediction.md").read_text()
    assert table.startswith("| family | device |") and "\n| mlp | " in table
    assert "per-kernel model: its error" in (out / "REPORT.md").read_text()
