"""Command line: ``python -m toolkit info FILE`` and ``python -m toolkit upgrade OLD NEW``.

Neither command imports mxnet: ``info`` reads the header and the tensor table,
``upgrade`` runs the pure migration functions and writes a new file.
"""

import argparse
import sys

from . import _checkpoint, _model, _model_file
from .errors import ToolkitError


def _weights_summary(tensors):
    count = sum(int(a.size) for a in tensors.values())
    nbytes = sum(int(a.nbytes) for a in tensors.values())
    return len(tensors), count, nbytes


def info(path, out=sys.stdout):
    """Print what a model file holds."""
    mf = _model.open_model_file(path)
    cls = _model._task_class(mf.task, path)
    who = mf.header.get("written_by", {})
    state = mf.state
    n_tensors, n_params, n_bytes = _weights_summary(mf.tensors("weights"))
    rows = [
        ("file", path),
        ("kind", mf.kind),
        ("task", mf.task),
        ("file version", f"{mf.file_version} (this toolkit reads up to {cls._FILE_VERSION})"),
        ("container version", f"{mf.container_version} (this toolkit reads up to "
                              f"{_model_file.CONTAINER_VERSION})"),
        ("written by toolkit", who.get("toolkit")),
        ("written under mxnet", who.get("mxnet")),
        ("written on", who.get("date")),
    ]
    for key in ("target", "session_id", "classes", "features", "prediction_window"):
        if key in state:
            value = state[key]
            rows.append((key, ", ".join(map(str, value)) if isinstance(value, list) else value))
    rows.append(("weights", f"{n_tensors} arrays, {n_params:,} parameters, {n_bytes:,} bytes"))
    if mf.kind == "checkpoint":
        ckpt = mf.header.get("checkpoint")
        version = ckpt.get("version") if isinstance(ckpt, dict) else None
        rows.append(("checkpoint version", f"{version} (this toolkit reads up to "
                                           f"{_checkpoint.CHECKPOINT_VERSION})"))
        rows.append(("training position", _checkpoint.describe_position(ckpt)))
    sections = ", ".join(f"{k} ({len(v):,} bytes)" for k, v in mf.sections.items())
    rows.append(("sections", sections))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.write(f"{key:<{width}} : {value}\n")


def upgrade(src, dst, out=sys.stdout):
    """Rewrite ``src`` at the current file version as ``dst``; say what changed."""
    mf = _model.open_model_file(src)
    cls = _model._task_class(mf.task, src)
    version = mf.file_version
    weights = mf.tensors("weights")
    state, weights = _model.migrate(cls, version, mf.state, weights)
    changes = []
    for v in range(version, cls._FILE_VERSION):
        doc = (cls._MIGRATIONS[v].__doc__ or "").strip().splitlines()
        changes.append(f"version {v} -> {v + 1}: {doc[0] if doc else '(no description)'}")
    extra = None
    if mf.kind == "checkpoint":
        ckpt = _checkpoint.read(src, mf.task)
        info, arrays = ckpt.info, ckpt.arrays
        extra = {"checkpoint": info}
    header = _model_file.build_header(mf.task, cls._FILE_VERSION, state, kind=mf.kind,
                                      extra=extra)
    sections = dict(mf.sections)
    if extra:
        sections["training"] = _model_file.encode_tensors(arrays)
    sections["weights"] = _model_file.encode_tensors(weights)
    _model_file.atomic_write(dst, _model_file.serialize(header, sections))
    if changes:
        out.write(f"Upgraded {mf.task} file from version {version} to {cls._FILE_VERSION}:\n")
        for line in changes:
            out.write(f"  {line}\n")
    else:
        out.write(f"{src} is already at the current {mf.task} file version "
                  f"({cls._FILE_VERSION}); wrote an identical-content copy to {dst}.\n")
    out.write(f"Wrote {dst}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m toolkit",
                                     description="Inspect and upgrade toolkit model files.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="print what a model file holds (no mxnet needed)")
    p_info.add_argument("file")
    p_up = sub.add_parser("upgrade", help="rewrite a model file at the current file version")
    p_up.add_argument("old")
    p_up.add_argument("new")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            info(args.file)
        else:
            upgrade(args.old, args.new)
    except ToolkitError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
