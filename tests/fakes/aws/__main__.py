"""The fake as its own process (benchmarks): `python -m tests.fakes.aws WORKDIR IMAGE...`.

Prints one JSON line {"url", "instance", "volumes", "access_key_id", "secret_access_key"}
and then answers commands on stdin, one JSON object per line, with one JSON line:
{"cmd": "set", "latency": 0.02, "throttle_rate": 0.1, …}, {"cmd": "backing", "volume",
"path"}, {"cmd": "stats"}, {"cmd": "reset_stats"}. EOF stops it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .server import ACCESS_KEY, SECRET_KEY, FakeAWS


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("workdir", type=Path)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--immutable", action="store_true", help="snapshots point into the images")
    a = p.parse_args()
    fake = FakeAWS(a.workdir).start(a.port)
    fake.latency = a.latency
    fake.account.completion_delay = 0.5
    fake.account.immutable_backing = a.immutable
    vols = [fake.account.add_volume(i) for i in a.images]
    inst = fake.account.add_instance(vols, name="bench")
    print(
        json.dumps(
            {
                "url": fake.url,
                "instance": inst.id,
                "volumes": [v.id for v in vols],
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        cmd = json.loads(line)
        out: dict[str, object] = {"ok": True}
        if cmd["cmd"] == "set":
            for k, v in cmd.items():
                if k != "cmd":
                    setattr(fake, k, v)
        elif cmd["cmd"] == "backing":
            fake.account.set_backing(cmd["volume"], cmd["path"])
        elif cmd["cmd"] == "stats":
            out = {"calls": dict(fake.calls), "throttled": dict(fake.throttled)}
        elif cmd["cmd"] == "reset_stats":
            fake.calls.clear()
            fake.throttled.clear()
        print(json.dumps(out), flush=True)
    fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
