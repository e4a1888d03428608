#!/usr/bin/env bash
# Mutation testing of the core with mutmut: every mutant of the modules named in pyproject.toml's
# [tool.mutmut] runs against the fast tests that cover its function, then the score of each module is
# printed (scripts/mutation_report.py). Not part of the test suite or of CI's time: several hours on 2 cores.
# A rerun goes on where the last one stopped (mutmut keeps its state in mutants/, which git ignores), but
# only over the same code: mutmut records which tests reach a function once, so after a change to the
# code or the tests it would run a changed function's mutants against too few tests and report survivors
# that the suite kills. Any change (commit or working tree) starts the pass again from a fresh mutants/.
#   bash scripts/mutation.sh                          # every module
#   bash scripts/mutation.sh "trainer.losses*"        # the mutants whose names match (mutmut's globs)
#
#   MAX_CHILDREN    mutants tested at once (2)
#   SHARED_DATA_DIR the shared data folder of the tests (else ../shared/data beside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q mutmut==3.8.0
code_state=$( (git rev-parse HEAD; git diff HEAD; git ls-files -z --others --exclude-standard | xargs -0 -r cat) | sha256sum)
if [[ ! -f mutants/code-state || $(cat mutants/code-state) != "$code_state" ]]; then
    rm -rf mutants
    mkdir mutants
    echo "$code_state" > mutants/code-state
fi
# One thread per mutant: MAX_CHILDREN of them share the cores.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} mutmut run --max-children "${MAX_CHILDREN:-2}" "$@"
mutmut results --all true | python scripts/mutation_report.py
