"""The /ui search playground in Debian's Chromium (headless, driven by pytest-playwright; nothing is downloaded)
against a real server on loopback: search, precision switch, filter, Matryoshka dimensions, compare (overlap and
recall checked against the Index API), contextual hits between their neighbours, copy as curl / Python (run),
embed and its heat map, reports, keyboard use, a narrow screen, a missing / wrong key and a 429.

``PPLX_EMBED_UI_SCREENSHOTS=docs/ui`` writes the screenshots of docs/ui.md (else they go to a temp folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect

from pplx_embed.index import Hit, Index
from pplx_embed.serve.app import ServeConfig
from pplx_embed.serve.auth import KeyRing
from pplx_embed.serve.background import serve_in_thread
from pplx_embed.serve.limits import ServeLimits

CHROMIUM = os.environ.get("PPLX_EMBED_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs it with apt-get)")

KEY = "sk-ui"
TEXTS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Le chat dort sur le canapé.",
         "Madrid is the capital of Spain.", "Binary embeddings are 32x smaller than float32 ones.",
         "La tour Eiffel est à Paris.", "Rome is the capital of Italy.", "Late chunking embeds chunks in context.",
         "Lisbon lies on the Tagus.", "Le Louvre est un musée à Paris."]
LANGS = ["fr" if any(w in t for w in ("Le ", "La ")) else "en" for t in TEXTS]
DOCUMENT = ["Paris is the capital of France.", "It has about two million people.", "The Seine flows through it.",
            "Its museums are famous.", "The metro has sixteen lines.", "Winters are mild."]


# pytest-playwright's fixtures, with Playwright and the browser kept to this module: sync Playwright holds an
# event loop in the main thread while it runs, which would break asyncio.run in test modules after this one
@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def browser_context_args():
    return {"viewport": {"width": 1100, "height": 760}, "permissions": ["clipboard-read", "clipboard-write"]}


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return Path(os.environ.get("PPLX_EMBED_UI_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))


def shot(page, folder: Path, name: str, full_page: bool = False) -> None:
    """A small screenshot (a 64-colour PNG) for docs/ui.md."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    with Image.open(path) as image:
        image.convert("RGB").quantize(64).save(path, optimize=True)


def eval_report(embedder, root: Path) -> Path:
    """A real `pplx-embed eval` report (tables and plots) on a tiny BEIR set written here."""
    from pplx_embed.eval.runner import run, write_report
    from pplx_embed.eval.tasks import Settings

    data = root / "tiny-beir"
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                               for i, t in enumerate(TEXTS)))
    queries = {"q0": "capital of France", "q1": "German capital", "q2": "small binary vectors", "q3": "cat sleeping"}
    (data / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\nq2\td4\t1\nq3\td2\t1\n")
    settings = Settings(dimensions=(128, None))
    out = root / "reports" / "tiny"
    write_report(run(embedder, data, settings), embedder, data, out, 1.0, settings)
    return out.parent


@pytest.fixture(scope="module")
def served(minilm, tiny_pplx, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    docs, ctx, tiny = root / "docs", root / "ctx", root / "tiny"
    with Index.create(docs, minilm.name, embedder=minilm, store_float=True) as ix:
        ix.add(TEXTS, ids=[f"t{i}" for i in range(len(TEXTS))], metadata=[{"lang": lang} for lang in LANGS])
    with Index.create(ctx, minilm.name, embedder=minilm, contextual=True) as ix:
        ix.add_documents([DOCUMENT, ["Berlin is in Germany.", "It has 3.7 million people."]],
                         doc_ids=["paris", "berlin"])
    with Index.create(tiny, tiny_pplx.name, embedder=tiny_pplx) as ix:
        ix.add(TEXTS, ids=[f"t{i}" for i in range(len(TEXTS))])
    config = ServeConfig(models=[("minilm", minilm), ("tiny", tiny_pplx)],
                         splits={"ab": [("minilm", 50), ("tiny", 50)]},
                         indexes=[("docs", str(docs)), ("ctx", str(ctx)), ("tiny", str(tiny))],
                         reports=eval_report(minilm, root), keys=KeyRing({KEY: "*"}), warmup=False)
    with serve_in_thread(config) as (url, _):
        yield url, Index.open(docs, embedder=minilm)


def open_ui(page, url: str, key: str = KEY) -> None:
    page.goto(url + "/ui")
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")
    page.wait_for_selector("body[data-ready]")


def search(page, query: str, **fields) -> list[tuple[str, str]]:
    """Fill the search form, press Enter in Query, wait for the answer → [(id, score shown)]."""
    panel = page.locator("#panel-search")
    for label, value in fields.items():
        field = panel.get_by_label(label, exact=True)
        field.fill(str(value)) if label == "k" else field.select_option(str(value))
    before = int(page.locator("#s-out").get_attribute("data-searches"))
    panel.get_by_label("Query", exact=True).fill(query)
    panel.get_by_label("Query", exact=True).press("Enter")
    expect(page.locator("#s-out")).to_have_attribute("data-searches", str(before + 1))
    return shown(page, "#s-out")


def shown(page, pane: str) -> list[tuple[str, str]]:
    return [tuple(hit) for hit in page.locator(f"{pane} .hit").evaluate_all(
        "items => items.map(i => [i.dataset.id, i.querySelector('.score').textContent])")]


def same(page_hits: list[tuple[str, str]], hits) -> bool:
    """The page shows these hits: the same ids in order, the scores to the 4 decimals shown."""
    return [i for i, _ in page_hits] == [h.id for h in hits] and \
        all(abs(float(score) - h.score) <= 6e-5 for (_, score), h in zip(page_hits, hits))


def message(page) -> str:
    page.wait_for_selector("#message:not([hidden])")
    return page.locator("#message-text").inner_text()


def test_search_precisions_dimensions_and_filter(served, page, shots):
    url, ix = served
    query = "Which city is the capital of France?"
    open_ui(page, url)
    assert page.locator("#message").is_hidden()
    assert same(search(page, query), ix.search(query, 10))  # binary + int8 rescore, the default
    timings = page.locator("#s-out .timings").inner_text()
    assert all(stage in timings for stage in ("embed", "first stage", "rescore", "fetch", "round trip"))
    assert "48 B searched + 384 B rescoring per vector" in page.locator("#s-out .summary").inner_text()
    shot(page, shots, "search")
    options = page.locator("#panel-search").get_by_label("Precision").evaluate(
        "s => [...s.options].map(o => o.value)")
    assert options == ["binary+rescore", "binary", "int8", "float"]  # what the index holds (store_float)
    assert same(search(page, query, Precision="binary"), ix.search(query, 10, rescore="none"))
    assert same(search(page, query, Precision="float"), ix.search(query, 10, rescore="float", exact=True))
    assert "1536 B per vector" in page.locator("#s-out .summary").inner_text()
    assert same(search(page, query, Precision="int8", Dimensions=128), ix.search(query, 10, exact=True, dimensions=128))

    page.locator("#panel-search").get_by_label("Filter key 1").fill("lang")
    page.locator("#panel-search").get_by_label("Filter value 1").fill("fr")
    hits = search(page, query, Precision="binary+rescore", Dimensions=384)
    assert same(hits, ix.search(query, 10, filter={"lang": "fr"})) and len(hits) == LANGS.count("fr")
    assert page.locator("#s-out .meta dd").all_inner_texts() == ['"fr"'] * len(hits)
    shot(page, shots, "filter")

    page.locator("#panel-search").get_by_label("Filter key 1").fill("bad key!")
    search(page, query)
    text = message(page)
    assert "refused (400 invalid_value)" in text and "filter key 'bad key!' is not valid" in text
    page.locator("#panel-search").get_by_label("Remove filter 1").click()
    search(page, query)
    assert page.locator("#message").is_hidden()


def test_contextual_hit_is_shown_between_its_neighbours(served, page, shots):
    url, _ = served
    open_ui(page, url)
    page.locator("#panel-search").get_by_label("Index").select_option("ctx")
    search(page, "How many people live in Paris?", k=5)
    hit = page.locator('#s-out .hit[data-id="paris#1"]')
    chunks = hit.locator(".chunk").evaluate_all(
        "items => items.map(i => [i.dataset.position || null, i.classList.contains('hit-chunk'), i.textContent])")
    # the hit (position 1) highlighted after chunk 0 and before chunks 2 and 3; "…": the document goes on
    assert chunks == [["0", False, "§0" + DOCUMENT[0]], ["1", True, "§1" + DOCUMENT[1]],
                      ["2", False, "§2" + DOCUMENT[2]], ["3", False, "§3" + DOCUMENT[3]], [None, False, "…"]]
    assert hit.locator("mark").inner_text() == DOCUMENT[1]
    assert hit.locator(".doc-title").inner_text() == "document paris, chunk 1"
    shot(page, shots, "contextual")


def test_compare_overlap_and_recall_against_exact(served, page, shots):
    url, ix = served
    query, k = "European capitals", 5
    open_ui(page, url)
    page.get_by_role("tab", name="Compare").click()
    panel = page.locator("#panel-compare")
    panel.get_by_label("Preset").select_option(label="docs: binary vs binary + rescore")
    assert panel.get_by_label("Precision A").input_value() == "binary"
    panel.get_by_label("k", exact=True).fill(str(k))
    panel.get_by_label("Query").fill(query)
    panel.get_by_label("Query").press("Enter")
    page.wait_for_selector("#c-recall-b")
    a = [h.id for h in ix.search(query, k, rescore="none")]
    b = [h.id for h in ix.search(query, k)]
    exact = [h.id for h in ix.search(query, k, rescore="float", exact=True)]
    assert [i for i, _ in shown(page, "#c-out-a")] == a and [i for i, _ in shown(page, "#c-out-b")] == b
    overlap = len(set(a) & set(b)) / k
    assert page.locator("#c-overlap strong").inner_text() == f"{overlap:.2f}"
    for side, ids in (("a", a), ("b", b)):
        recall = page.locator(f"#c-recall-{side}")
        assert recall.locator("strong").inner_text() == f"{len(set(ids) & set(exact)) / k:.2f}"
        assert "vs exact float search at 384 dims" in recall.inner_text()
    shot(page, shots, "compare", full_page=True)

    panel.get_by_label("Preset").select_option(label="A/B split ab: minilm (50) vs tiny (50)")
    panel.get_by_label("Query").press("Enter")
    expect(page.locator("#c-out-b h2")).to_contain_text("tiny")
    assert "model sentence-transformers/all-MiniLM-L6-v2" in page.locator("#c-out-a .summary").inner_text()
    assert "model " + str(ix.embedder.name) not in page.locator("#c-out-b .summary").inner_text()
    assert page.locator("#c-recall-b strong").inner_text() != "n/a"


def test_copy_as_python_and_curl_run_the_same_request(served, page):
    url, _ = served
    open_ui(page, url)
    page.locator("#panel-search").get_by_label("Filter key 1").fill("lang")
    page.locator("#panel-search").get_by_label("Filter value 1").fill("en")
    hits = search(page, "capital cities", k=3, Precision="int8")
    env = {**os.environ, "PPLX_EMBED_API_KEY": KEY}
    page.get_by_role("button", name="Copy as Python").click()
    snippet = page.locator("#s-out pre.snippet").inner_text()
    assert page.evaluate("navigator.clipboard.readText()") == snippet
    assert "PPLX_EMBED_API_KEY" in snippet and KEY not in snippet  # the key is read from the environment
    run = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert same(hits, [Hit(**hit) for hit in answer["data"][0]["hits"]])
    assert answer["precision"] == "int8"
    page.get_by_role("button", name="Copy as curl").click()
    curl = page.locator("#s-out pre.snippet").inner_text()
    assert curl.startswith(f"curl -s '{url}/v1/indexes/docs/search'") and '"filter":{"lang":"en"}' in curl
    if shutil.which("curl"):
        run = subprocess.run(["bash", "-c", curl], env=env, capture_output=True, text=True, timeout=120)
        assert [h["id"] for h in json.loads(run.stdout)["data"][0]["hits"]] == [i for i, _ in hits]


def heat_map(page) -> list[tuple[int, int, float]]:
    return page.locator("#e-heat td").evaluate_all(
        "cells => cells.map(c => [+c.dataset.i, +c.dataset.j, +c.textContent])")


def test_embed_tab_vectors_bytes_and_heat_map(served, page, minilm, shots):
    url, _ = served
    open_ui(page, url)
    page.get_by_role("tab", name="Embed").click()
    panel = page.locator("#panel-embed")
    texts = panel.get_by_label("Texts, one per line").input_value().splitlines()
    panel.get_by_role("button", name="Embed").click()
    page.wait_for_selector("#e-heat table")
    headers = page.locator("#e-out table.vectors thead th").all_inner_texts()
    assert headers[2:] == ["float32 · 1536 B/vector", "int8 · 384 B/vector", "binary · 48 B/vector"]
    int8 = minilm.encode(texts, quantization="int8")
    for i, cell in enumerate(page.locator('#e-out td[data-kind="int8"]').all_inner_texts()):
        assert np.abs(np.array(cell.rstrip(" …").split(), int) - int8[i, :6]).max() <= 1  # may share a batch
    floats = minilm.encode(texts)
    cosine = floats @ floats.T
    heat = heat_map(page)
    assert len(heat) == len(texts) ** 2
    assert all(abs(value - cosine[i, j]) <= 0.011 for i, j, value in heat)
    shot(page, shots, "embed")
    page.get_by_label("Similarity at").select_option("binary")
    bits = minilm.encode(texts, quantization="binary")
    hamming = minilm.similarity(bits, bits)
    heat = heat_map(page)
    assert all(abs(value - hamming[i, j]) <= 0.011 for i, j, value in heat)

    panel.get_by_label("One document's chunks (late chunking)").check()
    panel.get_by_label("Dimensions").select_option("128")
    panel.get_by_role("button", name="Embed").click()
    expect(page.locator("#e-out caption").first).to_contain_text("late chunking")
    headers = page.locator("#e-out table.vectors thead th").all_inner_texts()
    assert headers[2:] == ["float32 · 512 B/vector", "int8 · 128 B/vector", "binary · 16 B/vector"]
    chunks = minilm.encode_contextual([texts], quantization="int8", dimensions=128)[0]
    for i, cell in enumerate(page.locator('#e-out td[data-kind="int8"]').all_inner_texts()):
        assert np.abs(np.array(cell.rstrip(" …").split(), int) - chunks[i, :6]).max() <= 1


def test_reports_tab_shows_the_eval_tables_and_plots(served, page, shots):
    url, _ = served
    open_ui(page, url)
    page.get_by_role("tab", name="Reports").click()
    report = page.locator("#r-out")
    grid = report.locator("table", has=page.locator("th", has_text="nDCG@10")).first
    expect(report.locator("img").first).to_have_attribute("src", re.compile("^blob:"))  # fetched with the key
    deadline = time.monotonic() + 30
    while report.locator("img").first.evaluate("img => img.naturalWidth") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert report.locator("img").first.evaluate("img => img.naturalWidth") > 100  # the plot decoded
    assert "Evaluation of" in report.locator("h1").first.inner_text()
    assert grid.locator("th").all_inner_texts()[:3] == ["precision", "dims", "bytes/vector"]
    assert grid.locator("tbody tr").count() == 8  # 4 precisions x 2 dimensions
    report.locator("img").first.scroll_into_view_if_needed()
    shot(page, shots, "reports")
    assert httpx.get(url + "/ui/reports/files/tiny/quality_vs_bytes.png").status_code == 401
    got = httpx.get(url + "/ui/reports/files/tiny/quality_vs_bytes.png", headers={"Authorization": f"Bearer {KEY}"})
    assert got.status_code == 200 and got.content[:4] == b"\x89PNG"
    for bad in ("../ui/docs/index.sqlite", "tiny/../../docs/index.sqlite", "tiny/nope.png",
                "%2e%2e/tiny-beir/corpus.jsonl"):
        r = httpx.get(url + "/ui/reports/files/" + bad, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code in (401, 404), bad  # never a file outside --reports
        assert r.status_code == 401 or r.json()["error"]["code"] == "not_found"


def test_keyboard_labels_and_narrow_screen(served, page, shots):
    url, _ = served
    open_ui(page, url)
    unlabelled = page.evaluate("""[...document.querySelectorAll('input, select, textarea')]
        .filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.id || e.name)""")
    assert unlabelled == []
    page.get_by_role("tab", name="Search").focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-compare"
    assert page.locator("#panel-compare").is_visible() and page.locator("#panel-search").is_hidden()
    page.keyboard.press("End")
    assert page.get_by_role("tab", name="Reports").get_attribute("aria-selected") == "true"
    page.keyboard.press("Home")
    page.keyboard.press("Tab")  # into the Search panel, then through its fields in order
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "s-index"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "s-query"
    page.keyboard.type("capital of Germany")
    page.keyboard.press("Enter")
    page.wait_for_selector("#s-out .hit")

    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than a phone
    query = page.locator("#s-query").bounding_box()
    assert query["width"] > 300  # fields stack at full width
    shot(page, shots, "narrow", full_page=True)


def test_missing_and_wrong_key_are_explained(served, page, shots):
    url, _ = served
    page.goto(url + "/ui")
    assert message(page) == "This server needs an API key. Enter it above."
    assert page.evaluate("document.activeElement.id") == "api-key"
    assert page.locator("#s-index option").count() == 0  # nothing is readable without the key
    page.get_by_label("API key").fill("sk-wrong")
    page.get_by_label("API key").press("Enter")
    expect(page.locator("#message-text")).to_contain_text("refused")
    assert message(page) == "The API key was refused (invalid API key). Enter a valid key above."
    shot(page, shots, "wrong-key")
    page.get_by_label("API key").fill(KEY)
    page.get_by_label("API key").press("Enter")
    page.wait_for_selector("body[data-ready]")
    assert page.locator("#message").is_hidden() and page.locator("#s-index option").count() == 3


def in_flight(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith('pplx_requests_in_flight{model="minilm"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_busy_server_is_shown_with_its_retry_after(minilm, tmp_path, page, shots):
    """One request place (--max-concurrent-requests 1) held by a long embedding request: the page's search gets
    a real 429 and says so, with the wait the server asked for; once the place is free, Retry works."""
    with Index.create(tmp_path / "docs", minilm.name, embedder=minilm) as ix:
        ix.add(TEXTS, ids=[f"t{i}" for i in range(len(TEXTS))])
    config = ServeConfig(models=[("minilm", minilm)], indexes=[("docs", str(tmp_path / "docs"))], warmup=False,
                         limits=ServeLimits(max_concurrent_requests=1))
    with serve_in_thread(config) as (url, _):
        page.goto(url + "/ui")
        page.wait_for_selector("body[data-ready]")  # no keys on this server: no key field
        assert page.locator("#api-key").count() == 0
        body = json.dumps({"input": [" ".join(["curiosity"] * 200)] * 400}).encode()
        host, port = url.removeprefix("http://").split(":")
        holder = socket.create_connection((host, int(port)))
        holder.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)
        try:
            deadline = time.monotonic() + 60
            while in_flight(url) < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            search_box = page.locator("#panel-search").get_by_label("Query", exact=True)
            search_box.fill("capital of Spain")
            search_box.press("Enter")
            text = message(page)
            assert text.startswith("The server is busy (model 'minilm' has 1 requests in flight (limit 1)")
            assert text.endswith("Retry after 1 s.")
            assert page.locator("#message").get_attribute("class") == "message busy"
            shot(page, shots, "busy")
        finally:
            holder.close()  # the client goes away: the server drops its queued work and frees the place
        deadline = time.monotonic() + 60
        while in_flight(url) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        page.get_by_role("button", name="Retry").click()
        page.wait_for_selector("#s-out .hit")
        assert page.locator("#message").is_hidden()
        assert shown(page, "#s-out")[0][0] == "t3"
