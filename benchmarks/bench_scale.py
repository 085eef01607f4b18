"""Stage 1 at scale: full build, updates that cost what changed, memory, engines.

    python benchmarks/bench_scale.py [--images 200000] [--sample 100000] [--work /tmp/bench_scale] [--caltech PATH]

1. A synthetic data set of ``--images`` small generated images (10 classes), coded with random
   weights at 32 px (stage 1 then runs at thousands of images/s): the full build's time, bytes
   written and peak RSS.
2. Add 1% new images, then remove 1%: each update's time and bytes written, also as a fraction
   of the full build.
3. A head trained on these codes with a memory cap half their size (out of core): peak RSS.
4. The audit of these codes (``cnn-codes audit``, approximate neighbours above 50,000 images): its
   time, peak RSS and findings; and, on a random sample of ``--sample`` of the codes, the exact
   search against the approximate one (``bench_audit.exact_against_approximate``: recall of pairs).
5. With ``--caltech``: Caltech-101 images/s with the local engine and with Ray on 2 workers; and
   updates of a real code set (:func:`real_updates`): Caltech-101 with the default backbone, 5
   images and 1% added and removed, each as a fraction of the build.

Each step runs in a process of its own, which reports its own peak RSS (VmHWM) and the bytes
it wrote (``write_bytes`` of /proc/self/io: what it sent to storage); its time is the whole
command's, measured from outside. A step of stage 1 is the command a user types (``cnn-codes
codes``: its parsing, and its end without the interpreter's teardown). Before the build, 20
images are coded once so that the model's conversion for OpenVINO (once per machine and model)
is in no step.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
N_CLASSES = 10


def proc_status() -> dict:
    status = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines() if ":" in l)
    io = dict(l.split(":", 1) for l in Path("/proc/self/io").read_text().splitlines())
    # write_bytes: what the process sent to storage; wchar would count pipes too (the scan's
    # helpers answer through pipes, and a reaped child's counts are added to its parent's)
    return {"peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024, "written_bytes": int(io["write_bytes"])}


def make_images(root: Path, names: list[str], seed: int) -> None:
    from PIL import Image
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 255, (N_CLASSES, 3))
    for name in names:
        c = int(name.split("/")[0][5:])
        arr = np.clip(colours[c] + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, quality=90)


def names(start: int, stop: int) -> list[str]:
    return [f"class{i % N_CLASSES}/img{i:07d}.jpg" for i in range(start, stop)]


# ---------------------------------------------------------------- steps (each in its own process)

def step_codes(a) -> dict:
    """One ``cnn-codes codes`` command as a user types it: its parsing, its run and its end without
    the interpreter's teardown (as the installed command ends); ``a.engine`` "real": the default
    backbone and settings (Lite0, ImageNet weights, 224 px)."""
    import functools

    import pipeline.cli.codes
    from pipeline.cli.main import main

    stats: dict = {}  # (what the command prints, unrounded)
    pipeline.cli.codes.generate_codes = functools.partial(pipeline.cli.codes.generate_codes, stats=stats)
    argv = ["codes", "--data", str(a.data), "--cache-dir", str(a.cache), "--no-progress"]
    if a.engine != "real":
        argv += ["--weights", "none", "--image-size", "32", "--batch-size", "128", "--engine", a.engine,
                 "--workers", str(a.workers)]
    before = proc_status()["written_bytes"]
    t0 = time.perf_counter()
    main(argv)
    seconds = time.perf_counter() - t0
    status = proc_status()
    return {"seconds": seconds, "images": stats.get("images", 0), "loop_seconds": stats.get("seconds", 0.0),
            "written_bytes": status["written_bytes"] - before, "peak_rss_mb": status["peak_rss_mb"]}


def step_caltech(a) -> dict:
    from pipeline.codes import generate_codes
    if a.engine == "ray":
        import ray
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    stats: dict = {}
    try:
        generate_codes(a.data, cache_dir=a.cache, progress=False, engine=a.engine, workers=a.workers, stats=stats)
    finally:
        if a.engine == "ray":
            ray.shutdown()
    return {"images": stats["images"], "seconds": stats["seconds"], "img_per_s": stats["images"] / stats["seconds"]}


def step_train(a) -> dict:
    from pipeline.runs import train
    t0 = time.perf_counter()
    metrics = train(a.codes, a.head, runs_dir=a.runs, memory_limit=a.memory_limit, **{'epochs': 3} if a.head in ('softmax', 'mlp') else {}).metrics
    return {"seconds": time.perf_counter() - t0, "accuracy": metrics["accuracy"], **proc_status()}


def step_baseline() -> dict:
    from pipeline.heads import SoftmaxHead
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    SoftmaxHead(epochs=3).fit(rng.normal(size=(100, 1280)).astype(np.float32), rng.integers(0, N_CLASSES, 100))
    return {"seconds": time.perf_counter() - t0, **proc_status()}


def run_step(*args) -> dict:
    """One step in a process of its own; ``command_seconds``: the whole command, timed from
    outside (interpreter start, imports, the call, exit), as a user's ``cnn-codes codes`` is."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--step", *map(str, args)], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"step {args[0]} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), command_seconds=seconds)


def real_updates(caltech: Path, work: Path) -> None:
    """Updates of a code set of real images and the default backbone (Lite0, ImageNet weights,
    224 px), where computing an image costs far more than at 32 px: Caltech-101 linked into a
    folder of its own, every hundredth image held back; the build, then adding 5 of them,
    removing them, adding all held back (1%), removing them and a run with nothing to do."""
    root = work / "caltech-updates"
    shutil.rmtree(root, ignore_errors=True)
    data, cache = root / "data", root / "cache"
    files = sorted(p for p in caltech.rglob("*") if p.is_file())
    held = files[::100]

    def link(files):
        for f in files:
            (data / f.relative_to(caltech)).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f.resolve(), data / f.relative_to(caltech))

    def unlink(files):
        for f in files:
            (data / f.relative_to(caltech)).unlink()
    link(held[:2] + held[-2:])  # first the model's conversion for OpenVINO (once per machine), in no step
    run_step("codes", data, root / "warm-up", "real", 1)
    unlink(held[:2] + held[-2:])
    link(sorted(set(files) - set(held)))
    results = {"build": run_step("codes", data, cache, "real", 1)}
    link(held[:5])
    results["add 5"] = run_step("codes", data, cache, "real", 1)
    unlink(held[:5])
    results["remove 5"] = run_step("codes", data, cache, "real", 1)
    link(held)
    results[f"add 1% ({len(held)})"] = run_step("codes", data, cache, "real", 1)
    unlink(held)
    results[f"remove 1% ({len(held)})"] = run_step("codes", data, cache, "real", 1)
    results["nothing to do"] = run_step("codes", data, cache, "real", 1)
    full = results["build"]["command_seconds"]
    print(f"\nupdates of Caltech-101 ({len(files) - len(held)} images linked), Lite0 ImageNet weights at 224 px, "
          f"default runtime")
    print("| step | images computed | wall s (whole command) | of which computing | time / build | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['images']} | {r['command_seconds']:.2f} | {r['loop_seconds']:.2f} | "
              f"{100 * r['command_seconds'] / full:.2f}% | {r['peak_rss_mb']:.0f} |")


def audit_at_scale(code_set: Path, work: Path, sample: int) -> None:
    """The audit of every code (time, peak RSS, findings), then exact against approximate on a sample."""
    import h5py

    from bench_audit import audited, exact_against_approximate
    from pipeline.codes import CodeSet

    shutil.rmtree(work / "runs-audit", ignore_errors=True)
    seconds, peak, run = audited(code_set, work / "runs-audit")
    s = json.loads((run / "audit.json").read_text())
    print(f"\naudit of {s['images']} codes of {CodeSet(code_set).shape[1]} values: {seconds:.1f} s, peak RSS "
          f"{peak:.2f} GB; neighbours: {s['neighbours']}")
    print(f"  near-duplicates: {s['duplicates']}; likely label errors: {s['label_issues']}; outliers: {s['outliers']}")

    cs = CodeSet(code_set)
    rng = np.random.default_rng(0)
    keep = np.zeros(len(cs), bool)
    keep[rng.choice(len(cs), min(sample, len(cs)), replace=False)] = True
    path = work / f"sample-{int(keep.sum())}.h5"
    with h5py.File(path, "w") as f:  # a minimal code set: no attributes, images absent
        f["codes"] = cs.rows(keep)
        f["labels"], f["split"] = cs.y[keep], cs.split[keep]
        f.create_dataset("paths", data=[p for p, k in zip(cs.paths, keep) if k], dtype=h5py.string_dtype())
        f.create_dataset("class_names", data=cs.class_names, dtype=h5py.string_dtype())
    print(f"\nexact against approximate on a random {int(keep.sum())} of these codes:")
    shutil.rmtree(work / "runs-exact", ignore_errors=True)
    shutil.rmtree(work / "runs-approximate", ignore_errors=True)
    exact_against_approximate(path, work)


def system_call_cost(data: Path, sample: list[str]) -> tuple[float, float]:
    """Microseconds per ``os.stat`` of files of the set (each once, in a tight loop) and per
    ``os.getpid``: what every image costs an update before any work of this project's own."""
    paths = [os.fspath(data / name) for name in sample if (data / name).exists()]
    t0 = time.perf_counter()
    for p in paths:
        os.stat(p)
    stat_us = (time.perf_counter() - t0) / max(1, len(paths)) * 1e6
    t0 = time.perf_counter()
    for _ in range(100_000):
        os.getpid()
    return stat_us, (time.perf_counter() - t0) / 100_000 * 1e6


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def synthetic_steps(a) -> None:
    """Steps 1-4 on ``--images`` generated images."""
    data, cache = a.work / "data", a.work / "cache"
    n = a.images
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)
    missing = [x for x in names(0, n) if not (data / x).exists()]
    if missing:
        t0 = time.perf_counter()
        make_images(data, missing, seed=len(missing))
        print(f"generated {len(missing)} images of 24x24 px in {time.perf_counter() - t0:.0f} s")
    for extra in data.glob("class*/new*.jpg"):
        extra.unlink()
    results = {}
    if "build" in a.skip:  # the build of an earlier run (--keep): its figures, its cache brought up to date
        results["build"] = json.loads((a.work / "build.json").read_text())
        run_step("codes", data, cache, "local", 1)
    else:
        shutil.rmtree(cache, ignore_errors=True)
        # A first build on a machine also converts the model for OpenVINO (TensorFlow loaded: seconds
        # and about 650 MB more); done once beforehand, so that builds of any size compare alike.
        warm = a.work / "warm-up"
        shutil.rmtree(warm, ignore_errors=True)
        make_images(warm / "data", names(0, 20), seed=0)
        run_step("codes", warm / "data", warm / "cache", "local", 1)
        results["build"] = run_step("codes", data, cache, "local", 1)
        (a.work / "build.json").write_text(json.dumps(results["build"]))
    code_set = next(p for p in cache.rglob("*.h5") if not p.parent.name.endswith(".parts"))
    results["build"]["cache_bytes"] = folder_bytes(cache)
    k = n // 100
    make_images(data, [x.replace("img", "new") for x in names(n, n + k)], seed=1)
    results["add 1%"] = run_step("codes", data, cache, "local", 1)
    removed = names(0, n)[::100][:k]
    for name in removed:
        (data / name).unlink()
    results["remove 1%"] = run_step("codes", data, cache, "local", 1)

    full = results["build"]
    stat_us, call_us = system_call_cost(data, names(0, n)[1::100][:20000])
    print(f"\nsystem calls on this machine: a stat of a data-set file {stat_us:.2f} us, getpid {call_us:.2f} us "
          f"(an update stats every image of the set)")
    print(f"\nstage 1 on {n} generated images, Lite0 random weights at 32 px, local engine, 1 worker")
    print("| step | images computed | wall s (whole command) | in generate_codes | of which computing | loop img/s "
          "| bytes written | time / build | bytes / build | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        rate = r["images"] / r["loop_seconds"] if r["loop_seconds"] else float("nan")
        print(f"| {name} | {r['images']} | {r['command_seconds']:.1f} | {r['seconds']:.1f} | {r['loop_seconds']:.1f} | "
              f"{rate:.0f} | {r['written_bytes'] / 1e6:.1f} MB | {100 * r['command_seconds'] / full['command_seconds']:.2f}% | "
              f"{100 * r['written_bytes'] / full['written_bytes']:.2f}% | {r['peak_rss_mb']:.0f} |")
    print(f"cache after the build: {full['cache_bytes'] / 1e6:.0f} MB")

    import h5py
    with h5py.File(code_set) as f:
        code_bytes = f["codes"].shape[0] * f["codes"].shape[1] * 4
    cap = code_bytes // 2
    if "heads" not in a.skip:
        print(f"\nheads on {code_bytes / 1e9:.2f} GB of codes (float32)")
        print("| head | memory limit | out of core | seconds | test accuracy | peak RSS MB |")
        print("|---|---|---|---|---|---|")
        base = run_step("baseline", "-", "-", "softmax", 0)
        print(f"| (TensorFlow and Keras loaded, a head trained on 100 codes) | - | - | {base['seconds']:.1f} | - | "
              f"{base['peak_rss_mb']:.0f} |")
        in_memory = 4 * code_bytes if 4 * code_bytes < 16e9 else None  # the in-memory fit needs about 4x the codes
        for head, limit in (("logreg", cap), ("softmax", cap), ("prototype", cap), ("softmax", in_memory)):
            if limit is None:
                continue
            r = run_step("train", code_set, a.work / "runs", head, limit)
            print(f"| {head} | {limit / 1e6:.0f} MB | {'yes' if limit < code_bytes else 'no'} | {r['seconds']:.1f} | "
                  f"{r['accuracy']:.4f} | {r['peak_rss_mb']:.0f} |")

    if "audit" not in a.skip:
        audit_at_scale(code_set, a.work, a.sample)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200_000)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_scale"))
    p.add_argument("--caltech", type=Path, default=ROOT.parent / "shared/data/caltech101/101_ObjectCategories")
    p.add_argument("--keep", action="store_true", help="reuse the generated images of an earlier run")
    p.add_argument("--sample", type=int, default=100_000, help="codes on which exact and approximate audits are compared")
    p.add_argument("--skip", nargs="*", default=[], choices=["build", "stage1", "heads", "audit", "caltech",
                                                             "real-updates"],
                   help="steps left out (build: updates of the code set an earlier run built, with --keep)")
    p.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.step:
        kind, *rest = a.step
        ns = argparse.Namespace()
        if kind in ("codes", "caltech"):
            ns.data, ns.cache, ns.engine, ns.workers = rest[0], rest[1], rest[2], int(rest[3])
            print(json.dumps(step_codes(ns) if kind == "codes" else step_caltech(ns)), flush=True)
            if kind == "codes":  # (ended as the command ends: pipeline.cli.main.exit_without_teardown)
                sys.stderr.flush()
                os._exit(0)
        elif kind == "baseline":
            print(json.dumps(step_baseline()))
        else:
            ns.codes, ns.runs, ns.head, ns.memory_limit = rest[0], rest[1], rest[2], int(rest[3])
            print(json.dumps(step_train(ns)))
        return

    if "stage1" not in a.skip:
        synthetic_steps(a)

    if a.caltech.is_dir() and "caltech" not in a.skip:
        print("\nCaltech-101 (all images), Lite0 ImageNet weights at 224 px, default runtime")
        print("| engine | workers | images | loop s | img/s |")
        print("|---|---|---|---|---|")
        for engine, workers in (("local", 1), ("ray", 2)):
            target = a.work / f"caltech-{engine}"
            shutil.rmtree(target, ignore_errors=True)
            r = run_step("caltech", a.caltech, target, engine, workers)
            print(f"| {engine} | {workers} | {r['images']} | {r['seconds']:.1f} | {r['img_per_s']:.1f} |")
    if a.caltech.is_dir() and "real-updates" not in a.skip:
        real_updates(a.caltech, a.work)


if __name__ == "__main__":
    main()
