"""Entry point of the measuring child process: `python -m batchlab.worker OUT_DIR`."""

import json
import os
import sys

from batchlab import results, sweep, workloads
from batchlab.config import SweepConfig
from batchlab.errors import ConfigError


def main(argv: list[str]) -> int:
    (out_dir,) = argv
    with open(os.path.join(out_dir, results.CONFIG)) as f:
        config = SweepConfig.from_json(json.load(f)["config"])
    try:
        workloads.import_family_modules(config.family_modules)
        return sweep.run(config, log=lambda line: print(line, flush=True))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
