"""A real S3 API on loopback for tests: moto's server as a subprocess in its own process group, on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

BIN = Path(sys.executable).parent
# moto accepts any key; fixed ones keep pyarrow from walking the AWS credential chain (no instance role here).
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(*, port: int | None = None, log: Path | None = None, start_timeout: float = 60,
                env: dict[str, str] | None = None) -> Iterator[str]:
    """Yields the endpoint URL (``http://127.0.0.1:PORT``); the server and its children are killed at the end."""
    port = port or free_port()
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}")
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"moto_server did not answer on {url} within {start_timeout} s")
                time.sleep(0.3)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if log:
            out.close()


def create_bucket(endpoint: str, bucket: str) -> None:
    import pyarrow.fs as pafs

    host = endpoint.split("://", 1)[1]
    fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", access_key="testing", secret_key="testing",
                           region="us-east-1", allow_bucket_creation=True)
    fs.create_dir(bucket)


def list_keys(endpoint: str, prefix: str) -> list[str]:
    """Every object key under ``bucket/prefix`` (recursive)."""
    import pyarrow.fs as pafs

    host = endpoint.split("://", 1)[1]
    fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", access_key="testing", secret_key="testing",
                           region="us-east-1")
    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)
