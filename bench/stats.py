"""Summaries of repeated measurements: median and spread, and ratios against the floor."""

from __future__ import annotations

import statistics


def summarize(samples: list[float]) -> dict:
    """Median, min, max and spread of the samples; an empty list gives Nones (nothing measured)."""
    if not samples:
        return {"n": 0, "median": None, "min": None, "max": None, "spread": None, "spread_pct": None}
    median = statistics.median(samples)
    spread = max(samples) - min(samples)
    return {
        "n": len(samples),
        "median": median,
        "min": min(samples),
        "max": max(samples),
        "spread": spread,
        # Relative spread says how far to trust a ratio on this noisy, shared machine.
        "spread_pct": (100.0 * spread / median) if median else None,
    }


def ratio(value: float | None, floor: float | None) -> float | None:
    """value / floor, or None when either is missing or the floor is zero."""
    if value is None or not floor:
        return None
    return value / floor
