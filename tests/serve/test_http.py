"""The Serve app over real HTTP on a local Ray: mixed batches, OpenAI client, streaming, errors."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.timeout(1200)


def _post(url, body, **kw):
    return requests.post(url + "/generate", json=body, timeout=300, **kw)


def _mixed_requests(refs):
    wl = refs["weight_lora"]
    return [
        {"prompt": "Review: a warm and funny film.", "adapters": "sst2", "steps": 8, "seed": 1},
        {"prompt": "What is the capital of France? Answer briefly please.", "adapters": {"sst2": 1, "trec": 3},
         "max_new_tokens": 12, "steps": 6, "seed": 2},
        {"prompt": "Topic: stocks fell sharply today", "adapters": "auto", "temperature": 0.8, "seed": 3},
        {"prompt": "Hello", "max_new_tokens": 4, "steps": 4},
        {"prompt": "Review: dull.", "adapters": wl, "steps": 8, "seed": 5},
        {"prompt": "Question: how many legs does a spider have? Think step by step.",
         "adapters": {refs["adapters"]["gsm8k"]: 0.5, "squad": 0.5}, "threshold": 0.3, "max_new_tokens": 16},
    ]


def test_mixed_adapter_batch_gives_each_row_its_text_alone(serve_app):
    url, reqs = serve_app["url"], _mixed_requests(serve_app["refs"])
    alone = [_post(url, r).json() for r in reqs]
    with ThreadPoolExecutor(len(reqs)) as pool:
        together = list(pool.map(lambda r: _post(url, r).json(), reqs))
    assert max(t["timings"]["batch_size"] for t in together) > 1, "requests were never batched"
    for req, a, b in zip(reqs, alone, together):
        assert a["text"] == b["text"] and a["steps"] == b["steps"], req
        assert a["weights"] == b["weights"]
    assert together[1]["weights"] == {"sst2": 0.25, "trec": 0.75}
    auto = together[2]["weights"]
    assert set(auto) == {"sst2", "agnews", "trec", "squad", "gsm8k"} and sum(auto.values()) == pytest.approx(1, abs=1e-3)
    texts = {a["text"] for a in alone[:3]}
    assert len(texts) == 3  # different mixes do answer differently


def test_openai_client_completions_with_an_adapter_ref(serve_app):
    import openai

    url, refs = serve_app["url"], serve_app["refs"]
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    ref = refs["adapters"]["trec"]
    out = client.completions.create(model=ref, prompt="Question: who wrote Hamlet?", max_tokens=8, seed=4)
    direct = _post(url, {"prompt": "Question: who wrote Hamlet?", "adapters": ref, "max_new_tokens": 8,
                         "seed": 4}).json()
    assert out.object == "text_completion" and out.model == ref
    assert out.choices[0].text == direct["text"]
    assert out.usage.completion_tokens == 8
    ids = [m.id for m in client.models.list().data]
    assert {"auto", "base", ref} <= set(ids)
    with pytest.raises(openai.NotFoundError, match="unknown adapter"):
        client.completions.create(model="no-such-task", prompt="x", max_tokens=4)
    stream = client.completions.create(model="auto", prompt="Question: who wrote Hamlet?", max_tokens=8,
                                       seed=4, stream=True)
    chunks = [c.choices[0].text for c in stream]
    auto = _post(url, {"prompt": "Question: who wrote Hamlet?", "adapters": "auto", "max_new_tokens": 8,
                       "seed": 4}).json()
    assert "".join(chunks) == auto["text"]


def test_streaming_yields_one_event_per_step_and_the_same_text(serve_app):
    url = serve_app["url"]
    body = {"prompt": "Topic: the team won the cup final", "adapters": "auto", "steps": 8,
            "max_new_tokens": 8, "seed": 7}
    plain = _post(url, body).json()
    with _post(url, {**body, "stream": True}, stream=True) as res:
        assert res.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in res.iter_lines(decode_unicode=True)
                  if line and line.startswith("data:")]
    steps = [e for e in events if "step" in e]
    assert [e["step"] for e in steps] == list(range(1, plain["steps"] + 1))
    assert steps[0]["text"].count("_") > steps[-1]["text"].count("_")
    assert set(steps[0]["weights"]) == set(plain["weights"])
    final = events[-1]
    assert final["done"] and final["text"] == plain["text"] and final["steps"] == plain["steps"]
    assert steps[-1]["text"].replace(" ", "") == plain["text"].replace(" ", "")


BAD = [
    ({"prompt": "x", "adapters": "adapters/nope/lora-diffusion@1"}, 404, "not found"),
    ({"prompt": "x", "adapters": "no-such-task"}, 404, "unknown adapter"),
    ({"prompt": "x", "adapters": {"sst2": -1}}, 400, "negative"),
    ({"prompt": "x", "adapters": {"sst2": 0, "trec": 0}}, 400, "positive"),
    ({"prompt": "x", "steps": 0}, 422, "steps"),
    ({"prompt": "x", "steps": 10_000}, 400, "steps"),
    ({"prompt": "x", "max_new_tokens": 999}, 400, "max_new_tokens"),
    ({"prompt": "word " * 400}, 400, "too long"),
    ({"prompt": ""}, 422, "prompt"),
    ({"prompt": "x", "adapters": "bundles/nope@1"}, 404, "not found"),
    ({"prompt": "x", "adapters": "bases/tiny@1"}, 400, "not an adapter"),
    ({"prompt": "x", "unknown_field": 1}, 422, "unknown_field"),
    ({"prompt": "x", "adapters": {"sst2": 1, "weight": "heavy"}}, 422, "adapters"),
]


@pytest.mark.parametrize("body, status, words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_a_4xx_with_one_line(serve_app, body, status, words):
    res = _post(serve_app["url"], body)
    assert res.status_code == status, res.text
    message = res.json()["error"]["message"]
    assert words in message and "\n" not in message


def test_malformed_json_and_other_endpoints(serve_app):
    url, refs = serve_app["url"], serve_app["refs"]
    res = requests.post(url + "/generate", data="{not json", headers={"Content-Type": "application/json"}, timeout=30)
    assert res.status_code == 422 and "JSON" in res.json()["error"]["message"]
    res = _post(url, {"prompt": "x", "adapters": {"sst2": 1, refs["weight_lora"]: 1}})
    assert res.status_code == 400 and "cannot be mixed" in res.json()["error"]["message"]
    assert requests.get(url + "/healthz", timeout=30).json()["status"] == "ok"
    listing = requests.get(url + "/adapters", timeout=30).json()
    assert {row["ref"] for row in listing} >= set(refs["adapters"].values()) | {refs["weight_lora"]}
    assert any(not row["composable"] for row in listing)
    assert "/generate" in requests.get(url + "/openapi.json", timeout=30).json()["paths"]
    assert requests.get(url + "/docs", timeout=30).status_code == 200
    after = requests.get(url + "/healthz", timeout=30)
    assert after.status_code == 200  # nothing above hurt the replica


def test_fuzzed_requests_from_the_openapi_schema_never_get_a_5xx(serve_app):
    """schemathesis generates requests for every operation of the schema (loopback only):
    a few hundred cases in at most ~60 s, none may get a 5xx."""
    import time

    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings

    url = serve_app["url"] + "/small"
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    deadline = time.monotonic() + 60
    seen: dict[int, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()

        @settings(max_examples=120, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            if time.monotonic() > deadline:
                return
            res = case.call(base_url=url, timeout=120)
            seen[res.status_code] = seen.get(res.status_code, 0) + 1
            assert res.status_code < 500, f"{case.method} {case.path} {case.body!r} -> {res.status_code} {res.text[:200]}"

        check()
    assert sum(seen.values()) >= 100, seen
    assert any(200 <= s < 300 for s in seen) and any(400 <= s < 500 for s in seen), seen


def test_playground_in_headless_chromium(serve_app, tmp_path):
    """The page loads, lists the models, streams an answer and shows the router's weight bars.
    The screenshot is saved in the test's folder (and to docs/img/playground.png when
    LDP_SAVE_SCREENSHOTS=1)."""
    import os
    import shutil
    from pathlib import Path

    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromedriver not found: apt-get install chromium chromium-driver (see .ci/run)"
    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,900", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        browser.set_page_load_timeout(60)
        browser.get(serve_app["url"] + "/")
        # The page rebuilds the model list when /v1/models answers, so an element found a moment
        # ago can be gone: read the values in one script call and retry on a stale element.
        wait = WebDriverWait(browser, 240, ignored_exceptions=(StaleElementReferenceException,))
        wait.until(lambda b: "auto" in b.execute_script(
            "return Array.from(document.querySelectorAll('#model option'), o => o.value);"))
        Select(browser.find_element(By.ID, "model")).select_by_value("auto")
        for field, value in (("steps", "8"), ("tokens", "8")):
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        browser.find_element(By.ID, "go").click()
        wait.until(lambda b: b.find_element(By.ID, "status").text.startswith(("done", "error")))
        status = browser.find_element(By.ID, "status").text
        assert status.startswith("done: 8 steps"), status
        answer = browser.find_element(By.ID, "answer").text
        assert answer and "_" not in answer
        bars = browser.find_elements(By.CSS_SELECTOR, "#weights .bar")
        assert len(bars) == 5
        shot = tmp_path / "playground.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("LDP_SAVE_SCREENSHOTS") == "1":
            dest = Path(__file__).resolve().parents[2] / "docs" / "img" / "playground.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, dest)
    finally:
        browser.quit()


@pytest.mark.slow
def test_load_for_60_seconds_while_the_cache_evicts_and_reloads(serve_app):
    """Four clients for 60 s on the app with a 3-entry cache, cycling through five adapters and
    ``auto``: every request succeeds, and adapters were evicted and reloaded meanwhile."""
    import itertools
    import time

    url = serve_app["url"] + "/small"
    names = ["sst2", "agnews", "trec", "squad", "gsm8k", "auto", {"sst2": 1, "gsm8k": 1}]
    stop = time.monotonic() + 60
    failures: list[str] = []
    done = itertools.count()

    def client(i: int) -> None:
        session = requests.Session()
        n = 0
        while time.monotonic() < stop:
            body = {"prompt": f"client {i} request {n}", "adapters": names[(i * 3 + n) % len(names)],
                    "seed": n, "max_new_tokens": 2}
            res = session.post(url + "/generate", json=body, timeout=120)
            if res.status_code != 200:
                failures.append(f"{res.status_code} {res.text[:200]}")
            next(done)
            n += 1

    before = requests.get(url + "/healthz", timeout=30).json()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client, range(4)))
    after = requests.get(url + "/healthz", timeout=30).json()
    assert not failures, failures[:3]
    assert next(done) > 20
    assert after["evictions"] > before["evictions"] and after["loads"] > before["loads"] + 3
