"""Faults and hostile inputs against the real daemon, at sizes that fit `make test`.

The scenarios live in bench/faults.py and bench/hostile.py, which run them at full size
(`.venv/bin/python bench/faults.py`); here each one runs small and must report no problem.
tests/test_daemon.py has the single kill -9, the single SIGTERM and two daemons; these go
further: repeated random kills, four daemons, slow and `cp` writers, a full and a read-only
outbox (tmpfs), an inotify queue overflow and the hostile-input list, all in one batch.

Root is needed for the tmpfs and inotify cases (mount, /proc/sys/fs/inotify); they are
skipped otherwise. pandas is not a dependency: set DIGITD_PANDAS_PYTHON to an interpreter
that has it (e.g. a throwaway venv) to add the pandas parse to the hostile-input check.
"""

from __future__ import annotations

import os

import pytest

from faults import (
    crash_after_filing,
    inotify_flood,
    kill9_storm,
    outbox_full,
    outbox_readonly,
    shared_inbox,
    slow_writers,
)
from hostile import hostile_inputs

pytestmark = pytest.mark.slow
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, /proc/sys)")


def check(outcome):
    print(outcome.line())
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.ok, outcome.line()
    return outcome


def test_kill9_at_random_moments_then_at_the_filing_crash_point(tmp_path):
    # Paced (8 s of dropping): an unpaced 1,200 files are done in about a second.
    outcome = check(kill9_storm(tmp_path, files=1200, kills=3, seed=11, rate=150))
    assert outcome.figures["kills_mid_burst"] >= 1, "no kill landed mid-burst"
    # Then a deterministic crash point on the same outbox: kill -9 between filing a batch's
    # last input and removing its work folder. The restart used to redo the (now empty)
    # batch and replace results/<batch>.json with no items.
    check(crash_after_filing(tmp_path))


def test_four_daemons_on_one_inbox_count_every_file_once(tmp_path):
    outcome = check(shared_inbox(tmp_path, files=400, daemons=4))
    assert len(outcome.figures["share"]) >= 2, "only one daemon did any work"


def test_slow_writers_and_cp_are_never_read_half_written(tmp_path):
    check(slow_writers(tmp_path, slow=4, copies=3, seconds=3.2, chunks=16))


@root_only
def test_full_outbox_keeps_inputs_backs_off_and_finishes_when_space_returns(tmp_path):
    outcome = check(outbox_full(tmp_path, files=300, size="4m", leave_kb=320))
    assert outcome.figures["outbox_errors"] >= 1
    assert "No space left on device" in outcome.figures["errors"]


@root_only
def test_read_only_outbox_then_writable_and_sigterm_while_backing_off(tmp_path):
    outcome = check(outbox_readonly(tmp_path, files=180))
    assert outcome.figures["sigterm_exit"] == 0


@root_only
def test_more_files_than_the_inotify_queue_holds(tmp_path):
    outcome = check(inotify_flood(tmp_path, files=3000, queue_limit=64))
    assert outcome.figures["overflow_logged"], "the queue did not overflow: nothing tested"


def test_hostile_inputs_mixed_with_good_files_in_one_batch(tmp_path):
    outcome = check(hostile_inputs(tmp_path))
    assert outcome.figures["batches"] == 1
    if "pandas-absent" in outcome.figures["csv"]:
        print("pandas not installed: parsed with csv only (set DIGITD_PANDAS_PYTHON)")


def test_a_rejected_input_with_a_250_byte_name_can_be_filed(tmp_path):
    """The filing step alone (no daemon). It used to raise ENAMETOOLONG (the temp name of the
    .error.json was longer than NAME_MAX), which the daemon retried forever as an outbox error:
    one such input stalled everything (fixed in bc340f9)."""
    from datetime import datetime, timezone

    from digitd.codes import Status
    from digitd.config import OutputConfig
    from digitd.outputs import Outbox
    from digitd.result import Result

    name = "b" * 246 + ".png"
    source = tmp_path / name
    source.write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut short")
    outbox = Outbox(tmp_path / "outbox", OutputConfig(), tmp_path / "aside")
    outbox.prepare()
    now = datetime.now(timezone.utc)
    result = Result(
        id="20261125T000000000Z-0123456789ab", file=name, status=Status.REJECTED, digit=None,
        confidence=None, sha256="", batch="b", received_at=now, processed_at=now, model="m",
        preview="", error="truncated", message="cut short", probabilities=None, source=source,
    )  # fmt: skip
    outbox.file_input(result)
    assert not source.exists()
    errors = list((tmp_path / "outbox" / "failed").glob("*.error.json"))
    assert len(errors) == 1

