"""The maths of folding LoRA/DoRA into a weight, on float32 numpy arrays (no I/O, no torch).

PEFT merges W' = W + s*B@A (fan_in_fan_out and embeddings store W transposed: W' = W + s*(B@A).T) and, for
DoRA, W' = m / ||W + s*B@A||_row * (W + s*B@A) with norms per output feature. Output rows need only the
matching rows of the small factors, so a block of rows is merged on its own.
"""

from __future__ import annotations

import math
import re

import numpy as np


def pattern_value(pattern: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern rule (peft.utils.other.get_pattern_key): the first key that matches
    the end of the module name at a dot boundary wins."""
    for key in pattern:
        if re.match(rf"(.*\.)?({key})$", module):
            return pattern[key]
    return default


def lora_scaling(cfg: dict, module: str) -> float:
    """alpha / r (alpha / sqrt(r) with rsLoRA), with the module's rank/alpha patterns applied."""
    r = pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"])
    alpha = pattern_value(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"])
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


class LoraDelta:
    """One adapter's contribution to one weight, applicable to any block of the weight's stored rows.

    ``a`` [r, in] and ``b`` [out, r] in float32; ``scale`` = lora_scaling * the adapter's weight in a stack;
    ``transposed`` when the weight is stored [in, out] (fan_in_fan_out, embeddings); ``magnitude`` for DoRA.
    """

    def __init__(
        self, a: np.ndarray, b: np.ndarray, scale: float, transposed: bool, magnitude: np.ndarray | None = None
    ):
        b = b * np.float32(scale)
        self.transposed = transposed
        if transposed:  # stored W is [in, out]: rows of W are columns of A
            self.left, self.right = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
        else:
            self.left, self.right = b, a
        self.mag = None if magnitude is None else magnitude.reshape(-1)
        # DoRA norms run along stored rows unless W is stored transposed: then the whole tensor is needed
        self.needs_whole = self.mag is not None and transposed

    def apply(self, w: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """Add the delta to rows r0:r1 of the weight, ``w`` (float32, modified in place and returned)."""
        w += self.left[r0:r1] @ self.right
        if self.mag is not None:
            if self.transposed:
                w *= (self.mag / np.linalg.norm(w, axis=0))[None, :]
            else:
                w *= (self.mag[r0:r1] / np.linalg.norm(w, axis=1))[:, None]
        return w
