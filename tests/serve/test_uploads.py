"""Dataset uploads: an honest zip of class folders is summarised with every rejected file and its reason;
a hostile one (zip-slip, absolute path, symlink, zip bomb, too many entries) is refused and leaves nothing."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path
from typing import Any


def _upload(client: Any, h: Any, data: bytes, name: str = "data.zip") -> Any:
    return client.post("/api/v1/datasets", files={"file": (name, data, "application/zip")}, headers=h.csrf(client))


def _datasets_left(client: Any) -> list[Path]:
    home = client.app.state.ctx.home
    return [p for p in (home / "datasets").glob("*")] if (home / "datasets").exists() else []


def test_a_zip_of_digits_with_two_broken_files(make_client: Any, h: Any, digits_zip: bytes) -> None:
    client = make_client()
    answer = _upload(client, h, digits_zip, "digits.zip")
    assert answer.status_code == 201, answer.text
    d = answer.json()
    assert [c["name"] for c in d["classes"]] == [str(i) for i in range(10)]
    assert sum(c["count"] for c in d["classes"]) == 300  # the two broken files are not counted
    assert d["trainable"] and d["why_not"] is None
    reasons = {r["file"]: r["reason"] for r in d["rejected"]}
    assert set(reasons) == {"3/not-an-image.png", "4/truncated.png"}
    assert all("cannot be decoded" in r for r in reasons.values())
    thumbs = d["classes"][0]["thumbs"]
    assert len(thumbs) == 12
    image = client.get(thumbs[0])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert client.get(f"/api/v1/datasets/{d['id']}").json()["id"] == d["id"]
    assert [x["id"] for x in client.get("/api/v1/datasets").json()] == [d["id"]]
    assert client.delete(f"/api/v1/datasets/{d['id']}", headers=h.csrf(client)).status_code == 200
    assert _datasets_left(client) == []


def test_duplicates_leaks_and_data_that_would_not_train(make_client: Any, h: Any,
                                                       digit_pngs: list[tuple[int, bytes]]) -> None:
    client = make_client()
    (_, a), (_, b), (_, c) = digit_pngs[:3]
    leaky = h.make_zip({"train/x/1.png": a, "train/x/2.png": a, "train/y/3.png": b, "train/y/4.png": c,
                        "val/x/5.png": b, "val/y/6.png": c, "stray.png": a})
    d = _upload(client, h, leaky).json()
    reasons = sorted(r["reason"].split(":")[0] for r in d["rejected"])
    assert "exact duplicate" in reasons and "cross-split leak" in reasons
    assert any("not inside a class folder" in r["reason"] for r in d["rejected"])
    one_class = _upload(client, h, h.make_zip({"cats/1.png": a, "cats/2.png": b})).json()
    assert not one_class["trainable"] and "single class" in one_class["why_not"]
    short = _upload(client, h, h.make_zip({"x/1.png": a, "x/2.png": b, "y/1.png": c})).json()
    assert not short["trainable"] and "y" in short["why_not"]
    refused = client.post("/api/v1/jobs", json={"dataset": short["id"]}, headers=h.csrf(client))
    assert h.error(refused) == (409, "conflict")


def test_builtin_and_server_folder(make_client: Any, h: Any, digits_folder: Any) -> None:
    client = make_client()
    builtin = client.post("/api/v1/datasets", json={"builtin": "digits"}, headers=h.csrf(client)).json()
    assert builtin["kind"] == "builtin" and len(builtin["classes"]) == 10 and builtin["trainable"]
    folder = digits_folder(per_class=3)
    local = client.post("/api/v1/datasets", json={"path": str(folder)}, headers=h.csrf(client)).json()
    assert local["kind"] == "path" and [c["count"] for c in local["classes"]] == [3, 3, 3]
    assert h.error(client.post("/api/v1/datasets", json={"path": "relative/dir"}, headers=h.csrf(client))) == \
        (422, "bad_parameter")
    assert h.error(client.post("/api/v1/datasets", json={"path": "/no/such/dir"}, headers=h.csrf(client))) == \
        (404, "not_found")
    assert h.error(client.post("/api/v1/datasets", json={"builtin": "cifar"}, headers=h.csrf(client))) == \
        (422, "bad_parameter")


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("x/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _overlapping_zip(png: bytes) -> bytes:
    """Two directory entries that point at the same member data: the core of the smallest zip bombs."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x/a.png", png)
    data = bytearray(buf.getvalue())
    end = data.rfind(b"PK\x05\x06")
    central_at = int.from_bytes(data[end + 16:end + 20], "little")
    entry = bytes(data[central_at:end])
    twin = entry.replace(b"x/a.png", b"y/a.png")
    count = (2).to_bytes(2, "little")
    record = bytearray(data[end:])
    record[8:10] = count
    record[10:12] = count
    record[12:16] = (2 * len(entry)).to_bytes(4, "little")
    return bytes(data[:end]) + twin + bytes(record)


def test_hostile_archives_are_refused_and_leave_nothing(make_client: Any, h: Any,
                                                       digit_pngs: list[tuple[int, bytes]], tmp_path: Path) -> None:
    client = make_client(max_entries=20, max_unzipped_mb=1)
    png = digit_pngs[0][1]
    cases = {
        "zip-slip": (h.make_zip({"x/1.png": png, "../../escaped.png": png}), (400, "unsafe_archive")),
        "absolute": (h.make_zip({"/tmp/abs.png": png}), (400, "unsafe_archive")),
        "symlink": (_symlink_zip(), (400, "unsafe_archive")),
        "overlap": (_overlapping_zip(png), (413, "too_large")),
        "ratio": (h.make_zip({"x/zeros.png": b"\0" * 900_000}), (413, "too_large")),
        "entries": (h.make_zip({f"x/{i}.png": png for i in range(25)}), (413, "too_large")),
        "unzipped": (h.make_zip({f"x/{i}.png": bytes(range(256)) * 1200 for i in range(5)}), (413, "too_large")),
        "empty": (b"", (400, "bad_archive")),
        "not a zip": (b"GIF89a not a zip at all", (415, "bad_archive")),
    }
    for label, (data, expected) in cases.items():
        answer = _upload(client, h, data)
        assert h.error(answer) == expected, (label, answer.text)
        assert "escaped.png" not in str(list(tmp_path.rglob("escaped.png")))
    home = client.app.state.ctx.home
    assert _datasets_left(client) == [] and not list((home / "uploads").glob("*"))
    assert not (home.parent / "escaped.png").exists() and not Path("/tmp/abs.png").exists()
    assert client.get("/api/v1/datasets").json() == []


def test_an_upload_over_the_cap_is_stopped_while_it_streams(make_client: Any, h: Any) -> None:
    client = make_client(max_upload_mb=0.05)

    def body() -> Any:
        for _ in range(100):
            yield b"PK" + b"\0" * 998

    answer = client.post("/api/v1/datasets", content=body(), headers={**h.csrf(client),
                                                                     "content-type": "application/zip"})
    assert h.error(answer) == (413, "too_large")
    assert h.error(client.post("/api/v1/datasets", content=b"x", headers={**h.csrf(client),
                                                                         "content-type": "text/csv"})) == \
        (415, "unsupported_type")
