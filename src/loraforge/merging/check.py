"""The merge check: logits of the merged model against the adapters applied through PEFT, unmerged."""

from __future__ import annotations

from pathlib import Path

from ..checks import check_token_ids, compare_logits, hf_logits
from ..errors import PipelineError
from ..preflight import Adapter, AdapterSpec, BaseModel
from .peft_reference import load_hf_model, peft_model

# logits of merged vs. adapter-applied model may differ by rounding of the merged weights to the dtype
DEFAULT_TOLERANCE = {"F32": 1e-3, "F16": 0.1, "BF16": 0.5}


def check_merged(
    base: BaseModel,
    loaded: list[tuple[AdapterSpec, Adapter]],
    merged_dir: Path,
    text_file: str | None = None,
    tolerance: dict | None = None,
) -> dict:
    """Max abs logit difference and top-1 agreement on a fixed text; fails beyond the dtype's tolerance."""
    ids = check_token_ids(merged_dir, text_file)
    ref = hf_logits(peft_model(base.path, loaded, merge_all=False), ids)
    res = compare_logits(hf_logits(load_hf_model(merged_dir), ids), ref)
    tol = float({**DEFAULT_TOLERANCE, **(tolerance or {})}[base.dtype])
    res.update(dtype=base.dtype, tolerance=tol, reference="peft adapter applied, unmerged")
    if not res["max_abs_logit_diff"] <= tol:
        raise PipelineError(
            f"{merged_dir}: merged model logits differ from the adapter-applied model by "
            f"{res['max_abs_logit_diff']:.4g} > tolerance {tol:g} for {base.dtype}"
        )
    return res
