"""Synthetic waveforms shared by the audio tests."""

from __future__ import annotations

import numpy as np


def tone(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    """A float32 sine at ``hz``, amplitude-modulated at 3 Hz, ``seconds`` long at ``rate`` samples per second."""
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32) / 2
