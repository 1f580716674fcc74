"""Issue 22 item 3: one client must not starve the others (faceapp/engine.py's fair queue).

The properties are structural, never timed: which batch serves whom, in what order.
"""

from __future__ import annotations

import threading

import pytest

from faceapp.engine import InferenceEngine
from faceapp.errors import FaceappError
from tests.conftest import ADMIN
from tests.test_engine import Recorder, _wait_for


@pytest.fixture
def engine():
    made = InferenceEngine(max_batch=8, timeout=10)
    made.record = True
    yield made
    made.stop(5)


def _submit(engine, encode, client: str, items: list, results: dict | None = None):
    def work():
        try:
            answer = engine.encode(encode, items, client=client)[0]
        except Exception as exc:  # noqa: BLE001 - the test looks at what each caller got
            answer = exc
        if results is not None:
            results[(client, items[0])] = answer

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def _hold(engine, encode) -> threading.Thread:
    """A batch of client "held" that blocks inside `encode` until the gate opens."""
    encode.gate.clear()
    blocker = _submit(engine, encode, "held", ["held"])
    _wait_for(lambda: engine.pending() == 0 and engine.served)
    return blocker


def test_a_flood_of_many_face_requests_never_stands_in_front_of_another_clients_face(engine):
    """Three 20-face requests from key A are queued before key B's one face: B's face is in the
    very next batch (the one after the batch running when it came), not after A's 60 faces."""
    encode = Recorder()
    blocker = _hold(engine, encode)
    flood = [_submit(engine, encode, "key:A", [f"a{n}-{i}" for i in range(20)]) for n in range(3)]
    _wait_for(lambda: engine.pending() == 3)
    results: dict = {}
    single = _submit(engine, encode, "key:B", ["b-face"], results)
    _wait_for(lambda: engine.pending() == 4)
    encode.gate.set()
    for thread in [blocker, single, *flood]:
        thread.join(10)
    assert results[("key:B", "b-face")] == ["row:b-face"]
    assert "b-face" in encode.batches[1]  # batch 0 was running when B came
    assert engine.served[1] == [("key:A", 4), ("key:B", 1), ("key:A", 3)]
    # A's 60 faces all ran, in batches of at most max_batch, each request's rows in order.
    assert sorted(len(b) for b in encode.batches[1:]) == sorted([8] * 7 + [5])
    assert all(len(batch) <= 8 for batch in encode.batches)


def test_two_busy_clients_share_each_batch_by_faces_not_by_requests(engine):
    """A sends 20-face requests, B one-face requests: each batch is half A's, half B's faces."""
    encode = Recorder()
    blocker = _hold(engine, encode)
    threads = [_submit(engine, encode, "key:A", [f"a{n}-{i}" for i in range(20)]) for n in range(2)]
    _wait_for(lambda: engine.pending() == 2)
    threads += [_submit(engine, encode, "key:B", [f"b{n}"]) for n in range(8)]
    _wait_for(lambda: engine.pending() == 10)
    encode.gate.set()
    for thread in [blocker, *threads]:
        thread.join(10)
    assert engine.served[1] == [("key:A", 4), *[("key:B", 1)] * 4]
    assert engine.served[2] == [("key:A", 4)] + [("key:B", 1)] * 4
    assert engine.served[3] == [("key:A", 8)]  # B has nothing left: A gets the whole batch


def test_clients_take_turns_at_starting_a_batch(engine):
    """With different batch functions waiting, the client whose turn it is picks the batch."""
    images, texts = Recorder(), Recorder()
    blocker = _hold(engine, images)
    threads = [
        _submit(engine, images, "key:A", ["a1"]),
        _submit(engine, images, "key:A", ["a2"]),
    ]
    _wait_for(lambda: engine.pending() == 2)
    threads.append(_submit(engine, texts, "key:B", ["b1"]))
    _wait_for(lambda: engine.pending() == 3)
    images.gate.set()
    for thread in [blocker, *threads]:
        thread.join(10)
    # A's turn (both its image jobs), then B's text job: B is not behind every image of A.
    assert images.batches == [["held"], ["a1", "a2"]]
    assert texts.batches == [["b1"]]
    assert engine.served[1:] == [[("key:A", 1), ("key:A", 1)], [("key:B", 1)]]


def test_with_more_clients_than_a_batch_holds_every_client_is_served_in_turn(engine):
    """Ten clients with one face each and max_batch 8: the two left out of the first batch are
    first in the next one, not left behind those served already."""
    encode = Recorder()
    blocker = _hold(engine, encode)
    threads = []
    for number in range(10):
        threads.append(_submit(engine, encode, f"key:{number}", [f"c{number}-a", f"c{number}-b"]))
        _wait_for(lambda n=number: engine.pending() == n + 1)
    encode.gate.set()
    for thread in [blocker, *threads]:
        thread.join(10)
    first = [client for client, _ in engine.served[1]]
    second = [client for client, _ in engine.served[2]]
    assert first == [f"key:{n}" for n in range(8)]
    assert second[:2] == ["key:8", "key:9"]  # their turn comes first


def test_a_job_of_more_items_than_a_batch_runs_in_pieces_and_gets_its_rows_in_order(engine):
    encode = Recorder()
    rows, stats = engine.encode(encode, list(range(20)), client="key:A")
    assert rows == [f"row:{i}" for i in range(20)]
    assert [len(batch) for batch in encode.batches] == [8, 8, 4]
    assert stats.batch_size == 8 and stats.compute_ms >= 0


def test_a_failing_piece_fails_only_its_own_job(engine):
    encode = Recorder(fail_on="a-bad")
    blocker = _hold(engine, encode)
    results: dict = {}
    threads = [
        _submit(engine, encode, "key:A", ["a-first", "a-bad", "a-last"], results),
        _submit(engine, encode, "key:B", ["b-only"], results),
    ]
    _wait_for(lambda: engine.pending() == 2)
    encode.gate.set()
    for thread in [blocker, *threads]:
        thread.join(10)
    assert isinstance(results[("key:A", "a-first")], ValueError)
    assert results[("key:B", "b-only")] == ["row:b-only"]


def test_a_client_with_its_share_waiting_gets_429_and_others_do_not():
    engine = InferenceEngine(max_batch=8, timeout=10, max_client_items=10)
    engine.record = True
    encode = Recorder()
    blocker = _hold(engine, encode)
    waiting = _submit(engine, encode, "key:A", [f"a{i}" for i in range(8)])
    _wait_for(lambda: engine.pending() == 1)
    with pytest.raises(FaceappError) as refused:
        engine.encode(encode, ["a8", "a9", "a10"], client="key:A")
    assert refused.value.code == "rate.limited" and refused.value.retry_after == 1
    assert "8 faces or labels waiting" in refused.value.message
    other = _submit(engine, encode, "key:B", [f"b{i}" for i in range(5)])
    _wait_for(lambda: engine.pending() == 2)
    encode.gate.set()
    for thread in [blocker, waiting, other]:
        thread.join(10)
    # Nothing waiting: a job larger than the share is still taken.
    assert len(engine.encode(encode, list(range(12)), client="key:A")[0]) == 12
    engine.stop(5)


# -- through the app ----------------------------------------------------------------------------


def test_max_faces_is_bounded_by_max_faces_limit(client, astronaut_jpeg):
    import io

    image_id = client.post(
        "/api/validate", data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
    ).get_json()["image_id"]
    refused = client.post("/api/analyze", json={"image_id": image_id, "max_faces": 21})
    assert refused.status_code == 400
    error = refused.get_json()["error"]
    assert error["code"] == "input.invalid" and error["field"] == "max_faces"
    assert "at most 20" in error["message"]
    assert client.post("/api/setup", headers=ADMIN).status_code == 200
    ok = client.post("/api/analyze", json={"image_id": image_id, "max_faces": 20})
    assert ok.status_code == 200, ok.get_json()


def test_each_key_takes_its_own_turn_in_the_queue(config, astronaut_jpeg):
    """The app hands the engine the caller's key (or address) as the client."""
    import io

    from faceapp import create_app
    from faceapp.access import key_id
    from faceapp.engine import engine as extension

    config.update(API_KEYS="key-a,key-b")
    app = create_app(config)
    client = app.test_client()
    assert client.post("/api/setup", headers=ADMIN).status_code == 200
    with app.app_context():
        inference = extension.get()
    inference.record = True
    for key in ("key-a", "key-b"):
        headers = {"Authorization": f"Bearer {key}"}
        upload = {"file": (io.BytesIO(astronaut_jpeg), "a.jpg")}
        answer = client.post("/api/analyze", data=upload, headers=headers)
        assert answer.status_code == 200, answer.get_json()
        client.post(
            "/api/analyze",
            data={"file": (io.BytesIO(astronaut_jpeg), "a.jpg"), "labels": f"a {key}"},
            headers=headers,
        )
    clients = {name for batch in inference.served for name, _ in batch}
    assert clients == {f"key:{key_id('key-a')}", f"key:{key_id('key-b')}"}
