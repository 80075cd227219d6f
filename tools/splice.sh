#!/bin/sh
# splice.sh FILE BEGIN END COMMAND...: FILE with the lines between the line starting
# with BEGIN and the line starting with END replaced by COMMAND's output, on stdout.
# Used by `make docs` and `make check-docs` for the generated settings reference. The
# markers are compared as fixed strings (through the environment: awk -v would read
# backslashes in them as escapes).
set -eu
file=$1
shift
B=$1 E=$2
export B E
shift 2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$@" > "$out"
awk 'index($0, ENVIRON["B"]) == 1 { b = 1 } index($0, ENVIRON["E"]) == 1 { e = 1 } END { exit !(b && e) }' "$file" \
    || { echo "$file: no '$B' ... '$E' markers" >&2; exit 1; }
GEN=$out awk '
    index($0, ENVIRON["B"]) == 1 { print; while ((getline l < ENVIRON["GEN"]) > 0) print l; skip = 1; next }
    index($0, ENVIRON["E"]) == 1 { skip = 0 }
    !skip { print }' "$file"
