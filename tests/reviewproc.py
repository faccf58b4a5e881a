"""Drive `digitd review` as a subprocess on a real outbox written by the real daemon."""

from __future__ import annotations

import csv
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness import DaemonProcess, drop, png_bytes, sample_digits


def make_outbox(root: Path, n: int = 40, **config) -> Path:
    """Run the daemon on `n` sample digits, half of them damaged (the right part erased) so
    that the model is unsure of some; returns the outbox."""
    config = {"processes": 1, "min_confidence": 0.999, **config}
    daemon = DaemonProcess(root, **config).start()
    try:
        daemon.wait_ready(120)
        x, y = sample_digits(n)
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            image = image.copy()
            if i % 2:
                image[:, 14 + i % 5 :] = 0
            drop(daemon.inbox, f"d{i:02d}-{label}.png", png_bytes(image))
        daemon.wait_rows(n)
        assert daemon.stop() == 0
    finally:
        daemon.close()
    return daemon.outbox


def make_number_outbox(root: Path, n: int = 16) -> tuple[Path, dict[str, str]]:
    """Run the daemon with `recognise: number` on `n` numbers (bench/number_scans.py, 2-8
    sample digits each, on paper); min_confidence 0.9999, so most have a doubtful digit.
    Returns the outbox and {file name: the true string}."""
    import number_scans

    daemon = DaemonProcess(root, processes=1, min_confidence=0.9999, recognise="number").start()
    truth = {}
    try:
        daemon.wait_ready(120)
        x, y = sample_digits(300)
        for i in range(n):
            data, text, _ = number_scans.render_number(x, y, i, seed=7, flavour="paper_grey",
                                                       decorations=())
            name = f"n{i:02d}-{text}.png"
            drop(daemon.inbox, name, data)
            truth[name] = text
        daemon.wait_rows(n)
        assert daemon.stop() == 0
    finally:
        daemon.close()
    return daemon.outbox, truth


def copy_outbox(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


class ReviewServer:
    """One `digitd review` subprocess on 127.0.0.1 and a free port."""

    def __init__(self, outbox: Path, *args: str, config: Path | None = None) -> None:
        self.outbox = outbox
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "digitd", "review", "--outbox", str(outbox),
                   "--listen", f"127.0.0.1:{self.port}", *args]
        if config is not None:
            command += ["--config", str(config)]
        self.log_path = outbox.parent / f"review-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the process lifetime
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self.token = ""

    def wait_ready(self, timeout: float = 30.0) -> ReviewServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"review exited {self.proc.returncode}: {self.log()}")
            try:
                status, page = self.request("GET", "/")
            except OSError:
                time.sleep(0.1)
                continue
            assert status == 200
            self.token = re.search(r'name="digitd-token" content="([^"]+)"', page).group(1)
            return self
        raise AssertionError(f"review not serving within {timeout}s: {self.log()}")

    def request(self, method: str, path: str, body: object = None, token: str | None = None,
                headers: dict | None = None) -> tuple[int, object]:
        """(status, parsed JSON or text). `token` None sends the page's token."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        sent = self.token if token is None else token
        if sent:
            request.add_header("X-Digitd-Token", sent)
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw, kind = response.status, response.read(), response.headers
        except urllib.error.HTTPError as exc:
            status, raw, kind = exc.code, exc.read(), exc.headers
        if "json" in (kind.get("content-type") or ""):
            return status, json.loads(raw)
        if "image" in (kind.get("content-type") or ""):
            return status, raw
        return status, raw.decode("utf-8", "replace")

    def queue(self, **params) -> dict:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        status, answer = self.request("GET", f"/api/queue?{query}")
        assert status == 200, answer
        return answer

    def verdict(self, item_id: str, verdict: str, label=None, **extra) -> tuple[int, object]:
        body = {"id": item_id, "verdict": verdict, **extra}
        if label is not None:
            body["label"] = label
        return self.request("POST", "/api/verdict", body)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
