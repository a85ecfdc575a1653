"""A trial folder copied from where it runs to the driver's logs/ (the Ray executor's path for
clusters without a shared file system), with real files: appends, replaced files, large files
over several messages, and paths that must never be written."""

from __future__ import annotations

import json
import os

from torchtune_hp.executors.folder_sync import Chunk, FolderSender, apply_chunks


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
    for n in range(2, 6):  # rewritten in place and longer each time (json.dump over the file)
        with open(src / "history.json", "w") as f:
            json.dump({"losses": [round(1 / (k + 1), 5) for k in range(n)]}, f)
        _sync(sender, dest)
        assert json.loads((dest / "history.json").read_text()) == {
            "losses": [round(1 / (k + 1), 5) for k in range(n)]
        }
    assert _tree(dest) == _tree(src)


def test_small_changes_are_not_held_back_by_a_large_file(tmp_path):
    src, dest = tmp_path / "node", tmp_path / "driver"
    src.mkdir()
    dest.mkdir()
    sender = FolderSender(src)
    (src / "a_checkpoint.bin").write_bytes(os.urandom(300_000))
    (src / "stdout.log").write_text("epoch 0\n")
    chunks, complete = sender.changes(budget=100_000)
    assert not complete and chunks[0].path == "stdout.log"
    apply_chunks(dest, chunks)
    with open(src / "stdout.log", "a") as f:
        f.write("epoch 1\n")
    chunks, _ = sender.changes(budget=100_000)
    assert chunks[0] == Chunk("stdout.log", 8, b"epoch 1\n")


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
        (problem,) = apply_chunks(dest, [Chunk(path, 0, b"x")])
        assert problem.startswith(f"a trial file may not be copied to {path!r}")
        assert ("holds the trial's TensorBoard rows" in problem) == (path[0] not in "./")
    os.symlink(tmp_path, dest / "out")
    (problem,) = apply_chunks(dest, [Chunk("out/file", 0, b"x")])
    assert problem == f"{dest / 'out'} is not a plain folder"
    os.symlink(tmp_path / "target", dest / "planted")
    (problem,) = apply_chunks(dest, [Chunk("planted", 0, b"x")])
    assert "Too many levels of symbolic links" in problem
    assert not (tmp_path / "target").exists() and not (tmp_path / "file").exists()


def test_a_file_that_may_not_be_copied_holds_back_none_beside_it(tmp_path):
    """A helper's Ray trial kept ``hparams/config.json`` in its folder: that one refused path
    dropped every chunk sent with it, its result.json among them, and the trial was recorded
    COMPLETE at its last report (0.9) instead of its result (0.1); later appends to the lost
    files were written at their offsets over a hole of NUL bytes."""
    src, dest = tmp_path / "node", tmp_path / "driver"
    (src / "hparams").mkdir(parents=True)
    dest.mkdir()
    (src / "hparams" / "config.json").write_text("{}")
    (src / "result.json").write_text('{"value": 0.1}')
    (src / "stdout.log").write_text("line 1\n")
    sender = FolderSender(src)
    chunks, done = sender.changes()
    assert done and {c.path for c in chunks} == {"hparams/config.json", "result.json", "stdout.log"}
    (problem,) = apply_chunks(dest, chunks)
    assert problem.startswith("a trial file may not be copied to 'hparams/config.json'")
    assert (dest / "result.json").read_text() == '{"value": 0.1}'
    with open(src / "stdout.log", "a") as f:
        f.write("line 2\n")
    assert apply_chunks(dest, sender.changes()[0]) == []
    assert (dest / "stdout.log").read_bytes() == b"line 1\nline 2\n"
    assert not (dest / "hparams").exists()
