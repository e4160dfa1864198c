#!/usr/bin/env bash
# Time to a first result on the defaults, as a new user runs them: `hybridsim train problem=X
# progress=none` in an empty directory (data generation, every model the default trains,
# evaluation), one thread, REPEATS times per problem, one run at a time.
#
#   bash benchmarks/time_to_first_result.sh [--out DIR] [--repeats N] [PROBLEM ...]
#
# Default: --out ttfr-<date> in the current directory, 3 repeats, problems lv ns ct. Prints per
# problem the wall and CPU (user + sys) seconds as median [min, max] (n), and writes them with
# each run's line to DIR/summary.txt. Needs GNU time (/usr/bin/time) for the CPU seconds.
set -euo pipefail

out="ttfr-$(date -u +%Y%m%dT%H%M%SZ)"
repeats=3
problems=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --out) out="$2"; shift 2 ;;
        --repeats) repeats="$2"; shift 2 ;;
        -*) echo "time_to_first_result: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) problems+=("$1"); shift ;;
    esac
done
[ ${#problems[@]} -gt 0 ] || problems=(lv ns ct)
case "$repeats" in ''|*[!0-9]*|0) echo "time_to_first_result: --repeats must be a positive integer, got '$repeats'" >&2; exit 2 ;; esac
[ -x /usr/bin/time ] || { echo "time_to_first_result: needs GNU time at /usr/bin/time" >&2; exit 3; }
command -v hybridsim >/dev/null || { echo "time_to_first_result: hybridsim is not installed (make install)" >&2; exit 3; }
[ ! -e "$out" ] || { echo "time_to_first_result: $out exists; choose another --out" >&2; exit 2; }

mkdir -p "$out"
out="$(cd "$out" && pwd)"
summary="$out/summary.txt"
echo "# $(date -u +%FT%TZ) $(uname -n), $(nproc) cores, commit $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)" > "$summary"
for p in "${problems[@]}"; do
    for r in $(seq 1 "$repeats"); do
        dir="$out/$p-$r"
        mkdir -p "$dir"
        load="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
        rc=0
        (cd "$dir" && OMP_NUM_THREADS=1 /usr/bin/time -v hybridsim train "problem=$p" progress=none \
            > out.log 2> time.log) || rc=$?
        wall="$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, a, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + a[i]; print s}' "$dir/time.log")"
        cpu="$(awk -F': ' '/User time|System time/ {s += $2} END {print s}' "$dir/time.log")"
        echo "$p $r rc=$rc wall=$wall cpu=$cpu load_at_start=$load" | tee -a "$summary"
    done
done
python3 - "$summary" "$(dirname "$0")" <<'EOF'
import sys
sys.path.insert(0, sys.argv[2])
from common import summary  # the benchmarks' own median / min / max / n
runs = {}
for line in open(sys.argv[1]):
    if line.startswith("#"):
        continue
    f = line.split()
    kv = dict(x.split("=", 1) for x in f[2:] if "=" in x)
    if kv.get("rc") == "0":
        runs.setdefault(f[0], []).append((float(kv["wall"]), float(kv["cpu"])))
with open(sys.argv[1], "a") as out:
    for p, v in runs.items():
        def cell(xs):
            st = summary(xs)
            return f"{st['median']:.0f} [{st['min']:.0f}, {st['max']:.0f}] (n={st['n']})"
        line = f"{p}: wall {cell([w for w, _ in v])} s, CPU {cell([c for _, c in v])} s"
        print(line)
        out.write(line + "\n")
EOF
