"""Entry point of the measuring child process: `python -m batchlab.worker JOB_JSON`.

JOB_JSON holds {"config": SweepConfig as JSON, "flagfile": the resolved flags, "argv":
the command the user typed, for the records' provenance}.
"""

import json
import sys

from batchlab import sweep, workloads
from batchlab.config import SweepConfig
from batchlab.errors import ConfigError


def main(argv: list[str]) -> int:
    (job_path,) = argv
    with open(job_path) as f:
        job = json.load(f)
    config = SweepConfig.from_json(job["config"])
    try:
        workloads.import_family_modules(config.family_modules)
        return sweep.run_job(
            config, job["flagfile"], log=lambda line: print(line, flush=True), argv=job["argv"]
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
