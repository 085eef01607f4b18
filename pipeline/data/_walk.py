"""Walking a data folder and reading each image's size and time: in this process and, when there
is much to do, in helper processes on the machine's other cores.

An update of a large data set spends most of its fixed cost here (a stat of every image: 4-6 µs
each, nearly all of it the system call, which threads of one Python process do not overlap).
Helpers take jobs (a class folder to walk and stat, a sub-folder to walk, a slice of paths to
stat) from the back of the list while this process takes them from the front; each job's result
goes in its place, so the result never depends on who did what.

Standard library only, on purpose: a helper runs this file by its path (``python -I -S``), which
starts in about 20 ms without importing the package. A multiprocessing worker would import the
package and the caller's main script first (a user's script without a ``__main__`` guard would
run again), and a forked one would copy a process that already runs threads.
"""
from __future__ import annotations

import array
import collections
import contextlib
import marshal
import os
import signal
import subprocess
import sys
import threading

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
START_AFTER = 0.01   # seconds: work done sooner than this never starts a helper
MAX_HELPERS = 3      # a cap of four processes in all (measured: two cores, one helper)
MAX_JOBS = 256       # more are packed into batches of neighbours (a job's round trip to a helper costs tens of µs)
SPLIT_AT = 8         # under a folder with fewer sub-folders than this, their own sub-folders are the jobs


def walk_images(root, under=None) -> tuple[list[str], collections.Counter, list[tuple[str, str]]]:
    """The image files under ``under`` (default ``root``), recursively: their paths relative to
    ``root`` (posix, in the order of sorted Paths); what was passed over, by kind (a file's
    extension, ``hidden`` for dot files and folders, ``special file`` for pipes, sockets and
    devices named like images, which are never opened); and (printable name, reason) of images
    that cannot be named in a code set, sorted. Links to files are followed; links to folders are
    not entered (a link loop cannot trap the walk). The folders one level down (two, under fewer
    than :data:`SPLIT_AT` folders: train/val/test) are walked as jobs (see :func:`run`)."""
    top = os.path.relpath(under or root, root).replace(os.sep, "/")
    files, subfolders, skipped, unnamable, deferred = _walk(os.fspath(under or root), top, split=True)
    done = {}
    for (rel, _), (blob, n, other, bad) in zip(deferred, run([("tree", path, rel) for rel, path in deferred])):
        done[rel] = blob.decode("utf-8", "surrogateescape").split("\0")[:n]
        skipped.update(other)
        unnamable += bad
    return _in_path_order(top, files, subfolders, done), skipped, sorted(unnamable)


def _walk(folder: str, top: str, split: bool) -> tuple:
    """The walk of :func:`walk_images` of ``folder`` (``top``: its path relative to the data
    folder, "." for the data folder itself) in this process: each folder's images and
    sub-folders, what was passed over, and (``split``) the folders left to walk as jobs,
    (relative path, path)."""
    # Strings, not Paths (a million Paths take seconds to sort); kept per folder, each folder's
    # images sorted by name and the folders put in place after the walk: the order of sorted
    # Paths without a key computed for each of a million paths.
    files: dict[str, list[str]] = {}
    subfolders: dict[str, list[tuple[str, str]]] = {}  # (name, relative path) of each folder's sub-folders
    skipped, unnamable, deferred = collections.Counter(), [], []
    stack = [(folder, top, 0)]
    split_depth = None
    while stack:
        folder, rel_dir, depth = stack.pop()
        if split and depth == split_depth:
            deferred.append((rel_dir, folder))
            continue
        found, subs = files.setdefault(rel_dir, []), subfolders.setdefault(rel_dir, [])
        try:
            entries = list(os.scandir(folder))
        except OSError:
            skipped["unreadable folder"] += 1
            continue
        for e in entries:
            name = e.name
            if name.startswith("."):
                skipped["hidden"] += 1
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append((e.path, rel, depth + 1))
                    subs.append((name, rel))
                    continue
            except OSError:
                pass
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                skipped[os.path.splitext(name)[1].lower() or "(no extension)"] += 1
                continue
            # A pipe, socket or device is never opened (reading a pipe would wait forever). A link
            # that leads nowhere is kept: listed as unreadable, tried again once it leads somewhere.
            if not _is_regular(e) and os.path.exists(e.path):
                skipped["special file"] += 1
                continue
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                unnamable.append((rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                                  "file name is not valid UTF-8"))
                continue
            found.append(rel)
        if depth == 0:
            split_depth = 1 if len(subs) >= SPLIT_AT else 2
    return files, subfolders, skipped, unnamable, deferred


def _walk_all(folder: str, top: str) -> tuple[list[str], collections.Counter, list[tuple[str, str]]]:
    """:func:`walk_images` in this process alone (a job's own walk)."""
    files, subfolders, skipped, unnamable, _ = _walk(folder, top, split=False)
    return _in_path_order(top, files, subfolders, {}), skipped, sorted(unnamable)


def _in_path_order(top: str, files: dict[str, list[str]], subfolders: dict[str, list[tuple[str, str]]],
                   done: dict[str, list[str]]) -> list[str]:
    """The images of every folder under ``top`` in the order of sorted Paths: a folder's entries
    by name, a sub-folder's images where its name falls (depth first, without recursion: a deep
    tree cannot exhaust the stack); a folder of ``done`` is its list (walked as a job)."""
    out: list[str] = []
    stack = [iter([(top, True, top)])]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        _, is_folder, rel = item
        if not is_folder:
            out.append(rel)
            continue
        if rel in done:
            out += done[rel]
            continue
        mine, subs = files.get(rel, []), subfolders.get(rel, [])
        mine.sort()  # (one prefix: the order of their names)
        if not subs:
            out += mine
            continue
        items = [(f.rpartition("/")[2], False, f) for f in mine] + [(n, True, r) for n, r in subs]
        stack.append(iter(sorted(items)))
    return out


def _is_regular(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows a link
    except OSError:  # a link loop: kept, and listed as unreadable
        return False


def stat_paths(root, paths) -> tuple[bytes, bytes]:
    """The size and modification time (ns) of each of ``paths`` (relative to ``root``) as two
    runs of int64 machine bytes; -1 and -1 for a path that cannot be stat'ed (a link that leads
    nowhere). The paths are joined as strings and the numbers gathered in machine arrays: a
    million images are stat'ed at every update (a Path, a call and a tuple per image cost as much
    as the stat; a list of Python ints takes 36 bytes a number)."""
    base, stat = os.path.join(os.fspath(root), ""), os.stat
    sizes, times = array.array("q"), array.array("q")
    for rel in paths:
        try:
            st = stat(base + rel)
        except OSError:
            sizes.append(-1)
            times.append(-1)
            continue
        sizes.append(st.st_size)
        times.append(st.st_mtime_ns)
    return sizes.tobytes(), times.tobytes()


def walk_tree(folder: str, top: str) -> tuple:
    """:func:`walk_images` of ``folder`` (``top``: its path relative to the data folder) as one
    job: (the paths' UTF-8 bytes, each ended by a NUL; their number; skipped (a dict);
    unnamable). Bytes, not a list of str: compact to send."""
    found, skipped, unnamable = _walk_all(folder, top)
    return _joined(found), len(found), dict(skipped), unnamable


def walk_and_stat(root: str, top: str) -> tuple:
    """:func:`walk_images` of the folder ``top`` of ``root`` and :func:`stat_paths` of what it
    finds, as one job: (the paths' bytes as :func:`walk_tree` gives them; their number; sizes;
    times; skipped; unnamable)."""
    found, skipped, unnamable = _walk_all(os.path.join(root, top), top)
    return (_joined(found), len(found), *stat_paths(root, found), dict(skipped), unnamable)


def _joined(paths: list[str]) -> bytes:
    return ("\0".join(paths) + "\0").encode("utf-8", "surrogateescape") if paths else b""


def batch(*jobs) -> list:
    """The results of several jobs, as one job."""
    return [_do(job) for job in jobs]


JOBS = {"walk": walk_and_stat, "tree": walk_tree, "stat": stat_paths, "batch": batch}


def run(jobs) -> list:
    """The result of each job (``(kind, *arguments)``, a kind of :data:`JOBS`), in order; ``jobs``
    is a list or anything with a length and an index (each job is taken once, as it starts). This
    process does them from the front; when there is more than one and the work is still going
    after :data:`START_AFTER`, helpers on the other cores take them from the back. A helper that
    cannot start or fails leaves its job to this process: helpers only ever save time."""
    if len(jobs) > MAX_JOBS:  # (a folder per person of a face data set: 100,000 small jobs)
        return [r for results in run(_Batches(jobs, -(-len(jobs) // MAX_JOBS))) for r in results]
    results: list = [None] * len(jobs)
    queue = collections.deque(range(len(jobs)))
    stop, procs = threading.Event(), []
    threads = [threading.Thread(target=_helper, args=(jobs, queue, results, stop, procs), daemon=True)
               for _ in range(min(_cores() - 1, MAX_HELPERS) if len(jobs) > 1 else 0)]
    for t in threads:
        t.start()
    ended = False
    try:
        while queue:
            try:
                i = queue.popleft()
            except IndexError:  # (a helper took the last one)
                break
            results[i] = _do(jobs[i])
        ended = True
    finally:
        stop.set()
        if not ended:  # interrupted: the helpers' work is not waited for
            for p in procs.copy():  # (a copy: each helper's thread removes its own)
                p.kill()
        for t in threads:
            t.join()
    for i, r in enumerate(results):  # (those of a helper that failed)
        if r is None:
            results[i] = _do(jobs[i])
    return results


class _Batches:
    """``jobs`` packed ``size`` at a time into batch jobs, each made as it is taken."""

    def __init__(self, jobs, size: int):
        self.jobs, self.size = jobs, size

    def __len__(self) -> int:
        return (len(self.jobs) + self.size - 1) // self.size

    def __getitem__(self, i: int) -> tuple:
        return ("batch", *(self.jobs[k] for k in range(i * self.size, min((i + 1) * self.size, len(self.jobs)))))


def _do(job: tuple):
    kind, *args = job
    return JOBS[kind](*args)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return os.cpu_count() or 1


def _helper(jobs, queue, results, stop, procs) -> None:
    """Feed one helper process jobs from the back of ``queue`` until it is empty or ``stop``."""
    if stop.wait(START_AFTER):
        return
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except (OSError, ValueError):  # (no interpreter to start: an embedded Python)
        return
    procs.append(proc)
    try:
        while not stop.is_set():
            try:
                i = queue.pop()
            except IndexError:
                break
            _send(proc.stdin, jobs[i])
            results[i] = _receive(proc.stdout)
    except (OSError, EOFError, ValueError, TypeError):
        pass  # a helper that died or garbled its answer: its job is done by the caller
    finally:
        procs.remove(proc)
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _send(stream, obj) -> None:
    data = marshal.dumps(obj)
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _receive(stream):
    """One object from a helper's output (marshal: plain data only, from a process of our own)."""
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the helper ended")
    n = int.from_bytes(head, "little")
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("the helper ended")
    return marshal.loads(data)


def _serve() -> None:
    """A helper: jobs from stdin, results to stdout, until stdin ends (the caller closed it or
    ended). Ctrl-C is the caller's to act on: it kills its helpers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            job = _receive(inp)
        except EOFError:
            return
        _send(out, _do(job))


if __name__ == "__main__":
    _serve()
