"""The folder store's race paths, made to happen on cue: a wipe (drop_results) or a delete lands
between put_result's making of results/ and its write, as often as a test asks; another worker
stores the same bytes between put_image's check and its rename."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from faceapp.errors import FaceappError
from faceapp.store import FileStore, Guarded, image_id_for

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


@pytest.fixture
def stored(tmp_path):
    """A folder store holding one image; its id and bytes."""
    store = FileStore(str(tmp_path / "store"))
    image_id = image_id_for(PNG)
    assert store.put_image(image_id, PNG, {"n": 1})
    return store, image_id


def _before_each_write(monkeypatch, store: FileStore, actions: list) -> list:
    """Run actions[i] just before the i-th atomic write (then plain writes); the paths written.

    A write that keeps failing forever is a hang; the hook stops it after 50 tries instead.
    """
    real, written = store._atomic_write, []

    def write(path, data):
        assert len(written) < 50, "put_result never stops retrying"
        if len(written) < len(actions):
            actions[len(written)]()
        written.append(path)
        return real(path, data)

    monkeypatch.setattr(store, "_atomic_write", write)
    return written


def test_put_result_outlasts_any_number_of_wipes_landing_mid_write(stored, monkeypatch):
    store, image_id = stored
    store.put_result(image_id, "old", {"r": 0})
    wipes = [lambda: store.drop_results(image_id)] * 5  # more than a fixed retry count allows
    written = _before_each_write(monkeypatch, store, wipes)
    store.put_result(image_id, "k", {"r": 1})
    assert len(written) == 6
    assert store.get_result(image_id, "k") == {"r": 1}
    assert store.get_result(image_id, "old") is None  # the wipes did drop what was there
    assert os.listdir(store.scratch) == []  # each retired results/ and each temp file went
    assert store.get_meta(image_id) == {"n": 1} and store.get_image(image_id) == PNG


def test_put_result_through_the_app_wrapper_is_no_outage_when_wipes_race_it(stored, monkeypatch):
    store, image_id = stored
    _before_each_write(monkeypatch, store, [lambda: store.drop_results(image_id)] * 4)
    Guarded(store).put_result(image_id, "k", {"r": 1})  # would be 503 store.unavailable
    assert store.get_result(image_id, "k") == {"r": 1}


def test_a_delete_after_a_wipe_mid_write_is_not_found_and_leaves_no_husk(stored, monkeypatch):
    store, image_id = stored
    actions = [lambda: store.drop_results(image_id), lambda: store.delete(image_id)]
    _before_each_write(monkeypatch, store, actions)
    with pytest.raises(FaceappError) as caught:
        store.put_result(image_id, "k", {"r": 1})
    assert caught.value.code == "image_id.not_found"
    monkeypatch.undo()
    assert not os.path.exists(store._dir(image_id))
    assert store.put_image(image_id, PNG, {"n": 2}) is True  # stored again, whole
    assert store.get_result(image_id, "k") is None and store.get_meta(image_id) == {"n": 2}


def test_put_result_on_a_store_without_its_scratch_folder_is_an_outage(stored, monkeypatch):
    """A missing scratch folder makes every write fail: that is the disk, not a race to retry."""
    store, image_id = stored
    shutil.rmtree(store.scratch)
    written = _before_each_write(monkeypatch, store, [])
    with pytest.raises(OSError) as caught:
        store.put_result(image_id, "k", {"r": 1})
    assert store.is_outage(caught.value) and len(written) == 1
    with pytest.raises(FaceappError) as wrapped:
        Guarded(store).put_result(image_id, "k", {"r": 1})
    assert wrapped.value.code == "store.unavailable"
    assert store.get_result(image_id, "k") is None


def test_a_put_that_loses_the_race_for_the_same_bytes_is_false_and_changes_nothing(
    tmp_path, monkeypatch
):
    store = FileStore(str(tmp_path / "store"))
    image_id = image_id_for(PNG)
    real, raced = tempfile.mkdtemp, []

    def mkdtemp(*args, **kwargs):
        if not raced:  # another worker stores the same bytes just after this put's check
            raced.append(True)
            assert store.put_image(image_id, PNG, {"by": "first"}, {"face-0.jpg": b"first"})
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    assert store.put_image(image_id, PNG, {"by": "second"}, {"face-0.jpg": b"second"}) is False
    assert raced and store.get_meta(image_id) == {"by": "first"}
    assert store.get_part(image_id, "face-0.jpg") == b"first" and store.get_image(image_id) == PNG
    assert os.listdir(store.scratch) == []  # the loser's staging folder went


def test_put_result_that_never_lands_gives_up_as_an_outage_not_a_hung_thread(stored, monkeypatch):
    """Wipes landing before every single write: put_result stops after RESULT_TRIES passes and
    the app answers 503 store.unavailable, instead of spinning in a request thread forever."""
    store, image_id = stored
    monkeypatch.setattr(store, "RESULT_TRIES", 7)
    written = _before_each_write(monkeypatch, store, [lambda: store.drop_results(image_id)] * 40)
    with pytest.raises(OSError, match="kept disappearing"):
        store.put_result(image_id, "k", {"r": 1})
    assert len(written) == 7
    with pytest.raises(FaceappError) as caught:
        Guarded(store).put_result(image_id, "k", {"r": 1})
    assert caught.value.code == "store.unavailable" and len(written) == 14
    assert store.get_result(image_id, "k") is None and store.get_meta(image_id) == {"n": 1}
