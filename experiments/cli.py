"""What every experiment script shares: running main with clean one-line errors."""

import sys

from absl import app

from batchlab.errors import ConfigError


def run(main, takes_args: bool = False) -> None:
    """app.run(main), turning ConfigError into `error: ...` on stderr and exit code 2."""

    def guarded(argv):
        if len(argv) > 1 and not takes_args:
            # `--flag value` with a space leaves `value` behind as a stray argument.
            print(
                f"error: unexpected argument(s) {' '.join(argv[1:])!r}; flags take the "
                "form --name=value",
                file=sys.stderr,
            )
            sys.exit(2)
        try:
            return main(argv)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            # Every finished point is on disk: the same command resumes after it.
            print("interrupted; run the same command again to resume", file=sys.stderr)
            sys.exit(130)

    app.run(guarded)
