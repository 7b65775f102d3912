"""evaluate(...).explore(): the HTML reports, checked in a real browser (system chromium).

The browser tests drive Debian's chromium with playwright (its own browser download is not
used); they skip, saying why, when playwright or a chromium binary is missing.
"""

import os
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest

import toolkit as tc
from toolkit._explore import (EvaluationResult, detection_boxes_from_arrays, detection_report,
                              image_report, precision_recall, write_report)
from toolkit.errors import InvalidParameterError, ToolkitError


# --- a real browser -------------------------------------------------------------------------

def _chromium():
    for name in (os.environ.get("TOOLKIT_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    exe = _chromium()
    if exe is None and os.environ.get("CI"):
        # CI installs chromium (scripts/setup_env.sh): its absence there is a failure.
        pytest.fail("CI has no chromium: scripts/setup_env.sh test could not install it")
    if exe is None:
        pytest.skip("no chromium found (apt-get install chromium, or set TOOLKIT_CHROMIUM); "
                    "scripts/setup_env.sh test installs it when run as root")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


class Opened:
    """A report open in a fresh page, with every request and script error recorded."""

    def __init__(self, browser, path):
        self.page = browser.new_page(viewport={"width": 1300, "height": 900})
        self.requests, self.errors = [], []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text)
                     if m.type in ("error", "warning") else None)
        self.page.goto("file://" + os.path.abspath(path))
        self.page.wait_for_selector("body[data-ready='1']", timeout=10000)

    def eval(self, js, arg=None):
        return self.page.evaluate(js, arg)

    def attrs(self, selector, name):
        return self.eval(f"Array.from(document.querySelectorAll({selector!r}))"
                         f".map(e => e.getAttribute({name!r}))")

    def close(self):
        # Only the page itself, read from disk, and embedded data: no network at all.
        bad = [u for u in self.requests if not u.startswith(("file:", "data:"))]
        self.page.close()
        assert not bad, f"the report made network requests: {bad}"
        assert not self.errors, f"script errors or warnings: {self.errors}"


def _images_decode(opened, selector, attr):
    """Natural widths of the images (img src or svg image href), after decoding each."""
    return opened.eval(
        """([sel, attr]) => Promise.all(Array.from(document.querySelectorAll(sel)).map(e => {
             const i = new Image(); i.src = e.getAttribute(attr);
             return i.decode().then(() => i.naturalWidth, () => 0); }))""", [selector, attr])


# --- data --------------------------------------------------------------------------------------

SHAPES = ["circle", "square", "triangle"]


def _shape_images(n, seed=0):
    """Real PIL drawings of three shapes in random colours, with labels."""
    from PIL import Image, ImageDraw
    rng = np.random.RandomState(seed)
    images, labels = [], []
    for i in range(n):
        label = SHAPES[i % 3]
        img = Image.new("RGB", (64, 48), tuple(int(v) for v in rng.randint(150, 255, 3)))
        d = ImageDraw.Draw(img)
        fill = tuple(int(v) for v in rng.randint(0, 120, 3))
        x, y, r = rng.randint(18, 46), rng.randint(16, 32), rng.randint(8, 14)
        if label == "circle":
            d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif label == "square":
            d.rectangle([x - r, y - r, x + r, y + r], fill=fill)
        else:
            d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
        images.append(np.asarray(img))
        labels.append(label)
    return images, labels


def _shape_probabilities(labels, seed=1):
    """Probabilities with known mistakes: every 2nd square is called a circle, every 7th
    triangle a square; confidences differ so the order within a cell is defined."""
    rng = np.random.RandomState(seed)
    probs = np.zeros((len(labels), 3))
    for i, lab in enumerate(labels):
        pred = SHAPES.index(lab)
        if lab == "square" and i % 2 == 0:
            pred = 0
        if lab == "triangle" and i % 7 == 0:
            pred = 1
        top = rng.uniform(0.4, 0.99)
        probs[i] = (1 - top) / 2
        probs[i, pred] = top
    return probs


def _noisy_detections(annotations, classes, seed=0):
    """Detections near most true boxes (some with the wrong class) plus clutter."""
    rng = np.random.RandomState(seed)
    out = []
    for ann in annotations:
        p = []
        for a in ann:
            c = a["coordinates"]
            if rng.rand() < 0.8:
                p.append({"label": a["label"] if rng.rand() < 0.85 else str(rng.choice(classes)),
                          "coordinates": {"x": c["x"] + rng.normal(0, 4),
                                          "y": c["y"] + rng.normal(0, 4),
                                          "width": c["width"] * rng.uniform(0.85, 1.15),
                                          "height": c["height"] * rng.uniform(0.85, 1.15)},
                          "confidence": float(rng.uniform(0.3, 1))})
        for _ in range(rng.randint(0, 3)):
            p.append({"label": str(rng.choice(classes)),
                      "coordinates": {"x": rng.uniform(20, 200), "y": rng.uniform(20, 200),
                                      "width": rng.uniform(20, 80),
                                      "height": rng.uniform(20, 80)},
                      "confidence": float(rng.uniform(0.0, 0.6))})
        out.append(p)
    return out


@pytest.fixture(scope="module")
def scenes():
    return tc.datasets.detection_scenes(24, random_seed=0)


# --- the result object ---------------------------------------------------------------------

def test_evaluate_result_is_the_same_dict_plus_explore(tiny_model, watch_small, tmp_path):
    result = tiny_model.evaluate(watch_small)
    assert isinstance(result, dict) and isinstance(result, EvaluationResult)
    assert set(result) == {"accuracy", "auc", "precision", "recall", "f1_score", "log_loss",
                           "confusion_matrix", "roc_curve", "unseen_labels"}
    plain = tiny_model.evaluate(watch_small, metric=["accuracy", "f1_score"])
    assert plain == {"accuracy": result["accuracy"], "f1_score": result["f1_score"],
                     "unseen_labels": {}}
    # Pickles (and copies) as the metrics only; such a copy cannot explore.
    again = pickle.loads(pickle.dumps(plain))
    assert again == plain
    with pytest.raises(ToolkitError, match="evaluate"):
        again.explore(str(tmp_path / "x.html"), open_browser=False)
    path = result.explore(str(tmp_path / "report.html"), open_browser=False)
    assert path == str(tmp_path / "report.html") and os.path.getsize(path) > 1000


def test_report_keeps_the_evaluated_data(tiny_model, watch_small, tmp_path):
    data = watch_small.copy()
    result = tiny_model.evaluate(data)
    first = open(result.explore(str(tmp_path / "a.html"), open_browser=False)).read()
    data["exercise"] = "CHANGED"
    data[["ax", "ay"]] = 0.0
    second = open(result.explore(str(tmp_path / "b.html"), open_browser=False)).read()
    assert first == second and "CHANGED" not in second


def test_write_report_default_path_and_bad_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BROWSER", raising=False)
    monkeypatch.setenv("CI", "1")                 # never opens a browser under CI
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    path = write_report("<html></html>")
    try:
        assert os.path.basename(path).startswith("toolkit-explore-") and path.endswith(".html")
        assert f"Report written: {path}" in capsys.readouterr().out
        assert not opened
    finally:
        os.remove(path)
    with pytest.raises(InvalidParameterError, match="does not exist"):
        write_report("<html></html>", str(tmp_path / "missing" / "r.html"))
    monkeypatch.delenv("CI")
    monkeypatch.setenv("BROWSER", "true")
    write_report("<html></html>", str(tmp_path / "r.html"))
    assert opened == [(tmp_path / "r.html").as_uri()]
    assert "opened in the browser" in capsys.readouterr().out


def test_labels_cannot_break_out_of_the_page(tmp_path):
    images, _ = _shape_images(6)
    labels = ["</script><img src=x onerror=alert(1)>", "a&b"] * 3
    probs = np.tile([[0.9, 0.1], [0.2, 0.8]], (3, 1))
    html = image_report(images, labels, probs, sorted(set(labels)))
    assert "</script><img" not in html
    assert html.count("</script>") == 2          # the data block and the script


# --- precision-recall against evaluate and pycocotools ------------------------------------------

def test_precision_recall_ap_matches_evaluate_and_pycocotools(scenes):
    from toolkit.object_detector import _detection
    classes = tc.datasets.DETECTION_CLASSES
    preds = _noisy_detections(scenes.annotations, classes)
    ours = precision_recall(scenes.annotations, preds, classes)
    assert ours["classes"] == list(classes)
    idx = {c: i for i, c in enumerate(classes)}

    def arrays(rows, score):
        return [np.array([[idx[a["label"]], a["coordinates"]["x"], a["coordinates"]["y"],
                           a["coordinates"]["width"], a["coordinates"]["height"]]
                          + ([a["confidence"]] if score else []) for a in r]
                         ).reshape(-1, 6 if score else 5) for r in rows]
    gt, dt = arrays(scenes.annotations, False), arrays(preds, True)
    evaluate_ap = _detection.average_precision(gt, dt, classes)[0]
    got = np.array([m["ap"] for m in ours["per_class"]])
    np.testing.assert_allclose(got, evaluate_ap, atol=1e-6)
    assert 0.3 < got.min() and got.max() < 1        # real mistakes, not a trivial case
    pytest.importorskip("pycocotools")
    from test_object_detector import _coco_ap
    np.testing.assert_allclose(got, _coco_ap(gt, dt, len(classes))[0], atol=1e-6)
    # The arrays evaluate() scores convert back to the same annotations.
    again = precision_recall(detection_boxes_from_arrays(gt, classes),
                             detection_boxes_from_arrays(dt, classes), classes)
    np.testing.assert_allclose([m["ap"] for m in again["per_class"]], got, atol=1e-12)


def test_precision_recall_ap_equals_a_real_detectors_evaluate(scenes):
    # What a report built from predict() shows is what evaluate() reports.
    model = tc.object_detector.create(scenes.iloc[:12], max_iterations=40, verbose=False,
                                      random_seed=0)
    test = tc.datasets.detection_scenes(10, split="test", random_seed=3)
    scores = model.evaluate(test)["average_precision_50"]
    preds = model.predict(test, confidence_threshold=0.001)
    pr = precision_recall(list(test["annotations"]), list(preds), model.classes)
    ours = {m["label"]: m["ap"] for m in pr["per_class"] if not np.isnan(m["ap"])}
    assert ours.keys() == scores.keys()
    for c in ours:
        assert abs(ours[c] - scores[c]) <= 1e-6, c


def test_image_and_detector_evaluate_return_explorable_results(scenes, tmp_path):
    # Real models: the frozen image classifier fixture, a briefly trained detector.
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                          "image_classifier", "v1")
    ic = tc.load_model(os.path.join(folder, "model.model"))
    faces = tc.datasets.lfw_faces().iloc[::20]
    result = ic.evaluate(faces)
    assert isinstance(result, EvaluationResult) and 0 <= result["accuracy"] <= 1
    html = open(result.explore(str(tmp_path / "ic.html"), open_browser=False)).read()
    assert "data:image/" in html and "face" in html
    od = tc.object_detector.create(scenes.iloc[:8], max_iterations=5, verbose=False,
                                   random_seed=0)
    result = od.evaluate(scenes.iloc[8:12])
    assert isinstance(result, EvaluationResult) and "mean_average_precision_50" in result
    html = open(result.explore(str(tmp_path / "od.html"), open_browser=False)).read()
    assert "data:image/" in html and all(c in html for c in od.classes)


def test_precision_recall_marks_matches():
    box = {"x": 50, "y": 50, "width": 20, "height": 20}
    gt = [[{"label": "a", "coordinates": box}, {"label": "b", "coordinates": box}]]
    dets = [[{"label": "a", "coordinates": dict(box, x=52), "confidence": 0.9},
             {"label": "a", "coordinates": dict(box, x=51), "confidence": 0.8},  # duplicate
             {"label": "c", "coordinates": box, "confidence": 0.7}]]             # wrong class
    pr = precision_recall(gt, dets, ["a", "b"])
    assert pr["classes"] == ["a", "b", "c"]
    im = pr["images"][0]
    assert im["det_tp"].tolist() == [True, False, False]
    np.testing.assert_array_equal(im["gt_score"], [0.9, np.nan])
    a, b, c = pr["per_class"]
    assert a["ap"] == 1.0 and b["ap"] == 0.0 and np.isnan(c["ap"])
    np.testing.assert_allclose(a["precision"], [1.0, 0.5])


def test_series_with_any_index_are_read_by_position(scenes):
    images, labels = _shape_images(12)
    probs = _shape_probabilities(labels)
    index = list(range(100, 88, -1))
    from_list = image_report(images, labels, probs, SHAPES, index=index)
    from_series = image_report(pd.Series(images, index=index), pd.Series(labels, index=index),
                               probs, SHAPES, index=index)
    assert from_series == from_list
    preds = _noisy_detections(scenes.annotations, tc.datasets.DETECTION_CLASSES)
    shuffled = scenes.set_index(pd.Index(np.arange(len(scenes))[::-1] * 7))
    assert detection_report(shuffled["image"], shuffled["annotations"], preds) == \
        detection_report(list(scenes["image"]), list(scenes["annotations"]), preds)


def test_large_evaluations_stay_small_and_say_so():
    images, labels = _shape_images(60)
    rng = np.random.RandomState(0)
    n = 3000
    pick = rng.randint(0, 60, n)
    labels = [labels[i] for i in pick] + ["hexagon"] * 10      # an unknown label too
    probs = rng.dirichlet(np.ones(3), n + 10)
    html = image_report([images[i] for i in pick] + images[:10], labels, probs, SHAPES,
                        max_images=100)
    assert len(html) < 300_000
    import re
    shown = int(re.search(r"Thumbnails: (\d+) of 3010 images are embedded", html).group(1))
    assert 90 <= shown <= 100 and html.count("data:image/jpeg") == shown
    assert "hexagon" in html
    scenes = tc.datasets.detection_scenes(70, random_seed=1)
    preds = _noisy_detections(scenes.annotations, tc.datasets.DETECTION_CLASSES)
    html = detection_report(scenes.image, scenes.annotations, preds, max_images=20)
    assert len(html) < 600_000 and "20 of 70 are embedded" in html


# --- the reports in the browser ------------------------------------------------------------------

def test_activity_report_in_browser(browser, tiny_model, watch_small, tmp_path):
    result = tiny_model.evaluate(watch_small)
    path = result.explore(str(tmp_path / "activity.html"), open_browser=False)
    page = Opened(browser, path)
    classes = tiny_model.classes
    cm = result["confusion_matrix"]
    expected = {(r.target_label, r.predicted_label): r.count for r in cm.itertuples()}
    cells = page.eval("""Array.from(document.querySelectorAll('.cm-cell')).map(
        g => [g.dataset.true, g.dataset.pred, Number(g.dataset.count)])""")
    assert len(cells) == len(classes) ** 2
    assert {(t, p): n for t, p, n in cells if n} == expected
    assert len(page.attrs("#per-class-metrics tr[data-class]", "data-class")) == len(classes)

    # The largest misclassification: the listed sessions and their row counts are those
    # of the rows behind the cell.
    (t, p), n = max(((k, v) for k, v in expected.items() if k[0] != k[1]),
                    key=lambda kv: kv[1])
    pred = tiny_model.predict(watch_small)
    rows = watch_small[(watch_small["exercise"] == t) & (pred == p)]
    want = {str(s): int(c) for s, c in rows.groupby("session_id").size().items()}
    page.page.click(f".cm-cell[data-true='{t}'][data-pred='{p}']")
    got = page.eval("""Array.from(document.querySelectorAll('.cell-session')).map(
        li => [li.dataset.session, Number(li.dataset.rows)])""")
    assert dict(got) == want
    # Its timeline shows the true/predicted label bands, one trace per feature and the
    # cell's windows highlighted.
    first = got[0][0]
    assert page.attrs("#timeline-svg", "data-session") == [first]
    assert len(page.attrs("#timeline-svg polyline.trace", "points")) == 6
    assert page.attrs("#timeline-svg .run-true", "x") and page.attrs("#timeline-svg .run-pred",
                                                                     "x")
    win = 20
    sess_rows = watch_small[watch_small["session_id"].astype(str) == first]
    sess_pred = pred[sess_rows.index]
    pos = np.arange(len(sess_rows))
    hit = (sess_rows["exercise"].to_numpy() == t) & (sess_pred.to_numpy() == p)
    want_windows = sorted(set((pos[hit] // win).tolist()))[:30]
    shown = sorted(int(w) for w in page.attrs("#timeline-svg .window-highlight", "data-window"))
    assert shown == want_windows
    # Choosing another session draws it.
    other = page.attrs("#session-select option", "value")[-1]
    page.page.select_option("#session-select", other)
    assert page.attrs("#timeline-svg", "data-session") != [first]
    page.close()


def test_image_report_in_browser(browser, tmp_path):
    images, labels = _shape_images(45)
    probs = _shape_probabilities(labels)
    path = write_report(image_report(images, labels, probs, SHAPES, max_per_cell=4),
                        str(tmp_path / "images.html"), open_browser=False)
    page = Opened(browser, path)
    pred = probs.argmax(axis=1)
    cells = page.eval("""Array.from(document.querySelectorAll('.cm-cell')).map(
        g => [g.dataset.true, g.dataset.pred, Number(g.dataset.count)])""")
    assert len(cells) == 9
    for t, p, n in cells:
        assert n == sum(1 for lab, k in zip(labels, pred) if lab == t and SHAPES[k] == p)
    # squares called circles: the 4 most confident of them, most confident first.
    wrong = [i for i, (lab, k) in enumerate(zip(labels, pred)) if lab == "square" and k == 0]
    assert len(wrong) > 4
    want = sorted(wrong, key=lambda i: -probs[i].max())[:4]
    page.page.click(".cm-cell[data-true='square'][data-pred='circle']")
    assert [int(i) for i in page.attrs("#cell-images .thumb", "data-index")] == want
    widths = _images_decode(page, "#cell-images .thumb img", "src")
    assert widths == [64] * 4             # thumbnails are the images (64 px wide, not scaled)
    # The top confusion list leads to the same cell.
    first = page.eval("document.querySelector('#top-confusions li').textContent")
    assert first.startswith("square \u2192 circle")
    page.page.click("#cell-images")       # (no-op click outside the matrix)
    page.page.click("#top-confusions li:nth-child(2) .clickable")
    shown = [int(i) for i in page.attrs("#cell-images .thumb", "data-index")]
    assert all(labels[i] == "triangle" and pred[i] == 1 for i in shown) and shown
    assert len(page.attrs("#per-class-metrics tr[data-class]", "data-class")) == 3
    page.close()


def test_detection_report_in_browser(browser, scenes, tmp_path):
    classes = tc.datasets.DETECTION_CLASSES
    preds = _noisy_detections(scenes.annotations, classes)
    html = detection_report(scenes.image, scenes.annotations, preds, classes)
    path = write_report(html, str(tmp_path / "detections.html"), open_browser=False)
    page = Opened(browser, path)
    pr = precision_recall(scenes.annotations, preds, classes)
    # One curve per class with detections; the AP table matches.
    assert sorted(page.attrs("#pr-svg .pr-curve", "data-class")) == sorted(classes)
    aps = page.eval("""Array.from(document.querySelectorAll('#ap-table tr[data-class]')).map(
        r => [r.dataset.class, Number(r.children[1].textContent)])""")
    assert aps == [[m["label"], round(m["ap"], 3)] for m in pr["per_class"]]
    # Every image is drawn and decodes.
    assert len(page.attrs("svg.det-image", "data-index")) == len(scenes)
    widths = _images_decode(page, "svg.det-image image", "href")
    assert widths == [224] * len(scenes)

    def statuses(k, thr):
        im = pr["images"][k]
        keep = im["det"][:, 5] >= thr
        return {"box-tp": int((im["det_tp"] & keep).sum()),
                "box-fp": int((~im["det_tp"] & keep).sum()),
                "box-miss": int((~(im["gt_score"] >= thr)).sum()),
                "box-gt": int((im["gt_score"] >= thr).sum())}

    def drawn(k):
        return {c: page.eval(f"document.querySelectorAll('svg.det-image[data-index=\"{k}\"] "
                             f"rect.{c}').length") for c in ("box-tp", "box-fp", "box-miss",
                                                            "box-gt")}
    for k in range(len(scenes)):
        assert drawn(k) == statuses(k, 0.25), k
    # A higher threshold: fewer detections, more misses, exactly as the matches say.
    page.page.fill("#threshold", "0.9")
    page.page.dispatch_event("#threshold", "input")
    for k in range(len(scenes)):
        assert drawn(k) == statuses(k, 0.9), k
    # Filter by class: only images with that class, only its boxes.
    page.page.select_option("#class-filter", "cat")
    labels = set(page.attrs("svg.det-image rect", "data-label"))
    assert labels == {"cat"}
    want = [k for k, (g, d) in enumerate(zip(scenes.annotations, preds))
            if any(a["label"] == "cat" for a in g)
            or any(a["label"] == "cat" and a["confidence"] >= 0.9 for a in d)]
    assert [int(i) for i in page.attrs("svg.det-image", "data-index")] == want
    page.page.check("#errors-only")
    assert len(page.attrs("svg.det-image", "data-index")) < len(want)
    page.close()
