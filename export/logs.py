"""Keeping the terminal to the project's own lines while torch, ONNX, OpenVINO and NNCF export.

The exporters print from C++ (shape-inference warnings, plugin logs), which Python's warning
filters cannot reach, so the file descriptors themselves are redirected to a log file; the
project's progress lines go to a copy of the original stdout.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def quiet_fds(log_path: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (C++ warnings included) to ``log_path`` meanwhile."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


@contextlib.contextmanager
def quiet_export(log_path: Path) -> Iterator[Callable[[str], None]]:
    """Library output to ``log_path``; yields a ``progress`` callback that still prints."""
    try:  # a stdout that is not fd 1 (a test runner's capture) is unaffected by the redirect
        on_fd = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):
        on_fd = False
    terminal = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace") if on_fd else None
    stream = terminal or sys.stdout

    def progress(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    try:
        with quiet_fds(log_path):
            yield progress
    finally:
        if terminal is not None:
            terminal.close()
