"""The score of each mutated module, from `mutmut results --all true` on stdin (scripts/mutation.sh).

A mutant counts as caught when a test fails (killed) or runs past mutmut's time limit (timeout: a
mutant that loops forever is noticed too). One that no selected test reaches ("no tests") counts
against the score, as a survivor does: both are behaviour nothing checks. The score is over the
mutants checked so far (a run stopped early leaves some "not checked"). Survivors are listed by name
for `mutmut show NAME`; which of them are equivalent is a judgement the report cannot make
(tests/README.md lists them).
"""

import collections
import re
import sys

CAUGHT = ("killed", "timeout")
COLUMNS = ("killed", "timeout", "survived", "no tests", "not checked", "other")
# mutmut names a mutant <module>.x_<function>__mutmut_<n>, or <module>.xǁ<Class>ǁ<method>__mutmut_<n>.
MUTANT_LINE = re.compile(r"^\s*(?P<name>(?P<module>[\w.]+?)\.x[_ǁ]\S*__mutmut_\d+): (?P<status>.+?)\s*$")


def main() -> None:
    counts = collections.defaultdict(collections.Counter)
    survivors = collections.defaultdict(list)
    for line in sys.stdin:
        match = MUTANT_LINE.match(line)
        if not match:
            continue
        module, status = match["module"], match["status"]
        counts[module][status if status in COLUMNS else "other"] += 1
        if status in ("survived", "no tests"):
            survivors[module].append(f"{match['name']} ({status})")
    if not counts:
        sys.exit("error: no mutant results on stdin (run `mutmut run` first)")
    print("| module | mutants | " + " | ".join(COLUMNS) + " | caught of checked |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for module, by_status in sorted(counts.items()):
        total = sum(by_status.values())
        checked = total - by_status["not checked"]
        caught = sum(by_status[status] for status in CAUGHT)
        cells = " | ".join(str(by_status[status]) for status in COLUMNS)
        score = f"{caught / checked:.1%}" if checked else "-"
        print(f"| {module} | {total} | {cells} | {score} |")
    for module, names in sorted(survivors.items()):
        print(f"\n{module}: {len(names)} not caught")
        for name in names:
            print(f"  {name}")


if __name__ == "__main__":
    main()
