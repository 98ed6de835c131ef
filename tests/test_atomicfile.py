"""Two files written side by side: the second is in place only once the first is, and no temporary file stays."""

from __future__ import annotations

import pytest

from editbatch.atomicfile import write_both


def test_both_files_are_written(tmp_path):
    write_both((tmp_path / "a.png", b"image"), (tmp_path / "a.json", "{}\n"))
    assert (tmp_path / "a.png").read_bytes() == b"image" and (tmp_path / "a.json").read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.png"]


def test_the_second_is_not_in_place_when_the_first_failed(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        write_both((tmp_path / "gone" / "a.png", b"image"), (tmp_path / "a.json", "{}\n"))
    assert caught.value.filename == str(tmp_path / "gone" / "a.png")  # the file asked for, not its temporary name
    assert list(tmp_path.iterdir()) == []


def test_an_error_on_the_second_names_it(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        write_both((tmp_path / "a.png", b"image"), (tmp_path / "gone" / "a.json", "{}\n"))
    assert caught.value.filename == str(tmp_path / "gone" / "a.json")
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # the caller discards what it no longer wants
