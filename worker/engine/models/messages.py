"""Short, readable versions of the long messages torch puts in its exceptions."""

from __future__ import annotations

_LIMIT = 300


def first_sentence(exc: BaseException) -> str:
    """The first sentence of an exception's message: torch's loaders pad theirs with advice."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    head, dot, _ = line.partition(". ")
    return (head + dot.strip())[:_LIMIT]


def model_message(exc: BaseException) -> str:
    """What a model said when it raised: TorchScript's interpreter wraps it in a traceback."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    # TorchScript ends its report with "RuntimeError: <the real message>".
    for ln in reversed(lines):
        if ln.split(":", 1)[0].endswith("Error") and ":" in ln:
            return ln[:_LIMIT]
    return lines[0][:_LIMIT]


#: what torch's allocators (CPU and CUDA) and the C library say when memory runs out
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says memory ran out: MemoryError, torch's OutOfMemoryError, or the RuntimeError
    torch's CPU allocator raises ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OUT_OF_MEMORY)
