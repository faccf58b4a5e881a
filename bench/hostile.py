"""Hostile and broken inputs, mixed with good files in ONE batch of one daemon run.

    .venv/bin/python bench/faults.py --only hostile_inputs,hostile_cross_fs

Bad inputs: zero-byte, truncated, corrupt CRC, text and a JPEG named .png, a PNG header
declaring 60000x60000, 1x1, all white, all black, fully transparent, a 6000x4000 photo-like
PNG, a symlink to a secret file outside the inbox, a FIFO, a directory named x.png, a file the
service cannot read, and bad files with hostile names. Good inputs with hostile names: spaces,
commas, quotes, a newline, non-ASCII, a byte that is not UTF-8, 250 bytes, `=cmd|...`.

Expected: one `rejected` row per bad input with its reason code, the input in failed/ beside
its .error.json; good files in the same batch recognised; the secret's content nowhere in the
outbox; the FIFO blocks nothing; results.csv parseable by Python's csv and by pandas.

Run as root, the daemon is started without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv),
so file permissions bind it as they bind a service user. Running it as `nobody` is not possible
on this machine: the venv's interpreter lives under /root (mode 0700).
"""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from digitd.claims import set_aside_root
from digitd.result import CSV_COLUMNS
from harness import (
    FAST,
    DaemonProcess,
    Outcome,
    RowCounter,
    Session,
    events,
    guard,
    png_bytes,
    read_rows,
    sample_digits,
    tmpfs,
    wait_count,
)
from pngwrite import bomb_png

SECRET = b"DIGITD-SECRET-MARKER-7f3a9c"
DROP_CAPS = "-dac_override,-dac_read_search"
_PHOTO: dict[str, bytes] = {}


class Unprivileged(DaemonProcess):
    """`digitd run` under setpriv without the capabilities that let root ignore file modes."""

    command_prefix = (
        ("setpriv", "--bounding-set", DROP_CAPS, "--inh-caps", DROP_CAPS, "--")
        if os.geteuid() == 0 else ()
    )


def encode(image: np.ndarray, level: int = 3) -> bytes:
    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, level])
    assert ok
    return buffer.tobytes()


def photo_png() -> bytes:
    """6000x4000 RGB, smooth gradients plus sensor-like noise: tens of MB, made once."""
    if "photo" not in _PHOTO:
        rng = np.random.default_rng(6000)
        y, x = np.mgrid[0:4000:8, 0:6000:8].astype(np.float32)
        base = np.stack([x / 24, y / 16, (x + y) / 40], axis=-1) % 256
        base = cv2.resize(base, (6000, 4000), interpolation=cv2.INTER_LINEAR)
        noise = rng.integers(-12, 13, (4000, 6000, 3), dtype=np.int16)
        image = np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        _PHOTO["photo"] = encode(image, level=1)
    return _PHOTO["photo"]


def corrupt_crc(data: bytes) -> bytes:
    """Flip one byte inside the first IDAT's data: its CRC no longer matches."""
    at = data.index(b"IDAT") + 8
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def build(inbox: Path, secret: Path, long_bad_name: bool = True,
          only_long_bad_name: bool = False) -> tuple[dict, dict, dict]:
    """Put everything in the inbox. Returns (good name -> bytes, bad name -> (bytes or None,
    expected reason or None when any rejection or low confidence is acceptable), labels)."""
    digits, labels = sample_digits(12, 123)
    good_names = [
        "with space.png", "a,b.png", 'say "hi" it\'s.png', "new\nline.png",
        "ünïcødé 数字.png", os.fsdecode(b"raw\xffbyte.png"), "g" * 246 + ".png",
        "=cmd|' -C calc'!A0.png", "good-0.png", "good-1.png", "good-2.png", "good-3.png",
    ]
    good = {n: png_bytes(digits[i]) for i, n in enumerate(good_names)}
    label = {n: int(labels[i]) for i, n in enumerate(good_names)}
    sample = png_bytes(digits[0])
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255 - digits[1][..., None]  # a digit, but alpha 0 everywhere
    jpeg = cv2.imencode(".jpg", 255 - digits[2])[1].tobytes()
    bad = {
        "empty.png": (b"", "empty"),
        "truncated.png": (sample[: len(sample) // 2], "truncated"),
        "crc.png": (corrupt_crc(sample), "corrupt"),
        "text.png": (b"Dear scanner, this is not an image.\n" * 20, "not_png"),
        "jpeg.png": (jpeg, "not_png"),
        "bomb.png": (bomb_png(), "too_large"),
        "one-pixel.png": (encode(np.full((1, 1), 0, np.uint8)), "no_ink"),
        "white.png": (encode(np.full((28, 28), 255, np.uint8)), "no_ink"),
        "black.png": (encode(np.zeros((28, 28), np.uint8)), "no_ink"),
        "transparent.png": (encode(rgba), "no_ink"),
        "photo.png": (None if only_long_bad_name else photo_png(), None),
        "=cmd|' -C calc'!bad.png": (b"=HYPERLINK(\"http://x\")\n", "not_png"),
        'bad, "quoted"\nname ü.png': (b"", "empty"),
        "b" * 246 + ".png": (sample[:40], "truncated"),
        "link.png": (None, "not_regular"),
        "pipe.png": (None, "not_regular"),
        "x.png": (None, "not_regular"),
        "locked.png": (sample, "unreadable"),
    }
    long_bad = "b" * 246 + ".png"
    if only_long_bad_name:
        good = {n: good[n] for n in ("good-0.png", "good-1.png")}
        bad = {long_bad: bad[long_bad]}
    elif not long_bad_name:
        del bad[long_bad]
    staging = inbox.parent / "staging"
    staging.mkdir(exist_ok=True)
    for i, (name, data) in enumerate([*good.items(), *((n, d) for n, (d, _) in bad.items())]):
        if data is None:
            continue
        tmp = staging / f"h{i}"
        tmp.write_bytes(data)
        if name == "locked.png":
            os.chmod(tmp, 0)  # owned by root, mode 000: the service cannot read it
        os.rename(tmp, inbox / name)
    if "link.png" in bad:
        os.symlink(secret, inbox / "link.png")
        os.mkfifo(inbox / "pipe.png")
        (inbox / "x.png").mkdir()
    return good, bad, label


def hostile_inputs(root: Path, model: Path | None = None, outbox_tmpfs: bool = False,
                   long_bad_name: bool = True, only_long_bad_name: bool = False,
                   **config) -> Outcome:
    """All of it in one batch: everything is in the inbox before the daemon starts, one
    worker process takes it (two, ready at the same moment, would each take their own share
    of the names), and a batch waits up to 3 s, longer than the 1 s after which incomplete
    files are taken."""
    out = Outcome("hostile_cross_fs" if outbox_tmpfs else "hostile_inputs")
    if outbox_tmpfs and os.geteuid() != 0:
        out.skipped = "needs root (mount)"
        return out
    from digitd.result import printable_name, spreadsheet_safe

    secret = root / "secret.txt"
    secret.write_bytes(SECRET + b"\n")
    settings = {**FAST, "processes": 1, "batch": {"max_size": 64, "max_wait_ms": 3000},
                **config}
    mount = tmpfs(root / "outbox", "512m") if outbox_tmpfs else _nothing()
    with mount, Session(root, model, settings) as s:
        s.inbox.mkdir(exist_ok=True)
        good, bad, label = build(s.inbox, secret, long_bad_name, only_long_bad_name)
        expected = len(good) + len(bad)
        d = s.daemon(cls=Unprivileged).start()
        ready = guard(out, d.wait_ready, 300)
        t0 = time.monotonic()
        if ready:
            guard(out, wait_count, RowCounter(s.outbox), expected, 60, [d])
        all_rows_s = time.monotonic() - t0
        time.sleep(0.5)
        alive = d.proc.poll() is None
        code = d.stop()
        rows = read_rows(s.outbox)
        shown = {spreadsheet_safe(printable_name(n)): n for n in [*good, *bad]}
        by_name: dict[str, list[dict]] = {}
        for r in rows:
            by_name.setdefault(shown.get(r["file"], r["file"]), []).append(r)
        wrong = []
        for name, (_, reason) in bad.items():
            got = by_name.get(name, [])
            if len(got) != 1:
                wrong.append(f"{name[:20]!r}: {len(got)} rows")
                continue
            r = got[0]
            if reason is None:
                out.figures["photo"] = r["error"] or r["status"]
                if r["status"] == "ok":
                    wrong.append(f"photo recognised as {r['digit']} with {r['confidence']}")
            elif (r["status"], r["error"]) != ("rejected", reason):
                wrong.append(f"{name[:20]!r}: {r['status']}/{r['error']} not {reason}")
            if r["status"] == "rejected" and r["digit"]:
                wrong.append(f"{name[:20]!r}: rejected with a digit")
        correct = 0
        for name in good:
            got = by_name.get(name, [])
            if len(got) != 1 or got[0]["status"] not in ("ok", "low_confidence"):
                wrong.append(f"good {name[:20]!r}: {[(g['status'], g['error']) for g in got]}")
            elif int(got[0]["digit"]) == label[name]:
                correct += 1
        if wrong:
            out.problems.append("rows: " + "; ".join(wrong))
        # failed/: each rejected input beside an .error.json naming it and its reason.
        errors, kept_at = {}, set()
        for path in (s.outbox / "failed").glob("*.error.json"):
            doc = json.loads(path.read_bytes())
            errors[doc["file"]] = (doc["error"], path.name[: -len(".error.json")],
                                   doc.get("kept_at"))
            if doc.get("kept_at"):
                kept_at.add(os.path.basename(doc["kept_at"]))
        not_filed = []
        for name, (_, reason) in bad.items():
            if reason is None and by_name.get(name, [{}])[0].get("status") != "rejected":
                continue
            entry = errors.get(printable_name(name))
            if entry is None or (reason and entry[0] != reason):
                not_filed.append(f"{name[:20]!r}: error.json {entry}")
            elif entry[2] is not None:
                # Set aside in the inbox (cannot be copied across filesystems), or nothing
                # to keep (a FIFO): the error.json says where, and it must be true.
                if entry[2] and not os.path.lexists(entry[2]):
                    not_filed.append(f"{name[:20]!r}: kept_at {entry[2]} does not exist")
                out.figures.setdefault("set_aside", []).append(name[:12])
            elif not os.path.lexists(s.outbox / "failed" / entry[1]):
                not_filed.append(f"{name[:20]!r} not in failed/")
        processed = os.listdir(s.outbox / "processed") if (s.outbox / "processed").exists() else []
        renamed = 0
        for name in good:
            ids = [r["id"] for r in by_name.get(name, [])]
            if (s.outbox / "processed" / name).is_file():
                continue
            if ids and any(ids[0] in p for p in processed):
                renamed += 1  # filed under <stem>.<id>.png (long names: see RELIABILITY.md)
            else:
                not_filed.append(f"good {name[:20]!r} not in processed/")
        out.figures["renamed_in_processed"] = renamed
        if not_filed:
            out.problems.append("filing: " + "; ".join(not_filed))
        leaks = secret_leaks(s.outbox) + [
            p.name for p in s.root.glob("daemon-*.log") if SECRET in p.read_bytes()
        ]
        if leaks:
            out.problems.append(f"secret content found in {leaks}")
        parsed = parse_csv(s.outbox / "results.csv", len(rows))
        if parsed.startswith("error"):
            out.problems.append(parsed)
        left_in_inbox = sorted(n for n in os.listdir(s.inbox) if n != ".digitd")
        aside = set_aside_root(s.inbox)
        set_aside = sorted(os.listdir(aside)) if aside.exists() else []
        if left_in_inbox:
            out.problems.append(f"left in the inbox: {left_in_inbox}")
        unexplained = sorted(set(set_aside) - kept_at)
        if unexplained:
            out.problems.append(f"in .digitd/rejected without an error.json: {unexplained}")
        if not alive or code != 0:
            out.problems.append(f"daemon alive={alive} exit={code}")
        out.figures.update(
            inputs=expected, rows=len(rows), batches=len({r["batch"] for r in rows}),
            rejected=sum(r["status"] == "rejected" for r in rows),
            good_correct=f"{correct}/{len(good)}", all_rows_s=all_rows_s,
            outbox_errors=sum(1 for e in events(s.procs) if e.get("event") == "outbox_error"),
            secret_leaks=len(leaks), csv=parsed, exit=code,
        )
        if len({r["batch"] for r in rows}) != 1:
            out.problems.append("the inputs did not share one batch")
    return out


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def secret_leaks(outbox: Path) -> list[str]:
    """Regular files in the outbox (links are not followed) that hold the secret's bytes."""
    found = []
    for folder, _, names in os.walk(outbox):
        for name in names:
            path = os.path.join(folder, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as f:
                    if SECRET in f.read():
                        found.append(os.path.relpath(path, outbox))
    return found


def parse_csv(path: Path, n_rows: int) -> str:
    """Parse with csv (always) and pandas (here, or in DIGITD_PANDAS_PYTHON's environment)."""
    with open(path, encoding="utf-8", newline="") as f:
        table = list(csv.reader(f))
    if len(table) != n_rows + 1 or any(len(row) != len(CSV_COLUMNS) for row in table):
        widths = sorted({len(r) for r in table})
        return f"error: csv.reader sees {len(table)} lines, widths {widths}"
    script = (
        "import sys, pandas as pd\n"
        "df = pd.read_csv(sys.argv[1], dtype=str, keep_default_na=False)\n"
        "print(len(df), len(df.columns), pd.__version__)\n"
    )
    python = os.environ.get("DIGITD_PANDAS_PYTHON", sys.executable)
    try:
        done = subprocess.run([python, "-c", script, str(path)], capture_output=True, text=True)
    except OSError:
        return "csv-ok,pandas-absent"
    if done.returncode != 0:
        if "No module named 'pandas'" in done.stderr:
            return "csv-ok,pandas-absent"
        return f"error: pandas: {done.stderr.strip().splitlines()[-1]}"
    n, width, version = done.stdout.split()
    if int(n) != n_rows or int(width) != len(CSV_COLUMNS):
        return f"error: pandas sees {n} rows x {width} columns"
    return f"csv-ok,pandas-{version}-ok"
