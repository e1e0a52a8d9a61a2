"""pytest plugin (`-p s3tests_plugin`) that adapts s3-tests' bucket housekeeping to the
conformance run without touching what any test checks.

s3-tests wraps every test in an autouse fixture (`setup_teardown` in
`s3tests/functional/__init__.py`) that, before and after the test, lists *all* buckets with
the run's prefix under three accounts (main, alt, tenant) and deletes them with their object
versions (`ListObjectVersions`, `DeleteObjects`, `DeleteBucket`); any error there fails the
test. The office gateway serves configured buckets only: it has no versions listing and does
not delete buckets, so that housekeeping would fail every test through the gateway for a reason
that has nothing to do with the test.

This plugin replaces the two functions that fixture calls (`setup`, `teardown`), for both
targets alike:

* bucket names are handed out by s3-tests' own `get_new_bucket_name` (`<prefix><n>`, with a
  fixed prefix, so names never repeat within a run: every test still starts from buckets
  nobody used before); the plugin records which names each test was handed;
* setup does nothing (each target starts empty, and names are never reused);
* teardown cleans only the buckets the test was handed, logging (never raising) errors, so
  housekeeping is not counted as a test result:
  - upstream (`CONFORMANCE_TARGET=upstream`): s3-tests' own `nuke_bucket` (delete every
    version, then the bucket), as the suite does;
  - gateway (`CONFORMANCE_TARGET=gateway`): empty the bucket through the gateway
    (ListObjectsV2 + DeleteObjects, and abort unfinished multipart uploads); the bucket stays,
    as configured buckets do.

Buckets exist upstream only once a test creates them, in both passes. Straight at S3 the
test's CreateBucket creates it. Through the gateway a bucket must be provisioned on S3 and
configured in the office (`server.s3_buckets`): the runner configures every name the run may
hand out, and this plugin plays the operator for the gateway pass, creating the bucket on the
upstream S3 (`CONFORMANCE_UPSTREAM_ENDPOINT`) just before a test's own CreateBucket reaches
the gateway (a botocore `before-parameter-build.s3.CreateBucket` handler on boto3's default
session, which every s3-tests client comes from). So a test that lists or writes a bucket it
never created (`test_bucket_notexist`) meets a configured bucket that S3 does not have, as it
would meet a missing bucket on S3.

With `CONFORMANCE_BUCKET_LOG=path` the highest bucket number handed out is written there at
the end (the runner sizes the gateway's configured buckets from the upstream run), and a test
handed a bucket past `CONFORMANCE_BUCKETS_AVAILABLE` is reported on stderr: it would fail
for a harness reason (the bucket is not configured).
"""

from __future__ import annotations

import itertools
import os
import sys
import threading

TARGET = os.environ.get("CONFORMANCE_TARGET", "upstream")
BUCKET_LOG = os.environ.get("CONFORMANCE_BUCKET_LOG")
AVAILABLE = int(os.environ.get("CONFORMANCE_BUCKETS_AVAILABLE", "0") or 0)
# Lines for the runner: harness problems that may change a result, and housekeeping notes.
WARNINGS = os.environ.get("CONFORMANCE_WARNINGS")
HOUSEKEEPING = os.environ.get("CONFORMANCE_HOUSEKEEPING")


def _note(path: str | None, message: str) -> None:
    print(message, file=sys.stderr)
    if path:
        with open(path, "a") as out:
            out.write(message + "\n")


class RecordingCounter:
    """`itertools.count(1)` that remembers what it handed out since the last `drain`."""

    def __init__(self) -> None:
        self._inner = itertools.count(1)
        self._lock = threading.Lock()
        self.handed: list[int] = []
        self.highest = 0

    def __iter__(self):
        return self

    def __next__(self) -> int:
        with self._lock:
            n = next(self._inner)
            self.handed.append(n)
            self.highest = max(self.highest, n)
            if AVAILABLE and n > AVAILABLE:
                _note(WARNINGS,
                      f"conformance: bucket number {n} is past the {AVAILABLE} configured in "
                      "the gateway; raise the margin in conformance/run")
            return n

    def drain(self) -> list[int]:
        with self._lock:
            handed, self.handed = self.handed, []
            return handed


COUNTER = RecordingCounter()


def _log(message: str) -> None:
    _note(HOUSEKEEPING, f"conformance teardown: {message}")


def _empty_through_gateway(client, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    except ClientError as err:
        # NoSuchBucket: a name the test was handed but never created, or refused.
        if err.response.get("Error", {}).get("Code") != "NoSuchBucket":
            _log(f"emptying {bucket}: {err}")
    try:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "NoSuchBucket":
            _log(f"aborting uploads in {bucket}: {err}")


def _cleanup(functional) -> None:
    prefix = functional.get_prefix()
    client = functional.get_client()
    for n in COUNTER.drain():
        bucket = f"{prefix}{n}"
        try:
            if TARGET == "gateway":
                _empty_through_gateway(client, bucket)
            else:
                try:
                    client.head_bucket(Bucket=bucket)
                except Exception:  # never created (or already deleted by the test)
                    continue
                functional.nuke_bucket(client, bucket)
        except Exception as err:  # housekeeping never decides a test's outcome
            _log(f"{bucket}: {err!r}")


UPSTREAM_ENDPOINT = os.environ.get("CONFORMANCE_UPSTREAM_ENDPOINT")
UPSTREAM_KEY = os.environ.get("CONFORMANCE_UPSTREAM_KEY", "conformance")
UPSTREAM_SECRET = os.environ.get("CONFORMANCE_UPSTREAM_SECRET", "conformance-secret")


def _install_provisioning(functional) -> None:
    """Gateway pass: create a bucket on the upstream S3 when a test creates it."""
    import boto3
    from botocore.exceptions import ClientError

    operator = boto3.session.Session().client(
        "s3", endpoint_url=UPSTREAM_ENDPOINT, aws_access_key_id=UPSTREAM_KEY,
        aws_secret_access_key=UPSTREAM_SECRET, region_name="us-east-1",
    )

    def provision(params, **_kwargs):
        bucket = params.get("Bucket", "")
        if not bucket.startswith(functional.get_prefix()):
            return  # not a name the run configured: the gateway refuses it on its own
        try:
            operator.create_bucket(Bucket=bucket)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                _note(WARNINGS, f"conformance: cannot provision {bucket} upstream: {err}")

    boto3.setup_default_session()
    boto3.DEFAULT_SESSION.events.register("before-parameter-build.s3.CreateBucket", provision)


def pytest_sessionstart(session) -> None:
    import s3tests.functional as functional

    if TARGET == "gateway" and UPSTREAM_ENDPOINT:
        _install_provisioning(functional)

    functional.bucket_counter = COUNTER
    functional.setup = lambda: None
    functional.teardown = lambda: _cleanup(functional)


def pytest_sessionfinish(session, exitstatus) -> None:
    if BUCKET_LOG:
        with open(BUCKET_LOG, "w") as out:
            out.write(f"{COUNTER.highest}\n")
