"""`digitd run`: inbox -> batches -> recognition -> outbox, as a systemd notify service.

Data moves one way through three stages, each a thread, with bounded queues between them:

1. main: the watcher finds complete files, the batcher cuts batches, the work folder claims
   them, and a thread pool starts taking them in (digitd.intake) -> a ReadJob;
2. recogniser: the model runs once per batch, previews are rendered and written on the pool
   -> a WriteJob;
3. writer: the batch JSON, the CSV rows (the commit) and the filing of inputs, in the order
   of digitd.commit, which crash recovery follows too.

So the model's work on one batch overlaps the claiming and decoding of the next and the disk
waits of the previous. An outbox error (disk full, read-only, permissions) keeps the batch in
hand and retries with back-off; the queues fill and the main loop stops claiming, so new
inputs stay in the inbox.

With `processes` above 1 (the default on a machine with several cores), `digitd run` is a
supervisor (digitd.supervisor; digitd.run decides) whose worker processes each run one such
daemon on the inbox.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import structlog

from digitd import ctc
from digitd.batcher import Batcher
from digitd.claims import Batch, Claimed, WorkFolder
from digitd.codes import ExitCode, Status
from digitd.commit import Delivery, deliver, plan_recovery
from digitd.config import Config, cpu_cores
from digitd.intake import Intake, take_in
from digitd.model import ModelError, load_classifier
from digitd.notify import Notifier
from digitd.outputs import Outbox, OutboxError
from digitd.reader import Reading, read_all
from digitd.reload import ModelReloader, Serving, model_name, needs_restart
from digitd.result import Result, printable_name
from digitd.run import ONE_PROCESS, WorkerId
from digitd.watcher import Arrival, InboxWatcher

log = structlog.get_logger("digitd")

STATUS_EVERY_S = 1.0
MAX_WAIT_SLICE_S = 0.25  # the longest the loop sleeps, so signals are seen promptly
QUEUE_DEPTH = 2  # batches a stage may run ahead of the next


@dataclass
class ReadJob:
    """Stage 1 -> 2: a claimed batch whose inputs are being read and normalised."""

    batch: Batch
    waited_s: float  # from the first input's arrival to the claim
    started: float  # monotonic time the reads were started
    reads: list[Future]  # each gives a list of Intake, in the batch's order


@dataclass
class WriteJob:
    """Stage 2 -> 3: a recognised batch whose previews are being written."""

    batch: Batch
    results: list[Result]
    previews: list[Future]  # each gives, per result, the PNG its write failed for, or None
    timings: dict[str, float]
    recognised_at: float  # monotonic
    serving: Serving  # the models that answered the whole batch (a reload swaps between batches)


@dataclass
class _Counts:
    ok: int = 0
    low_confidence: int = 0
    rejected: int = 0

    def add(self, results: list[Result]) -> None:
        for r in results:
            setattr(self, r.status.value, getattr(self, r.status.value) + 1)

    @property
    def total(self) -> int:
        return self.ok + self.low_confidence + self.rejected


class Daemon:
    """Holds the daemon's parts; `run()` returns the process exit code."""

    def __init__(self, config: Config, worker: WorkerId = ONE_PROCESS,
                 reread: Callable[[], Config] | None = None) -> None:
        self.config = config
        self._reread = reread or (lambda: config)  # the configuration, read again on SIGHUP
        self.notifier = Notifier()
        self.work = WorkFolder(config.inbox)
        self.outbox = Outbox(config.outbox, config.outputs, self.work.aside,
                             config.review.audit_share)
        self.watcher = InboxWatcher(config.inbox, config.watch, share=worker)
        self.batcher: Batcher[Arrival] = Batcher(
            config.batch.max_size, config.batch.max_wait_ms / 1000
        )
        processes = worker.count
        self.supervised = processes > 1  # a worker: its notify messages go to the supervisor
        # A worker process gets its share of the cores, for its threads and TensorFlow's.
        self.model_threads = max(1, cpu_cores() // processes) if processes > 1 else None
        self.threads = config.batch.threads or max(1, cpu_cores() // processes)
        self.pool = ThreadPoolExecutor(self.threads)
        self._to_recogniser: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._to_writer: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._recogniser = threading.Thread(
            target=self._recognise_loop, name="recogniser", daemon=True
        )
        self._writer = threading.Thread(target=self._write_loop, name="writer", daemon=True)
        self._outbox_failing = False  # the writer is backing off from an outbox error
        self.counts = _Counts()
        self.stopping = False
        # the model and threshold: each batch takes them once; a reload swaps them between
        self.serving: Serving | None = None
        self.reloader = ModelReloader(self._load_configured_model, self._install,
                                      self._notify_with_counts, lambda: self.serving)
        self._next_ping = 0.0
        self._next_status = 0.0

    # -- life cycle ---------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # A reload asked for while starting is done once started (it may name a newer model).
        signal.signal(signal.SIGHUP, lambda signum, frame: self.reloader.request())
        started = time.monotonic()
        try:
            self._start()
        except (OSError, OutboxError, ModelError) as exc:
            log.error("start_failed", error=str(exc))
            self.notifier.send(STATUS=f"Failed to start: {exc}")
            return ExitCode.FAILURE
        log.info(
            "ready",
            inbox=str(self.config.inbox),
            outbox=str(self.config.outbox),
            model=self.classifier.model_id,
            runtime=self.classifier.runtime,
            min_confidence=self.serving.min_confidence,
            number_model=self.serving.numbers and self.serving.numbers.model_id,
            instance=self.work.instance,
            seconds=round(time.monotonic() - started, 2),
        )
        self.notifier.send(READY=1, STATUS=self._status())
        try:
            self._loop()
        finally:
            self.notifier.send(STOPPING=1, STATUS="Stopping")
            if not self.watcher.stop():
                log.warning("watcher_stop_timeout", hint="watchdog's observer did not stop")
            self._to_recogniser.put(None)  # each stage drains its queue, then passes it on
            self._recogniser.join()
            self._writer.join()
            self.work.close()
            self.pool.shutdown()
            log.info("stopped", processed=self.counts.total)
            self.notifier.send(STATUS="Stopped", **self._counts_field())  # the final counts
            self.notifier.close()  # STOPPING=1 goes out before the process exits
        return ExitCode.OK

    def _on_signal(self, signum: int, frame) -> None:
        if not self.stopping:
            log.info("stopping", signal=signal.Signals(signum).name)
        self.stopping = True

    def _start(self) -> None:
        """Folders, lock, model (loaded and warmed), then whatever a crash left behind."""
        import cv2

        cv2.setNumThreads(1)  # the pool gives the parallelism; avoid oversubscription
        self.config.inbox.mkdir(parents=True, exist_ok=True)
        self.outbox.prepare()
        if os.stat(self.config.inbox).st_dev != os.stat(self.config.outbox).st_dev:
            log.warning(
                "outbox_on_another_filesystem",
                hint="inputs are filed by copy, fsync and delete instead of a rename; put "
                "inbox and outbox on one filesystem (under systemd: one ReadWritePaths= "
                "entry for their common parent)",
            )
        self.work.open()
        self.serving = Serving(self._load_model(self.config.model), self.config.min_confidence,
                               self._load_numbers(self.config.number_model))
        self._recogniser.start()
        self._writer.start()
        self._recover()
        self.watcher.start()

    def _load_model(self, path):
        """Load and warm a model (None: the shipped one); a TensorFlow fallback is said once,
        when the model is loaded (at start, or by a reload)."""
        classifier = load_classifier(path, threads=self.model_threads)
        if classifier.fallback:
            log.warning("model_fallback", served=str(classifier.served),
                        reason=classifier.fallback, runtime="tensorflow")
        classifier.warm_up(self.config.batch.max_size)
        return classifier

    @property
    def classifier(self):
        return self.serving.classifier

    def _load_numbers(self, path):
        """The number model at `path` (None: the shipped one), warmed; None with `recognise:
        digit` (read at start only), or (said once) when the shipped one cannot be served:
        numbers are then read by segmentation alone. A named one that cannot be loaded
        raises."""
        if self.config.recognise == "digit":
            return None
        numbers, why = ctc.load_configured(path, threads=self.model_threads)
        if numbers is None:
            log.warning("number_model_unavailable", error=why,
                        hint="numbers are read by segmentation alone")
            return None
        if numbers.fallback:
            log.warning("model_fallback", served=str(numbers.served), reason=numbers.fallback,
                        runtime="tensorflow")
        numbers.warm_up(16)
        return numbers

    def _load_configured_model(self) -> Serving:
        """The reload's work, on its own thread: the model and min_confidence the
        configuration names now and its number model, loaded and warmed (any failure raises,
        and the old ones keep serving). Other changed settings are named: they need a restart."""
        config = self._reread()
        ignored = needs_restart(self.config, config)
        if ignored:
            log.warning("reload_needs_restart", settings=ignored,
                        hint="a reload applies model, number_model and min_confidence only; "
                        "restart digitd for the others")
        return Serving(self._load_model(config.model), config.min_confidence,
                       self._load_numbers(config.number_model))

    def _install(self, serving: Serving) -> None:
        self.serving = serving  # the next batch takes it; batches under way keep theirs

    def _recover(self) -> None:
        """Finish batches this daemon's earlier run, or any dead daemon, left in hand."""
        redo, finish = plan_recovery(self.work, self.outbox)
        for batch in redo:
            self._submit(batch, waited_s=0.0)
        for delivery in finish:
            finished = self._retrying(
                delivery.batch.id, lambda d=delivery: deliver(d, self.work, self.outbox)
            )
            if finished:
                log.info("refiled", batch=delivery.batch.id, files=len(delivery.results))

    # -- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        max_size = self.config.batch.max_size
        while not self.stopping:
            now = time.monotonic()
            self._housekeeping(now)
            want = 2 * max_size - len(self.batcher)
            if want > 0:
                self.batcher.add(self.watcher.poll(now, want))
            arrivals = self.batcher.take(time.monotonic())
            if arrivals:
                self._claim_and_process(arrivals)
                continue
            deadlines = [self.watcher.next_deadline(), self._next_ping, self._next_status]
            if self.batcher.deadline() is not None:
                deadlines.append(self.batcher.deadline())
            timeout = min(deadlines) - time.monotonic()
            self.watcher.wait(min(MAX_WAIT_SLICE_S, max(0.0, timeout)))

    def _housekeeping(self, now: float) -> None:
        self.reloader.poll()
        interval = self.notifier.watchdog_interval_s
        if interval is not None and now >= self._next_ping:
            self.notifier.send(WATCHDOG=1)
            self._next_ping = now + interval
        elif interval is None:
            self._next_ping = now + 3600
        if now >= self._next_status:
            self.notifier.send(STATUS=self._status(), **self._counts_field())
            self._next_status = now + STATUS_EVERY_S

    def _notify_with_counts(self, **fields) -> None:
        self.notifier.send(**fields, **self._counts_field())

    def _counts_field(self) -> dict[str, str]:
        """X_DIGITD_COUNTS=<ok> <low> <rejected> <waiting>, for a supervisor to sum up."""
        if not self.supervised:
            return {}
        c = self.counts
        return {"X_DIGITD_COUNTS": f"{c.ok} {c.low_confidence} {c.rejected} {len(self.batcher)}",
                "X_DIGITD_MODEL": model_name(self.classifier)}

    def _status(self) -> str:
        c = self.counts
        return (
            f"{c.total} processed ({c.ok} ok, {c.low_confidence} low confidence, "
            f"{c.rejected} rejected); {len(self.batcher)} waiting; "
            f"model {model_name(self.classifier)}"
        )

    def _claim_and_process(self, arrivals: list[Arrival]) -> None:
        waited = time.monotonic() - arrivals[0].ready_at
        names = [a.name for a in arrivals]
        batch = self.work.claim(names, {a.name: a.received_at for a in arrivals})
        for name in names:
            self.watcher.release(name)
        if not batch.items:  # another daemon sharing the inbox took them all first
            self.work.finish(batch)
            return
        self._submit(batch, waited)

    # -- one batch, stage by stage --------------------------------------------------------

    def _submit(self, batch: Batch, waited_s: float) -> None:
        """Stage 1 (main thread): start reading and normalising on the pool."""
        t0 = time.monotonic()
        reads = self._map_async(self._take_in, batch.items)
        self._put(self._to_recogniser, ReadJob(batch, waited_s, t0, reads))

    def _recognise_loop(self) -> None:
        """Stage 2 thread: recognise batches in order, then tell the writer to finish."""
        while (job := self._to_recogniser.get()) is not None:
            try:
                self._recognise(job)
            except Exception:  # never lose the thread: the batch stays claimed for a restart
                log.exception("recognise_failed", batch=job.batch.id)
        self._to_writer.put(None)

    def _recognise(self, job: ReadJob) -> None:
        """Stage 2: run the model once on the batch; start the previews on the pool."""
        intakes: list[Intake] = [value for future in job.reads for value in future.result()]
        serving = self.serving  # this batch's model and threshold, whatever a reload does
        classifier = serving.classifier
        t1 = time.monotonic()
        good = [i for i, intake in enumerate(intakes) if intake.ok]
        readings: list = [(None, None)] * len(intakes)
        numbers = serving.numbers.predict if serving.numbers is not None else None
        answers = read_all([(intakes[i].model_input, intakes[i].line) for i in good],
                           classifier.predict, self.config.recognise, numbers,
                           sure=serving.min_confidence, second=ctc.second_of(serving.numbers))
        for i, answer in zip(good, answers, strict=True):
            readings[i] = answer
        t2 = time.monotonic()
        processed_at = datetime.now(timezone.utc)
        results = [
            self._result(job.batch, item, intake, probs, number, processed_at, serving)
            for item, intake, (probs, number) in zip(job.batch.items, intakes, readings,
                                                     strict=True)
        ]
        previews = self._start_previews(results, intakes)
        timings = {"wait_ms": job.waited_s * 1000, "decode_ms": (t1 - job.started) * 1000}
        timings["infer_ms"] = (t2 - t1) * 1000
        self._put(self._to_writer,
                  WriteJob(job.batch, results, previews, timings, t2, serving))

    def _map_async(self, function, items) -> list[Future]:
        """Start `function` over `items` on the pool, one task per thread (not one per item);
        returns the futures, each giving a list of results in order."""
        items = list(items)
        size = max(1, -(-len(items) // self.threads))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        return [self.pool.submit(lambda chunk: [function(i) for i in chunk], c) for c in chunks]

    def _put(self, stage: queue.Queue, job: ReadJob | WriteJob) -> None:
        """Queue a batch for the next stage, keeping the watchdog fed while it waits. If the
        daemon is stopping while the outbox fails, the batch is left claimed in the work
        folder, where the next start finishes it."""
        while True:
            try:
                stage.put(job, timeout=MAX_WAIT_SLICE_S)
                return
            except queue.Full:
                self._housekeeping(time.monotonic())
                if self.stopping and self._outbox_failing:
                    log.warning("batch_left_for_restart", batch=job.batch.id)
                    return

    def _write_loop(self) -> None:
        """The writer thread: deliver batches in the order they were recognised."""
        while (job := self._to_writer.get()) is not None:
            try:
                self._write(job)
            except Exception:  # never lose the thread: the batch stays claimed for a restart
                log.exception("deliver_failed", batch=job.batch.id)

    def _take_in(self, item: Claimed) -> Intake:
        """Read one claimed entry and normalise it (on the pool); failures are reason codes."""
        intake = take_in(item.path, self.config.max_pixels, self.config.recognise)
        if intake.crash is not None:
            log.error("decode_crashed", file=printable_name(item.name), exc_info=intake.crash)
        return intake

    def _result(self, batch: Batch, item: Claimed, intake: Intake, probs: np.ndarray | None,
                number: Reading | None, processed_at: datetime, serving: Serving) -> Result:
        identity = dict(
            id=item.id,
            file=item.name,
            sha256=intake.sha256,
            batch=batch.id,
            received_at=item.received_at,
            processed_at=processed_at,
            model=serving.model_id,
            source=item.path,
        )
        if not intake.ok:
            return Result.rejected(intake.error, intake.message, **identity)
        preview = f"previews/{item.id}.png" if self.config.outputs.previews else ""
        if number is not None:
            return Result.number(number, serving.min_confidence, preview=preview, **identity)
        return Result.recognised(probs, serving.min_confidence, preview=preview, **identity)

    def _start_previews(self, results: list[Result], intakes: list[Intake]) -> list[Future]:
        """Start rendering and writing the previews on the pool, so the recogniser can move
        on to the next batch. Each future gives, per result, the PNG that could not be written
        (an outbox error: the writer retries it before the commit), or None."""
        from digitd.preview import render_preview

        def render_and_write(pair: tuple[Result, Intake]) -> bytes | None:
            result, intake = pair
            if not result.preview:
                return None
            png = render_preview(intake.image, None if result.parts else intake.whole,
                                 result.digits, result.confidence, parts=result.parts)
            try:
                self.outbox.write_preview(result, png)
            except OSError:
                return png  # the writer retries it with back-off, and logs why
            return None

        return self._map_async(render_and_write, zip(results, intakes, strict=True))

    def _write(self, job: WriteJob) -> None:
        """Stage 3 (writer thread): deliver the batch by the commit protocol."""
        unwritten = [png for future in job.previews for png in future.result()]
        job.timings["write_ms"] = (time.monotonic() - job.recognised_at) * 1000
        document = self._batch_document(job.batch, job.results, job.timings, job.serving)
        delivery = Delivery(job.batch, job.results, document, unwritten)
        if self._retrying(job.batch.id, lambda: deliver(delivery, self.work, self.outbox)):
            self._report(job.batch, job.results, job.timings)

    def _retrying(self, batch_id: str, action) -> bool:
        """Run `action` until it succeeds; on an outbox error, log it, back off, retry.

        Returns False if the daemon is stopped meanwhile: the batch then stays claimed in
        the work folder and the next start finishes it.
        """
        delay = self.config.retry.initial_s
        while True:
            try:
                action()
                self._outbox_failing = False
                return True
            except OSError as exc:
                self._outbox_failing = True
                log.error(
                    "outbox_error",
                    batch=batch_id,
                    error=exc.strerror or str(exc),
                    path=exc.filename,
                    retry_in_s=delay,
                )
                self.notifier.send(STATUS=f"Outbox error: {exc.strerror}; retrying in {delay:g}s")
                if not self._sleep(delay):
                    log.warning("batch_left_for_restart", batch=batch_id)
                    return False
                delay = min(delay * 2, self.config.retry.max_s)

    def _batch_document(self, batch: Batch, results: list[Result], timings: dict,
                        serving: Serving) -> dict:
        classifier, numbers = serving.classifier, serving.numbers
        card = classifier.card
        summary = {
            "id": classifier.model_id,
            "arch": card.get("arch"),
            "parameters": card.get("parameters"),
            "test_accuracy": card.get("test", {}).get("accuracy"),
            "created_at": card.get("created_at"),
            "second_opinion": classifier.second.model_id if classifier.second else None,
            "served": classifier.served.name,  # the .tflite (LiteRT) or the .keras (fallback)
            "precision": (card.get("tflite", {}).get("precision")
                          if classifier.runtime == "litert" else "float32"),
        }
        document = {
            "batch": batch.id,
            "instance": self.work.instance,
            "recovered": batch.recovered,
            "model": summary,
            "timings_ms": {k: round(v, 3) for k, v in timings.items()},
            "items": [r.batch_item() for r in results],
        }
        if numbers is not None:  # numbers' strings and confidences are its
            document["number_model"] = {
                "id": numbers.model_id,
                "runtime": numbers.runtime,
                "temperature": numbers.card.get("calibration", {}).get("temperature"),
                "created_at": numbers.card.get("created_at")}
            if numbers.second_reading is not None:  # consulted where it is unsure
                document["number_model"]["second_id"] = numbers.second_reading.model_id
        return document

    def _report(self, batch: Batch, results: list[Result], timings: dict) -> None:
        self.counts.add(results)
        for r in results:
            if r.status == Status.REJECTED:
                name = printable_name(r.file)
                log.warning("rejected", file=name, id=r.id, reason=r.error, message=r.message)
        log.info(
            "batch",
            batch=batch.id,
            files=len(results),
            ok=sum(r.status == Status.OK for r in results),
            low_confidence=sum(r.status == Status.LOW_CONFIDENCE for r in results),
            rejected=sum(r.status == Status.REJECTED for r in results),
            **{k: round(v, 2) for k, v in timings.items()},
        )

    def _sleep(self, seconds: float) -> bool:
        """Sleep in slices, pinging the watchdog; False if a stop was asked for meanwhile."""
        end = time.monotonic() + seconds
        while not self.stopping:
            now = time.monotonic()
            if now >= end:
                return True
            self._housekeeping(now)
            time.sleep(min(MAX_WAIT_SLICE_S, end - now))
        return False
