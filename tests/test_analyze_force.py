"""force=true analyses the whole photo only when no face was found, never instead of a face."""

from __future__ import annotations

import io

from PIL import Image


def store(client, data: bytes) -> str:
    answer = client.post("/api/validate", data={"file": (io.BytesIO(data), "a.jpg")})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["image_id"]


def faces_of(client, **body) -> list[dict]:
    answer = client.post("/api/analyze", json={"attributes": ["expression"], **body})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["faces"]


def boxes(faces: list[dict]) -> list[tuple[bool, dict]]:
    return [(face["detected"], face["box"]) for face in faces]


def test_force_on_a_valid_photo_still_analyses_the_face(client, astronaut_jpeg):
    image_id = store(client, astronaut_jpeg)
    plain = faces_of(client, image_id=image_id)
    forced = faces_of(client, image_id=image_id, force=True, wipe_cache=True)

    [(detected, box)] = boxes(forced)
    assert detected is True
    assert box["width"] < 200 and box["height"] < 200  # the face, not the 512 px frame
    assert boxes(forced) == boxes(plain)
    assert (
        forced[0]["attributes"]["expression"]["label"]
        == plain[0]["attributes"]["expression"]["label"]
    )


def test_force_on_a_photo_with_two_faces_analyses_both(client, astronaut):
    pair = Image.new("RGB", (1024, 512))
    pair.paste(astronaut, (0, 0))
    pair.paste(astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (512, 0))
    buffer = io.BytesIO()
    pair.save(buffer, "JPEG", quality=92)
    image_id = store(client, buffer.getvalue())
    assert client.post("/api/analyze", json={"image_id": image_id}).status_code == 409

    forced = faces_of(client, image_id=image_id, force=True)

    assert [detected for detected, _ in boxes(forced)] == [True, True]
    assert all(box["width"] < 200 for _, box in boxes(forced))
