"""The web console in a real Chromium (Debian's chromium and chromium-driver, through Selenium): sign in, search
with a held-out lfw-dev photo, review candidates, find the decisions in the audit page, the public transparency
page; grants and erasure hold for crops. Screenshots for the README with FACEGRID_SCREENSHOTS=1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.audit.log import read_records
from cluster.keys.access import Role, local_operator
from cluster.settings import Settings
from serving.threaded import serve_in_thread
from serving.usecases import collections, faces
from serving.usecases.context import Context
from tests.factories import index

pytestmark = pytest.mark.slow

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
DOCS = Path(__file__).resolve().parents[2] / "docs"
PEOPLE, INDEXED = 6, 3


@pytest.fixture(scope="module")
def world(
    lfw_images: Path, model_dir: Path, local_ray: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("chromium and chromedriver are not installed (make install installs Debian's packages)")
    people = [p for p in sorted(lfw_images.iterdir()) if len(list(p.glob("*.jpg"))) >= INDEXED + 1][:PEOPLE]
    source = tmp_path_factory.mktemp("console-source")
    hidden = tmp_path_factory.mktemp("console-hidden")
    held = {}
    for person in people:
        photos = sorted(person.glob("*.jpg"))
        (source / person.name).mkdir()
        for photo in photos[:INDEXED]:
            shutil.copy(photo, source / person.name / photo.name)
        held[person.name] = photos[INDEXED]
    shutil.copytree(people[0], hidden / people[0].name)
    ctx = Context(Settings(model_dir=model_dir, store=str(tmp_path_factory.mktemp("console-store"))))
    op = local_operator()
    for name, folder in (("cases", source), ("hidden", hidden)):
        asyncio.run(collections.create(ctx, op, name, 2, 1e-5))
        index(ctx, name, str(folder), max_faces=1)
    tokens = {
        "searcher": ctx.keys.create(Role.SEARCHER, ["cases"], label="investigator")[1],
        "auditor": ctx.keys.create(Role.AUDITOR, label="auditor")[1],
        "admin": ctx.keys.create(Role.ADMIN, label="admin")[1],
    }
    with serve_in_thread(ctx) as url:
        yield {"ctx": ctx, "url": url, "tokens": tokens, "held": held, "people": [p.name for p in people]}
    ctx.close()


@pytest.fixture(scope="module")
def browser(world: Any) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.implicitly_wait(10)
    yield driver
    driver.quit()


def _submit(browser: Any, button: Any) -> None:
    """Click and wait for the next page (a click does not wait for the navigation it starts). Asked about the old
    page mid-navigation, Chrome may answer "Node with given id does not belong to the document" instead of
    "stale": the wait asks again."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    button.click()
    WebDriverWait(browser, 60, ignored_exceptions=(WebDriverException,)).until(expected_conditions.staleness_of(old))


def _sign_in(browser: Any, world: Any, who: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(world["url"] + "/ui/signin")
    browser.find_element(By.ID, "token").send_keys(world["tokens"][who])
    _submit(browser, browser.find_element(By.ID, "signin"))


def _form_token(html: str) -> str:
    return html.split('name="csrf" value="')[1].split('"')[0]


def _session(url: str, token: str) -> tuple[httpx.Client, str]:
    """A console session as a browser gets one (the sign-in form's token, then the session's own)."""
    client = httpx.Client(base_url=url, timeout=60)
    signin = _form_token(client.get("/ui/signin").text)
    assert client.post("/ui/signin", data={"token": token, "csrf": signin}).status_code == 303
    return client, _form_token(client.get("/ui/search").text)


def _shot(browser: Any, name: str) -> None:
    if os.environ.get("FACEGRID_SCREENSHOTS"):
        browser.save_screenshot(str(DOCS / f"console-{name}.png"))


def _review(browser: Any, candidate: Any, decision: str) -> None:
    from selenium.webdriver.common.by import By

    candidate.find_element(By.CSS_SELECTOR, f"input[value='{decision}']").click()
    _submit(browser, candidate.find_element(By.CSS_SELECTOR, "form.review button"))


def test_search_review_audit_transparency(browser: Any, world: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _sign_in(browser, world, "searcher")
    assert browser.current_url.endswith("/ui/search")
    options = [o.text for o in Select(browser.find_element(By.ID, "collection")).options]
    assert options == ["cases"]  # no grant on "hidden": not offered
    button = browser.find_element(By.ID, "search")
    assert not button.is_enabled()  # the case id comes first
    Select(browser.find_element(By.ID, "purpose")).select_by_visible_text("system-test")
    browser.find_element(By.ID, "case_id").send_keys("CASE-UI-1")
    assert button.is_enabled()
    person = world["people"][0]
    browser.find_element(By.ID, "image").send_keys(str(world["held"][person].resolve()))
    _submit(browser, button)

    candidates = browser.find_elements(By.CSS_SELECTOR, "#face-1 li.candidate")
    assert len(candidates) >= 2
    assert candidates[0].find_element(By.CSS_SELECTOR, ".who").text.startswith(person)
    crop = candidates[0].find_element(By.CSS_SELECTOR, "img.crop")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", crop) > 0
    assert "unreviewed (0 of" in browser.page_source
    _shot(browser, "search")
    seq = int(browser.find_element(By.ID, "search-link").text.lstrip("#"))
    _review(browser, candidates[0], "possible match")
    assert browser.current_url.endswith(f"/ui/searches/{seq}")
    second = browser.find_elements(By.CSS_SELECTOR, "#face-1 li.candidate")[1]
    _review(browser, second, "not a match")
    assert (
        "decided: <b>possible match</b>" in browser.page_source and "decided: <b>not a match</b>" in browser.page_source
    )
    _shot(browser, "review")
    _submit(browser, browser.find_element(By.ID, "signout"))

    _sign_in(browser, world, "auditor")
    browser.get(world["url"] + "/ui/audit?action=review")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.record")
    assert len(rows) == 2 and all(f"search #{seq}" in r.text for r in rows)
    assert {"possible match on rank 1", "not a match on rank 2"} == {r.text.split(": ", 1)[1] for r in rows}
    assert "verified" in browser.find_element(By.ID, "verify").text
    _shot(browser, "audit")
    _submit(browser, browser.find_element(By.ID, "signout"))

    browser.get(world["url"] + "/ui/transparency")  # public: no key
    counts = browser.find_element(By.ID, "counts").text
    assert "reviews recorded 2" in counts and "top candidates rejected by reviewers 0 of 1" in counts
    assert "searches fully reviewed" in counts

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    requested = [e["message"] for e in browser.get_log("performance") if '"Network.requestWillBeSent"' in e["message"]]
    urls = [json.loads(m)["message"]["params"]["request"]["url"] for m in requested]
    assert urls and all(u.startswith(world["url"]) or u.startswith("data:") for u in urls), urls


def test_grants_and_erasure_hold_for_crops(browser: Any, world: Any) -> None:
    from selenium.webdriver.common.by import By

    ctx, url = world["ctx"], world["url"]
    token = world["tokens"]["searcher"]
    client, csrf = _session(url, token)
    person = world["people"][1]
    probe = world["held"][person].read_bytes()
    data = {"collection": "cases", "purpose": "system-test", "case_id": "CASE-UI-2", "csrf": csrf}
    page = client.post("/ui/search", data=data, files={"image": ("p.jpg", probe)}).text
    seq = int(page.split('id="search-link">#')[1].split("<")[0])
    face = page.split('data-face-id="')[1].split('"')[0]
    assert client.get(f"/ui/crops/cases/{face}", params={"search": seq}).status_code == 200
    assert client.get(f"/ui/crops/cases/{face}", params={"search": seq}).headers["cache-control"] == "private, no-store"
    hidden_face = ctx.collections.faces(ctx.collections.get("hidden"), ["face_id"]).column("face_id")[0].as_py()
    assert client.get(f"/ui/crops/hidden/{hidden_face}", params={"search": seq}).status_code == 403
    refused = client.post("/ui/search", data={**data, "collection": "hidden"}, files={"image": ("p.jpg", probe)})
    assert refused.status_code == 403 and "FORBIDDEN" in refused.text
    # The same refusal through the browser.
    _sign_in(browser, world, "searcher")
    browser.get(f"{url}/ui/crops/hidden/{hidden_face}?search={seq}")
    assert "may not search" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(url + "/ui/collections")
    assert "hidden" not in browser.find_element(By.ID, "collections").text
    # An erased face has no crop, even for the search that returned it.
    asyncio.run(faces.erase(ctx, local_operator(), "cases", [face], []))
    assert client.get(f"/ui/crops/cases/{face}", params={"search": seq}).status_code == 404
    views = [r for r in read_records(ctx.store) if r["action"] == "view-face"]
    assert {r["outcome"] for r in views} >= {"ok", "refused", "error"}


def test_pick_a_face_search_people_and_add_a_photo(browser: Any, world: Any, tmp_path: Path) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from serving.usecases import people

    ctx, op = world["ctx"], local_operator()
    person, stranger = world["people"][2], world["people"][3]
    records = ctx.collections.faces(ctx.collections.get("cases"), ["face_id", "external_image_id"]).to_pylist()
    mine = [f["face_id"] for f in records if f["external_image_id"].startswith(person)]
    asyncio.run(people.create(ctx, op, "cases", "person-of-interest"))
    asyncio.run(people.associate(ctx, op, "cases", "person-of-interest", mine))
    canvas = Image.new("RGB", (800, 500), (128, 128, 128))
    canvas.paste(Image.open(world["held"][stranger]).convert("RGB").resize((500, 500)), (0, 0))
    canvas.paste(Image.open(world["held"][person]).convert("RGB").resize((250, 250)), (540, 120))
    group = tmp_path / "group.jpg"
    canvas.save(group, quality=92)

    def search(photo: Path, by: str) -> None:
        browser.get(world["url"] + "/ui/search")
        Select(browser.find_element(By.ID, "purpose")).select_by_visible_text("system-test")
        browser.find_element(By.ID, "case_id").send_keys("CASE-UI-3")
        if by == "people":
            browser.find_element(By.ID, "by-people").click()
        browser.find_element(By.ID, "image").send_keys(str(photo.resolve()))
        _submit(browser, browser.find_element(By.ID, "search"))

    _sign_in(browser, world, "searcher")
    search(group, "faces")
    boxes = browser.find_elements(By.CSS_SELECTOR, "#pick-form input[name='face_index']")
    assert len(boxes) == 2  # faces are numbered largest first: the person is the second
    boxes[1].click()
    _submit(browser, browser.find_element(By.ID, "search-face"))
    first = browser.find_element(By.CSS_SELECTOR, "li.candidate .who").text
    assert first.startswith(person), first
    record = [r for r in read_records(ctx.store) if r["action"] == "search"][-1]
    assert record["face_index"] == 1 and record["case_id"] == "CASE-UI-3"

    search(world["held"][person], "people")
    assert (
        browser.find_elements(By.CSS_SELECTOR, "section.person")[0].get_attribute("data-user-id")
        == "person-of-interest"
    )
    evidence = browser.find_elements(By.CSS_SELECTOR, "section.person img.crop")
    assert evidence and browser.execute_script("return arguments[0].naturalWidth", evidence[0]) > 0
    _submit(browser, browser.find_element(By.ID, "signout"))

    _sign_in(browser, world, "admin")
    browser.get(world["url"] + "/ui/collections/cases")
    assert "people" in browser.page_source.lower() and "similarity" in browser.page_source
    assert "images 18" in browser.find_element(By.ID, "jobs").text  # the fixture's index job: 6 people x 3
    browser.find_element(By.ID, "add-image").send_keys(str(group.resolve()))
    browser.find_element(By.ID, "external-id").send_keys("group-photo")
    _submit(browser, browser.find_element(By.ID, "add"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#added li")) == 2  # both faces of the group photo
    assert browser.find_element(By.ID, "unindexed").text == "none"
    _shot(browser, "collection")


def test_uploaded_faces_show_their_kept_photo_and_a_collection_keeping_none_says_so(browser: Any, world: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from cluster.collections.photos import KeptPhotos
    from serving.usecases import ingest

    ctx, op, person = world["ctx"], local_operator(), world["people"][4]
    blob = sorted((world["held"][person].parent).glob("*.jpg"))[0].read_bytes()
    asyncio.run(collections.create(ctx, op, "unkept", 1, 1e-5, keep_photos=False))
    uploaded = {}
    for name in ("cases", "unkept"):
        added = asyncio.run(ingest.add_faces(ctx, op, name, blob, external_image_id=f"upload-{person}", max_faces=1))
        uploaded[name] = added.face_records[0].face_id

    _sign_in(browser, world, "admin")
    for name in ("cases", "unkept"):
        browser.get(world["url"] + "/ui/search")
        Select(browser.find_element(By.ID, "collection")).select_by_visible_text(name)
        Select(browser.find_element(By.ID, "purpose")).select_by_visible_text("system-test")
        browser.find_element(By.ID, "case_id").send_keys("CASE-UI-5")
        browser.find_element(By.ID, "image").send_keys(str(world["held"][person].resolve()))
        _submit(browser, browser.find_element(By.ID, "search"))
        candidate = browser.find_element(By.CSS_SELECTOR, f"li.candidate[data-face-id='{uploaded[name]}']")
        if name == "cases":  # kept: its crop shows, as an indexed object's does
            crop = candidate.find_element(By.CSS_SELECTOR, "img.crop")
            assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", crop) > 0
        else:
            assert "keeping photos off" in candidate.find_element(By.CSS_SELECTOR, ".photo-gone").text
            assert not candidate.find_elements(By.CSS_SELECTOR, "img.crop")
    _submit(browser, browser.find_element(By.ID, "signout"))
    # Erasing the face erases its photo: the store holds no object of it afterwards.
    sha256 = hashlib.sha256(blob).hexdigest()
    assert ctx.store.exists(KeptPhotos(ctx.store, "cases").key(sha256))
    asyncio.run(faces.erase(ctx, op, "cases", [uploaded["cases"]], []))
    assert not [i.key for i in ctx.store.list("collections/cases/") if sha256 in i.key]


def test_an_admin_sees_an_upgrade_and_compares_the_versions(browser: Any, world: Any) -> None:
    from selenium.webdriver.common.by import By

    from cluster.indexing.upgrade import UpgradeRequest
    from serving.usecases import versions

    ctx = world["ctx"]
    request = UpgradeRequest(collection="hidden", recipe="mtcnn-sface")
    summary = asyncio.run(versions.upgrade(ctx, local_operator(), request))
    assert summary["ready"] and summary["faces"] > 0
    _sign_in(browser, world, "admin")
    browser.get(world["url"] + "/ui/collections/hidden")
    assert "mtcnn-sface" in browser.find_element(By.ID, "upgrade").text
    sample = browser.find_element(By.ID, "compare-sample")
    sample.clear()
    sample.send_keys("5")
    _submit(browser, browser.find_element(By.ID, "compare"))
    assert "searches: top-10 overlap" in browser.find_element(By.ID, "comparison").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#comparison-probes tr")) > 1
    _submit(browser, browser.find_element(By.ID, "signout"))
    assert any(r.get("action") == "compare-versions" and r["outcome"] == "ok" for r in read_records(ctx.store))


ATTACK = """<!doctype html><html><body><form method="post" action="{action}" enctype="{enctype}">{fields}</form>
<script>document.forms[0].submit()</script></body></html>"""


@contextmanager
def _attacker() -> Iterator[Any]:
    """Another web server on this machine: its pages post forms to the console (as an attacker's site would)."""
    pages: dict[str, bytes] = {}

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    server.pages = pages  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()


def test_forged_forms_are_refused_audited_and_change_nothing(browser: Any, world: Any) -> None:
    """From another port of the same host (same-site) and from another site (localhost against 127.0.0.1), a
    page posts to every console route that changes something, sign-in included, while the victim is signed in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ctx, url = world["ctx"], world["url"]
    _sign_in(browser, world, "admin")
    cookie = {c["name"]: c["value"] for c in browser.get_cookies()}["facegrid_console"]
    assert all(token not in cookie and cookie not in token for token in world["tokens"].values())
    assert "fgk_" not in cookie and not any(cookie in r.get("claimed_key", "") for r in read_records(ctx.store))
    victim = browser.find_element(By.CSS_SELECTOR, "form.who span").text
    attacker_token = ctx.keys.create(Role.ADMIN, label="attacker")[1]
    routes = {
        "/ui/signin": ("application/x-www-form-urlencoded", {"token": attacker_token}),
        "/ui/review": ("application/x-www-form-urlencoded", {"seq": "1", "face_id": "0", "decision": "match"}),
        "/ui/search": ("multipart/form-data", {"collection": "cases", "purpose": "system-test", "case_id": "X"}),
        "/ui/collections/cases/faces": ("multipart/form-data", {"external_image_id": "forged"}),
        "/ui/signout": ("application/x-www-form-urlencoded", {}),
    }
    before = len(read_records(ctx.store))
    with _attacker() as server:
        port = server.server_address[1]
        for host in ("127.0.0.1", "localhost"):  # same-site, then cross-site
            for route, (enctype, fields) in routes.items():
                inputs = "".join(f'<input name="{k}" value="{v}">' for k, v in fields.items())
                server.pages[route] = ATTACK.format(action=url + route, enctype=enctype, fields=inputs).encode()
                browser.get(f"http://{host}:{port}{route}")
                WebDriverWait(browser, 30).until(lambda b: b.current_url.startswith(url))
                assert "CSRF_REFUSED" in browser.find_element(By.TAG_NAME, "body").text, (host, route)
    added = read_records(ctx.store)[before:]
    refused = [r for r in added if r["action"] == "console-form"]
    assert len(refused) == 2 * len(routes) and all(r["outcome"] == "refused" for r in refused)
    assert {r["route"] for r in refused} == set(routes)
    assert {r["key_id"] for r in refused if r["route"] != "/ui/signin"} <= {None, victim.split()[1]}
    assert not [r for r in added if r["action"] in ("review", "search", "index-faces", "authenticate")]
    browser.get(url + "/ui/search")  # still signed in, as the victim: neither signed out nor swapped
    assert browser.find_element(By.CSS_SELECTOR, "form.who span").text == victim
