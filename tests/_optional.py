"""Optional test dependencies: required on CI, a reason to skip elsewhere."""

import importlib
import os

import pytest


def require(*modules):
    """Import each ``(module, reason)``; call at a test module's top level.

    CI installs them (the ``test`` extra, scripts/setup_env.sh), so there a missing
    one is a failure; on a developer's machine the whole test module is skipped
    with ``reason``.
    """
    for name, reason in modules:
        if os.environ.get("CI"):
            importlib.import_module(name)
        else:
            pytest.importorskip(name, reason=reason)
