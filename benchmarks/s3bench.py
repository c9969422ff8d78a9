"""S3 for the core benchmark: the Ceph fixture's gateway, and a bare parallel GET.

    .venv/bin/python benchmarks/s3bench.py get s3://bucket/prefix/chunks/ THREADS
    .venv/bin/python benchmarks/s3bench.py get-openbdr s3://bucket/prefix/chunks/ THREADS

`get` reads every object under a prefix with THREADS requests in flight through boto3 and
discards the bytes: what any restore from that store must at least spend, to compare
restores with. `get-openbdr` does the same through OpenBDR's own S3 store (its GET signed
by botocore and sent by urllib3, retries around it): a restore without decoding and writing.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from corpus import ROOT

CEPH = ROOT.parent / "shared" / "fixtures" / "ceph-cluster"


def start_gateway(where: Path, osd_size: str = "24G") -> dict[str, str]:
    """The fixture's cluster under `where` (started once; stopped when the run ends)."""
    env = {**os.environ, "CEPH_FIXTURE_OSD_SIZE": osd_size}
    proc = subprocess.run(
        [str(CEPH), "start", str(where)], capture_output=True, text=True, env=env, check=True
    )
    out: dict[str, str] = {}
    for line in Path(proc.stdout.strip()).read_text().splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k] = v.strip("'\"")
    atexit.register(lambda: subprocess.run([str(CEPH), "stop", str(where)], capture_output=True))
    return out


def bucket_bytes(url: str, env: dict[str, str]) -> int:
    """Bytes stored under an s3:// prefix."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["S3_ENDPOINT_URL"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    u = urlparse(url)
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=u.netloc,
                                                              Prefix=u.path.lstrip("/")):
        total += sum(int(o["Size"]) for o in page.get("Contents", []))
    return total


def drop_bucket(bucket: str, env: dict[str, str]) -> None:
    """Delete a bucket and everything in it: the gateway's OSD is kept between runs
    (24 GiB), and five runs' repositories filled it (restic then waits forever)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["S3_ENDPOINT_URL"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


def get_all(url: str, threads: int) -> int:
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"],
                      config=Config(max_pool_connections=threads))
    u = urlparse(url)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=u.netloc,
                                                                  Prefix=u.path.lstrip("/"))
        for o in page.get("Contents", [])
    ]

    def one(key: str) -> int:
        return len(s3.get_object(Bucket=u.netloc, Key=key)["Body"].read())

    with ThreadPoolExecutor(threads) as pool:
        got = sum(pool.map(one, keys))
    print(f"{len(keys)} objects, {got} bytes")
    return got


def get_all_openbdr(url: str, threads: int) -> int:
    from openbdr.store.blobs import open_blobs

    store = open_blobs(url.rstrip("/"))
    keys = [info.key for info in store.list()]
    with ThreadPoolExecutor(threads) as pool:
        got = sum(pool.map(lambda key: len(store.get(key)), keys))
    store.close()
    print(f"{len(keys)} objects, {got} bytes")
    return got


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "get":
        get_all(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "get-openbdr":
        get_all_openbdr(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)
