"""The work folder on its own (real files in a temp folder): claims, manifests, finishing,
adopting a dead daemon's batches, and its layout."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from digitd.claims import MANIFEST, WorkFolder, set_aside_root, work_root
from digitd.fsutil import make_folder, temporary_name

NOW = datetime(2026, 11, 30, 12, 0, 0, 123000, tzinfo=timezone.utc)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def put(inbox: Path, *names: str) -> list[str]:
    for name in names:
        (inbox / name).write_bytes(name.encode())
    return list(names)


def opened(inbox: Path) -> WorkFolder:
    work = WorkFolder(inbox)
    work.open()
    return work


def test_layout_lives_inside_the_inbox(inbox):
    work = opened(inbox)
    assert work.root == work_root(inbox) == inbox / ".digitd" / "work"
    assert work.aside == set_aside_root(inbox) == inbox / ".digitd" / "rejected"
    assert work.path.parent == work.root and (work.path / ".lock").is_file()
    assert not [p for p in work.root.iterdir() if p.name.startswith(".")]  # built, renamed


def test_claim_moves_each_name_once_and_writes_the_manifest(inbox):
    work = opened(inbox)
    names = put(inbox, "a.png", "b.png")
    batch = work.claim([*names, "a.png", "gone.png"], dict.fromkeys([*names, "gone.png"], NOW))
    assert [c.name for c in batch.items] == ["a.png", "b.png"]  # unique, the vanished left out
    assert not (inbox / "a.png").exists() and (batch.path / "a.png").read_bytes() == b"a.png"
    manifest = json.loads((batch.path / MANIFEST).read_bytes())
    assert manifest["batch"] == batch.id
    assert [i["id"] for i in manifest["items"]] == [c.id for c in batch.items]
    assert len({c.id for c in batch.items}) == 2


def test_two_work_folders_never_claim_the_same_file(inbox):
    first, second = opened(inbox), opened(inbox)
    names = put(inbox, *(f"{i}.png" for i in range(50)))
    received = dict.fromkeys(names, NOW)
    a = first.claim(names[::2] + names[1::2], received)
    b = second.claim(names, received)  # everything is gone already
    taken = [c.name for c in a.items] + [c.name for c in b.items]
    assert sorted(taken) == sorted(names)
    assert b.items == ()


def test_finish_drops_the_batch_folder_and_close_the_instance(inbox):
    work = opened(inbox)
    batch = work.claim(put(inbox, "a.png"), {"a.png": NOW})
    work.make_durable(batch)
    os.rename(batch.items[0].path, inbox / "filed.png")  # as the outbox would file it
    work.finish(batch)
    assert not batch.path.exists()
    work.close()
    assert not work.path.exists()


def test_finish_removes_entries_that_could_not_be_filed_and_close_keeps_leftovers(inbox):
    work = opened(inbox)
    done = work.claim(put(inbox, "a.png"), {"a.png": NOW})
    work.finish(done)  # its input still there: removed with the folder
    assert not done.path.exists()
    kept = work.claim(put(inbox, "b.png"), {"b.png": NOW})
    work.close()  # a batch still in hand: the folder stays for the next start
    assert kept.path.is_dir()


def test_leftovers_come_back_from_their_manifest(inbox):
    work = opened(inbox)
    batch = work.claim(put(inbox, "a.png", "b.png", "c.png"), dict.fromkeys(
        ["a.png", "b.png", "c.png"], NOW))
    os.unlink(batch.items[1].path)  # filed before a crash
    (left,) = work.leftovers()
    assert left.recovered and left.id == batch.id
    assert [(c.id, c.name, c.received_at) for c in left.items] == [
        (c.id, c.name, NOW) for c in (batch.items[0], batch.items[2])
    ]


def test_a_batch_folder_without_manifest_gets_one_and_new_ids(inbox):
    work = opened(inbox)
    folder = work.path / "20261130T000000000Z-000000000000"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"x")
    (folder / temporary_name()).write_bytes(b"half a manifest")  # a crash mid-write
    (left,) = work.leftovers()
    assert [c.name for c in left.items] == ["x.png"]
    assert json.loads((folder / MANIFEST).read_bytes())["items"][0]["id"] == left.items[0].id


def test_split_moves_some_inputs_to_a_batch_of_their_own_keeping_their_ids(inbox):
    work = opened(inbox)
    batch = work.claim(put(inbox, "a.png", "b.png"), dict.fromkeys(["a.png", "b.png"], NOW))
    redo = work.split(batch, [batch.items[1]])
    assert redo.id != batch.id and redo.recovered
    assert [(c.id, c.name) for c in redo.items] == [(batch.items[1].id, "b.png")]
    assert (redo.path / "b.png").is_file() and not batch.items[1].path.exists()
    assert json.loads((redo.path / MANIFEST).read_bytes())["items"][0]["id"] == redo.items[0].id


def test_a_dead_daemons_batches_are_adopted_a_live_ones_are_not(inbox):
    live, dead = opened(inbox), opened(inbox)
    dead_batch = dead.claim(put(inbox, "d.png"), {"d.png": NOW})
    live.claim(put(inbox, "l.png"), {"l.png": NOW})
    os.close(dead._lock_fd)  # the dead daemon's lock is released, as by its death
    dead._lock_fd = None
    me = opened(inbox)
    assert me.adopt_orphans() == 1
    assert not dead.path.exists() and live.path.is_dir()
    (adopted,) = me.leftovers()
    assert adopted.id == dead_batch.id and [c.name for c in adopted.items] == ["d.png"]


def test_a_batchs_ids_are_unique_and_share_the_claims_time(inbox):
    import re

    from digitd.review.index import ID_PATTERN

    work = opened(inbox)
    names = [f"{i}.png" for i in range(50)]
    batch = work.claim(put(inbox, *names), dict.fromkeys(names, NOW))
    ids = [batch.id] + [c.id for c in batch.items]
    assert len(set(ids)) == 51 and all(ID_PATTERN.fullmatch(i) for i in ids)
    assert all(re.fullmatch(r"\d{8}T\d{9}Z-[0-9a-f]{12}", i) for i in ids)
    assert len({i.split("-")[0] for i in ids}) == 1  # one time, read once per batch
    later = work.claim(put(inbox, "z.png"), {"z.png": NOW})
    assert later.id[:19] >= batch.id[:19]  # time-sortable


def test_make_folder_makes_parents_and_says_why_it_cannot(tmp_path):
    assert make_folder(tmp_path / "a" / "b") is None and (tmp_path / "a" / "b").is_dir()
    assert make_folder(tmp_path / "a" / "b") is None  # already there
    (tmp_path / "file").write_text("x")
    problem = make_folder(tmp_path / "file" / "sub")
    assert problem == f"{tmp_path / 'file' / 'sub'}: cannot create (Not a directory)"
