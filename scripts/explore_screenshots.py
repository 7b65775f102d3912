"""Regenerate docs/explore_*.png: screenshots of each task's evaluate(...).explore() report.

Trains small real models (activity: watch subjects 1-6, tested on 7-10; images: 600 MNIST
digits, tested on 300 others; detector: 300 generated scenes, tested on 40 from held-out
objects), writes each report, opens it in the system's chromium through playwright,
clicks the largest misclassification cell and saves a screenshot. A few minutes on 2
cores; needs the test extra (playwright) and chromium (scripts/setup_env.sh test).

    python scripts/explore_screenshots.py [--out docs] [--reports DIR]
"""

import argparse
import os
import shutil
import tempfile

import toolkit as tc


def activity_result():
    data = tc.datasets.watch_sessions()
    train = data[data["subject"] <= 6].drop(columns="subject")
    test = data[data["subject"] >= 7].drop(columns="subject")
    model = tc.activity_classifier.create(train, "session_id", "exercise", random_seed=0,
                                          verbose=False)
    return model.evaluate(test)


def image_result():
    digits = tc.datasets.mnist_digits().sample(900, random_state=0)   # the file is sorted
    train, test = digits.iloc[:600], digits.iloc[600:]
    model = tc.image_classifier.create(train, target="label", random_seed=0, verbose=False)
    return model.evaluate(test)


def detection_result():
    scenes = tc.datasets.detection_scenes(300, random_seed=0)
    test = tc.datasets.detection_scenes(40, split="test", random_seed=1)
    model = tc.object_detector.create(scenes, random_seed=0, verbose=False)
    return model.evaluate(test)


def _chromium():
    for name in (os.environ.get("TOOLKIT_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise SystemExit("No chromium found: apt-get install chromium (or set TOOLKIT_CHROMIUM).")


def screenshot(browser, html_path, png_path, height, click_worst_cell=True):
    page = browser.new_page(viewport={"width": 1280, "height": height})
    page.goto("file://" + os.path.abspath(html_path))
    page.wait_for_selector("body[data-ready='1']")
    if click_worst_cell:
        # The largest off-diagonal cell: the mistake a reader looks at first.
        page.evaluate("""() => {
          const cells = Array.from(document.querySelectorAll('.cm-cell'))
            .filter(g => g.dataset.true !== g.dataset.pred && Number(g.dataset.count) > 0);
          cells.sort((a, b) => Number(b.dataset.count) - Number(a.dataset.count));
          if (cells.length) cells[0].dispatchEvent(new MouseEvent('click'));
        }""")
    page.screenshot(path=png_path)
    page.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs"))
    parser.add_argument("--reports", default=None, help="keep the HTML reports here")
    parser.add_argument("--only", nargs="*", choices=("activity", "image", "detection"),
                        help="regenerate only these")
    args = parser.parse_args(argv)
    reports = args.reports or tempfile.mkdtemp(prefix="toolkit-explore-")
    os.makedirs(reports, exist_ok=True)
    jobs = [("activity", activity_result, 1500), ("image", image_result, 1000),
            ("detection", detection_result, 1150)]
    jobs = [j for j in jobs if not args.only or j[0] in args.only]
    written = []
    for name, make, height in jobs:
        result = make()
        html = os.path.join(reports, f"explore_{name}.html")
        result.explore(html, open_browser=False)
        written.append((name, html, height))
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        for name, html, height in written:
            png = os.path.join(args.out, f"explore_{name}.png")
            screenshot(browser, html, png, height, click_worst_cell=name != "detection")
            print(f"{png} ({os.path.getsize(png):,} bytes) from {html}")
        browser.close()


if __name__ == "__main__":
    main()
