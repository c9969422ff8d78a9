"""Issue 18's acceptance: random damage to each kind of repository object stays contained.

The suite runs a handful of damages per kind; `OPENBDR_FUZZ_TRIALS=200` (and another
`OPENBDR_FUZZ_SEED`) runs the hundreds the closing notes report.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest

from .damage import KINDS, Pristine, Tally, build, trial

TRIALS = int(os.environ.get("OPENBDR_FUZZ_TRIALS", "6"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return build(tmp_path_factory.mktemp("pristine"))


@pytest.mark.parametrize("kind", KINDS)
def test_damage_stays_contained(kind: str, pristine: Pristine, tmp_path: Path) -> None:
    rng = random.Random(f"{kind}-{os.environ.get('OPENBDR_FUZZ_SEED', '1')}")
    t = Tally()
    for _ in range(TRIALS):
        trial(pristine, tmp_path, kind, rng, t)
    print(f"{kind}: {t.trials} damages, {t.commands} commands, exit codes {t.codes}")
    assert not t.violations, "\n".join(t.violations[:20])


@pytest.mark.s3
@pytest.mark.parametrize("kind", ["manifest", "index", "chunk", "lease"])
def test_damage_stays_contained_on_s3(
    kind: str, pristine: Pristine, tmp_path: Path, ceph: dict[str, str]
) -> None:
    """A smaller sample against the real gateway: S3 errors and listings, same contract."""
    rng = random.Random(f"s3-{kind}-{os.environ.get('OPENBDR_FUZZ_SEED', '1')}")
    t = Tally()
    for _ in range(max(2, TRIALS // 3)):
        trial(pristine, tmp_path, kind, rng, t, s3=f"s3://fz-{uuid.uuid4().hex[:10]}/repo")
    print(f"S3 {kind}: {t.trials} damages, {t.commands} commands, exit codes {t.codes}")
    assert not t.violations, "\n".join(t.violations[:20])
