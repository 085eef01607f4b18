"""The labelling app as users start it (``cnn-codes label``, a real server on 127.0.0.1): the
token guards every request, only the data set's images are served, decisions from two tabs all
reach the labels file, a kill while writing loses nothing written before, and images added to
the folder join the pool with codes computed in the background."""
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import CNN_CODES, make_images, user_env

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.slow


def flat_folder(tmp_path, per_class=8, labelled=2):
    """Images of 3 colours in one folder, ``labelled`` per class named in labels.csv."""
    src = make_images(tmp_path / "src", n_classes=3, per_class=per_class)
    root = tmp_path / "data"
    root.mkdir()
    rows = []
    for c in range(3):
        for i, p in enumerate(sorted((src / f"class{c}").rglob("*.*"))):
            name = f"class{c}_{i:02d}{p.suffix}"
            shutil.copy(p, root / name)
            if i < labelled:
                rows.append(f"{name},class{c}\n")
    (root / "labels.csv").write_text("path,label\n" + "".join(rows))
    return root


class App:
    def __init__(self, tmp_path, root, *extra, env=None):
        self.root = root
        self.proc = subprocess.Popen(
            [CNN_CODES, "label", "--data", str(root), "--cache-dir", str(tmp_path / "cache"), "--weights", "none",
             "--image-size", "32", "--no-open", "--no-progress", *extra],
            env=env or user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = ""
        deadline = time.time() + 180
        while time.time() < deadline and "token=" not in line:
            line = self.proc.stdout.readline()
            assert line or self.proc.poll() is None, self.proc.stderr.read()
        self.url = line.split("open ", 1)[1].strip()
        self.base, self.token = self.url.split("/label?token=")
        self.port = int(self.base.rsplit(":", 1)[1])

    def request(self, path, body=None, token=True, headers=None):
        url = self.base + path
        if token:
            url += ("&" if "?" in url else "?") + "token=" + (self.token if token is True else token)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, headers={
            **({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, path, body=None):
        status, data = self.request(path, body)
        assert status == 200, data
        return json.loads(data)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    a = App(tmp, flat_folder(tmp))
    yield a
    a.stop()


def test_the_printed_address_answers_with_the_page(app):
    assert all(c.isalnum() or c in "_-" for c in app.token) and len(app.token) >= 16
    status, page = app.request("/label?token=" + app.token, token=False)
    assert status == 200 and b"Label next" in page


def test_every_request_without_the_token_is_refused(app):
    images = app.json("/api/next")["images"]
    some = images[0]["path"]
    for path in ("/label", "/review", "/progress", "/api/next", "/api/progress", f"/image/{some}"):
        assert app.request(path, token=False)[0] == 403, path
        assert app.request(path, token="wrong" + app.token[5:])[0] == 403, path
    before = (app.root / "labels.csv").read_bytes()
    status, _ = app.request("/api/decide", {"path": some, "labels": ["class0"]}, token=False)
    assert status == 403 and (app.root / "labels.csv").read_bytes() == before
    assert app.request("/api/undo", {}, token=False)[0] == 403
    # the same requests with the token in a header pass: the gate is the token, not the path
    assert app.request("/api/progress", token=False, headers={"X-Token": app.token})[0] == 200
    # another host name (a site resolving its name to 127.0.0.1) is refused too
    assert app.request("/api/progress", headers={"Host": "evil.example"})[0] == 400


def test_requests_from_another_site_are_refused_even_with_the_token(app):
    some = app.json("/api/next")["images"][0]["path"]
    before = (app.root / "labels.csv").read_bytes()
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}, {"Origin": f"http://127.0.0.1:{app.port + 1}"}):
        status, _ = app.request("/api/decide", {"path": some, "labels": ["class0"]}, headers=headers)
        assert status == 403, headers
        assert app.request("/api/next", headers=headers)[0] == 403, headers
    assert (app.root / "labels.csv").read_bytes() == before
    # the app's own pages send their origin, or a same-origin fetch: they pass
    own = {"Origin": f"http://127.0.0.1:{app.port}", "Sec-Fetch-Site": "same-origin"}
    assert app.request("/api/progress", headers=own)[0] == 200


def test_pages_cannot_be_framed_and_the_token_moves_to_a_cookie(app):
    req = urllib.request.Request(f"{app.url}")
    with urllib.request.urlopen(req, timeout=60) as r:
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"] and r.headers["X-Frame-Options"] == "DENY"
        cookie = r.headers["Set-Cookie"]
    assert app.token in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    jar = cookie.split(";")[0]
    assert app.request("/api/progress", token=False, headers={"Cookie": jar})[0] == 200  # no token in the address
    assert app.request("/api/progress", token=False, headers={"Cookie": jar[:-3] + "xyz"})[0] == 403


def test_only_the_data_sets_images_are_served(app, tmp_path):
    secret = app.root.parent / "secret.png"
    secret.write_bytes(b"not for you")
    some = app.json("/api/next")["images"][0]["path"]
    status, data = app.request(f"/image/{some}")
    assert status == 200 and data == (app.root / some).read_bytes()
    for attempt in ("../secret.png", "..%2fsecret.png", "%2e%2e/secret.png", "%2e%2e%2fsecret.png",
                    "/etc/passwd", "%2fetc%2fpasswd", "..%5csecret.png", f"{some}/../../secret.png",
                    "labels.csv", "%2e%2e/%2e%2e/%2e%2e/etc/passwd", str(secret)):
        status, data = app.request("/image/" + attempt)
        assert status in (403, 404), attempt
        assert b"not for you" not in data and b"root:" not in data, attempt


def test_the_server_listens_on_the_loopback_interface_only(app):
    listening = [ln.split() for ln in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    ours = [f[1] for f in listening if int(f[1].split(":")[1], 16) == app.port and f[3] == "0A"]
    assert ours == ["0100007F:%04X" % app.port]  # 127.0.0.1 only
    others = set()
    try:
        others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except OSError:
        pass
    for address in others - {"127.0.0.1", "127.0.1.1"}:
        with socket.socket() as s:
            s.settimeout(3)
            assert s.connect_ex((address, app.port)) != 0, address


def test_decisions_from_two_tabs_all_reach_the_labels_file_and_undo_takes_one_back(app):
    pool = [x["path"] for x in app.json("/api/next?n=12")["images"]]
    assert len(pool) == 12 and len(set(pool)) == 12
    before = app.json("/api/progress")["labelled"]
    errors = []

    def tab(paths, label):
        try:
            for p in paths:
                app.json("/api/decide", {"path": p, "labels": [label]})
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)
    tabs = [threading.Thread(target=tab, args=(pool[:6], "class1")), threading.Thread(target=tab, args=(pool[6:], "class2"))]
    for t in tabs:
        t.start()
    for t in tabs:
        t.join()
    assert not errors
    rows = dict(line.split(",") for line in (app.root / "labels.csv").read_text().splitlines()[1:])
    assert all(rows[p] == "class1" for p in pool[:6]) and all(rows[p] == "class2" for p in pool[6:])
    assert app.json("/api/progress")["labelled"] == before + 12
    last = app.json("/api/decide", {"path": pool[0], "labels": ["class0"]})
    assert dict(line.split(",") for line in (app.root / "labels.csv").read_text().splitlines()[1:])[pool[0]] == "class0"
    assert app.json("/api/undo", {"id": last["id"]})["undone"] == last["id"]
    assert dict(line.split(",") for line in (app.root / "labels.csv").read_text().splitlines()[1:])[pool[0]] == "class1"
    # bad requests: one message, nothing written
    before = (app.root / "labels.csv").read_bytes()
    for body in ({"path": "../x.png", "labels": ["a"]}, {"path": pool[1], "labels": ["a\nb"]}, {"path": 3}, []):
        status, data = app.request("/api/decide", body)
        assert status == 400 and "error" in json.loads(data), body
    assert (app.root / "labels.csv").read_bytes() == before


def test_a_kill_while_writing_a_decision_keeps_every_earlier_one(tmp_path):
    root = flat_folder(tmp_path)
    before = (root / "labels.csv").read_text()
    app = App(tmp_path, root, env=dict(user_env(), CNN_CODES_FAULT="labels-tmp-written:4"))
    try:
        pool = [x["path"] for x in app.json("/api/next?n=4")["images"]]
        for p in pool[:3]:
            app.json("/api/decide", {"path": p, "labels": ["class1"]})
        with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
            app.request("/api/decide", {"path": pool[3], "labels": ["class2"]})
        app.proc.wait(30)
        assert app.proc.returncode == -9
    finally:
        app.stop()
    text = (root / "labels.csv").read_text()
    assert text == before + "".join(f"{p},class1\n" for p in pool[:3])


def test_images_added_while_it_runs_get_codes_and_join_the_pool_and_labels_reach_the_index(tmp_path):
    from pipeline.codes import CodeSet

    root = flat_folder(tmp_path, per_class=6)
    app = App(tmp_path, root, "--rescan", "1")
    try:
        n = app.json("/api/progress")["images"]
        pool = [x["path"] for x in app.json("/api/next?n=3")["images"]]
        for p in pool:
            app.json("/api/decide", {"path": p, "labels": ["class2"]})
        make_images(tmp_path / "more", n_classes=1, per_class=3, seed=5)
        for i, p in enumerate(sorted((tmp_path / "more").rglob("*.*"))):
            shutil.copy(p, root / f"added_{i}{p.suffix}")
        deadline = time.time() + 120
        while time.time() < deadline and app.json("/api/progress")["images"] < n + 3:
            time.sleep(0.5)
        assert app.json("/api/progress")["images"] == n + 3
        chosen = {x["path"] for x in app.json("/api/next?n=200")["images"]}
        assert {f"added_{i}" for i in range(3)} <= {p.rsplit(".", 1)[0] for p in chosen}
    finally:
        app.stop()
    out = app.proc.stdout.read()
    assert f"3 of {n + 3} images to compute" in out, out  # only the added images: no code computed again
    cs = CodeSet(next((tmp_path / "cache").rglob("*.h5")))
    labelled = {p: cs.class_names[y] for p, y, s in zip(cs.paths, cs.y, cs.split) if s != 3}
    assert all(labelled[p] == "class2" for p in pool)  # the index took the decisions
    assert len(cs) == n + 3


def test_the_token_survives_a_restart_and_new_token_replaces_it(tmp_path):
    root = flat_folder(tmp_path, per_class=4)
    first = App(tmp_path, root)
    first.stop()
    again = App(tmp_path, root)
    try:
        assert again.token == first.token  # an open tab goes on after a restart
        assert again.request("/api/progress")[0] == 200
    finally:
        again.stop()
    token_file = next((tmp_path / "cache").glob("*/label-token"))
    assert token_file.stat().st_mode & 0o077 == 0  # owner-only
    renewed = App(tmp_path, root, "--new-token")
    try:
        assert renewed.token != first.token and renewed.request("/api/progress", token=first.token)[0] == 403
    finally:
        renewed.stop()
