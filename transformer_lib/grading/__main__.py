"""``python -m transformer_lib.grading generate [--check]`` and ``python -m transformer_lib.grading grade ...``."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The command line: subcommands ``generate`` and ``grade``."""
    parser = argparse.ArgumentParser(
        prog="python -m transformer_lib.grading",
        description="The course's exercise tools: generate learner notebooks, grade submissions.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write exercises/NN_*.ipynb (learner notebooks) from exercises/master/")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 if a learner notebook is stale")
    gen.add_argument("--masters", default="exercises/master", help="directory of master notebooks")
    gen.add_argument("--out", default="exercises", help="directory of the learner notebooks")
    grade = sub.add_parser("grade", help="execute submitted notebooks and write one CSV row of scores per learner")
    grade.add_argument("submissions", nargs="+", metavar="SUBMISSION", help="submitted .ipynb files")
    grade.add_argument("--out", required=True, help="the CSV file to write (e.g. grades.csv)")
    grade.add_argument("--hidden", default="exercises/hidden", help="directory of hidden tests (default: %(default)s)")
    grade.add_argument("--cell-timeout", type=float, default=60.0, help="seconds per notebook cell (default: 60)")
    grade.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="run the submissions' code without the bubblewrap sandbox (only where bwrap cannot run, and only "
        "for submissions you trust: their code then runs with your rights)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        from .generate import main as generate_main

        return generate_main(args.masters, args.out, check=args.check)
    from .batch import main as grade_main

    return grade_main(
        args.submissions,
        args.out,
        hidden=args.hidden,
        cell_timeout=args.cell_timeout,
        unsafe_no_sandbox=args.unsafe_no_sandbox,
    )


if __name__ == "__main__":
    sys.exit(main())
