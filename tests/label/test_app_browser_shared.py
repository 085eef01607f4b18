"""Labels are human work, in a real browser (Chromium through Selenium): two tabs share one state
(a decision in one shows in the other within seconds, each tab undoes its own), a hand edit of the
labels file is announced and kept, the page goes on across a server restart (the token kept, sent
by its cookie), and a group of look-alikes is labelled with one key."""
import shutil
import time

import pytest

from test_app import App, flat_folder

pytest.importorskip("starlette")
webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("chromedriver") or not shutil.which("chromium"),
                                 reason="no chromium and chromium-driver (apt-get install -y chromium chromium-driver)")]


def rows_of(path):
    return dict(line.split(",") for line in path.read_text().splitlines()[1:])


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def current(driver):
    return driver.execute_script("const c = document.querySelector('.card.cur'); return c ? c.dataset.path : null;")


def card_text(driver, path):
    return driver.execute_script(
        "const c = [...document.querySelectorAll('.card')].find(c => c.dataset.path === arguments[0]);"
        "return c ? c.textContent : null;", path)


def message(driver):
    return driver.execute_script("return document.getElementById('msg').textContent;")


def test_two_tabs_a_hand_edit_and_a_restart(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = flat_folder(tmp_path, per_class=8, labelled=2)
    labels = root / "labels.csv"
    app = App(tmp_path, root)
    wait = WebDriverWait(browser, 60)
    try:
        browser.get(app.url)
        wait.until(lambda d: current(d))
        assert "token=" not in browser.current_url  # the token left the address bar for a cookie
        tab_a = browser.current_window_handle
        a_batch = browser.execute_script("return batch.map(x => x.path);")
        browser.switch_to.new_window("tab")
        browser.get(app.base + "/label")  # the cookie alone opens it
        wait.until(lambda d: current(d))
        tab_b = browser.current_window_handle
        b_batch = browser.execute_script("return batch.map(x => x.path);")
        assert not set(a_batch) & set(b_batch)  # two tabs labelling get different images

        # tab B labels one of tab A's images (by the API, as another person would): A shows it within seconds
        target = a_batch[1]
        browser.execute_script("return api('api/decide', {path: arguments[0], labels: ['class2']});", target)
        browser.switch_to.window(tab_a)
        t0 = time.time()
        wait.until(lambda d: "another tab" in (card_text(d, target) or ""))
        assert time.time() - t0 < 5
        # tab A's 'u' undoes A's own last decision, not B's label
        path = current(browser)
        browser.find_element(By.TAG_NAME, "body").send_keys("1")
        wait.until(lambda d: rows_of(labels).get(path) == "class0")
        browser.find_element(By.TAG_NAME, "body").send_keys("u")
        wait.until(lambda d: path not in rows_of(labels))
        assert rows_of(labels)[target] == "class2"

        # a hand edit beside the app: announced on the page, kept by the next decision
        first = next(iter(rows_of(labels)))
        labels.write_text(labels.read_text().replace(f"{first},class0", f"{first},class1"))
        wait.until(lambda d: "labels.csv changed" in message(d))
        path = current(browser)
        browser.find_element(By.TAG_NAME, "body").send_keys("2")
        wait.until(lambda d: rows_of(labels).get(path) == "class1")
        assert rows_of(labels)[first] == "class1"

        # the server restarts: the page says so, then goes on with the same token (its cookie)
        app.stop()
        path = current(browser)
        browser.find_element(By.TAG_NAME, "body").send_keys("3")
        wait.until(lambda d: "not answering" in message(d))
        app = App(tmp_path, root, "--port", str(app.port))  # the same address: the tab goes on
        wait.until(lambda d: rows_of(labels).get(path) == "class2")
        wait.until(lambda d: "not answering" not in message(d))
        browser.switch_to.window(tab_b)
        browser.refresh()
        wait.until(lambda d: current(d))
    finally:
        app.stop()


def test_a_group_of_look_alikes_with_one_key(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = flat_folder(tmp_path, per_class=8, labelled=2)
    labels = root / "labels.csv"
    before = rows_of(labels)
    app = App(tmp_path, root)
    wait = WebDriverWait(browser, 60)
    try:
        browser.get(app.url)
        wait.until(lambda d: current(d))
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("g")
        wait.until(lambda d: d.execute_script("return mode === 'group' && grp && grp.images.length > 1"))
        group = browser.execute_script("return grp.images.map(x => x.path);")
        suggested = browser.execute_script("return grp.suggested;")
        assert suggested and len({p.split("_")[0] for p in group}) == 1  # one colour: class<c>_<i>
        body.send_keys(" ")  # take the first one out
        body.send_keys("\n")  # label the rest
        wait.until(lambda d: all(rows_of(labels).get(p) == suggested for p in group[1:]))
        assert group[0] not in rows_of(labels)
        assert set(rows_of(labels)) - set(before) == set(group[1:])
        body.send_keys("u")  # the whole group back
        wait.until(lambda d: rows_of(labels) == before)
    finally:
        app.stop()
