"""Where every path of the project is opened: local directories and object storage (s3://, gs://) through pyarrow.

One setting reaches S3-compatible stores (MinIO, Ceph, R2, moto): ``INTERP_RAY_S3_ENDPOINT`` (``http://host:port`` or
``https://host``), read on every node, applies to each ``s3://`` path that does not name its own endpoint. pyarrow 26
ignores ``AWS_ENDPOINT_URL``, so without this it would always ask AWS. A path may instead carry pyarrow's own query
form, ``s3://bucket/p?endpoint_override=host:port&scheme=http``, which then wins. Credentials come from the usual AWS
chain (environment, ``~/.aws``, instance role).

``check_storage`` tries a path the way a job will use it (the bucket exists, an object can be written and removed)
and turns every failure into one ``UserError`` line, so a job refuses a bad path before any Ray work starts.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs, urlsplit

from interp_ray.errors import UserError

ENDPOINT_ENV = "INTERP_RAY_S3_ENDPOINT"
# Bounded waits, so an endpoint that does not answer fails a job in seconds instead of hanging it.
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0


def is_remote(uri: str | os.PathLike) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def endpoint() -> tuple[str, str] | None:
    """(host:port, scheme) from ``INTERP_RAY_S3_ENDPOINT``, or None when unset."""
    raw = os.environ.get(ENDPOINT_ENV, "").strip()
    if not raw:
        return None
    parts = urlsplit(raw if "://" in raw else f"https://{raw}")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise UserError(f"{ENDPOINT_ENV}={raw!r} must look like http://host:port or https://host")
    return parts.netloc, parts.scheme


def _s3_filesystem(netloc: str, scheme: str):
    import pyarrow.fs as pafs

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return pafs.S3FileSystem(endpoint_override=netloc, scheme=scheme, region=region,
                             connect_timeout=CONNECT_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S)


def filesystem(location: str | os.PathLike) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI (``file://`` too, decoded by pyarrow); an
    unusable URI is a UserError."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    location = str(location)
    if "://" not in location:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
    parts = urlsplit(location)
    ep = endpoint() if parts.scheme == "s3" and "endpoint_override" not in parse_qs(parts.query) else None
    try:
        if ep is not None:
            if parts.query:
                raise UserError(f"{location}: with {ENDPOINT_ENV} set, an s3:// path takes no query "
                                f"(or give endpoint_override in the path itself)")
            path = f"{parts.netloc}{parts.path}".rstrip("/") or parts.netloc
            return _s3_filesystem(*ep), path
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise UserError(f"cannot open {location}: {_one_line(exc)}") from None


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or a URI, keeping a URI's query (its endpoint) at the end."""
    base = str(base)
    if not is_remote(base):
        return os.path.join(base.removeprefix("file://"), *parts)
    head, sep, query = base.partition("?")
    return "/".join([head.rstrip("/"), *parts]) + (sep + query)


def ray_storage(location: str | os.PathLike) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for ``ray.train.RunConfig``: a remote path goes with the filesystem this
    module opens (pickled to every worker, so the endpoint travels with it), a local one is made absolute."""
    fs, path = filesystem(location)
    if not is_remote(location):
        return path, None
    return path, fs


# Objects read at once by a batch of a remote dataset (one image each): a GET costs a round trip, so a loader task
# reading them one after another would wait on latency, not bandwidth. PIL's decoding releases the GIL as well.
READ_THREADS = 16


def map_ordered(fn: Callable[[Any], Any], items: Sequence[Any], *, threads: int = READ_THREADS) -> list[Any]:
    """``[fn(x) for x in items]``, ``threads`` at a time, in order; the first exception (in item order) is raised."""
    if len(items) <= 1 or threads <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def check_storage(location: str | os.PathLike, *, what: str = "storage path") -> None:
    """Refuse (one UserError line) a remote ``location`` a job could not write to: no such bucket, an endpoint that
    does not answer, credentials it rejects. Local paths are left to the job (it creates them)."""
    import pyarrow.fs as pafs

    location = str(location)
    if not is_remote(location):
        return
    fs, path = filesystem(location)
    bucket = path.split("/", 1)[0]
    where = f" at {endpoint()[1]}://{endpoint()[0]}" if endpoint() and "endpoint_override" not in location else ""
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise UserError(f"{what} {location}: cannot reach bucket {bucket!r}{where}: {_one_line(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{what} {location}: bucket {bucket!r} does not exist{where}; create it first")
    probe = posixpath.join(path, f".interp-ray-probe-{uuid.uuid4().hex[:12]}")
    try:
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except OSError as exc:
        raise UserError(f"{what} {location}: cannot write there{where}: {_one_line(exc)}") from None
