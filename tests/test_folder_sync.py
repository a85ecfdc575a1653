"""A trial folder copied from where it runs to the driver's logs/ (the Ray executor's path for
clusters without a shared file system), with real files: appends, replaced files, large files
over several messages, and paths that must never be written."""

from __future__ import annotations

import os

import pytest

from torchtune_hp.executors.folder_sync import Chunk, FolderSender, UnsafeChunk, apply_chunks


def _sync(sender: FolderSender, dest, budget: int = 1 << 20) -> int:
    """Send until nothing is left; the number of messages it took."""
    messages = 0
    while True:
        chunks, complete = sender.changes(budget)
        apply_chunks(dest, chunks)
        messages += 1
        if complete:
            return messages


def _tree(root) -> dict[str, bytes]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_appends_travel_as_new_bytes_and_the_copy_equals_the_source(tmp_path):
    src, dest = tmp_path / "node", tmp_path / "driver"
    src.mkdir()
    dest.mkdir()
    sender = FolderSender(src)
    (src / "stdout.log").write_text("epoch 0\n")
    (src / "runs" / "exp").mkdir(parents=True)
    (src / "runs" / "exp" / "events.out.tfevents.1").write_bytes(b"\x00" * 100)
    _sync(sender, dest)
    with open(src / "stdout.log", "a") as f:
        f.write("epoch 1\n")
    chunks, complete = sender.changes()
    assert complete and [(c.path, c.offset, c.data) for c in chunks] == [
        ("stdout.log", 8, b"epoch 1\n")
    ]
    apply_chunks(dest, chunks)
    assert sender.changes() == ([], True)  # nothing changed: nothing sent
    (src / "result.json.tmp").write_text('{"value": 2}')
    os.replace(src / "result.json.tmp", src / "result.json")  # replaced whole
    (src / "small.txt").write_text("long text")
    _sync(sender, dest)
    (src / "small.txt").write_text("short")  # shrunk: sent again whole
    _sync(sender, dest)
    assert _tree(dest) == _tree(src)


def test_a_large_file_travels_over_several_messages(tmp_path):
    src, dest = tmp_path / "node", tmp_path / "driver"
    src.mkdir()
    dest.mkdir()
    data = os.urandom(250_000)
    (src / "model.ckpt").write_bytes(data)
    assert _sync(FolderSender(src), dest, budget=100_000) == 3
    assert (dest / "model.ckpt").read_bytes() == data


def test_links_are_not_copied_and_no_chunk_writes_outside_the_trial_folder(tmp_path):
    src, dest = tmp_path / "node", tmp_path / "driver"
    src.mkdir()
    dest.mkdir()
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", src / "link")
    assert FolderSender(src).changes() == ([], True)
    for path in ("../escape", "/etc/passwd", "running/x", "hparams/events"):
        with pytest.raises(UnsafeChunk):
            apply_chunks(dest, [Chunk(path, 0, b"x")])
    os.symlink(tmp_path, dest / "out")
    with pytest.raises(UnsafeChunk):
        apply_chunks(dest, [Chunk("out/file", 0, b"x")])
    os.symlink(tmp_path / "target", dest / "planted")
    with pytest.raises(OSError):
        apply_chunks(dest, [Chunk("planted", 0, b"x")])
    assert not (tmp_path / "target").exists() and not (tmp_path / "file").exists()
