"""Put on PYTHONPATH by `accdump record`: starts recording in every Python process of the command."""

import importlib
import os
import sys

if os.environ.get("ACCDUMP_RECORD"):
    from accdump.capture.autostart import start_from_env

    start_from_env()

# Chain to the sitecustomize this one shadows, if there is one.
_here = os.path.dirname(os.path.abspath(__file__))
_saved = sys.path[:]
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_self = sys.modules.pop("sitecustomize", None)
try:
    importlib.import_module("sitecustomize")
except ImportError:
    pass
finally:
    sys.path[:] = _saved
    if _self is not None and "sitecustomize" not in sys.modules:
        sys.modules["sitecustomize"] = _self
