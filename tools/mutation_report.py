"""Summarize a mutmut run: the score, the surviving mutants and the excluded equivalent ones.

Run by tools/mutation.sh in the scope's work directory (build/mutation/<scope>/), after
``mutmut run``. An equivalent mutant changes no observable behaviour; each is listed in
tools/mutation/<scope>-equivalent.toml with the function it lives in (a glob on mutmut's
mangled name, e.g. ``kronlin.kron.xǁKronǁlogdet``), the mutated line (``mutated``, exact after
stripping, or ``regex``) and the reason. Matching on the diff rather than on mutmut's numbers
keeps the list valid when a function gains or loses mutants.

Score = killed / (checked − equivalent). Killed counts mutants whose tests failed or timed out
(a mutant that hangs is caught); survived, "no tests" and suspicious mutants are not killed.
Mutants not checked (an interrupted run) are counted apart and left out of the score.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import sys
import tomllib
from collections import Counter
from datetime import date
from importlib.metadata import version
from pathlib import Path

from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files

KILLED = {"killed", "timeout", "caught by type check"}


def mutants() -> dict[str, tuple[str, Path]]:
    """``{mutant name: (status, source path)}`` of the last run."""
    out = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in data.exit_code_by_key.items():
            out[name] = (status_by_exit_code[code], path)
    return out


def changed_lines(diff: str) -> list[str]:
    """The mutated lines of a diff (``+`` side), stripped."""
    return [line[1:].strip() for line in diff.splitlines()
            if line.startswith("+") and not line.startswith("+++")]


def equivalence(name: str, diff: str, rules: list[dict]) -> str | None:
    """The reason of the first rule that matches the mutant, if any."""
    function = name.rsplit("__mutmut_", 1)[0]
    lines = changed_lines(diff)
    for rule in rules:
        if not fnmatch.fnmatchcase(function, rule["function"]):
            continue
        if "mutated" in rule and rule["mutated"].strip() in lines:
            return rule["reason"]
        if "regex" in rule and any(re.search(rule["regex"], line) for line in lines):
            return rule["reason"]
    return None


def main() -> int:
    """Write the report of the run in the current directory to stdout."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scope", required=True)
    parser.add_argument("--seconds", type=int, required=True)
    parser.add_argument("--load", default="?")
    parser.add_argument("--equivalent", type=Path, required=True)
    args = parser.parse_args()
    rules = (tomllib.loads(args.equivalent.read_text()).get("equivalent", [])
             if args.equivalent.exists() else [])
    if not isinstance(rules, list):
        rules = []

    results = mutants()
    survivors, excluded, counts, unchecked = [], [], Counter(), Counter()
    for name, (status, path) in sorted(results.items()):
        if status == "not checked":
            counts["not checked"] += 1
            unchecked[str(path)] += 1
            continue
        if status in KILLED:
            counts["killed"] += 1
            continue
        diff = get_diff_for_mutant(name, path=path)
        reason = equivalence(name, diff, rules)
        if reason is not None:
            counts["equivalent"] += 1
            excluded.append((name, diff, reason))
        else:
            counts[status] += 1
            survivors.append((name, status, diff))

    considered = len(results) - counts["equivalent"] - counts["not checked"]
    score = counts["killed"] / considered if considered else float("nan")
    others = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())
                       if k not in ("killed", "equivalent", "not checked"))
    out = sys.stdout
    out.write(f"# mutation testing, scope {args.scope}: {100 * score:.1f} % killed\n")
    out.write(f"# command: bash tools/mutation.sh {args.scope}   "
              f"(mutmut {version('mutmut')}, {date.today()})\n")
    out.write(f"# duration: {args.seconds} s on {len(os.sched_getaffinity(0))} cores, "
              f"load average at start {args.load}\n")
    out.write(f"# mutants: {len(results)}; killed {counts['killed']}; equivalent (excluded) "
              f"{counts['equivalent']}; not killed {len(survivors)} ({others}); "
              f"not checked {counts['not checked']}\n")
    if unchecked:  # an interrupted run: where the unchecked mutants are
        out.write("# not checked, by file: "
                  + ", ".join(f"{p} {n}" for p, n in sorted(unchecked.items())) + "\n")
    out.write("# score = killed / (checked - equivalent); a timeout counts as killed\n\n")
    out.write(f"## surviving mutants ({len(survivors)})\n\n")
    for name, status, diff in survivors:
        out.write(f"{name}: {status}\n")
        out.writelines(f"    {line}\n" for line in diff.splitlines()[2:] if line[:1] in "+-")
    out.write(f"\n## equivalent mutants excluded ({len(excluded)})\n\n")
    for name, diff, reason in excluded:
        out.write(f"{name}: {reason}\n")
        out.writelines(f"    {line}\n" for line in diff.splitlines()[2:] if line[:1] in "+-")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
