"""Measure what hostile uploads cost a fresh process that serves faceapp (a worker's stand-in).

``python -m tests.cost_probe CONFIG_JSON [--together N] NAME...`` builds the app from the config,
sends a real photo first (so imports and the detector are warm), then posts each named file of
tests/hostile_files.py to /api/validate and prints one JSON line per file: its status, error
code, peak memory over the resident size before it (MiB) and CPU seconds. With ``--together N``
it posts N copies of each file at once from N threads and measures them together.
"""

from __future__ import annotations

import io
import json
import sys
import threading

from faceapp import create_app
from faceapp.decoding import return_large_buffers_to_the_os
from tests import hostile_files
from tests.costs import measured


def post(client, data: bytes) -> tuple[int, str]:
    answer = client.post("/api/validate", data={"file": (io.BytesIO(data), "upload")})
    body = answer.get_json(silent=True) or {}
    return answer.status_code, (body.get("error") or {}).get("code", "")


def main(argv: list[str]) -> None:
    config = json.loads(argv[0])
    together = 1
    names = argv[1:]
    if names[:1] == ["--together"]:
        together, names = int(names[1]), names[2:]
    return_large_buffers_to_the_os()  # as gunicorn.conf.py's post_worker_init does
    app = create_app(config)
    from PIL import Image
    from skimage import data

    photo = io.BytesIO()
    Image.fromarray(data.astronaut()).save(photo, "JPEG", quality=90)
    client = app.test_client()
    post(client, photo.getvalue())
    for name in names:
        payload = hostile_files.HOSTILE[name]()
        answers: list[tuple[int, str]] = []

        def send(copy: bytes) -> None:
            answers.append(post(app.test_client(), copy))  # noqa: B023 (joined below)

        # Copies differ by trailing bytes every format here ignores, so none is a cache hit.
        copies = [payload + b"\0" * index for index in range(together)]
        with measured(name) as cost:
            threads = [threading.Thread(target=send, args=(copy,)) for copy in copies]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        print(
            json.dumps(
                {
                    "name": name,
                    "bytes": len(payload),
                    "answers": answers,
                    "peak_mib": cost.peak_mib,
                    "cpu_s": round(cost.cpu_s, 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
