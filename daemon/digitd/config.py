"""Configuration: typed dataclasses, loaded from YAML and validated strictly.

The dataclass defaults are the built-in configuration, so `digitd run` works with no file;
`config.yaml` at the repository root documents the same values key by key. Unknown keys and
bad values are refused with the file, the key and what is wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from digitd.codes import ExitCode


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class WatchConfig:
    observer: str = "inotify"  # "inotify" (local disks) or "polling" (NFS/SMB shares)
    poll_interval_s: float = 1.0  # the polling observer's period
    rescan_interval_s: float = 2.0  # full listing of the inbox: the source of truth
    settle_ms: int = 200  # size unchanged this long, with IEND at the end, makes a file complete
    incomplete_after_s: float = 10.0  # unchanged this long without IEND: taken anyway (rejected)
    patterns: tuple[str, ...] = ("*.png",)  # matched case-insensitively
    ignore: tuple[str, ...] = (".*", "*.part", "*.tmp", "~*")


@dataclass(frozen=True)
class BatchConfig:
    max_size: int = 64  # a batch closes when it holds this many files...
    max_wait_ms: float = 10.0  # ...or when its oldest file has waited this long
    threads: int = 0  # decode/preview threads per worker process; 0: cores / processes (>= 1)


@dataclass(frozen=True)
class OutputConfig:
    previews: bool = True  # write outbox/previews/<id>.png
    review: bool = True  # copy low-confidence previews into outbox/review/
    inputs: str = "move"  # "move" processed inputs to outbox/processed/, or "delete" them


@dataclass(frozen=True)
class RetryConfig:
    initial_s: float = 0.5  # first back-off after a disk-full or permission error on the outbox
    max_s: float = 30.0  # back-off doubles up to this


@dataclass(frozen=True)
class ReviewConfig:
    listen: str = "127.0.0.1:8750"  # `digitd review`'s HOST:PORT; 127.0.0.1: this machine only
    audit_share: float = 0.01  # share of `ok` results also offered for review (an audit)
    reviewer: str = ""  # name written with each verdict; "": the user running digitd review


@dataclass(frozen=True)
class LogConfig:
    format: str = "auto"  # "auto": console lines on a terminal, JSON lines otherwise
    level: str = "info"


@dataclass(frozen=True)
class Config:
    inbox: Path = Path("inbox")
    outbox: Path = Path("outbox")
    model: Path | None = None  # a .keras file (its .tflite is served); None: the shipped one
    number_model: Path | None = None  # a digitd-numbers.keras (digitd train --arch numbers)
    min_confidence: float = 0.99  # below this a result is "low_confidence" and goes to review
    recognise: str = "auto"  # "digit": one digit per image; "number": a line of digits; "auto"
    max_pixels: int = 40_000_000  # larger declared PNG sizes are rejected without decoding
    processes: int = 0  # worker processes, each a whole pipeline; 0 means one per CPU core
    watch: WatchConfig = field(default_factory=WatchConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    outputs: OutputConfig = field(default_factory=OutputConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    log: LogConfig = field(default_factory=LogConfig)


# Keys renamed since they were documented: old key path -> new key. The old name is still
# accepted (a file may give one or the other, not both).
_RENAMED = {"batch.workers": "batch.threads"}  # "worker" is a process; these are threads

# Value checks beyond the type: key path -> (predicate, what it must be).
_CHECKS: dict[str, tuple[typing.Callable[[typing.Any], bool], str]] = {
    "min_confidence": (lambda v: 0.0 <= v <= 1.0, "a number from 0 to 1"),
    "max_pixels": (lambda v: v > 0, "a positive whole number"),
    "recognise": (lambda v: v in ("auto", "digit", "number"), '"auto", "digit" or "number"'),
    "watch.observer": (lambda v: v in ("inotify", "polling"), '"inotify" or "polling"'),
    "watch.poll_interval_s": (lambda v: v > 0, "a positive number of seconds"),
    "watch.rescan_interval_s": (lambda v: v > 0, "a positive number of seconds"),
    "watch.settle_ms": (lambda v: v >= 0, "zero or more milliseconds"),
    "watch.incomplete_after_s": (lambda v: v > 0, "a positive number of seconds"),
    "watch.patterns": (lambda v: len(v) > 0, "a non-empty list of file name patterns"),
    "batch.max_size": (lambda v: 1 <= v <= 1024, "a whole number from 1 to 1024"),
    "batch.max_wait_ms": (lambda v: 0 <= v <= 60_000, "0 to 60000 milliseconds"),
    "processes": (lambda v: 0 <= v <= 64, "0 (one per CPU core) to 64"),
    "batch.threads": (lambda v: 0 <= v <= 256, "0 (cores / processes) to 256"),
    "outputs.inputs": (lambda v: v in ("move", "delete"), '"move" or "delete"'),
    "retry.initial_s": (lambda v: v > 0, "a positive number of seconds"),
    "retry.max_s": (lambda v: v > 0, "a positive number of seconds"),
    "review.listen": (lambda v: parse_listen(v) is not None, "HOST:PORT, e.g. 127.0.0.1:8750"),
    "review.audit_share": (lambda v: 0.0 <= v <= 1.0, "a share from 0 to 1"),
    "log.format": (lambda v: v in ("auto", "json", "console"), '"auto", "json" or "console"'),
    "log.level": (
        lambda v: v in ("debug", "info", "warning", "error"),
        '"debug", "info", "warning" or "error"',
    ),
}


def load_config(
    path: str | os.PathLike | None = None,
    *,
    inbox: str | os.PathLike | None = None,
    outbox: str | os.PathLike | None = None,
) -> Config:
    """Read and validate `path` (None: the built-in defaults), then apply CLI overrides.

    Relative paths in a file are taken relative to that file's folder, so a config keeps
    working whatever the current directory; overrides are relative to the current directory.
    """
    if path is None:
        config = Config()
    else:
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" (line {where.line + 1})" if where else ""
            raise ConfigError(f"{source}{line}: not valid YAML: {exc}") from None
        raw = {} if raw is None else raw
        config = _build(Config, raw, source, prefix="")
        config = _resolve_paths(config, source.parent)
    if inbox is not None:
        config = dataclasses.replace(config, inbox=Path(inbox))
    if outbox is not None:
        config = dataclasses.replace(config, outbox=Path(outbox))
    return config


def command_config(args: argparse.Namespace) -> Config:
    """What a one-shot command (`predict`, `evaluate`) runs with: the daemon's configuration
    (--config, else the built-in one) with the command's --model, --number-model,
    --min-confidence and --recognise, where given, in its place."""
    config = load_config(getattr(args, "config", None))
    overrides: dict[str, typing.Any] = {}
    if getattr(args, "model", None):
        overrides["model"] = Path(args.model)
    if getattr(args, "number_model", None):
        overrides["number_model"] = Path(args.number_model)
    if getattr(args, "min_confidence", None) is not None:
        overrides["min_confidence"] = args.min_confidence
    if getattr(args, "recognise", None):
        overrides["recognise"] = args.recognise
    return dataclasses.replace(config, **overrides)


def _build(cls: type, raw: typing.Any, source: Path, prefix: str):
    """Turn a YAML mapping into dataclass `cls`, refusing unknown keys and wrong types."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping of keys, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    raw = _renamed_keys(raw, source, prefix)
    for key in raw:
        if key not in known:
            choices = ", ".join(sorted(known))
            raise ConfigError(f"{source}: {prefix}{key}: unknown key (known here: {choices})")
    values = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value if value is not None else {}, source, name + ".")
        else:
            values[key] = _coerce(value, hint, source, name)
            check = _CHECKS.get(name)
            if check is not None and values[key] is not None and not check[0](values[key]):
                raise ConfigError(f"{source}: {name}: must be {check[1]}, got {value!r}")
    return cls(**values)


def _renamed_keys(raw: dict, source: Path, prefix: str) -> dict:
    """`raw` with the old names of renamed keys (_RENAMED) turned into the new ones."""
    raw = dict(raw)
    for old, new in _RENAMED.items():
        old_prefix, _, old_key = old.rpartition(".")
        new_key = new.rpartition(".")[2]
        if prefix.rstrip(".") != old_prefix or old_key not in raw:
            continue
        if new_key in raw:
            raise ConfigError(f"{source}: {old}: the old name of {new}; give only {new}")
        raw[new_key] = raw.pop(old_key)
    return raw


def _coerce(value: typing.Any, hint: typing.Any, source: Path, name: str):
    """Check `value` against a field's type hint; return it in the field's Python type."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(hint)
    if optional:
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    wrong = ConfigError(f"{source}: {name}: expected {_describe(hint)}, got {_kind(value)}")
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise wrong
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise wrong
        return Path(value)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise wrong
        return tuple(value)
    raise wrong  # pragma: no cover - every field type is handled above


def _describe(hint: typing.Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    return {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        Path: "a path",
    }.get(hint, str(hint))


def _kind(value: typing.Any) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}" if not isinstance(value, dict) else "a mapping"


def parse_listen(value: str) -> tuple[str, int] | None:
    """"HOST:PORT" (IPv6 in brackets: "[::1]:8750") -> (host, port), or None if malformed."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def cpu_cores() -> int:
    """The CPU cores this process may run on (a service's CPUAffinity= counts)."""
    return len(os.sched_getaffinity(0)) or 1


def worker_processes(config: Config) -> int:
    """How many worker processes `digitd run` starts (`processes`, 0 meaning one per core)."""
    return config.processes or cpu_cores()


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    return dataclasses.replace(
        config,
        inbox=resolve(config.inbox),
        outbox=resolve(config.outbox),
        model=resolve(config.model),
        number_model=resolve(config.number_model),
    )


def check_command(args: argparse.Namespace) -> int:
    """`digitd check-config`: validate a file without running anything; the models it names
    (`model`, `number_model`) are loaded as the daemon would load them, so that a reload or
    a start does not find them missing, of the wrong kind or unservable."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"digitd: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    source = args.config or "built-in defaults"
    for key in ("model", "number_model"):
        if (why := _unservable(key, getattr(config, key))) is not None:
            print(f"digitd: {source}: {key}: {why}", file=sys.stderr)
            return ExitCode.USAGE
    print(f"{source}: ok (inbox {config.inbox}, outbox {config.outbox})")
    return ExitCode.OK


def _unservable(key: str, path: Path | None) -> str | None:
    """Why the model a configuration names under `key` cannot be served, or None (also when
    it names none: the shipped one)."""
    if path is None:
        return None
    from digitd import ctc
    from digitd.model import load_classifier

    try:
        (ctc.load if key == "number_model" else load_classifier)(path, threads=1)
    except Exception as exc:  # missing, truncated, not a model, the other kind
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None
