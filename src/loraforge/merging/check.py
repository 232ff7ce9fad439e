"""The merge check: the merged model against the adapters applied through PEFT, unmerged (the reference).

Both run in float32 on a fixed text, so the only difference left is the merged weights' rounding to the base's
dtype (and any error of the merge itself). Judged by the mean KL-divergence of the merged model's next-token
distribution from the reference's and by top-1 agreement, which do not depend on the scale of a model's
logits: on SmolLM2-135M (bfloat16, 30 layers) the rounding gives a mean KLD of 2e-4 and a max logit difference
of 0.76, while the adapter itself moves the distribution by a mean KLD of 0.15.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checks import check_token_ids, hf_logits
from ..errors import PipelineError
from ..evaluation.metrics import log_softmax
from ..models.peft import peft_model
from ..models.streamed import inference_model
from ..preflight import Adapter, AdapterSpec, BaseModel

# mean KLD allowed by the merged weights' rounding to the base dtype (10x the rounding measured on real models)
DEFAULT_MAX_KLD = {"F32": 1e-6, "F16": 5e-4, "BF16": 5e-3}
MIN_TOP1 = 0.98


def mean_kld(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    ref, test = log_softmax(ref_logits.astype(np.float32)), log_softmax(logits.astype(np.float32))
    return float(np.maximum((np.exp(ref) * (ref - test)).sum(-1), 0).mean())


def check_merged(
    base: BaseModel,
    loaded: list[tuple[AdapterSpec, Adapter]],
    merged_dir: Path,
    text_file: str | None = None,
    max_kld: dict | None = None,
    shown_as=None,
    budget_mb: float | None = None,
    reference=None,
    window_out=None,
) -> dict:
    """Mean KLD and top-1 agreement of the merged model against PEFT's unmerged application, both in float32;
    raises one line naming ``shown_as`` (the output users will see) beyond the dtype's bound.

    With ``reference`` (the adapter's evaluation reference: PEFT's float32 log-probs, loraforge.evaluation.reference)
    the check is on its first window and runs only the merged model: at 8B one streamed pass instead of two. Without,
    PEFT runs here on the check text. ``window_out``: where the merged model's float32 log-probs on the checked tokens
    are kept, for the checks of its GGUFs (loraforge.evaluation.reference.save_window). With ``budget_mb``, models
    too large for it stream layer by layer (loraforge.models.streamed), one at a time."""
    from ..evaluation.reference import reference_window, save_window

    plans = {}
    if reference is not None:
        ids, ref = reference_window(reference, [{"path": s.path, "weight": s.weight} for s, _ in loaded])
        ref, source = ref.astype(np.float64), f"PEFT, adapters applied unmerged, float32 ({reference})"
    else:
        ids = check_token_ids(merged_dir, text_file)
        model = peft_model(base.path, loaded, merge_all=False, dtype="float32", budget_mb=budget_mb, n_ctx=len(ids))
        ref, plans["reference"] = log_softmax(hf_logits(model, ids)[:-1].astype(np.float64)), model.memory_plan
        del model  # one model in memory at a time
        source = "PEFT, adapters applied unmerged, float32"
    model = inference_model(merged_dir, "float32", budget_mb, len(ids))
    got, plans["merged"] = log_softmax(hf_logits(model, ids)[: len(ref)].astype(np.float64)), model.memory_plan
    del model
    res = {
        "tokens": len(ids),
        "max_abs_logprob_diff": float(np.abs(got - ref).max()),
        "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean()),
    }
    bound = float({**DEFAULT_MAX_KLD, **(max_kld or {})}[base.dtype])
    res.update(
        mean_kld=mean_kld(ref, got),
        max_mean_kld=bound,
        min_top1=MIN_TOP1,
        dtype=base.dtype,
        reference=source,
    )
    if budget_mb is not None:
        res["memory_plan"] = plans
    if not res["mean_kld"] <= bound or res["top1_agreement"] < MIN_TOP1:
        raise PipelineError(
            f"{shown_as or merged_dir}: the merged model differs from the adapters applied through PEFT: mean KLD "
            f"{res['mean_kld']:.3g} (max {bound:g} for {base.dtype}), top-1 agreement {res['top1_agreement']:.3f} "
            f"(min {MIN_TOP1})"
        )
    if window_out is not None:
        info = {"model": str(shown_as or merged_dir), "merge_check": True, "dtype": "float32"}
        save_window(window_out, ids, got, info)
    return res
