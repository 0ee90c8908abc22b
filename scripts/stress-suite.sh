#!/usr/bin/env bash
# Run the test suite (or the part that the pytest arguments select) N times under a CPU
# burner, and print a table of the failures per test.  A test that depends on timing fails
# here first.
#
#   scripts/stress-suite.sh N [PYTEST_ARGS...]
#   scripts/stress-suite.sh 3                                   # the whole suite, 3 times
#   scripts/stress-suite.sh 3 -m 'not guest and not remote'     # make check's selection
#   scripts/stress-suite.sh 5 tests/device/test_datapath.py -k stop    # one test
#
# The burners are one `yes > /dev/null` per CPU (STRESS_BURNERS=K for another count), at
# nice 0 like the tests; they are started here and always killed when the script ends.
# The runs' JUnit files and logs are kept in STRESS_DIR (default: a new directory under
# /tmp, printed).  Exit status: 0 when every run passed, 1 otherwise, 2 on bad usage.
set -euo pipefail

usage() {
    echo "usage: $0 N [PYTEST_ARGS...]  (N: how many runs, at least 1)" >&2
    exit 2
}
[[ $# -ge 1 && $1 =~ ^[1-9][0-9]*$ ]] || usage
runs=$1
shift

repo=$(cd "$(dirname "$0")/.." && pwd)
py=$repo/.venv/bin/python
[[ -x $py ]] || { echo "$0: $py not found: run 'make venv' first" >&2; exit 2; }
burners=${STRESS_BURNERS:-$(nproc)}
[[ $burners =~ ^[0-9]+$ ]] || { echo "$0: STRESS_BURNERS=$burners is not a number" >&2; exit 2; }
out=${STRESS_DIR:-$(mktemp -d /tmp/stress-suite.XXXXXX)}
mkdir -p "$out"

pids=()
stop_burners() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
trap stop_burners EXIT
trap 'exit 130' INT TERM

for ((i = 0; i < burners; i++)); do
    nice -n 0 yes >/dev/null &
    pids+=($!)
done
echo "stress-suite: $runs run(s) of pytest ${*:-(the whole suite)} under $burners burner(s);" \
    "results in $out"

cd "$repo"
failed_runs=0
for ((r = 1; r <= runs; r++)); do
    start=$(date +%s)
    rc=0
    "$py" -m pytest -q -p no:cacheprovider --junitxml="$out/run$r.xml" "$@" \
        >"$out/run$r.log" 2>&1 || rc=$?
    echo "run $r: exit $rc in $(($(date +%s) - start)) s; $(tail -n 1 "$out/run$r.log")"
    # 0: passed; 5: nothing selected.  Anything else is a failed run.
    [[ $rc -eq 0 || $rc -eq 5 ]] || failed_runs=$((failed_runs + 1))
done
stop_burners

"$py" - "$out" "$runs" <<'EOF'
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

out, runs = Path(sys.argv[1]), int(sys.argv[2])
fails: Counter[str] = Counter()
for r in range(1, runs + 1):
    path = out / f"run{r}.xml"
    if not path.exists():
        fails["(the run left no JUnit file: see its log)"] += 1
        continue
    for case in ET.parse(path).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            fails[name] += 1
print()
if not fails:
    print(f"no failures in {runs} run(s)")
else:
    width = max(len(t) for t in fails)
    print(f"{'test'.ljust(width)}  failed")
    for test, n in sorted(fails.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{test.ljust(width)}  {n}/{runs}")
EOF
echo "logs: $out/run*.log"
[[ $failed_runs -eq 0 ]]
