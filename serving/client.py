"""A Python client and a command line for the explanation service (standard library only).

    from serving.client import ExplainClient
    c = ExplainClient("http://127.0.0.1:8000")            # token: $INTERP_RAY_SERVE_TOKEN unless given
    c.explain("digit.png", "gradcam")                       # a path, encoded bytes, or a C×H×W / N×C×H×W array
    c.explain(["a.png", "b.png"], "feature_inversion", params={"stage2_iterations": 20}, asynchronous=True)

    interp-ray explain --url http://127.0.0.1:8000 digit.png --method gradcam [--target 3] [--param k=v] [--async]
    python -m serving.client --url http://127.0.0.1:8000 --list-methods

One client holds one keep-alive connection: use one per thread.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

TOKEN_ENV = "INTERP_RAY_SERVE_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8000"
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                 ".bmp": "image/bmp", ".gif": "image/gif", ".tif": "image/tiff", ".tiff": "image/tiff"}
EXIT_CLIENT, EXIT_SERVER = 2, 1


class ServiceError(Exception):
    """A non-2xx answer: ``status``, the server's ``code`` and ``message``, ``retry_after`` (s) when given."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class ExplainClient:
    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 120.0,
                 token_env: str = TOKEN_ENV, retries_on_busy: int = 0):
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"url must be http:// or https://, got {url!r}")
        self.scheme, self.host = parts.scheme, parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.token = token if token is not None else (os.environ.get(token_env) or None)
        self.timeout, self.retries_on_busy = timeout, retries_on_busy
        self._conn: http.client.HTTPConnection | None = None

    # ---- the routes

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/v1/health")

    def methods(self) -> dict[str, Any]:
        return self.request("GET", "/v1/methods")

    def method(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/methods/{_quote(name)}")

    def predict(self, images: Any, *, resize: bool = False) -> dict[str, Any]:
        return self._images("/v1/predict", images, resize=resize)

    def explain(self, images: Any, method: str, *, target: int | list[int] | None = None,
                params: dict[str, Any] | None = None, resize: bool = False, asynchronous: bool = False,
                wait_timeout: float = 600.0) -> dict[str, Any]:
        """The explain response (asynchronous: submit a job and wait for its result)."""
        if asynchronous:
            job = self.submit(images, method, target=target, params=params, resize=resize)
            return self.wait(job["id"], timeout=wait_timeout)["result"]
        return self._images(f"/v1/explain/{_quote(method)}", images, target=target, params=params, resize=resize)

    def picture(self, image: Any, method: str, *, target: int | None = None, params: dict[str, Any] | None = None,
                resize: bool = False) -> bytes:
        """One image's explanation drawn as the reports draw it: PNG bytes."""
        return self._images(f"/v1/explain/{_quote(method)}/picture", image, target=target, params=params,
                            resize=resize, raw=True)

    def submit(self, images: Any, method: str, *, target: int | list[int] | None = None,
               params: dict[str, Any] | None = None, resize: bool = False) -> dict[str, Any]:
        return self._images(f"/v1/jobs/{_quote(method)}", images, target=target, params=params, resize=resize)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{_quote(job_id)}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/v1/jobs/{_quote(job_id)}")

    def wait(self, job_id: str, *, timeout: float = 600.0, poll_s: float = 0.2) -> dict[str, Any]:
        """Poll until the job has finished; a failed or cancelled job raises ServiceError."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] == "succeeded":
                return job
            if job["status"] in ("failed", "cancelled"):
                err = job.get("error") or {"status": 500, "message": job["status"]}
                raise ServiceError(int(err.get("status", 500)), job["status"], str(err.get("message")))
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
            poll_s = min(poll_s * 1.5, 2.0)

    # ---- bodies

    def _images(self, path: str, images: Any, *, target: Any = None, params: dict[str, Any] | None = None,
                resize: bool = False, raw: bool = False) -> Any:
        explain = not path.startswith("/v1/predict")
        single = _single_encoded(images)
        if single is not None:  # one encoded image: send its bytes as they are, options in the query
            data, ctype = single
            query: dict[str, str] = {"resize": "true"} if resize else {}
            if explain and target is not None:
                query["target"] = ",".join(map(str, target)) if isinstance(target, list) else str(target)
            if explain and params:
                query["params"] = json.dumps(params)
            return self.request("POST", path, body=data, content_type=ctype, query=query, raw=raw)
        payload: dict[str, Any] = {"resize": resize, **_image_payload(images)}
        if explain:
            payload["params"] = params or {}
            if target is not None:
                payload["target"] = target
        return self.request("POST", path, body=json.dumps(payload).encode(), content_type="application/json", raw=raw)

    # ---- HTTP

    def request(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None,
                query: dict[str, str] | None = None, raw: bool = False) -> Any:
        """The decoded JSON answer (``raw``: the body's bytes); a 4xx/5xx raises ``ServiceError``."""
        url = self.prefix + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.retries_on_busy + 1):
            status, resp_headers, data = self._send(method, url, body, headers)
            if status == 503 and attempt < self.retries_on_busy:
                time.sleep(_retry_after(resp_headers) or 1.0)
                continue
            if raw and 200 <= status < 300:
                return data
            return _decode(status, resp_headers, data)
        raise AssertionError("unreachable")

    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]):
        for attempt in range(2):  # a kept-alive connection the server closed: reconnect once
            conn = self._connection()
            try:
                conn.request(method, url, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.close()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "ExplainClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _retry_after(headers: dict[str, str]) -> float | None:
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _decode(status: int, headers: dict[str, str], data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data) if data else {}
    except json.JSONDecodeError:
        body = {"error": {"code": "http", "message": data.decode("utf-8", "replace")[:500]}}
    if 200 <= status < 300:
        return body
    err = body.get("error", {}) if isinstance(body, dict) else {}
    raise ServiceError(status, str(err.get("code", "http")), str(err.get("message", body)), _retry_after(headers))


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return "application/octet-stream"


def _read(image: str | os.PathLike | bytes) -> tuple[bytes, str]:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image), _sniff(bytes(image))
    p = Path(image)
    data = p.read_bytes()
    return data, CONTENT_TYPES.get(p.suffix.lower()) or _sniff(data)


def _single_encoded(images: Any) -> tuple[bytes, str] | None:
    if isinstance(images, (str, os.PathLike, bytes, bytearray)):
        return _read(images)
    return None


def _image_payload(images: Any) -> dict[str, Any]:
    """JSON for several encoded images (base64) or for arrays (a tensor)."""
    if hasattr(images, "tolist") and hasattr(images, "shape"):
        return {"tensor": images.tolist()}
    items = list(images)
    if items and all(hasattr(i, "shape") for i in items):
        return {"tensor": [i.tolist() for i in items]}
    return {"images": [base64.b64encode(_read(i)[0]).decode("ascii") for i in items]}


# --------------------------------------------------------------------------- the command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interp-ray explain --url",
                                description="Ask a running interp-ray service to explain (or classify) images.")
    p.add_argument("images", nargs="*", help="image files (PNG, JPEG, …)")
    p.add_argument("--url", required=True, help=f"the service, e.g. {DEFAULT_URL}")
    p.add_argument("--method", help="explanation method (see --list-methods)")
    p.add_argument("--target", help="class to explain: an integer, or one per image comma-separated")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a method parameter (VALUE read as JSON when it parses), repeatable")
    p.add_argument("--params", help="the method parameters as one JSON object")
    p.add_argument("--resize", action="store_true", help="resize images to the model's input size")
    p.add_argument("--async", dest="asynchronous", action="store_true", help="submit a job and wait for its result")
    p.add_argument("--predict", action="store_true", help="classify instead of explaining")
    p.add_argument("--list-methods", action="store_true", help="print the methods served and exit")
    p.add_argument("--token-env", default=TOKEN_ENV, help="environment variable with the bearer token")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for an answer (or a job)")
    p.add_argument("--output", "-o", help="write the JSON answer here instead of stdout")
    p.add_argument("--saliency-dir", help="also write each saliency map as a grayscale PNG here")
    return p


def parse_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = json.loads(args.params) if args.params else {}
    if not isinstance(params, dict):
        raise ValueError("--params must be a JSON object")
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param takes KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def parse_target(text: str | None) -> int | list[int] | None:
    if text is None:
        return None
    values = [int(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def write_saliency(result: dict[str, Any], directory: str, names: Sequence[str]) -> list[str]:
    import numpy as np
    from PIL import Image

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, e in enumerate(result.get("explanations", [])):
        if e.get("saliency") is None:
            continue
        m = np.clip(np.asarray(e["saliency"], dtype=np.float32), 0, 1)
        path = out / f"{Path(names[i]).stem if i < len(names) else i}.{result['method']}.png"
        Image.fromarray((m * 255).round().astype(np.uint8), mode="L").save(path)
        written.append(str(path))
    return written


def run(args: argparse.Namespace) -> dict[str, Any]:
    client = ExplainClient(args.url, timeout=args.timeout, token_env=args.token_env, retries_on_busy=3)
    with client:
        if args.list_methods:
            return client.methods()
        if not args.images:
            raise ValueError("give one or more image files")
        images: Any = args.images[0] if len(args.images) == 1 else args.images
        if args.predict:
            return client.predict(images, resize=args.resize)
        if not args.method:
            raise ValueError("--method is required (or --predict / --list-methods)")
        return client.explain(images, args.method, target=parse_target(args.target), params=parse_params(args),
                              resize=args.resize, asynchronous=args.asynchronous, wait_timeout=args.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = run(args)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CLIENT if 400 <= e.status < 500 else EXIT_SERVER
    except (ValueError, FileNotFoundError) as e:  # bad arguments, a missing image file
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CLIENT
    except OSError as e:  # connection refused or reset, timeouts: the service, not the request
        print(f"error: {e}", file=sys.stderr)
        return EXIT_SERVER
    text = json.dumps(result, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    if args.saliency_dir and "explanations" in result:
        for path in write_saliency(result, args.saliency_dir, args.images):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
