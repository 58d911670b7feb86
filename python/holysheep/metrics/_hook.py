"""The one flag the transport checks per request: the recorder while `holysheep.instrument` or
`holysheep.serve_metrics` is on, else None (and nothing else is done). Imports nothing heavy."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from holysheep.metrics._recorder import Recorder

recorder: Recorder | None = None
