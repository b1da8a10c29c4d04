"""S3 for tests: moto's server mode on a loopback port, spoken to over real HTTP by lorebase
(S3_ENDPOINT) and by the test (`client()`, a boto3 client)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Self

import httpx

from .servers import free_port, wait_for

S3_BUCKET = "lore-files"
S3_TRASH = "lore-trash"


class Moto:
    """moto's S3 in server mode on a loopback port; a restart keeps the port (and, as moto
    does, forgets every bucket)."""

    def __init__(self, log_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        log = open(self.log_dir / f"moto-{self.port}.log", "ab")  # the child keeps it
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.close()

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "moto_server exited"
            return httpx.get(self.url + "/moto-api/", timeout=2).status_code < 500
        wait_for(up, 30, 0.1, "moto_server")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

        def closed() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) != 0
        wait_for(closed, 10, 0.05, "moto's port to close")

    def client(self) -> Any:
        """A boto3 S3 client of this server (path-style, one try per call)."""
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing",
                            config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def settings(self) -> dict[str, str]:
        """The LOREBASE_* overrides of a lorebase that mirrors to this server."""
        return {"S3_ENDPOINT": self.url, "S3_BUCKET": S3_BUCKET, "S3_TRASH_BUCKET": S3_TRASH,
                "S3_ACCESS_KEY": "testing", "S3_SECRET_KEY": "testing", "S3_REGION": "us-east-1"}
