"""Hot reload: SIGHUP (`systemctl reload digitd`) swaps the models and the threshold without
a restart.

The signal only raises a flag. The daemon's loop then starts a thread that reads the
configuration file again, loads the models it names and warms them up, while the old ones
keep answering. What a reload applies is RELOADED: the model and `min_confidence`, which
belong together (a new model comes with its own operating point), and the number model
(`number_model`: one fine-tuned on reviewers' corrections, say); every other setting
(folders, processes, batch, watch, outputs, recognise, log, review) is read at start only,
and a reload that finds one changed says so in a `reload_needs_restart` warning.

The new models and threshold are handed over together (a `Serving`) by one assignment: each
batch takes them once when its recognition starts and keeps them for its rows and its batch
JSON, so batches switch between one batch and the next, none is answered by two models or
two thresholds, and no input waits or is answered twice. A model that is missing or cannot
be loaded (the shipped number model aside: without it numbers are read by segmentation
alone, as at start), or a configuration that no longer parses, is refused with a
`reload_failed` event, and the old models and threshold keep serving.

systemd hears RELOADING=1 (with MONOTONIC_USEC=, as sd_notify(3) asks) when the reload
starts and READY=1 when it is over, with STATUS= naming the model then served.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("digitd")


RELOADED = ("model", "min_confidence", "number_model")  # the keys a reload applies


@dataclass(frozen=True)
class Serving:
    """What answers a batch: a loaded classifier, the threshold for its status and the
    number model (digitd.ctc; None: numbers are read by segmentation alone, or not at all
    with `recognise: digit`)."""

    classifier: Any
    min_confidence: float
    numbers: Any = None

    @property
    def path(self) -> Path:
        return self.classifier.path

    @property
    def model_id(self) -> str:
        return self.classifier.model_id


def needs_restart(running: Any, reread: Any) -> list[str]:
    """The top-level configuration keys that differ between the running configuration and
    the one read again, other than RELOADED: a reload does not apply them."""
    return [f.name for f in fields(running)
            if f.name not in RELOADED and getattr(running, f.name) != getattr(reread, f.name)]


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: the MONOTONIC_USEC= systemd wants with RELOADING=1."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def model_name(classifier: Any) -> str:
    """How STATUS= and the logs name a model: its file name and the start of its id."""
    return f"{Path(classifier.path).name} ({classifier.model_id[:12]})"


class ModelReloader:
    """Loads the configured model in the background when asked; `install` swaps it in.

    `load()` returns a Serving (a loaded, warmed classifier and its threshold; raising on any
    failure); `install(s)` makes it the one the next batch takes; `notify(**fields)` speaks
    to the service manager; `current()` is the Serving in use.
    """

    def __init__(self, load: Callable[[], Any], install: Callable[[Any], None],
                 notify: Callable[..., None], current: Callable[[], Any]) -> None:
        self._load = load
        self._install = install
        self._notify = notify
        self._current = current
        self._requested = threading.Event()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Ask for a reload (safe in a signal handler: it only sets a flag)."""
        self._requested.set()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poll(self) -> None:
        """From the daemon's loop: start the reload asked for, unless one is running (a
        request made meanwhile is served when it ends)."""
        if self._requested.is_set() and not self.busy:
            self._requested.clear()
            self._notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec(),
                         STATUS=f"Reloading; serving {model_name(self._current())}")
            self._thread = threading.Thread(target=self._reload, name="reload", daemon=True)
            self._thread.start()

    def _reload(self) -> None:
        old = self._current()
        started = time.monotonic()
        log.info("reloading", model=model_name(old))
        try:
            new = self._load()
        except Exception as exc:  # missing, truncated, not a model, bad configuration...
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("reload_failed", error=reason, serving=model_name(old))
            self._notify(READY=1, STATUS=f"Reload failed ({reason}); serving {model_name(old)}")
            return
        self._install(new)
        log.info("reloaded", model=model_name(new), previous=model_name(old),
                 min_confidence=new.min_confidence, previous_min_confidence=old.min_confidence,
                 number_model=new.numbers and model_name(new.numbers),
                 previous_number_model=old.numbers and model_name(old.numbers),
                 runtime=getattr(new.classifier, "runtime", None),
                 seconds=round(time.monotonic() - started, 2))
        self._notify(READY=1, STATUS=f"Reloaded; serving {model_name(new)}")
