"""Fast planning: pyinfra's operation order without reading source files.

In CLI mode pyinfra orders every operation it plans by the line numbers of the calls that led to it
(``pyinfra.api.util.get_operation_order_from_stack``). It gets them from ``inspect.stack()`` and
``inspect.getframeinfo()``, which for every frame also look up its module (a walk over ``sys.modules``) and read
its source line, twice per frame, for every operation on every host. It uses only each frame's file name and line
number, and the frame object has both. On the reference deploy that costs ~40 ms of CPU per host (about a fifth of
pyinfra's CPU in a no-op run), spent while planning, before any command runs.

``fast_operation_order()`` gives pyinfra's ``api.util`` module a ``stack`` that walks the frames with
``sys._getframe`` and a ``getframeinfo`` that reads the file and line from the frame. The order is the same, and
no source files are read. Importing ``portable_k3s.operations`` calls it, so every deploy and operation of this
library gets it. It is idempotent, and it does nothing on a pyinfra whose ``api.util`` does not use these two
names. It would be worth proposing upstream.

``global_arguments_once()``: for every operation on every host (and every fact it reads), pyinfra's
``pop_global_arguments`` asks ``all_global_arguments()`` for the names and types of ``_sudo``, ``_if`` and the
rest, and that evaluates the type hints of ``AllArguments`` (forward references included) every time: about a
quarter of pyinfra's planning CPU. They cannot change while pyinfra runs, so they are read once. Also worth
proposing upstream (a cache on that function).
"""

from __future__ import annotations

import functools
import inspect
import sys
from types import FrameType
from typing import Any, NamedTuple


class FramePlace(NamedTuple):
    """The two fields of ``inspect.FrameInfo`` that pyinfra's ordering and call locations read."""

    filename: str
    lineno: int


def frames(context: int = 1) -> list[tuple[FrameType]]:
    """``inspect.stack()`` for pyinfra: the caller's frame first, then the frames that called it, each one in
    a 1-tuple (pyinfra reads ``item[0]``); no module lookup, no source read."""
    found = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        found.append((frame,))
        frame = frame.f_back
    return found


def frame_place(frame: FrameType, context: int = 1) -> FramePlace:
    """``inspect.getframeinfo()`` for pyinfra: the frame's file and current line."""
    return FramePlace(frame.f_code.co_filename, frame.f_lineno)


def fast_operation_order() -> bool:
    """Make pyinfra work out the operation order from the frames themselves (see above). Returns whether it
    is in place."""
    from pyinfra.api import util

    if util.__dict__.get("stack") is frames:
        return True
    if util.__dict__.get("stack") is not inspect.stack or util.__dict__.get("getframeinfo") is not inspect.getframeinfo:
        return False  # another pyinfra: leave it as it is
    setattr(util, "stack", frames)  # noqa: B010 - drop-ins with narrower types than inspect's
    setattr(util, "getframeinfo", frame_place)  # noqa: B010
    return True


def global_arguments_once() -> bool:
    """Make pyinfra read the global arguments' names and types once (see above). Returns whether it is in place."""
    from pyinfra.api import arguments, facts

    original: Any = arguments.__dict__.get("all_global_arguments")
    if getattr(original, "__wrapped__", None) is not None:
        return True
    if original is None or getattr(facts, "all_global_arguments", None) != original:
        return False  # another pyinfra: leave it as it is
    hints = tuple(original())

    @functools.wraps(original)
    def all_global_arguments() -> list[tuple[str, type]]:
        return list(hints)

    setattr(arguments, "all_global_arguments", all_global_arguments)  # noqa: B010 - the same signature
    setattr(facts, "all_global_arguments", all_global_arguments)  # noqa: B010
    return True
