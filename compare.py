#!/usr/bin/env python
"""One table comparing runs: heads on codes, fine-tuned models and from-scratch baselines."""
import argparse
import json
from pathlib import Path

from pipeline.errors import UserError, run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="*", default=None, help="run folders (default: every run under --runs-dir)")
    p.add_argument("--runs-dir", default="runs", help="where to look for run folders")
    a = p.parse_args(argv)
    folders = [Path(r) for r in a.runs] if a.runs else sorted(Path(a.runs_dir).glob("*/record.json"))
    folders = [f.parent if f.name == "record.json" else f for f in folders]
    rows = []
    for f in folders:
        path = f / "record.json"
        if not path.exists():
            raise UserError(f"{f} is not a run folder (no record.json)")
        r = json.loads(path.read_text())
        if "metrics" not in r:
            continue  # sweeps have their own summary
        m = r["metrics"]
        rows.append((r.get("kind", "?"), r.get("title", f.name), m["accuracy"], m.get("top5_accuracy"),
                     m["mean_per_class_accuracy"], r.get("train_seconds", float("nan")), f.name))
    if not rows:
        raise UserError("no finished runs to compare")
    print("| kind | model | test accuracy | top-5 | mean per-class | training s | run |")
    print("|---|---|---|---|---|---|---|")
    for kind, title, acc, top5, mpc, sec, name in rows:
        top5 = "n/a" if top5 is None else f"{100 * top5:.2f}%"
        print(f"| {kind} | {title} | {100 * acc:.2f}% | {top5} | {100 * mpc:.2f}% | {sec:.1f} | {name} |")
    return 0


if __name__ == "__main__":
    run_cli(main)
