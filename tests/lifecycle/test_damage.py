"""Issue 18's acceptance: random damage to each kind of repository object stays contained."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from .damage import KINDS, Tally, build, trial

#: trials per object kind (OPENBDR_FUZZ_TRIALS raises it for a long run)
TRIALS = int(os.environ.get("OPENBDR_FUZZ_TRIALS", "25"))


@pytest.mark.parametrize("kind", KINDS)
def test_damage_stays_contained(kind: str, tmp_path: Path) -> None:
    p = build(tmp_path)
    rng = random.Random(f"{kind}-{os.environ.get('OPENBDR_FUZZ_SEED', '1')}")
    t = Tally()
    for _ in range(TRIALS):
        trial(p, tmp_path, kind, rng, t)
    print(f"{kind}: {t.trials} damages, {t.commands} commands, exit codes {t.codes}")
    assert not t.violations, "\n".join(t.violations[:20])
