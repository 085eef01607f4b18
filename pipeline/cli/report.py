"""Write (or rewrite) report.html in a run folder and print its path: for a head, fine-tuned or
from-scratch run the summary, the misclassified test images (most confident mistakes first, with
true and predicted class and confidence), a sortable per-class table, the confusion matrix and the
curves; for a sweep its chart and table. One self-contained HTML file. Runs write it themselves;
this rebuilds it (e.g. after moving the images) and with --open shows it in the browser."""
import webbrowser

from pipeline.reports import GALLERY, build_report

HELP = "write a run's report.html (figures, per-class table, gallery of mistakes) and open it"

NEEDS_TENSORFLOW = False


def add_arguments(p):
    p.add_argument("run", help="a run folder (head, fine-tuned, from-scratch or sweep)")
    p.add_argument("--gallery", type=int, default=GALLERY, help="most misclassified test images shown")
    p.add_argument("--open", action="store_true", help="open the report in the default web browser")


def run(a):

    out = build_report(a.run, limit=a.gallery)
    print(f"report -> {out}")
    if a.open:
        webbrowser.open(out.resolve().as_uri())
    return 0
