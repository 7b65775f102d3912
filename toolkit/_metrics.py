"""Classification metrics shared by the classifiers (computed with scikit-learn)."""

import warnings

import numpy as np

from .errors import InvalidParameterError, ToolkitWarning


CLASSIFIER_METRICS = ("accuracy", "auc", "precision", "recall", "f1_score", "log_loss",
                      "confusion_matrix", "roc_curve")


#: Columns of ``report_by_class`` (Turi Create 6's per-class report).
REPORT_COLUMNS = ("class", "actual_count", "predicted_correctly", "predicted_this_incorrectly",
                  "missed_predicting_this", "precision", "recall")


def check_metric(metric):
    """The list of metric names ``metric`` asks for.

    ``'auto'`` means every metric of CLASSIFIER_METRICS; ``'report'`` (Turi Create 6)
    those plus ``report_by_class``.
    """
    if metric == "auto":
        return list(CLASSIFIER_METRICS)
    if metric == "report":
        return list(CLASSIFIER_METRICS) + ["report_by_class"]
    names = [metric] if isinstance(metric, str) else list(metric)
    bad = [m for m in names if m not in CLASSIFIER_METRICS + ("report_by_class",)]
    if bad:
        raise InvalidParameterError(
            f"Unknown metric {bad[0]!r}; choose 'auto', 'report' or from "
            f"{', '.join(CLASSIFIER_METRICS + ('report_by_class',))}.")
    return names


def report_by_class(confusion):
    """Per-class counts, precision and recall from a confusion-matrix frame.

    ``confusion`` has columns ``target_label``, ``predicted_label``, ``count``;
    the result has one row per label seen as target or prediction (sorted, by
    str when labels mix types) and the columns REPORT_COLUMNS. Precision of a
    class never predicted, and recall of a class never present, are NaN.
    """
    import pandas as pd
    t = confusion["target_label"].tolist()
    p = confusion["predicted_label"].tolist()
    n = [int(v) for v in confusion["count"]]
    labels = set(t) | set(p)
    try:
        labels = sorted(labels)
    except TypeError:
        labels = sorted(labels, key=str)
    rows = []
    for c in labels:
        correct = sum(k for a, b, k in zip(t, p, n) if a == c and b == c)
        wrong_pred = sum(k for a, b, k in zip(t, p, n) if a != c and b == c)
        missed = sum(k for a, b, k in zip(t, p, n) if a == c and b != c)
        rows.append((c, correct + missed, correct, wrong_pred, missed,
                     correct / (correct + wrong_pred) if correct + wrong_pred else float("nan"),
                     correct / (correct + missed) if correct + missed else float("nan")))
    return pd.DataFrame.from_records(rows, columns=list(REPORT_COLUMNS))


def _object_array(values):
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _positions(y, classes):
    """Each label's position in ``classes`` (-1 if absent), as a dict lookup would find it,
    but hashing each distinct label once (pandas' factorize) instead of every row."""
    from ._validate import factorize
    codes, uniques = factorize(y)
    index = {c: i for i, c in enumerate(classes)}
    lut = np.array([index.get(v, -1) for v in uniques] + [-1], np.int64)
    return lut[codes]


def classifier_metrics(y_true, probs, classes, metric="auto", counts=None):
    """Evaluate predictions of a classifier.

    Parameters
    ----------
    y_true : array of labels (any hashable values)
    probs : ndarray (n, C), probabilities in ``classes`` order
    classes : list of the model's classes (sorted)
    counts : ndarray (n,) of positive ints, optional
        How many rows each entry stands for (rows with the same label and the
        same probabilities, e.g. the rows of one window). Every metric is the
        one of the rows repeated that many times: the sums are exact integer
        sums, so the results equal the repeated rows' (but for the last bits
        of ``log_loss``, a weighted mean).

    Labels never seen in training are reported (``unseen_labels``, and a
    warning); they count as errors in accuracy and the confusion matrix, and
    the rows holding them are left out of ``auc``, ``log_loss`` and
    ``roc_curve``, which need a probability for the true class.
    Averaged metrics (precision, recall, f1, auc) are macro averages over the
    model's classes.
    """
    import pandas as pd
    from sklearn import metrics as skm

    names = check_metric(metric)
    classes = list(classes)
    y_true = np.asarray(y_true, dtype=object)
    true_ids = _positions(y_true, classes)
    known = true_ids >= 0
    pred_ids = probs.argmax(axis=1)
    y_pred = _object_array(classes)[pred_ids]
    weight = np.ones(len(y_true), np.int64) if counts is None else np.asarray(counts, np.int64)
    sample_weight = None if counts is None else weight.astype(np.float64)
    result = {}
    unseen = {}
    if not known.all():
        vals, inverse = np.unique(y_true[~known].astype(str), return_inverse=True)
        unseen = {v: int(c) for v, c in zip(vals, np.bincount(inverse.reshape(-1),
                                                              weight[~known]))}
        warnings.warn(
            f"{int(weight[~known].sum())} row(s) have labels never seen in training "
            f"({', '.join(unseen)}); they count as errors in accuracy and are left out of "
            "auc, log_loss and roc_curve.", ToolkitWarning, stacklevel=3)
    result["unseen_labels"] = unseen
    label_ids = list(range(len(classes)))
    if "accuracy" in names:
        result["accuracy"] = float(np.mean(true_ids == pred_ids)) if counts is None else \
            float(weight[true_ids == pred_ids].sum() / weight.sum())
    wanted = [n for n in ("precision", "recall", "f1_score") if n in names]
    if wanted:
        # One call gives all three (precision_score & co. each make it and keep one):
        # the label checks and counts over every row are done once, not three times.
        prf = skm.precision_recall_fscore_support(true_ids, pred_ids, labels=label_ids,
                                                  average="macro", zero_division=0,
                                                  sample_weight=sample_weight)
        for name, value in zip(("precision", "recall", "f1_score"), prf[:3]):
            if name in wanted:
                result[name] = float(value)
    kt, kp, kw = true_ids[known], probs[known], weight[known]
    kw_sample = None if counts is None else sample_weight[known]
    if "log_loss" in names:
        p = np.clip(kp[np.arange(len(kt)), kt], 1e-15, 1.0) if len(kt) else np.array([np.nan])
        result["log_loss"] = float(-np.mean(np.log(p))) if counts is None or not len(kt) \
            else float(-np.dot(kw_sample, np.log(p)) / kw.sum())
    curves = {}
    if "auc" in names or "roc_curve" in names:
        # One ROC curve per class serves both: roc_auc_score is the area under this
        # same curve (roc_curve's defaults, then auc), so computing it separately
        # only sorted every class's scores a second time.
        for i in label_ids:
            pos = kt == i
            if pos.any() and (~pos).any():
                curves[i] = (pos, skm.roc_curve(pos, kp[:, i], sample_weight=kw_sample))
    if "auc" in names:
        aucs = [skm.auc(fpr, tpr) for _, (fpr, tpr, _) in curves.values()]
        result["auc"] = float(np.mean(aucs)) if aucs else float("nan")
    if "confusion_matrix" in names or "report_by_class" in names:
        frame = pd.DataFrame({"target_label": y_true, "predicted_label": y_pred,
                              "count": weight})
        confusion = (frame.groupby(["target_label", "predicted_label"])["count"].sum()
                     .reset_index())
        if "confusion_matrix" in names:
            result["confusion_matrix"] = confusion
        if "report_by_class" in names:
            result["report_by_class"] = report_by_class(confusion)
    if "roc_curve" in names:
        parts = []
        for i, (pos, (fpr, tpr, thr)) in curves.items():
            parts.append(pd.DataFrame({"class": classes[i], "threshold": thr,
                                       "fpr": fpr, "tpr": tpr,
                                       "p": int(kw[pos].sum()), "n": int(kw[~pos].sum())}))
        result["roc_curve"] = (pd.concat(parts, ignore_index=True) if parts else
                               pd.DataFrame(columns=["class", "threshold", "fpr", "tpr", "p", "n"]))
    return result
