# shellcheck shell=bash
# os_tuning/lib.sh: what check.sh and apply.sh share. Sourced, never run.
#
# Every knob is one row: NAME, PATH (under $ROOT), CURRENT, WANTED, STATUS (ok | drift | pending |
# missing). `for_each_knob FN` calls FN with those five arguments for every knob, in README order.
#
# ROOT is the system root the scripts look at: "" (the real /) unless --root DIR or RMQD_SYSROOT is
# given. Tests point it at a fake tree holding proc/sys/vm/*, sys/kernel/mm/transparent_hugepage/*,
# sys/block/DEV/queue/*, sys/module/haltpoll/parameters/* and proc/self/limits, so nothing of the
# real machine is read or written.

OS_TUNING_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SYSCTL_CONF="$OS_TUNING_DIR/sysctl.d/60-rmqd.conf"
AT_LEAST_KEYS=" vm.max_map_count vm.min_free_kbytes "   # minimums: a larger live value is fine
THP_WANT="madvise"; THP_OK=" madvise never "             # rmqd never asks for huge pages
THP_DEFRAG_WANT="madvise"                                 # anything but "always": no synchronous
THP_DEFRAG_OK=" madvise never defer defer+madvise "       # compaction inside page faults
SCHED_WANT="mq-deadline"; SCHED_OK=" none mq-deadline "  # none for NVMe/virtio, mq-deadline for disks
READAHEAD_MIN_KB=128
NOFILE_WANT=655350                                        # RocketMQ's limit; every mapping holds an fd
LIMITS_CONF_NAME="60-rmqd.conf"
HALTPOLL_NS_MIN=200000                                    # KVM guests: poll 200 us before halting a vCPU

ROOT="${RMQD_SYSROOT:-}"
DEVICE="${RMQD_BLOCK_DEVICE:-}"
STORE_DIR="${RMQD_STORE_DIR:-$HOME/store}"

usage_common() {
    cat <<'EOF'
  --root DIR     look at DIR/proc/sys, DIR/sys, DIR/etc instead of the real system (or RMQD_SYSROOT)
  --device NAME  block device of the store (e.g. nvme0n1); default: the one holding --store
  --store DIR    the broker's storePathRootDir (default ~/store), to find its block device
EOF
}

# Parse the shared options; sets REST to the remaining arguments.
parse_common() {
    REST=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
            --root=*) ROOT="${1#--root=}"; shift ;;
            --device) DEVICE="${2:?--device needs a name}"; shift 2 ;;
            --device=*) DEVICE="${1#--device=}"; shift ;;
            --store) STORE_DIR="${2:?--store needs a directory}"; shift 2 ;;
            --store=*) STORE_DIR="${1#--store=}"; shift ;;
            *) REST+=("$1"); shift ;;
        esac
    done
    ROOT="${ROOT%/}"
    # shellcheck disable=SC2034  # apply.sh keeps what it saved here
    STATE_DIR="$ROOT/var/lib/rmqd/os-tuning"
}

# The disk holding the store, when it is a real block device (not tmpfs/overlay) and --device is unset.
detect_device() {
    [ -n "$DEVICE" ] && return 0
    [ -z "$ROOT" ] || return 0   # a fake root names its device explicitly
    local source parent
    source="$(findmnt -no SOURCE -T "$STORE_DIR" 2>/dev/null || true)"
    case "$source" in /dev/*) ;; *) return 0 ;; esac
    parent="$(lsblk -no PKNAME "$source" 2>/dev/null | head -n1 || true)"
    DEVICE="${parent:-$(basename "$source")}"
}

# "always [madvise] never" -> "madvise"; a plain value passes through; trailing blanks dropped.
selected() {
    local text="$1"
    if [[ "$text" == *"["*"]"* ]]; then
        text="${text#*[}"
        text="${text%%]*}"
    fi
    printf '%s' "${text%%[[:space:]]}"
}

read_value() { [ -r "$1" ] && selected "$(head -n1 "$1")"; }

sysctl_path() { printf '%s/proc/sys/%s' "$ROOT" "${1//.//}"; }

one_of() { [[ "$2" == *" $1 "* ]]; }   # VALUE " LIST "

choice_status() {  # CURRENT " OK LIST "
    if [ -z "$1" ]; then echo missing; elif one_of "$1" "$2"; then echo ok; else echo drift; fi
}

minimum_status() {  # CURRENT MINIMUM ("unlimited" passes)
    if [ -z "$1" ]; then echo missing
    elif [ "$1" = unlimited ] || [ "$1" -ge "$2" ] 2>/dev/null; then echo ok
    else echo drift
    fi
}

sysctl_status() {  # KEY CURRENT WANTED
    if [[ "$AT_LEAST_KEYS" == *" $1 "* ]]; then minimum_status "$2" "$3"; else choice_status "$2" " $3 "; fi
}

# One knob read from PATH and judged by STATUS-FN; calls FN NAME PATH CURRENT WANTED STATUS.
knob() {  # FN NAME PATH WANTED STATUS-FN STATUS-ARG
    local current
    current="$(read_value "$3" || true)"
    "$1" "$2" "$3" "$current" "$4" "$("$5" "$current" "$6")"
}

nofile_current() {
    local limits="$ROOT/proc/self/limits"
    [ -r "$limits" ] || return 0
    awk '/^Max open files/ {print $4; exit}' "$limits"
}

limits_conf_path() { printf '%s/etc/security/limits.d/%s' "$ROOT" "$LIMITS_CONF_NAME"; }

limits_conf_text() {
    printf '# rmqd (os_tuning/apply.sh): open files for broker processes; effective at next login.\n'
    printf '# Under systemd, set LimitNOFILE=%s in the unit instead.\n' "$NOFILE_WANT"
    printf '*    soft    nofile    %s\n*    hard    nofile    %s\n' "$NOFILE_WANT" "$NOFILE_WANT"
}

for_each_knob() {
    local fn="$1" key value path current status
    while IFS='=' read -r key value; do
        key="${key//[[:space:]]/}"; value="${value//[[:space:]]/}"
        case "$key" in ''|'#'*|';'*) continue ;; esac
        path="$(sysctl_path "$key")"
        current="$(read_value "$path" || true)"
        "$fn" "$key" "$path" "$current" "$value" "$(sysctl_status "$key" "$current" "$value")"
    done < "$SYSCTL_CONF"

    local thp="$ROOT/sys/kernel/mm/transparent_hugepage"
    knob "$fn" transparent_hugepage.enabled "$thp/enabled" "$THP_WANT" choice_status "$THP_OK"
    knob "$fn" transparent_hugepage.defrag "$thp/defrag" "$THP_DEFRAG_WANT" choice_status "$THP_DEFRAG_OK"

    detect_device
    if [ -n "$DEVICE" ]; then
        local queue="$ROOT/sys/block/$DEVICE/queue"
        knob "$fn" "block.$DEVICE.scheduler" "$queue/scheduler" "$SCHED_WANT" choice_status "$SCHED_OK"
        knob "$fn" "block.$DEVICE.read_ahead_kb" "$queue/read_ahead_kb" "$READAHEAD_MIN_KB" \
            minimum_status "$READAHEAD_MIN_KB"
    else
        "$fn" "block.(store device)" "-" "" "$SCHED_WANT" missing
    fi

    # Only in a KVM guest whose idle driver is cpuidle-haltpoll (the file exists); elsewhere no row.
    local haltpoll="$ROOT/sys/module/haltpoll/parameters/guest_halt_poll_ns"
    if [ -e "$haltpoll" ]; then
        knob "$fn" haltpoll.guest_halt_poll_ns "$haltpoll" "$HALTPOLL_NS_MIN" minimum_status "$HALTPOLL_NS_MIN"
    fi

    current="$(nofile_current || true)"
    path="$(limits_conf_path)"
    status="$(minimum_status "$current" "$NOFILE_WANT")"
    if [ "$status" = drift ] && [ -f "$path" ] && grep -q "nofile *$NOFILE_WANT" "$path"; then
        status=pending
    fi
    "$fn" "nofile" "$path" "$current" "$NOFILE_WANT" "$status"
}
