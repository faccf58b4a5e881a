"""The commit protocol: the one order in which a batch's results leave the daemon, so that a
crash at any point loses nothing and counts nothing twice.

    1. write the outputs named by id: previews, results/<batch>.json (idempotent: rewritten
       whole if the batch is redone)
    2. make the claims durable: the manifest, which holds each input's id (WorkFolder)
    3. append the batch's rows to results.csv in one fsynced write: THE COMMIT
    4. file the inputs into processed/ or failed/ (idempotent: a filed input is skipped)
    5. finish the batch: drop its work folder

`deliver()` runs the steps a `Delivery` has not done yet; after an outbox error it is simply
called again (the daemon retries with back-off) and resumes where it stopped: the commit is
made once. Crash recovery (`plan_recovery`) decides where each batch left in the work folder
resumes: without rows in results.csv it is redone from the start (same ids); with all its
rows it is delivered from step 4, its Results read back from those rows; with some of them
(a kill -9 cut the CSV write) the inputs without a row are split off into a batch of their
own and redone, the others delivered from step 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from digitd.claims import Batch, WorkFolder
from digitd.outputs import Outbox
from digitd.result import Result

log = structlog.get_logger("digitd")


@dataclass
class Delivery:
    """One batch on its way out, and how far it got."""

    batch: Batch
    results: list[Result]
    document: dict | None = None  # results/<batch>.json; None: written before (recovery)
    previews: list[bytes | None] = field(default_factory=list)  # PNGs still to be written
    committed: bool = False  # its rows are in results.csv

    @classmethod
    def recovered(cls, batch: Batch, results: list[Result]) -> Delivery:
        """A batch whose rows were committed before a crash: only filing and finishing."""
        return cls(batch, results, committed=True)


def deliver(delivery: Delivery, work: WorkFolder, outbox: Outbox) -> None:
    """Run the steps not yet done, in order. Raises OSError on an outbox error: call again."""
    for i, png in enumerate(delivery.previews):
        if png is not None:  # its first write (on the pool) failed
            outbox.write_preview(delivery.results[i], png)
            delivery.previews[i] = None
    if not delivery.committed:
        if delivery.document is not None:
            outbox.write_batch_json(delivery.batch.id, delivery.document)
        work.make_durable(delivery.batch)
        outbox.append_csv(delivery.results)
        delivery.committed = True
    for result in delivery.results:
        outbox.file_input(result)
    work.finish(delivery.batch)


def plan_recovery(work: WorkFolder, outbox: Outbox) -> tuple[list[Batch], list[Delivery]]:
    """Adopt dead daemons' batches; return (batches to redo, deliveries to finish)."""
    adopted = work.adopt_orphans()
    leftovers = work.leftovers()
    if not leftovers:
        return [], []
    committed = outbox.committed_rows()
    log.info("recovering", batches=len(leftovers), adopted=adopted)
    redo: list[Batch] = []
    finish: list[Delivery] = []
    for batch in leftovers:
        done = [item for item in batch.items if item.id in committed]
        todo = [item for item in batch.items if item.id not in committed]
        if todo and not done:
            redo.append(batch)
            continue
        if todo:  # a kill cut the batch's CSV write short: redo only the rows missing
            split = work.split(batch, todo)
            outbox.trim_batch_json(batch.id, {item.id for item in done})
            log.warning("partial_commit", batch=batch.id, committed=len(done), redo=split.id)
            redo.append(split)
        # All filed before the crash (no items): finishing it must not redo it, which
        # would blank its JSON.
        results = [Result.from_row(committed[item.id], item, batch.id) for item in done]
        finish.append(Delivery.recovered(batch, results))
    return redo, finish
