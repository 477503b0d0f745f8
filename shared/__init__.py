"""Code that both the web tier and the workers import (never torch)."""

if __name__ != "easel.shared":  # one module, one name: a second copy would split state
    raise ImportError(f"import easel.shared, not {__name__}")
