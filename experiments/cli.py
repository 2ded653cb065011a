"""What every experiment script shares: a grouped --help, and running main with clean
one-line errors: a ConfigError or an OSError is `error: ...` and exit code 2; SIGINT and
SIGTERM stop it (and any child it waits on) with one line and exit code 130 / 143.

`--help` lists the script's own flags, then those its package's other modules define for
it, grouped as each module says: a module may export `help_groups(flag_values) ->
[(title, [entry(...), ...]), ...]`, titles printed as they are (experiments.sweep_flags
groups its family flags by family, each with that family's defaults). absl's and JAX's
flags are left to --helpfull."""

import errno
import os
import signal
import subprocess
import sys
import textwrap

from absl import app, flags

from batchlab import files
from batchlab.errors import ConfigError

# Read before absl parses anything, so a bad flag beside them does not hide the help.
HELP_ARGS = frozenset({"--help", "-help", "-h", "-?", "--helpshort", "-helpshort"})
WIDTH = 80


def _show(default) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list | tuple):
        text = ",".join(map(str, default))
        return text or ("''" if default else "none")  # [""] is one empty value
    return str(default) if default != "" else "''"


def entry(name, help_, default, *, choices=None, minimum=None, boolean=False) -> str:
    """One flag's lines of help: `--name: help (default: D; one of ...; at least M)`."""
    notes = [f"default: {_show(default)}"]
    if choices:
        notes.append("one of " + ", ".join(map(str, choices)))
    if minimum is not None:
        notes.append(f"at least {minimum:g}")
    head = f"--[no]{name}" if boolean else f"--{name}"
    return textwrap.fill(
        f"{head}: {help_} ({'; '.join(notes)})",
        WIDTH,
        initial_indent="  ",
        subsequent_indent="      ",
        break_on_hyphens=False,
        break_long_words=False,
    )


def flag_entry(flag: flags.Flag) -> str:
    """`entry` of an absl flag, enum values included."""
    choices = getattr(flag.parser, "enum_values", None)
    help_ = flag.help
    if choices:  # absl heads an enum's help with <a|b|c>; the entry lists them after
        help_ = help_.removeprefix(f"<{'|'.join(choices)}>: ")
    return entry(flag.name, help_, flag.default, choices=choices, boolean=flag.boolean)


def help_text(main_module=None, fv: flags.FlagValues = flags.FLAGS) -> str:
    """The script's usage (its docstring), its own flags, then its package's modules' flags."""
    main_module = main_module or sys.modules["__main__"]
    spec = getattr(main_module, "__spec__", None)
    name = spec.name if spec else os.path.basename(sys.argv[0])
    by_module = fv.flags_by_module_dict()
    # absl files a `python -m` script's flags under sys.argv[0], the script's path.
    own = [f for key, fl in by_module.items() if _is_main(key, main_module) for f in fl]
    parts = [(main_module.__doc__ or f"python -m {name}").strip()]
    parts.append("flags:\n" + "\n".join(map(flag_entry, own)) if own else "(no flags of its own)")
    package = name.split(".")[0] + "." if spec and "." in name else None
    for key, module_flags in by_module.items():
        if not package or not key.startswith(package) or _is_main(key, main_module):
            continue
        groups = getattr(sys.modules.get(key), "help_groups", None)
        for title, entries in (
            groups(fv) if groups else [(f"{key} flags:", map(flag_entry, module_flags))]
        ):
            wrapped = textwrap.fill(title, WIDTH, subsequent_indent="    ")
            parts.append(wrapped + "\n" + "\n".join(entries))
    parts.append("--helpfull lists every flag, absl's and JAX's too, by module.")
    return "\n\n".join(parts)


def _is_main(key: str, main_module) -> bool:
    path = getattr(main_module, "__file__", None)
    return key == "__main__" or bool(path) and os.path.abspath(key) == os.path.abspath(path)


def _wants_help(args: list[str]) -> bool:
    if "--" in args:  # what follows is positional
        args = args[: args.index("--")]
    return any(a in HELP_ARGS for a in args)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: args[0] is the signal."""


def _interrupt(signum, frame):
    for s in (signal.SIGINT, signal.SIGTERM):  # a second one must not cut the clean-up short
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


CHILD_GRACE_S = 15.0  # a child told to stop gets this long (a sweep stops its worker first)


def run_child(cmd: list[str], **kwargs) -> int:
    """subprocess.run(cmd).returncode, but on SIGINT or SIGTERM here the child is sent
    SIGTERM and given CHILD_GRACE_S to stop cleanly (a sweep then is resumable) before
    it is killed; the interruption then goes on up."""
    proc = subprocess.Popen(cmd, **kwargs)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(CHILD_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def _stopped(e: KeyboardInterrupt):
    signum = e.args[0] if isinstance(e, Interrupted) else signal.SIGINT
    name = signal.Signals(signum).name
    print(f"interrupted ({name}); run the same command again to resume", file=sys.stderr)
    sys.exit(128 + signum)


def run(main, takes_args: bool = False) -> None:
    """app.run(main), turning ConfigError and OSError into `error: ...` on stderr and exit
    code 2, and SIGINT / SIGTERM into one line and exit code 130 / 143; --help, -h and
    --helpshort print `help_text()` and exit 0 before absl parses."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _interrupt)
    if _wants_help(sys.argv[1:]):
        print(help_text())
        sys.exit(0)

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
        except OSError as e:  # one the code did not name itself: where, and what
            where = e.filename or "a file"
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            text = files.describe(e, where) if full else f"{where}: {e.strerror or e}"
            print(f"error: {text}", file=sys.stderr)
            sys.exit(2)

    try:
        app.run(guarded)
    except KeyboardInterrupt as e:  # also while absl parses the flags
        # Every finished point is on disk: the same command resumes after it.
        _stopped(e)
