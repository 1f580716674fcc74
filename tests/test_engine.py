"""faceapp/engine.py: one inference thread, dynamic batching, error isolation, timeouts, drain."""

from __future__ import annotations

import threading
import time

import pytest
from flask import Flask

from faceapp.engine import DEMAND_MEMORY, Engine, InferenceEngine
from faceapp.errors import FaceappError
from tests.conftest import ADMIN


class Recorder:
    """A batch function that records each batch and the thread it ran on; can be held or fail."""

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[list] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def __call__(self, items: list) -> list:
        self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot encode {self.fail_on!r}")
        return [f"row:{item}" for item in items]


def _in_threads(count: int, target) -> list:
    results: list = [None] * count
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, _catch(target, i)))
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    return results


def _catch(target, i):
    try:
        return target(i)
    except Exception as exc:  # noqa: BLE001 - the test inspects what each caller got
        return exc


def _first(args):
    engine, encode, item = args
    return engine.encode(encode, [item])[0]


def _hold(engine: InferenceEngine, encode: Recorder, item: object = "held") -> threading.Thread:
    """Start a job whose batch blocks inside `encode` until its gate opens; return its thread."""
    encode.gate.clear()
    blocker = threading.Thread(target=lambda: engine.encode(encode, [item]))
    blocker.start()
    _wait_for(lambda: engine.pending() == 0)
    time.sleep(0.05)  # the held batch is now inside encode
    return blocker


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture
def engine():
    made = InferenceEngine(max_batch=8, timeout=10)
    yield made
    made.stop(5)


def test_every_call_runs_on_one_thread_that_is_not_the_callers(engine):
    encode = Recorder()
    results = _in_threads(6, lambda i: engine.encode(encode, [i])[0])
    assert results == [[f"row:{i}"] for i in range(6)]
    assert encode.threads == {"faceapp-infer"}
    assert engine.run(lambda: threading.current_thread().name) == "faceapp-infer"


def test_jobs_queued_while_a_batch_runs_form_the_next_batch(engine):
    encode = Recorder()
    encode.gate.clear()
    first = threading.Thread(target=lambda: engine.encode(encode, ["first"]))
    first.start()
    _wait_for(lambda: engine.pending() == 0 and not encode.gate.is_set())
    time.sleep(0.05)  # the first batch is now blocked inside encode
    waiting = [
        threading.Thread(target=lambda i=i: engine.encode(encode, [f"a{i}", f"b{i}"]))
        for i in range(5)
    ]
    for thread in waiting:
        thread.start()
    _wait_for(lambda: engine.pending() == 5)
    encode.gate.set()
    first.join(10)
    for thread in waiting:
        thread.join(10)
    sizes = [len(batch) for batch in encode.batches]
    # 1 alone, then 10 queued items split at max_batch=8 along job boundaries: 8 and 2.
    assert sizes == [1, 8, 2]
    assert engine.batches == 3  # forward passes, alone or shared
    assert sorted(item for batch in encode.batches for item in batch) == sorted(
        ["first"] + [f"{p}{i}" for i in range(5) for p in "ab"]
    )


def test_each_job_gets_its_own_rows_and_stats(engine):
    encode = Recorder()
    blocker = _hold(engine, encode, "x")
    got: dict = {}

    def submit(name: str, items: list) -> None:
        got[name] = engine.encode(encode, items, finish=lambda rows: (name, list(rows)))

    threads = [
        threading.Thread(target=submit, args=("one", [1, 2])),
        threading.Thread(target=submit, args=("two", [3])),
    ]
    for thread in threads:
        thread.start()
    _wait_for(lambda: engine.pending() == 2)
    time.sleep(0.02)
    encode.gate.set()
    for thread in [blocker, *threads]:
        thread.join(10)
    (name_one, rows_one), stats_one = got["one"]
    (name_two, rows_two), stats_two = got["two"]
    assert (name_one, rows_one) == ("one", ["row:1", "row:2"])
    assert (name_two, rows_two) == ("two", ["row:3"])
    assert stats_one.batch_size == stats_two.batch_size == 3
    assert stats_one.queue_ms >= 20 and stats_two.queue_ms >= 20


def test_different_batch_functions_never_share_a_batch(engine):
    images, texts = Recorder(), Recorder()
    blocker = _hold(engine, images)
    threads = [
        threading.Thread(target=lambda i=i: engine.encode(images if i % 2 else texts, [i]))
        for i in range(6)
    ]
    for thread in threads:
        thread.start()
    _wait_for(lambda: engine.pending() == 6)
    images.gate.set()
    for thread in [blocker, *threads]:
        thread.join(10)
    assert images.batches == [["held"], [1, 3, 5]]
    assert texts.batches == [[0, 2, 4]]


def test_jobs_of_arrays_are_taken_from_the_queue_by_identity(engine):
    # Pixels are NumPy arrays: comparing two jobs by their items raised inside the thread.
    import numpy as np

    images, texts = Recorder(), Recorder()
    blocker = _hold(engine, images, item=np.zeros(3))
    results: list = [None] * 4

    def send(i: int) -> None:
        results[i] = _catch(lambda i: engine.encode(texts if i == 1 else images, [np.ones(3)]), i)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for count, thread in enumerate(threads, start=1):  # queued in this order
        thread.start()
        _wait_for(lambda count=count: engine.pending() == count)
    images.gate.set()
    for thread in [blocker, *threads]:
        thread.join(10)
    assert all(isinstance(got, tuple) and len(got[0]) == 1 for got in results), results
    # The queue is image, text, image, image: taking the later images past the text job
    # compares the queue's jobs with them.
    assert [len(batch) for batch in images.batches] == [1, 3] and len(texts.batches) == 1


def test_an_error_reaches_only_its_own_request(engine):
    encode = Recorder(fail_on="bad")
    blocker = _hold(engine, encode, "ok")
    items = ["good1", "bad", "good2"]
    results: list = [None] * 3

    def submit(i: int) -> None:
        results[i] = _catch(lambda _: engine.encode(encode, [items[i]])[0], i)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: engine.pending() == 3)
    encode.gate.set()
    for thread in [blocker, *threads]:
        thread.join(10)
    assert results[0] == ["row:good1"] and results[2] == ["row:good2"]
    assert isinstance(results[1], ValueError) and "bad" in str(results[1])
    # The thread is alive and serving after the failed batch.
    assert engine.encode(encode, ["after"])[0] == ["row:after"]


def test_an_error_in_finish_stays_with_its_job(engine):
    encode = Recorder()

    def broken(rows):
        raise KeyError("scoring failed")

    with pytest.raises(KeyError):
        engine.encode(encode, ["a"], finish=broken)
    assert engine.run(lambda: 42) == 42


def test_a_request_that_waits_too_long_gets_503_and_its_job_never_runs(engine):
    encode = Recorder()
    blocker = _hold(engine, encode, "held")
    with pytest.raises(FaceappError) as caught:
        engine.encode(encode, ["late"], timeout=0.1)
    assert caught.value.code == "model.busy" and caught.value.status == 503
    encode.gate.set()
    blocker.join(10)
    assert engine.encode(encode, ["next"])[0] == ["row:next"]
    assert ["late"] not in encode.batches and all("late" not in b for b in encode.batches)


def test_meanwhile_runs_on_the_callers_thread_while_the_job_waits_its_turn(engine):
    """The caller's other work (services: wipe_cache's store writes) overlaps the model's: it
    runs once the job is queued, before the caller waits, and the job still answers."""
    encode = Recorder()
    blocker = _hold(engine, encode, "held")
    seen = {}

    def meanwhile() -> None:
        seen["thread"] = threading.current_thread().name
        seen["pending"] = engine.pending()  # ours, queued behind the held batch
        encode.gate.set()

    rows, _ = engine.encode(encode, ["mine"], meanwhile=meanwhile)
    blocker.join(10)
    assert rows == ["row:mine"]
    assert seen == {"thread": threading.current_thread().name, "pending": 1}


def test_an_error_meanwhile_cancels_the_job_and_reaches_the_caller(engine):
    encode = Recorder()
    blocker = _hold(engine, encode, "held")

    def meanwhile() -> None:
        raise OSError("the store is down")

    with pytest.raises(OSError, match="store is down"):
        engine.encode(encode, ["cancelled"], meanwhile=meanwhile)
    encode.gate.set()
    blocker.join(10)
    assert engine.encode(encode, ["next"])[0] == ["row:next"]
    assert all("cancelled" not in batch for batch in encode.batches)


def test_stop_drains_the_queue_then_refuses_new_work():
    # A long timeout: under a loaded CI machine the held batch and the three behind it may take
    # seconds, and a timed-out caller would look like a lost result.
    engine = InferenceEngine(max_batch=1, timeout=120)
    encode = Recorder()
    encode.gate.clear()
    results = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(_catch(_first, (engine, encode, i))))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    _wait_for(lambda: engine.pending() == 3)
    stopper = threading.Thread(target=engine.stop, args=(10,))
    stopper.start()
    _wait_for(lambda: not engine._accepting)
    with pytest.raises(FaceappError) as caught:
        engine.encode(encode, ["too late"])
    assert caught.value.code == "model.not_ready"
    encode.gate.set()
    stopper.join(10)
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [[f"row:{i}"] for i in range(4)]
    assert not stopper.is_alive()


class Slow:
    """A batch function that takes `seconds` per batch and records each batch's items."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.batches: list[list] = []
        self.started = threading.Event()  # set when the first batch begins

    def __call__(self, items: list) -> list:
        self.started.set()
        time.sleep(self.seconds)
        self.batches.append(list(items))
        return list(items)


def _closed_loop(
    engine: InferenceEngine, encode: Slow, clients: int, rounds: int, late: int = 0
) -> None:
    """`clients` threads that each send again as soon as they are answered, `rounds` times; the
    last `late` of them start only once the first batch runs."""

    def client(index: int) -> None:
        if index >= clients - late:
            encode.started.wait(10)
        for round_ in range(rounds):
            engine.encode(encode, [(index, round_)], client=f"client-{index}")

    _in_threads(clients, client)


@pytest.mark.parametrize("late", [0, 2])
def test_clients_that_send_again_once_answered_share_their_batches(late):
    """Without the window the batches settle into alternating sizes (the first client back starts
    a batch without the others); with it, after the first batches, all four share each batch.
    With two clients late (they come while the first batch of two runs), a demand counted when a
    batch starts would settle at two; counted when it ends, it is four."""
    alternating = InferenceEngine(max_batch=8, timeout=60)
    windowed = InferenceEngine(max_batch=8, timeout=60, batch_wait=5.0)
    for engine in (alternating, windowed):
        encode = Slow(0.3)  # the window waits at most a tenth of this: 30 ms
        _closed_loop(engine, encode, clients=4, rounds=8, late=late)
        engine.stop(5)
        sizes = [len(batch) for batch in encode.batches]
        assert sum(sizes) == 32
        full = sum(size == 4 for size in sizes[3:])
        if engine is alternating:
            assert full <= len(sizes[3:]) // 2, sizes
            assert engine.waits == 0
        else:
            assert full >= 4 and full > len(sizes[3:]) // 2, sizes
            assert engine.waits > 0


def test_a_lone_client_never_waits_and_the_window_forgets_clients_that_left():
    engine = InferenceEngine(max_batch=8, timeout=60, batch_wait=5.0)
    encode = Slow(0.05)
    for _ in range(6):
        engine.encode(encode, ["alone"])
    assert engine.waits == 0  # its demand is one item: nothing more is coming
    _closed_loop(engine, encode, clients=4, rounds=4)
    after_crowd = engine.waits
    for _ in range(8):
        engine.encode(encode, ["alone again"])
    engine.stop(5)
    # The demand of four stays for the batches it remembers (each waits 5 ms in vain), then
    # the lone client's own demand of one is all there is: no more waiting.
    assert 0 < engine.waits - after_crowd <= DEMAND_MEMORY
    assert [len(batch) for batch in encode.batches[-4:]] == [1, 1, 1, 1]


def test_several_inference_threads_run_batches_side_by_side_over_one_queue():
    engine = InferenceEngine(max_batch=8, timeout=30, threads=2)
    held, release = threading.Event(), threading.Event()
    ran_on: dict[str, str] = {}

    def encode(items: list) -> list:
        ran_on[items[0]] = threading.current_thread().name
        if items[0] == "slow":
            held.set()
            release.wait(20)
        return [f"row:{item}" for item in items]

    slow = threading.Thread(target=lambda: engine.encode(encode, ["slow"]))
    slow.start()
    assert held.wait(10)
    # The first thread is inside a batch: the second takes the next job meanwhile.
    assert engine.encode(encode, ["quick"])[0] == ["row:quick"]
    assert engine.run(engine.in_engine_thread) is True
    release.set()
    slow.join(10)
    assert {ran_on["slow"], ran_on["quick"]} == {"faceapp-infer-0", "faceapp-infer-1"}
    assert engine.batches == 2
    assert engine.stop(5) is True  # both threads drained and joined
    with pytest.raises(FaceappError):
        engine.encode(encode, ["late"])
    with pytest.raises(ValueError, match="INFERENCE_THREADS"):
        InferenceEngine(threads=0)


def test_stop_without_any_work_returns_at_once():
    assert InferenceEngine().stop(1) is True


def test_the_app_runs_load_warm_up_labels_and_images_on_the_inference_thread(
    app, client, astronaut_jpeg, monkeypatch
):
    from faceapp import face_models

    seen: list[tuple[str, str]] = []
    prepared: list[str] = []
    sizes: list[set] = []
    real_prepare = face_models.LoadedModel.prepare_images
    real_images = face_models.LoadedModel.encode_pixels
    real_texts = face_models.LoadedModel.encode_texts
    real_loader = face_models.load_clip

    def prepare(self, crops):
        prepared.append(threading.current_thread().name)
        sizes.append({crop.size for crop in crops})
        return real_prepare(self, crops)

    def images(self, batch):
        seen.append(("images", threading.current_thread().name))
        if len(seen) > 2:  # a request's forward, not the warm-up's: a known least duration
            time.sleep(0.03)
        return real_images(self, batch)

    def texts(self, batch):
        seen.append(("texts", threading.current_thread().name))
        return real_texts(self, batch)

    def loader(config):
        seen.append(("load", threading.current_thread().name))
        return real_loader(config)

    monkeypatch.setattr(face_models.LoadedModel, "prepare_images", prepare)
    monkeypatch.setattr(face_models.LoadedModel, "encode_pixels", images)
    monkeypatch.setattr(face_models.LoadedModel, "encode_texts", texts)
    monkeypatch.setattr(app.extensions[face_models.EXTENSION_KEY], "loader", loader)
    stored = client.post("/api/validate", data={"file": (_file(astronaut_jpeg), "a.jpg")})
    image_id = stored.get_json()["image_id"]
    answer = client.post("/api/analyze", json={"image_id": image_id, "labels": ["a cat", "a dog"]})
    assert answer.status_code == 200, answer.get_json()
    kinds = {kind for kind, _ in seen}
    assert kinds == {"load", "images", "texts"}
    assert {name for _, name in seen} == {"faceapp-infer"}
    # The request's crops went through the processor (NumPy, no torch) on the request's own
    # thread (the test client's); only the warm-up's ran on the inference thread.
    assert prepared == ["faceapp-infer", threading.current_thread().name]
    # The request's face crop was cut at the model's input size: the processor resizes nothing.
    with app.app_context():
        side = face_models.models.peek().crop_side
    assert side and sizes[-1] == {(side, side)}
    timings = answer.get_json()["timings_ms"]
    assert timings["queue"] >= 0
    # `forward` is the batch's time in the model: part of `encode`, at least the 30 ms it slept.
    assert 30 <= timings["forward"] <= timings["encode"] <= timings["total"]
    event = client.get(f"/api/images/{image_id}/trace").get_json()["events"][-1]
    assert event["event"] == "analyzed" and event["batch_size"] == 1
    assert event["queue_ms"] >= 0


def test_concurrent_analyses_over_the_app_share_batches_and_answer_alike(app, astronaut_jpeg):
    client = app.test_client()
    assert client.post("/api/setup", headers=ADMIN).status_code == 200
    image_id = client.post(
        "/api/validate", data={"file": (_file(astronaut_jpeg), "a.jpg")}
    ).get_json()["image_id"]
    from faceapp.engine import engine as extension

    with app.app_context():
        inference = extension.get()
    before = inference.batches

    def analyze(i: int) -> dict:
        body = {"image_id": image_id, "wipe_cache": False, "labels": [f"label {i}", "other"]}
        answer = app.test_client().post("/api/analyze", json=body)
        assert answer.status_code == 200
        return answer.get_json()

    answers = _in_threads(8, analyze)
    assert all(isinstance(a, dict) for a in answers), answers
    expression = {json_key(a) for a in answers}
    assert len(expression) == 1  # the same image scores the same, whatever batch it was in
    assert inference.batches - before <= 16  # 8 image jobs + at most 8 text jobs, often fewer


def json_key(answer: dict) -> str:
    face = answer["faces"][0]
    return repr(sorted((k, round(v["score"], 4)) for k, v in face["attributes"].items()))


def _file(data: bytes):
    import io

    return io.BytesIO(data)


def test_a_batch_below_one_and_an_empty_encode_are_refused(engine):
    with pytest.raises(ValueError, match="at least 1"):
        InferenceEngine(max_batch=0)
    assert InferenceEngine(max_batch=1).max_batch == 1
    with pytest.raises(ValueError, match="at least one item"):
        engine.encode(Recorder(), [])


def test_batches_counts_forward_passes_not_plain_calls(engine):
    assert engine.batches == 0
    engine.run(lambda: "loaded")
    assert engine.batches == 0
    engine.encode(Recorder(), [1, 2])
    assert engine.batches == 1


def test_stop_says_whether_the_thread_finished():
    engine = InferenceEngine(timeout=10)
    assert engine.run(lambda: engine.stop(1)) is False  # the thread cannot join itself
    engine = InferenceEngine(timeout=10)
    encode = Recorder()
    blocker = _hold(engine, encode)
    assert engine.stop(0.05) is False  # still inside a batch
    encode.gate.set()
    blocker.join(10)
    assert engine.stop(5) is True


def test_the_extension_gives_one_engine_per_process_and_stops_it():
    bare = Flask(__name__)
    bare.config.update(INFERENCE_MAX_BATCH=3, INFERENCE_TIMEOUT=5, INFERENCE_BATCH_WAIT=0.5)
    bare.config.update(INFERENCE_THREADS=None)
    extension = Engine()
    with pytest.raises(RuntimeError, match="init_app"):
        extension.get(bare)
    assert extension.stop(bare) is True  # nothing to stop
    Engine(bare)  # the constructor sets the app up too
    assert extension.stop(bare) is True  # set up, but no engine made yet
    first = extension.get(bare)
    assert first is extension.get(bare) and first.max_batch == 3 and first.batch_wait == 0.5
    assert first.threads == 1  # INFERENCE_THREADS unset: one
    assert first.run(lambda: "ok") == "ok"
    assert extension.stop(bare, timeout=5) is True
    with pytest.raises(FaceappError) as refused:
        first.run(lambda: "late")
    assert refused.value.code == "model.not_ready"


def test_a_forked_worker_gets_an_engine_of_its_own():
    """gunicorn forks workers: an engine made before the fork has no thread in the child, so the
    child must get a new one (the parent's would never answer)."""
    import os

    bare = Flask(__name__)
    bare.config.update(INFERENCE_MAX_BATCH=3, INFERENCE_TIMEOUT=5)
    extension = Engine(bare)
    parent = extension.get(bare)
    assert parent.run(lambda: "parent") == "parent"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        verdict = b"0"
        try:
            child = extension.get(bare)
            if child is not parent and child.run(lambda: "child", timeout=5) == "child":
                verdict = b"1"
        finally:
            os.write(write, verdict)
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert extension.get(bare) is parent  # the parent keeps its own
    assert extension.stop(bare, timeout=5) is True
