#!/usr/bin/env bash
# os_tuning/check.sh: print every knob's current value next to rmqd's recommendation.
# Reads only. Exit 0 when nothing drifts, 1 when something does (or waits for a re-login), 2 on
# a usage error. Knobs this system does not have (no block device for a tmpfs store, say) are
# listed as "missing" and do not count as drift.
set -euo pipefail
# shellcheck source=os_tuning/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    echo "usage: check.sh [--root DIR] [--device NAME] [--store DIR]"
    usage_common
}

DRIFT=0
# shellcheck disable=SC2317  # called through for_each_knob
print_row() {  # NAME PATH CURRENT WANTED STATUS
    local shown="$5"
    case "$5" in
        drift) DRIFT=1 ;;
        pending) DRIFT=1; shown="pending (configured; effective at next login)" ;;
    esac
    printf '%-32s %-16s %-16s %s\n' "$1" "${3:--}" "$4" "$shown"
}

parse_common "$@"
if [ ${#REST[@]} -gt 0 ]; then
    case "${REST[0]}" in -h|--help) usage; exit 0 ;; esac
    echo "check.sh: unknown argument ${REST[0]}" >&2; usage >&2; exit 2
fi
printf '%-32s %-16s %-16s %s\n' KNOB CURRENT RECOMMENDED STATUS
for_each_knob print_row
if [ "$DRIFT" -ne 0 ]; then
    echo "drift: run os_tuning/apply.sh --dry-run to see the changes (README.md says why each one)"
fi
exit "$DRIFT"
