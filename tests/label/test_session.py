"""The labelling app's session without the web: what a batch offers, what a decision, an undo,
a skip and an exclusion change, multi-label sets, and the codes following the labels file."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, make_images

from pipeline.codes import CodeSet, generate_codes
from pipeline.data import UNLABELLED, LayoutOptions
from pipeline.errors import UserError
from pipeline.label import LabelSession

pytestmark = pytest.mark.slow


def folder(tmp_path: Path, cells) -> Path:
    """Three colours of 8 images in one folder; the first 3 of colour c named in tags.csv with cells[c]."""
    src = make_images(tmp_path / "src", n_classes=3, per_class=8)
    root = tmp_path / "data"
    root.mkdir()
    rows = []
    for c in range(3):
        for i, p in enumerate(sorted((src / f"class{c}").rglob("*.*"))):
            shutil.copy(p, root / f"c{c}_{i}{p.suffix}")
            if i < 3:
                rows.append(f"c{c}_{i}{p.suffix},{cells[c]}\n")
    (root / "tags.csv").write_text("image,tags\n" + "".join(rows))
    return root


def session(tmp_path, root, stats=None):
    fast = {k: v for k, v in FAST.items() if k != "backbone"}

    def make(reading):
        return CodeSet(generate_codes(root, cache_dir=tmp_path / "cache", reading=reading, stats=stats, **fast)[0])
    return LabelSession(root, root / "tags.csv", make, LayoutOptions(), batch=4)


def rows_of(path):
    return dict(line.split(",") for line in path.read_text().splitlines()[1:])


def test_batches_offer_only_the_pool_and_decisions_skips_exclusions_and_undo_change_it(tmp_path):
    root = folder(tmp_path, ["red", "green", "blue"])
    stats = {}
    s = session(tmp_path, root, stats)
    labelled = set(rows_of(root / "tags.csv"))
    batch = [x["path"] for x in s.next_batch(15)["images"]]
    assert len(batch) == 15 and len(set(batch)) == 15 and not set(batch) & labelled
    hints = s.next_batch(15)["images"]
    right = sum(x["suggested"][0] == {"0": "red", "1": "green", "2": "blue"}[x["path"][1]] for x in hints)
    assert right >= 12, hints  # the colours are learnt from 9 labels: suggestions worth preselecting
    s.decide(batch[0], ["green"])
    s.skip(batch[1])
    s.decide(batch[2], [], exclude=True)
    offered = {x["path"] for x in s.next_batch(15)["images"]}
    assert len(offered) == 12 and not offered & {batch[0], batch[1], batch[2]}
    assert rows_of(root / "tags.csv")[batch[0]] == "green" and batch[2] not in rows_of(root / "tags.csv")
    assert (root / "tags.excluded.txt").read_text() == f"{batch[2]}\n"
    s.undo()  # the exclusion taken back: in the pool again
    assert (root / "tags.excluded.txt").read_text() == ""
    assert batch[2] in {x["path"] for x in s.next_batch(15)["images"]}
    with pytest.raises(UserError, match="not an image of this data set"):
        s.decide("../elsewhere.png", ["red"])
    assert s.progress()["labelled"] == 10 and s.progress()["counts"] == [3, 4, 3]  # blue, green, red

    # the code set follows: stage 1 again, nothing computed, the index holds the decision
    assert stats["images"] == 24
    stats.clear()
    assert s.refresh()
    assert stats.get("images", 0) == 0  # nothing computed (stage 1 says so only when it computes)
    cs = CodeSet(s.codes_path)
    i = cs.paths.index(batch[0])
    assert cs.split[i] != UNLABELLED and cs.class_names[cs.y[i]] == "green"


def test_a_multi_label_set_takes_several_labels_and_reports_mean_average_precision(tmp_path):
    root = folder(tmp_path, ["sky|sea", "sea", "boat|sky"])
    s = session(tmp_path, root)
    assert s.multi
    batch = s.next_batch(4)["images"]
    assert all(isinstance(x["suggested"], list) for x in batch)
    d = s.decide(batch[0]["path"], ["sea", "boat"])
    assert rows_of(root / "tags.csv")[batch[0]["path"]] == "sea|boat"
    p = s.progress()
    assert p["metric"] == "mean average precision" and p["counts"] == [3 + 1, 3 + 3 + 1, 3 + 3]  # boat, sea, sky
    n, value, low, high = p["curve"][-1]  # (labels, estimate, its 95% interval)
    assert 0 < low <= value <= high <= 1 and n == p["labelled"]
    s.undo(d.id)
    assert batch[0]["path"] not in rows_of(root / "tags.csv")
    cs = CodeSet(s.codes_path)
    assert cs.multi_label and np.asarray(cs.y).shape[1] == 3


def test_the_review_of_a_multi_label_set_offers_label_sets_and_accepting_one_fixes_the_file(tmp_path):
    """Label sets stand for classes, as in the audit: a photograph of the third colour tagged as
    the second is a likely label error whose suggestion is the third colour's set, accepted whole."""
    src = make_images(tmp_path / "src", n_classes=3, per_class=10)
    root, rows = tmp_path / "data", []
    root.mkdir()
    cells = ["sky|sea", "sea", "boat|sky"]
    for c in range(3):
        for i, p in enumerate(sorted((src / f"class{c}").rglob("*.*"))):
            shutil.copy(p, root / f"c{c}_{i}{p.suffix}")
            rows.append(f"c{c}_{i}{p.suffix},{cells[1] if (c, i) == (2, 0) else cells[c]}\n")
    (root / "tags.csv").write_text("image,tags\n" + "".join(rows))
    planted = next(r.split(",")[0] for r in rows if r.startswith("c2_0"))
    s = session(tmp_path, root)
    r = s.review()
    assert s.multi and r["note"] == "", r
    issue = next(x for x in r["issues"] if x["path"] == planted)
    assert issue["given_labels"] == ["sea"] and sorted(issue["suggested_labels"]) == ["boat", "sky"], issue
    assert issue["suggested"] in ("boat|sky", "sky|boat")
    assert len(r["issues"]) <= 3, r["issues"]  # the colours are clear: few others flagged
    s.decide(planted, issue["suggested_labels"])
    assert sorted(rows_of(root / "tags.csv")[planted].split("|")) == ["boat", "sky"]
    assert planted not in {x["path"] for x in s.review()["issues"]}


def test_a_hand_edit_of_the_file_survives_the_next_decision_and_is_announced(tmp_path):
    root = folder(tmp_path, ["red", "green", "blue"])
    s = session(tmp_path, root)
    pool = [x["path"] for x in s.next_batch(6)["images"]]
    s.decide(pool[0], ["red"])
    version = s.state()["version"]
    text = (root / "tags.csv").read_text()  # edited beside the app, as a spreadsheet would
    first = text.splitlines()[1].split(",")[0]
    text = text.replace(f"{first},red", f"{first},blue") + f"{pool[1]},green\n"
    (root / "tags.csv").write_text(text)
    s.decide(pool[2], ["green"])
    rows = rows_of(root / "tags.csv")
    assert rows[first] == "blue" and rows[pool[1]] == "green" and rows[pool[2]] == "green" and rows[pool[0]] == "red"
    events = s.state(version)["events"]
    assert any(e["kind"] == "file" and "tags.csv changed: 2 row(s) reloaded" in e["text"] for e in events), events


def test_undo_takes_back_only_what_the_image_still_holds_and_only_the_tabs_own(tmp_path):
    root = folder(tmp_path, ["red", "green", "blue"])
    s = session(tmp_path, root)
    image, other = [x["path"] for x in s.next_batch(2, tab="A")["images"]]
    assert image not in {x["path"] for x in s.next_batch(4, tab="B")["images"]}  # two tabs, different images
    a = s.decide(image, ["red"], tab="A")
    s.decide(other, ["blue"], tab="B")
    s.decide(image, ["green"], tab="B")  # tab B relabels tab A's image
    with pytest.raises(UserError, match="changed since by another tab"):
        s.undo(a.id)
    assert rows_of(root / "tags.csv")[image] == "green"  # B's label stays
    with pytest.raises(UserError, match="another tab"):  # A's 'u': its own last decision, which B overwrote
        s.undo(tab="A")
    assert rows_of(root / "tags.csv")[image] == "green" and rows_of(root / "tags.csv")[other] == "blue"
    assert s.undo(tab="B").path == image and rows_of(root / "tags.csv")[image] == "red"  # B's own last


def test_the_journal_rebuilds_the_labels_file(tmp_path):
    from pipeline.data import Journal, journal_file, replay

    root = folder(tmp_path, ["red", "green", "blue"])
    s = session(tmp_path, root)
    pool = [x["path"] for x in s.next_batch(3)["images"]]
    s.decide(pool[0], ["red"], tab="A")
    d = s.decide(pool[1], ["blue"], tab="A")
    s.decide(pool[2], [], exclude=True)
    s.undo(d.id)
    entries, damaged = Journal(root / "tags.csv").entries()
    assert [e["kind"] for e in entries] == ["decide", "decide", "decide", "undo"] and damaged == 0
    assert entries[0]["image"] == pool[0] and entries[0]["after"] == ["red"] and entries[0]["tab"] == "A"
    kept = rows_of(root / "tags.csv")
    (root / "tags.csv").write_text("image,tags\n")  # the file clobbered by another program
    with open(journal_file(root / "tags.csv"), "a") as fh:
        fh.write('{"image": "half a line\n')  # and a damaged line
    applied, damaged = replay(root / "tags.csv", root)
    assert applied == 4 and damaged == 1
    assert {p: v for p, v in rows_of(root / "tags.csv").items()} == {pool[0]: "red"}
    assert set(kept) >= {pool[0]} and pool[1] not in kept  # (the undo took pool[1] back)


def test_digit_keys_stay_put_when_a_class_is_added(tmp_path):
    root = folder(tmp_path, ["red", "green", "blue"])
    s = session(tmp_path, root)
    before = s.progress()["classes"]
    s.add_class("amber")  # sorts first by name, but takes the next number
    after = s.progress()["classes"]
    assert after == before + ["amber"]


def test_a_group_of_look_alikes_is_labelled_with_one_decision_each_and_undone(tmp_path):
    root = folder(tmp_path, ["red", "green", "blue"])
    s = session(tmp_path, root)
    g = s.next_group(4, tab="A")
    paths = [x["path"] for x in g["images"]]
    colours = {p[1] for p in paths}  # c<colour>_<i>: the group is one colour
    assert len(paths) >= 2 and len(colours) == 1 and g["suggested"] == ["red", "green", "blue"][int(colours.pop())]
    assert not set(paths) & {x["path"] for x in s.next_batch(12, tab="B")["images"]}  # not offered to tab B
    ds = s.decide_group(paths[1:], [g["suggested"]], tab="A")  # the first taken out of the group
    rows = rows_of(root / "tags.csv")
    assert all(rows[p] == g["suggested"] for p in paths[1:]) and paths[0] not in rows
    assert len(ds) == len(paths) - 1 and len({d.id for d in ds}) == len(ds)
    for d in reversed(ds):
        s.undo(d.id)
    assert not set(paths) & set(rows_of(root / "tags.csv"))


def test_a_write_that_fails_is_one_message_and_not_counted(tmp_path):
    root = folder(tmp_path, ["red", "green", "blue"])
    s = session(tmp_path, root)
    pool = [x["path"] for x in s.next_batch(3)["images"]]
    s.decide(pool[0], ["red"])
    saved = (root / "tags.csv").read_text()
    (root / "tags.csv").unlink()
    (root / "tags.csv").mkdir()  # the labels file became a folder
    with pytest.raises(UserError, match="not saved|cannot be read"):
        s.decide(pool[1], ["green"])
    assert len(s.history) == 1 and (root / "tags.csv").is_dir()
    (root / "tags.csv").rmdir()
    (root / "tags.csv").write_text(saved)
    moved = tmp_path / "moved"
    root.rename(moved)  # the data folder moved while the app runs
    with pytest.raises(UserError, match="gone|not saved"):
        s.decide(pool[2], ["blue"])
    assert not root.exists() and len(s.history) == 1  # no folder made under the old name
