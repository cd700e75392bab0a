#!/usr/bin/env bash
# os_tuning/apply.sh: bring the knobs check.sh reports as drifting to rmqd's recommendation.
#
#   apply.sh --dry-run   print what --apply would change; change nothing
#   apply.sh --apply     set the live values (procfs/sysfs), install sysctl.d/60-rmqd.conf in
#                        /etc/sysctl.d (boot-time persistence) and limits.d/60-rmqd.conf (nofile);
#                        the value each knob had before rmqd first changed it is saved under
#                        /var/lib/rmqd/os-tuning, as is any file it replaced
#   apply.sh --revert    put back exactly what was saved, remove what was installed, forget it
#
# Idempotent: --apply changes only drifting knobs and never overwrites a saved original, so a
# second --apply changes nothing and --revert still restores the state before the first one;
# --revert with nothing saved says so and succeeds. Needs root on a real system. --root DIR (or
# RMQD_SYSROOT) makes every path relative to DIR: the tests run it against a fake /proc/sys tree.
set -euo pipefail
# shellcheck source=os_tuning/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    echo "usage: apply.sh (--dry-run | --apply | --revert) [--root DIR] [--device NAME] [--store DIR]"
    usage_common
}

MODE=""
parse_common "$@"
for arg in "${REST[@]+"${REST[@]}"}"; do
    case "$arg" in
        --dry-run|--apply|--revert)
            if [ -n "$MODE" ]; then
                echo "apply.sh: give only one of --dry-run, --apply, --revert" >&2; usage >&2; exit 2
            fi
            MODE="${arg#--}" ;;
        -h|--help) usage; exit 0 ;;
        *) echo "apply.sh: unknown argument $arg" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$MODE" ] || { usage >&2; exit 2; }

SAVED="$STATE_DIR/saved.tsv"          # knob path <TAB> value before rmqd's first change
INSTALLED="$STATE_DIR/installed.tsv"  # installed file <TAB> backup of what it replaced, or "-"
CHANGES=0

remember() {  # PATH ORIGINAL: only the first change of a path is remembered
    mkdir -p "$STATE_DIR"
    touch "$SAVED"
    if ! cut -f1 "$SAVED" | grep -qxF "$1"; then
        printf '%s\t%s\n' "$1" "$2" >> "$SAVED"
    fi
}

target_value() {  # NAME PATH WANTED
    case "$1" in
        block.*.scheduler)
            if grep -qw "$SCHED_WANT" "$2"; then echo "$SCHED_WANT"; else echo none; fi ;;
        *) echo "$3" ;;
    esac
}

install_file() {  # TARGET SOURCE-FILE DESCRIPTION
    local target="$1" source="$2" backup="-"
    if [ -f "$target" ] && cmp -s "$source" "$target"; then
        return 0
    fi
    CHANGES=$((CHANGES + 1))
    if [ "$MODE" = dry-run ]; then
        echo "would install $target ($3)"
        return 0
    fi
    mkdir -p "$STATE_DIR/backup" "$(dirname "$target")"
    touch "$INSTALLED"
    if ! cut -f1 "$INSTALLED" | grep -qxF "$target"; then
        if [ -f "$target" ]; then
            backup="$STATE_DIR/backup/$(echo "$target" | tr '/' '_')"
            cp -p "$target" "$backup"
        fi
        printf '%s\t%s\n' "$target" "$backup" >> "$INSTALLED"
    fi
    cp "$source" "$target"
    echo "installed $target ($3)"
}

# shellcheck disable=SC2317  # called through for_each_knob
apply_row() {  # NAME PATH CURRENT WANTED STATUS
    local name="$1" path="$2" current="$3" value
    [ "$5" = drift ] || return 0
    if [ "$name" = nofile ]; then
        local text; text="$(mktemp)"
        limits_conf_text > "$text"
        install_file "$path" "$text" "nofile $NOFILE_WANT, effective at next login"
        rm -f "$text"
        return 0
    fi
    value="$(target_value "$name" "$path" "$4")"
    CHANGES=$((CHANGES + 1))
    if [ "$MODE" = dry-run ]; then
        echo "would set $name: $current -> $value ($path)"
        return 0
    fi
    remember "$path" "$current"
    printf '%s\n' "$value" > "$path"
    echo "set $name: $current -> $value"
}

revert() {
    if [ ! -f "$SAVED" ] && [ ! -f "$INSTALLED" ]; then
        echo "nothing to revert: apply.sh --apply has changed nothing under ${ROOT:-/}"
        return 0
    fi
    local path value target backup
    if [ -f "$SAVED" ]; then
        while IFS=$'\t' read -r path value; do
            printf '%s\n' "$value" > "$path"
            echo "restored $path: $value"
        done < "$SAVED"
    fi
    if [ -f "$INSTALLED" ]; then
        while IFS=$'\t' read -r target backup; do
            if [ "$backup" = "-" ]; then
                rm -f "$target"; echo "removed $target"
            else
                cp -p "$backup" "$target"; echo "restored $target"
            fi
        done < "$INSTALLED"
    fi
    rm -rf "$STATE_DIR"
}

if [ "$MODE" = revert ]; then
    revert
    exit 0
fi
for_each_knob apply_row
install_file "$ROOT/etc/sysctl.d/60-rmqd.conf" "$SYSCTL_CONF" "loaded at boot by systemd-sysctl"
if [ "$CHANGES" -eq 0 ]; then
    echo "nothing to change: every knob already matches (check.sh)"
elif [ "$MODE" = dry-run ]; then
    echo "$CHANGES change(s); run with --apply to make them (saved for --revert)"
fi
