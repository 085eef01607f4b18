"""The labelling app: stage 1 on DATA (only what is missing is computed), then a local web app on
127.0.0.1 that picks the next images worth labelling, shows the current model's suggestion for
each, turns the audit's findings into fixed labels, and writes every decision to the labels file
(DATA/labels.csv unless the folder has one or --labels names one) whole, at once. Images added to
the folder while it runs get codes in the background and join the pool. Ctrl-C stops it."""
import sys
import threading
import webbrowser
from pathlib import Path

from pipeline.cli import codes, seed_value
from pipeline.codes import CodeSet
from pipeline.errors import ParameterError, UserError
from pipeline.label import STRATEGIES, labels_file_of

HELP = "a local web app to label the images worth labelling, and fix the audit's findings"

# Stage 1 imports TensorFlow (quietly) only where it builds a Keras model (see codes).
NEEDS_TENSORFLOW = False


def add_arguments(p):
    codes.add_arguments(p)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-open", action="store_true", help="print the address, do not open a browser")
    p.add_argument("--strategy", default="auto", choices=STRATEGIES,
                   help="how the next images are chosen (as in suggest; auto: coverage while labels are few, then "
                        "margin with diversity)")
    p.add_argument("--batch", type=int, default=12, help="images per batch on the label page")
    p.add_argument("--draw-seed", type=seed_value, default=0, help="seed of the choice (random draws, k-means)")
    p.add_argument("--rescan", type=float, default=10.0,
                   help="seconds between looks for added images and label changes to take into the code set")
    p.add_argument("--new-token", action="store_true",
                   help="replace the folder's token (kept in the cache, so that open tabs go on after a restart)")
    p.add_argument("--replay", action="store_true",
                   help="rebuild the labels file from its journal (<labels stem>.journal.jsonl: every decision made "
                        "in the app, in order) and exit")


def replay_journal(a) -> int:
    """--replay: the labels file rebuilt from its journal, without computing any code."""
    from pipeline.data import journal_file, read_folder, replay

    data = Path(a.data)
    labels = Path(a.labels) if a.labels else None
    if labels is None:
        source = read_folder(data, codes.layout_options(a)).source
        labels = Path(source["labels_file"]) if source.get("layout") == "labels-file" else data / "labels.csv"
    if not journal_file(labels).is_file():
        raise UserError(f"no journal of {labels} ({journal_file(labels).name}): the app writes one beside the "
                        f"labels file it edits")
    applied, damaged = replay(labels, data, codes.layout_options(a))
    print(f"replayed {applied} decision(s) from {journal_file(labels)} into {labels}"
          + (f"; {damaged} damaged line(s) skipped" if damaged else ""))
    return 0


def run(a):
    if a.replay:
        return replay_journal(a)
    if a.port < 0 or a.port > 65535:
        raise ParameterError("port", "a port number from 0 to 65535 (0: a free one)")
    if not 1 <= a.batch <= 200:
        raise ParameterError("batch", "from 1 to 200 images")
    if not 0.5 <= a.rescan <= 86400:
        raise ParameterError("rescan", "from 0.5 to 86400 seconds")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("the labelling app needs its web server: pip install 'cnn-codes[label]'") from None
    from pipeline.label import LabelSession, listen, make_app, serve, stored_token

    first = [True]

    def make_codes(reading):
        progress = None if first[0] else False  # progress bars for the first run only
        first[0] = False
        return CodeSet(codes.compute_codes(a, reading=reading, progress=progress)[0])

    cs = make_codes(codes.layout_options(a))
    data = Path(a.data)
    labels = labels_file_of(cs, data, a.labels)
    session = LabelSession(data, labels, make_codes, codes.layout_options(a), a.strategy, a.draw_seed, a.batch,
                           codes_set=cs)
    sock = listen(a.port)
    token = stored_token(Path(cs.path).parent.parent, renew=a.new_token)  # (the data folder's home in the cache)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/label?token={token}"
    print(f"labelling {len(session.paths)} images of {data} (decisions go to {labels}); open {url}", flush=True)
    print("Ctrl-C stops it", flush=True)
    if not a.no_open:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    session.run_refresher(a.rescan)
    try:
        serve(make_app(session, token), sock)
    finally:
        session.stop()
    print(f"{len(session.history)} decision(s) this session, in {labels}", file=sys.stderr)
    return 0
