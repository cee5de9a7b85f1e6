"""``traind submit``'s check of a ``builder`` spec's monitors, as ``client.fit`` checks an inline model.

:func:`jobs.keras.fitcheck.check_inline_model` does not run a builder in the submitting process: for the client and
the API that process may not have the user's code or its environment. The CLI runs on the user's machine, next to
their code: where the builder (and TensorFlow) can be imported here, it builds the model, asks it for the metric
names it logs (one step on a batch of zeros) and refuses a misspelt ``monitor`` before anything is queued. Where it
cannot, it says that the check happens on the worker.

>>> # note = check_builder_spec(client, "spec.yaml")   # SpecError, a note (str) or None
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from jobs.errors import TraindError

if TYPE_CHECKING:
    from jobs.client import Client


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_builder_spec(client: Client, spec_ref: Any) -> str | None:
    """Raise SpecError for a ``monitor`` the builder's model never logs; return a note when the builder could not be
    checked here (None when it was, or when the spec has no builder)."""
    spec = client._validate(spec_ref)  # the submit validates again; this one fails first with the same messages
    builder = spec.model.builder
    if builder is None:
        return None
    module = builder.split(":", 1)[0]
    later = "its monitor fields are checked on the worker when the job starts"
    if not _importable("tensorflow"):
        return f"TensorFlow is not installed here, so model.builder {builder} was not run: {later}"
    if not _importable(module):
        return f"model.builder {builder} cannot be imported here (module {module!r} not found): {later}"
    from jobs.client import quiet_tensorflow
    from jobs.keras import fitcheck, modelio

    quiet_tensorflow()
    try:
        model = modelio.build_model(spec, client.storage, client.settings.allowed_modules)
    except TraindError as e:
        return f"model.builder {builder} could not build the model here ({e}): {later}"
    names = fitcheck.metric_names_without_data(model)
    if names is None:
        return f"the metric names of model.builder {builder} depend on the data: {later}"
    fitcheck.check_monitors(spec, names)  # SpecError, with "did you mean"
    return None
