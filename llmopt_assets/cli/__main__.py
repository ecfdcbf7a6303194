"""`llmopt <command> ...` (also `python -m llmopt_assets.cli <command> ...`).

Each command is a module of this package exposing `main(argv: list[str] | None) -> int`; modules
are imported only when their command runs, so `llmopt --help` stays fast.
"""

import importlib
import sys

# command -> (module, one line for the help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("llmopt_assets.cli.demo", "run every technique on a model (smoke profile) and print the scores"),
    "decide": ("llmopt_assets.cli.decide", "which technique to use, how surely, and the best under constraints"),
    "doctor": ("llmopt_assets.cli.doctor", "find (and with --repair fix) store leftovers, corrupt artifacts, leaked pool slots"),
    "report": ("llmopt_assets.cli.report", "write the decision report (markdown + self-contained HTML) to var/reports"),
    "pools": ("llmopt_assets.cli.pools", "set the cpu/gpu pool limits of the instance to this machine's devices"),
    "lineage": ("llmopt_assets.cli.lineage", "which weights, code, text and runs produced a result (a row of opt_scores)"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {help_line}" for name, (_, help_line) in COMMANDS.items()]
    return "usage: llmopt <command> [options]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"llmopt: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
