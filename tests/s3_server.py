"""A real S3-protocol server on 127.0.0.1 for tests: moto in server mode, with authentication.

    server = S3Server.start()          # its own process, a free port
    server.env                         # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... as users set them
    server.create_bucket("trm")
    server.stop()                      # by its own pid

Requests are signed and checked (moto's IAM enforcement): the first few requests create an IAM
user, its access key and an allow-all policy; every request after that must carry that key, so
wrong credentials are refused as a real store refuses them. The server only ever listens on
127.0.0.1 and is stopped by the pid it was started with.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

# The IAM calls that set up the key (create_user, create_access_key, put_user_policy) are the
# only unauthenticated ones; everything after them is checked.
_SETUP_CALLS = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    process: subprocess.Popen
    endpoint: str
    access_key: str = ""
    secret_key: str = ""
    region: str = "us-east-1"
    buckets: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, timeout_s: float = 30.0) -> "S3Server":
        port = _free_port()
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(_SETUP_CALLS))
        for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.pop(key, None)
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                # moto's own dashboard path: not an S3 call, so not counted as one of the setup calls
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(f"the moto S3 server did not start on {endpoint}")
                time.sleep(0.2)
        server = cls(process=process, endpoint=endpoint)
        server._create_key()
        return server

    def _client(self, service: str, access_key: Optional[str] = None, secret_key: Optional[str] = None):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=access_key or self.access_key or "setup",
                            aws_secret_access_key=secret_key or self.secret_key or "setup")

    def _create_key(self) -> None:
        iam = self._client("iam")
        iam.create_user(UserName="trm-ray-tests")
        key = iam.create_access_key(UserName="trm-ray-tests")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="trm-ray-tests", PolicyName="all", PolicyDocument=json.dumps(policy))
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    @property
    def env(self) -> dict[str, str]:
        """What a user exports to point trm-ray (pyarrow, Ray, workers) at this store."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": self.region,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def create_bucket(self, name: str) -> str:
        self._client("s3").create_bucket(Bucket=name)
        self.buckets.append(name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, read back with boto3 (independent of pyarrow)."""
        paginator = self._client("s3").get_paginator("list_objects_v2")
        keys = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def get(self, bucket: str, key: str) -> bytes:
        return self._client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self._client("s3").put_object(Bucket=bucket, Key=key, Body=data)

    def stop(self) -> None:
        from process_util import stop_process

        stop_process(self.process)


@contextmanager
def refused_endpoint() -> Iterator[str]:
    """An http://127.0.0.1:PORT endpoint that refuses every connection: the port stays bound (so no
    other process, a Ray agent say, can take it and answer) but never listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
