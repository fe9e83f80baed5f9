"""The boto3 reference for `mmb push` / `mmb pull` throughput (tests/remote.rs, `perf_push_pull_against_boto3`).

Uploads every file of a folder to s3://BUCKET/PREFIX/ (or downloads them back into a folder) with JOBS files
in flight, each large file in 16 MiB parts above 32 MiB with 2 parts in flight: the same concurrency and part
sizes as mmb. Prints one JSON line: files, bytes, seconds.

  python scripts/bench_remote_boto3.py up   DIR    --endpoint URL --bucket B --prefix P --jobs 8
  python scripts/bench_remote_boto3.py down DIR    --endpoint URL --bucket B --prefix P --jobs 8

Credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (as `scripts/ci/seaweedfs.sh` writes them).
"""
import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

MB = 1 << 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("direction", choices=["up", "down"])
    ap.add_argument("dir")
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--jobs", type=int, default=8)
    a = ap.parse_args()
    s3 = boto3.client(
        "s3",
        endpoint_url=a.endpoint,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        config=Config(max_pool_connections=a.jobs * 2 + 4, s3={"addressing_style": "path"}),
    )
    cfg = TransferConfig(multipart_threshold=32 * MB, multipart_chunksize=16 * MB, max_concurrency=2)
    t = time.perf_counter()
    if a.direction == "up":
        files = sorted(f for f in os.listdir(a.dir) if os.path.isfile(os.path.join(a.dir, f)))
        sizes = [os.path.getsize(os.path.join(a.dir, f)) for f in files]

        def up(f):
            s3.upload_file(os.path.join(a.dir, f), a.bucket, f"{a.prefix}/{f}", Config=cfg)

        with ThreadPoolExecutor(a.jobs) as ex:
            list(ex.map(up, files))
    else:
        os.makedirs(a.dir, exist_ok=True)
        keys, sizes = [], []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=a.bucket, Prefix=f"{a.prefix}/"):
            for o in page.get("Contents", []):
                keys.append(o["Key"])
                sizes.append(o["Size"])

        def down(k):
            s3.download_file(a.bucket, k, os.path.join(a.dir, k.rsplit("/", 1)[1]), Config=cfg)

        with ThreadPoolExecutor(a.jobs) as ex:
            list(ex.map(down, keys))
        files = keys
    secs = time.perf_counter() - t
    print(json.dumps({"direction": a.direction, "files": len(files), "bytes": sum(sizes), "seconds": secs}))


if __name__ == "__main__":
    main()
