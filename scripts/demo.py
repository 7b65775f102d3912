"""End-to-end demo of the activity classifier on real smartwatch data.

Trains on subjects 1-6 of the seglearn watch data set, evaluates on subjects
7-10, saves, reloads, checks the reloaded model predicts the same, and exports
Core ML. Run it with ``bash scripts/demo.sh`` (sets everything up) or, in an
environment where the toolkit is installed, ``python scripts/demo.py``.
"""

import argparse
import os
import tempfile
import time

import numpy as np

import toolkit as tc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None,
                        help="folder for exercise.model, exercise.mlmodel and evaluation.html "
                             "(default: a new temporary folder)")
    parser.add_argument("--max-iterations", type=int, default=None,
                        help="epochs (default: create()'s default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="toolkit-demo-")
    os.makedirs(out, exist_ok=True)
    print(f"Writing the demo's files (exercise.model, exercise.mlmodel, evaluation.html) to "
          f"{out}" + ("" if args.out else " (choose another folder with --out DIR)") + ".")
    t0 = time.perf_counter()

    data = tc.datasets.watch_sessions()
    train = data[data["subject"] <= 6].drop(columns="subject")
    test = data[data["subject"] >= 7].drop(columns="subject")
    print(f"Watch data: {data['session_id'].nunique()} sessions, {len(data)} rows; "
          f"training on subjects 1-6 ({train['session_id'].nunique()} sessions), "
          f"testing on 7-10 ({test['session_id'].nunique()} sessions).")

    kwargs = {} if args.max_iterations is None else {"max_iterations": args.max_iterations}
    model = tc.activity_classifier.create(train, session_id="session_id", target="exercise",
                                          random_seed=args.seed, **kwargs)
    print(model)

    metrics = model.evaluate(test)
    print("Test metrics (per row, subjects 7-10):")
    for name in ("accuracy", "precision", "recall", "f1_score", "auc", "log_loss"):
        print(f"  {name:<10} {metrics[name]:.4f}")
    print("Confusion matrix (rows: true, columns: predicted):")
    cm = metrics["confusion_matrix"].pivot(index="target_label", columns="predicted_label",
                                           values="count").fillna(0).astype(int)
    print(cm.to_string())
    report = metrics.explore(os.path.join(out, "evaluation.html"), open_browser=False)
    print(f"Wrote {report}: open it in a browser to see the mistakes (confusion matrix, "
          "sessions, sensor traces).")

    path = os.path.join(out, "exercise.model")
    model.save(path)
    loaded = tc.load_model(path)
    before = np.stack(model.predict(test, output_type="probability_vector"))
    after = np.stack(loaded.predict(test, output_type="probability_vector"))
    diff = float(np.abs(before - after).max())
    print(f"Saved {path} ({os.path.getsize(path):,} bytes); reloaded model's predictions "
          f"differ by at most {diff:.2e}.")
    if diff != 0.0:
        raise SystemExit("reloaded model predicts differently")

    mlmodel = os.path.join(out, "exercise.mlmodel")
    loaded.export_coreml(mlmodel)
    print(f"Exported Core ML model {mlmodel} ({os.path.getsize(mlmodel):,} bytes).")
    print(f"Demo finished in {time.perf_counter() - t0:.1f}s.")
    return metrics


if __name__ == "__main__":
    main()
