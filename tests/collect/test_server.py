"""The labelling server through Starlette's TestClient (access rules, each mode, undo), the command
line, and a real server process killed with SIGKILL while labels are being written."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from posttrain.collect.command import main
from posttrain.collect.db import Collection
from posttrain.collect.server import check_bind, create_app, is_loopback
from posttrain.errors import ConfigError, DataError

from .conftest import fill, start_server, three_prompts

LOCAL = "http://127.0.0.1:8600"


def _client(collection: Collection, token: str | None = None, k: int = 1,
            base_url: str = LOCAL) -> TestClient:
    return TestClient(create_app(str(collection.path), token=token, k=k), base_url=base_url)


def test_loopback_rule() -> None:
    for host in ("127.0.0.1", "127.8.0.1", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
        check_bind(host, None)
    for host in ("0.0.0.0", "192.168.1.4", "example.com", "::"):
        assert not is_loopback(host), host
        with pytest.raises(ConfigError, match=f"refusing to serve on '{host}' without a token"):
            check_bind(host, None)
        check_bind(host, "secret")


def test_without_token_only_loopback_hosts_are_answered(make_collection: Callable[..., Collection]) -> None:
    collection = make_collection(three_prompts())
    assert _client(collection).get("/api/state").json() == {"mode": "rank", "k": 1, "progress": None}
    evil = _client(collection, base_url="http://attacker.example:8600")
    response = evil.get("/api/next", params={"annotator": "ann"})
    assert response.status_code == 403
    assert "host 'attacker.example:8600' refused: without a token" in response.json()["error"]
    assert _client(collection, base_url="http://localhost:8600").get("/").status_code == 200


def test_with_a_token_every_request_must_carry_it(make_collection: Callable[..., Collection]) -> None:
    collection = make_collection(three_prompts())
    client = _client(collection, token="s3cret", base_url="http://lab.example:8600")
    for path in ("/", "/static/app.js", "/api/state", "/api/summary"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert "missing or wrong token" in response.json()["error"]
    assert client.get("/api/state", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/state", params={"token": "s3cret"}).status_code == 401  # only the page takes it
    assert client.get("/api/state", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/state", headers={"X-Posttrain-Token": "s3cret"}).status_code == 200
    page = client.get("/", params={"token": "s3cret"})
    assert page.status_code == 200 and "posttrain_token=s3cret" in page.headers["set-cookie"]
    assert "httponly" in page.headers["set-cookie"].lower()
    assert client.get("/static/app.js").status_code == 200  # the cookie now carries the token
    assert client.post("/api/undo", json={"annotator": "ann"}).json()["undone"] is None


def test_page_files_and_headers(make_collection: Callable[..., Collection]) -> None:
    client = _client(make_collection(three_prompts()))
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js">' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "textContent" in client.get("/static/app.js").text
    # No API that parses HTML is ever called: model text can only arrive as text.
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(",
                         client.get("/static/app.js").text.split("\n", 3)[3])
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    missing = client.get("/static/secrets.txt")
    assert missing.status_code == 404 and missing.json() == {"error": "no file 'secrets.txt'"}


def test_post_must_be_json(make_collection: Callable[..., Collection]) -> None:
    client = _client(make_collection(three_prompts()))
    form = client.post("/api/undo", data={"annotator": "ann"})
    assert form.status_code == 415 and form.json()["error"] == "POST bodies must be sent as application/json"
    bad = client.post("/api/undo", content=b"{nope", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "request body is not valid JSON" in bad.json()["error"]
    array = client.post("/api/undo", json=[1])
    assert array.status_code == 400 and "request body must be a JSON object" in array.json()["error"]


def test_rank_flow_with_undo_and_skip(make_collection: Callable[..., Collection]) -> None:
    client = _client(make_collection(three_prompts()))
    first = client.get("/api/next", params={"annotator": "ann"}).json()
    assert first["progress"] == {"done": 0, "left": 3, "total": 3, "labels": 0}
    item = first["item"]
    assert item["mode"] == "rank" and item["prompt"] == "What is 1 + 1?"
    assert [c["text"] for c in item["candidates"]] == ["2", "3", "maybe 1"]
    bad = client.post("/api/label", json={"annotator": "ann", "item_id": item["item_id"],
                                          "value": {"ranking": [0, 1]}})
    assert bad.status_code == 400 and "invalid ranking" in bad.json()["error"]
    ok = client.post("/api/label", json={"annotator": "ann", "item_id": item["item_id"],
                                         "value": {"ranking": [0, 2, 1]}}).json()
    assert ok["progress"] == {"done": 1, "left": 2, "total": 3, "labels": 1}
    second = client.get("/api/next", params={"annotator": "ann"}).json()["item"]
    assert client.post("/api/skip", json={"annotator": "ann", "item_id": second["item_id"]}).json()["ok"]
    assert client.post("/api/undo", json={"annotator": "ann"}).json()["undone"] == second["item_id"]
    undone = client.post("/api/undo", json={"annotator": "ann"}).json()
    assert undone == {"undone": item["item_id"], "progress": {"done": 0, "left": 3, "total": 3, "labels": 0}}
    assert client.get("/api/next", params={"annotator": "ann"}).json()["item"]["item_id"] == item["item_id"]
    nameless = client.get("/api/next")
    assert nameless.status_code == 400 and "invalid annotator name" in nameless.json()["error"]


def test_ab_and_thumbs_modes_and_exports(tmp_path: Path) -> None:
    collection = fill(tmp_path / "c.db", {"Q": ["yes", "no"]}, mode="ab")
    client = _client(collection, k=2)
    for who, choice in (("ann", "a"), ("bob", "tie")):
        item = client.get("/api/next", params={"annotator": who}).json()["item"]
        assert item["mode"] == "ab" and len(item["candidates"]) == 2
        reply = client.post("/api/label", json={"annotator": who, "item_id": item["item_id"],
                                                "value": {"choice": choice}})
        assert reply.status_code == 200
    assert client.get("/api/next", params={"annotator": "cy"}).json()["item"] is None  # k = 2 reached
    pairs = client.get("/api/export/pairs").text.splitlines()
    assert len(pairs) == 1 and json.loads(pairs[0])["chosen"] == item["candidates"][0]["text"]
    summary = client.get("/api/summary").json()["modes"]["ab"]
    assert summary["percent_agreement"] == 0.0 and summary["kappa_kind"] == "cohen"
    collection.set_mode("thumbs")
    item = client.get("/api/next", params={"annotator": "ann"}).json()["item"]
    assert item["mode"] == "thumbs" and [c["text"] for c in item["candidates"]] == ["yes", "no"]
    client.post("/api/label", json={"annotator": "ann", "item_id": item["item_id"],
                                    "value": {"thumbs": [True, False]}})
    assert client.get("/api/export/unpaired").text.count('"label": true') == 1
    unknown = client.get("/api/export/nonsense")
    assert unknown.status_code == 404 and "unknown export 'nonsense'" in unknown.json()["error"]


def test_create_app_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no collection database here"):
        create_app(str(tmp_path / "none.db"))
    fill(tmp_path / "c.db", {"Q": ["a", "b"]})
    with pytest.raises(ConfigError, match="k \\(annotators per item\\) must be >= 1; got 0"):
        create_app(str(tmp_path / "c.db"), k=0)


def test_command_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--db", str(tmp_path / "c.db"), "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on '0.0.0.0' without a token" in capsys.readouterr().err
    assert main(["export", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "o")]) == 2
    assert "no collection database here" in capsys.readouterr().err
    fill(tmp_path / "c.db", {"Q": ["a", "b"]})
    assert main(["export", "--db", str(tmp_path / "c.db"), "--out", str(tmp_path / "o")]) == 0
    assert "0 labels by 0 annotators" in capsys.readouterr().out


def test_sigkill_mid_run_keeps_every_committed_label(tmp_path: Path) -> None:
    fill(tmp_path / "c.db", {f"p{i}": ["a", "b"] for i in range(200)})
    process, url = start_server(tmp_path / "c.db")
    acknowledged: list[int] = []
    stop = threading.Event()

    def annotate() -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            while not stop.is_set():
                try:
                    item = client.get("/api/next", params={"annotator": "ann"}).json()["item"]
                    reply = client.post("/api/label", json={"annotator": "ann", "item_id": item["item_id"],
                                                            "value": {"ranking": [1, 0]}})
                except httpx.TransportError:
                    return
                assert reply.status_code == 200
                acknowledged.append(item["item_id"])

    worker = threading.Thread(target=annotate)
    try:
        worker.start()
        deadline = time.monotonic() + 20
        while len(acknowledged) < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)  # while the worker keeps submitting
        process.wait(timeout=10)
    finally:
        stop.set()
        process.kill()
        worker.join(timeout=10)
    assert process.returncode == -signal.SIGKILL and len(acknowledged) >= 15
    stored = [label["item_id"] for label in Collection(tmp_path / "c.db").labels()]
    assert set(acknowledged) <= set(stored) and len(stored) <= len(acknowledged) + 1


def test_two_annotators_labelling_concurrently_through_the_api_lose_nothing(tmp_path: Path) -> None:
    fill(tmp_path / "c.db", {f"p{i}": ["a", "b"] for i in range(20)})
    process, url = start_server(tmp_path / "c.db", "--k", "2")
    acknowledged: dict[str, list[int]] = {"ann": [], "bob": []}

    def annotate(who: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while (item := client.get("/api/next", params={"annotator": who}).json()["item"]) is not None:
                reply = client.post("/api/label", json={"annotator": who, "item_id": item["item_id"],
                                                        "value": {"ranking": [0, 1]}})
                assert reply.status_code == 200, reply.text
                acknowledged[who].append(item["item_id"])

    workers = [threading.Thread(target=annotate, args=(who,)) for who in acknowledged]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
    finally:
        process.kill()
        process.wait(timeout=10)
    labels = Collection(tmp_path / "c.db").labels()
    stored = sorted((label["annotator"], label["item_id"]) for label in labels)
    assert stored == sorted((who, item) for who, items in acknowledged.items() for item in items)
    assert len(acknowledged["ann"]) == len(acknowledged["bob"]) == 20  # k = 2: both label every item
