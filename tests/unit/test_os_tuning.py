"""os_tuning/check.sh and apply.sh against a fake system root (never the real /proc/sys).

The fake root holds what the scripts read and write: proc/sys/vm/*, the transparent hugepage
switches, one block device's queue settings, the haltpoll idle driver's poll time,
proc/self/limits and an /etc/sysctl.d file that was
there before. The round trip: check reports drift, dry-run changes nothing, apply fixes every knob
and saves what it replaced, a second apply changes nothing, revert restores every byte.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "os_tuning" / "check.sh"
APPLY = REPO / "os_tuning" / "apply.sh"

DEFAULTS = {  # this machine's values (PERFORMANCE_NOTES), plus THP "always" and a bfq disk to drift
    "proc/sys/vm/dirty_background_ratio": "10\n",
    "proc/sys/vm/dirty_ratio": "20\n",
    "proc/sys/vm/dirty_writeback_centisecs": "500\n",
    "proc/sys/vm/dirty_expire_centisecs": "3000\n",
    "proc/sys/vm/swappiness": "60\n",
    "proc/sys/vm/max_map_count": "65530\n",
    "proc/sys/vm/min_free_kbytes": "67584\n",
    "proc/sys/vm/zone_reclaim_mode": "0\n",
    "sys/kernel/mm/transparent_hugepage/enabled": "[always] madvise never\n",
    "sys/kernel/mm/transparent_hugepage/defrag": "always defer defer+madvise [madvise] never\n",
    "sys/block/sdb/queue/scheduler": "mq-deadline kyber [bfq] none\n",
    "sys/block/sdb/queue/read_ahead_kb": "64\n",
    "sys/module/haltpoll/parameters/guest_halt_poll_ns": "0\n",  # a KVM guest that never polls
    "proc/self/limits": "Limit                     Soft Limit  Hard Limit  Units\n"
                        "Max open files            1024        4096        files\n",
    "etc/sysctl.d/60-rmqd.conf": "# an older copy an operator edited by hand\nvm.swappiness = 10\n",
}


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for rel, text in DEFAULTS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def run(script: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script), "--root", str(root), "--device", "sdb", *args],
                          capture_output=True, text=True, timeout=60)


def selected(text: str) -> str:
    """What a sysfs choice file means: "mq-deadline kyber [bfq] none" selects bfq. The kernel takes
    the choice alone on write, so that is what apply saves and revert writes back."""
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else text.strip()


def snapshot(root: Path, meaning: bool = False) -> dict[str, str]:
    files = {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}
    if meaning:
        files = {rel: selected(text) if rel.startswith("sys/") else text for rel, text in files.items()}
    return files


def rows(output: str) -> dict[str, list[str]]:
    """KNOB -> [CURRENT, RECOMMENDED, STATUS...] from check.sh's table."""
    table = {}
    for line in output.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4 and not line.startswith("drift:"):
            table[parts[0]] = parts[1:]
    return table


def test_check_prints_current_against_recommended_and_fails_on_drift(fake_root: Path) -> None:
    result = run(CHECK, fake_root)
    assert result.returncode == 1, result.stderr
    table = rows(result.stdout)
    assert table["vm.dirty_ratio"] == ["20", "40", "drift"]
    assert table["vm.dirty_background_ratio"] == ["10", "10", "ok"]
    assert table["vm.max_map_count"] == ["65530", "655360", "drift"]
    assert table["transparent_hugepage.enabled"] == ["always", "madvise", "drift"]
    assert table["transparent_hugepage.defrag"] == ["madvise", "madvise", "ok"]
    assert table["block.sdb.scheduler"] == ["bfq", "mq-deadline", "drift"]
    assert table["block.sdb.read_ahead_kb"] == ["64", "128", "drift"]
    assert table["haltpoll.guest_halt_poll_ns"] == ["0", "200000", "drift"]
    assert table["nofile"] == ["1024", "655350", "drift"]


def test_dry_run_lists_the_changes_and_touches_nothing(fake_root: Path) -> None:
    before = snapshot(fake_root)
    result = run(APPLY, fake_root, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would set vm.swappiness: 60 -> 1" in result.stdout
    assert "would set block.sdb.scheduler: bfq -> mq-deadline" in result.stdout
    assert "would install" in result.stdout and "limits.d/60-rmqd.conf" in result.stdout
    assert snapshot(fake_root) == before


def test_apply_then_revert_round_trips_and_both_are_idempotent(fake_root: Path) -> None:
    before = snapshot(fake_root)
    applied = run(APPLY, fake_root, "--apply")
    assert applied.returncode == 0, applied.stderr
    after = snapshot(fake_root)
    assert after["proc/sys/vm/swappiness"] == "1\n" and after["proc/sys/vm/max_map_count"] == "655360\n"
    assert after["sys/kernel/mm/transparent_hugepage/enabled"] == "madvise\n"
    assert after["sys/block/sdb/queue/scheduler"] == "mq-deadline\n"
    assert after["sys/module/haltpoll/parameters/guest_halt_poll_ns"] == "200000\n"
    assert after["etc/sysctl.d/60-rmqd.conf"] == (REPO / "os_tuning/sysctl.d/60-rmqd.conf").read_text()
    assert "nofile    655350" in after["etc/security/limits.d/60-rmqd.conf"]
    # check: everything matches except the open-files limit, which waits for the next login
    checked = run(CHECK, fake_root)
    statuses = {knob: cells[2] for knob, cells in rows(checked.stdout).items()}
    assert checked.returncode == 1 and statuses.pop("nofile") == "pending"
    assert set(statuses.values()) == {"ok"}
    # a second apply changes nothing and keeps the originals it saved the first time
    again = run(APPLY, fake_root, "--apply")
    assert again.returncode == 0 and "nothing to change" in again.stdout
    assert snapshot(fake_root) == after
    # after a re-login the limit is in force and check is clean
    (fake_root / "proc/self/limits").write_text(
        "Limit                     Soft Limit  Hard Limit  Units\n"
        "Max open files            655350      655350      files\n")
    assert run(CHECK, fake_root).returncode == 0
    (fake_root / "proc/self/limits").write_text(DEFAULTS["proc/self/limits"])
    # revert puts back every value, and the sysctl.d file that was there before byte for byte
    reverted = run(APPLY, fake_root, "--revert")
    assert reverted.returncode == 0, reverted.stderr
    assert snapshot(fake_root, meaning=True) == {
        rel: selected(text) if rel.startswith("sys/") else text for rel, text in before.items()}
    assert not (fake_root / "var/lib/rmqd/os-tuning").exists()
    twice = run(APPLY, fake_root, "--revert")
    assert twice.returncode == 0 and "nothing to revert" in twice.stdout


@pytest.mark.parametrize("args", [(), ("--apply", "--revert"), ("--bogus",)])
def test_apply_refuses_anything_but_exactly_one_mode(fake_root: Path, args: tuple[str, ...]) -> None:
    before = snapshot(fake_root)
    result = run(APPLY, fake_root, *args)
    assert result.returncode == 2 and "usage" in (result.stdout + result.stderr)
    assert snapshot(fake_root) == before


def test_a_knob_the_system_lacks_is_reported_missing_not_drift(fake_root: Path) -> None:
    for rel in DEFAULTS:
        if rel.startswith(("proc/sys/vm/", "sys/kernel")) or rel == "proc/self/limits":
            continue
        (fake_root / rel).unlink()
    # what is left drifting: only the sysctls and THP of DEFAULTS; remove those too by matching them
    for rel, value in (("proc/sys/vm/dirty_ratio", "40"), ("proc/sys/vm/swappiness", "1"),
                       ("proc/sys/vm/max_map_count", "655360"), ("proc/sys/vm/min_free_kbytes", "131072"),
                       ("sys/kernel/mm/transparent_hugepage/enabled", "always madvise [never]"),
                       ("proc/self/limits", "Max open files            unlimited  unlimited  files")):
        (fake_root / rel).write_text(value + "\n")
    result = run(CHECK, fake_root)
    table = rows(result.stdout)
    assert table["block.sdb.scheduler"][-1] == "missing" and table["nofile"][-1] == "ok"
    assert "haltpoll.guest_halt_poll_ns" not in table  # not a KVM guest with haltpoll: no row at all
    assert result.returncode == 0, result.stdout
