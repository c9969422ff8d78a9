"""The accelerator probe: KVM only when a guest really runs under it; the verdict is cached."""

from __future__ import annotations

import os
from pathlib import Path

from openbdr.drill.accel import Accel, choose_accel, probe_guest, probe_kvm


def test_probe_guest_runs_under_tcg() -> None:
    """The probe guest itself is sound: so a KVM failure is KVM's, not the probe's."""
    ok, why = probe_guest(Accel("tcg", "").qemu_args())
    assert ok, why


def test_kvm_verdict_matches_this_host_and_is_cached(state_dir: Path) -> None:
    verdict = probe_kvm()
    if os.path.isdir("/sys/module/kvm_pvm") or not os.path.exists("/dev/kvm"):
        assert verdict.name == "tcg", verdict  # nested PVM cannot run BIOS guests
    first = choose_accel(refresh=True)
    again = choose_accel()
    assert (first.name, again.name) == (verdict.name, verdict.name)
    assert again.reason.endswith("(cached)") and (state_dir / "accel.json").exists()
    assert choose_accel(force="tcg").qemu_args() == ["-accel", "tcg"]
