"""Code that both the web tier and the workers import (never torch)."""
