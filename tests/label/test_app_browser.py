"""The labelling app in a real browser (Debian's chromium through chromium-driver and Selenium):
a batch labelled with the keyboard, one decision undone and made again through the class box, a
planted mislabelled image fixed on the review page; the labels file then holds exactly those decisions, and a head trained on it scores
what a head trained on a labels file written by hand with the same labels scores."""
import re
import shutil
import subprocess

import pytest
from helpers import CNN_CODES, user_env

from test_app import App, flat_folder

pytest.importorskip("starlette")
webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("chromedriver") or not shutil.which("chromium"),
                                 reason="no chromium and chromium-driver (apt-get install -y chromium chromium-driver)")]


def rows_of(path):
    return dict(line.split(",") for line in path.read_text().splitlines()[1:])


def test_label_a_batch_with_the_keyboard_undo_one_and_fix_a_planted_error(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = flat_folder(tmp_path, per_class=10, labelled=5)
    planted = "class0_04.png" if (root / "class0_04.png").exists() else next(
        p.name for p in sorted(root.glob("class0_04.*")))
    labels_file = root / "labels.csv"
    labels_file.write_text(labels_file.read_text().replace(f"{planted},class0", f"{planted},class1"))
    start = rows_of(labels_file)
    assert start[planted] == "class1"

    app = App(tmp_path, root)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    wait = WebDriverWait(driver, 60)
    try:
        driver.get(app.url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".card.cur"))
        body = driver.find_element(By.TAG_NAME, "body")

        def current():  # read in one script: the page redraws its cards after each key
            return driver.execute_script(
                "const c = document.querySelector('.card.cur'); if (!c) return [null, []];"
                "return [c.dataset.path, [...c.querySelectorAll('.tag.pick')].map(t => t.textContent)];")

        def press(key):
            before = current()[0]
            body.send_keys(key)
            wait.until(lambda d: current()[0] != before)

        decided = {}
        for _ in range(3):  # Enter: accept the suggestion
            path, picks = current()
            assert len(picks) == 1, picks
            press("\n")
            decided[path] = picks[0].rsplit(" ", 1)[0]  # "class1 87%"
        path, _ = current()
        press("3")  # class2 by its key
        wait.until(lambda d: rows_of(labels_file).get(path) == "class2")
        body.send_keys("u")  # undo: back to that image, its row gone
        wait.until(lambda d: path not in rows_of(labels_file))
        wait.until(lambda d: current()[0] == path)
        body.send_keys("c")  # the class box, for classes beyond the number keys
        driver.switch_to.active_element.send_keys("class0\n")
        wait.until(lambda d: rows_of(labels_file).get(path) == "class0")
        decided[path] = "class0"

        driver.get(app.url.replace("/label?", "/review?"))
        accept = wait.until(lambda d: d.find_elements(
            By.CSS_SELECTOR, f'.issue[data-path="{planted}"] button.accept'))
        assert accept[0].text == "accept class0"
        accept[0].click()
        wait.until(lambda d: rows_of(labels_file).get(planted) == "class0")
    finally:
        driver.quit()
        app.stop()

    expected = {**start, planted: "class0", **decided}
    assert rows_of(labels_file) == expected

    # the same labels written by hand beside a copy of the images: the same head, the same score
    twin = tmp_path / "twin"
    shutil.copytree(root, twin, ignore=shutil.ignore_patterns("labels*"))
    (twin / "labels.csv").write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in sorted(expected.items())))

    def accuracy(data):  # make codes (labels into the index: nothing computed for root), then make train
        common = ["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--weights", "none", "--image-size", "32"]
        done = subprocess.run([CNN_CODES, "codes", *common, "--no-progress"], env=user_env(), capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        done = subprocess.run([CNN_CODES, "train", "--head", "logreg", "--data", str(data), "--cache-dir",
                               str(tmp_path / "cache"), "--weights", "none", "--image-size", "32", "--runs-dir",
                               str(tmp_path / "runs")],
                              env=user_env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return float(re.search(r"test accuracy ([0-9.]+)", done.stdout).group(1)), done.stdout

    (a, out_a), (b, out_b) = accuracy(root), accuracy(twin)
    assert a == b, (out_a, out_b)
    assert a > 0.5  # the colours are learnt: not a chance score that any labels would give
