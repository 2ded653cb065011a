"""What every experiment script shares: a grouped --help, and running main with clean
one-line errors.

`--help` lists the script's own flags, then those its package's other modules define for
it, grouped as each module says: a module may export `help_groups(flag_values) ->
[(title, [entry(...), ...]), ...]`, titles printed as they are (experiments.sweep_flags
groups its family flags by family, each with that family's defaults). absl's and JAX's
flags are left to --helpfull."""

import os
import sys
import textwrap

from absl import app, flags

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


def run(main, takes_args: bool = False) -> None:
    """app.run(main), turning ConfigError into `error: ...` on stderr and exit code 2;
    --help, -h and --helpshort print `help_text()` and exit 0 before absl parses."""
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
        except KeyboardInterrupt:
            # Every finished point is on disk: the same command resumes after it.
            print("interrupted; run the same command again to resume", file=sys.stderr)
            sys.exit(130)

    app.run(guarded)
