"""atomic_path: a target is either as it was or complete, never half-written."""

import pytest

from pplx_embed.atomic import atomic_path, write_text


def test_file_replaced_only_on_success(tmp_path):
    target = write_text(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind
    write_text(target, "new")
    assert target.read_text() == "new"


def test_directory_appears_whole_and_never_overwrites(tmp_path):
    with atomic_path(tmp_path / "ckpt", directory=True) as tmp:
        (tmp / "weights").write_text("w")
    assert (tmp_path / "ckpt" / "weights").read_text() == "w"
    with pytest.raises(FileExistsError):
        with atomic_path(tmp_path / "ckpt", directory=True) as tmp:
            (tmp / "weights").write_text("other")
    assert (tmp_path / "ckpt" / "weights").read_text() == "w"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
