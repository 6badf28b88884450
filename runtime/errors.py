"""Exception types of gsv-rt: every user-facing failure is a GsvError with a one-line message."""


class GsvError(Exception):
    """Base class; the CLI prints its message on one line and exits non-zero."""


class InputError(GsvError, ValueError):
    """A bad argument, option, text or audio file given by the caller."""


class CheckpointError(GsvError):
    """An upstream checkpoint that is unreadable, unsafe, of the wrong kind or unknown version."""


class BundleError(GsvError):
    """A bundle that is missing, altered, incomplete or of an unsupported format version."""


class BackendError(GsvError):
    """An inference backend or device that is not installed or cannot run a graph."""


class EngineBusyError(GsvError):
    """The engine's request queue is full; retry later (HTTP 503 with Retry-After)."""


class ServiceUnavailableError(GsvError):
    """No replica could finish the request (one was lost mid-request); retry (HTTP 503)."""


class RequestCancelledError(GsvError):
    """The request was cancelled (by its client, or because the engine is shutting down)."""


class RequestTimeoutError(GsvError):
    """The request did not finish within its timeout."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (libraries often append long logs)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0].strip() if lines else type(exc).__name__
