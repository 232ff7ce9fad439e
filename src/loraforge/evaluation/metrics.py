"""The measured-quality record shared by evaluation, registry, report and CLI, and the scoring maths.

Every number here was measured on an artifact; a field is None only where it was not measured (the base and
the reference itself have no KLD against the reference)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import PipelineError


@dataclass(frozen=True)
class TextMetrics:
    """Scores of one artifact on one evaluation text."""

    scored_tokens: int
    ppl: float
    ref_ppl: float | None = None
    delta_ppl: float | None = None
    mean_kld: float | None = None
    median_kld: float | None = None
    p99_kld: float | None = None
    top1_agreement: float | None = None
    # for a GGUF: whether llama.cpp, from the GGUF's own vocabulary, tokenizes the text into the scored ids
    llama_cpp_tokens_agree: bool | None = None


@dataclass(frozen=True)
class Metrics:
    """Scores of one artifact on all evaluation texts, with what it cost to measure."""

    label: str
    artifact: str
    kind: str  # gguf, lora (base GGUF + LoRA GGUF), hf or peft
    n_ctx: int
    texts: dict[str, TextMetrics]
    scored_tokens: int
    eval_seconds: float
    load_seconds: float
    tokens_per_second: float | None = None
    mean_kld: float | None = None
    median_kld: float | None = None
    p99_kld: float | None = None
    top1_agreement: float | None = None
    max_delta_ppl: float | None = None
    size_bytes: int | None = None
    bits_per_weight: float | None = None
    artifact_sha256: str | None = None  # the bytes scored (a GGUF file; for lora, the base GGUF)
    lora: str | None = None  # kind lora: the LoRA GGUF applied at scale 1
    lora_bytes: int | None = None  # its size: what each adapter adds to the shared base (size_bytes is both)
    lora_sha256: str | None = None
    memory_plan: dict | None = None  # HF/PEFT with a memory budget: loaded whole or streamed, and the batch
    compute_dtype: str | None = None  # HF/PEFT/checkpoints: what torch computed in (loraforge.device.compute_dtype)
    served: dict | None = None  # GPU-serving forms scored through vLLM itself too (loraforge.vllm.scoring)
    probe: dict | None = None  # the greedy continuation its server gives a fixed prompt (loraforge.serving)
    # the generation checks (evaluation.prompts; loraforge.evaluation.generation): the share of answers that end
    # with the end-of-turn token, of answers identical to the reference's, of answers its scorer accepts
    stop_rate: float | None = None
    answers_identical: float | None = None
    answer_accuracy: float | None = None
    generation: dict | None = None  # how each was measured, and the answers
    lm_eval: dict | None = None  # a user's lm-eval tasks against it as served (evaluation.lm_eval; loraforge.lmeval)
    # a GGUF's windows its build check scored already, the same bytes against the same reference (their count, the
    # text, the sidecar): counted in, not scored twice (loraforge.evaluation.reference.window_scores)
    from_check: dict | None = None
    # an HF model scored by the job that converted it to a GGUF, beside llama.cpp's converter (that job and its
    # sidecar): the same pass, on a core the converter left idle (loraforge.conversion.convert_artifact)
    scored_beside: str | None = None
    gates: dict = field(default_factory=dict)

    def ppl(self) -> dict[str, float]:
        return {name: t.ppl for name, t in self.texts.items()}

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for key in (
            "served",
            "probe",
            "generation",
            "lm_eval",
            "from_check",
            "scored_beside",
        ):  # only the forms scored through a server (or answering, or checked at build) have them
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_json(cls, data: dict) -> Metrics:
        known = {f.name for f in dataclasses.fields(cls)}
        texts = {n: TextMetrics(**t) for n, t in data["texts"].items()}
        return cls(**{**{k: v for k, v in data.items() if k in known}, "texts": texts})


# gate name -> (metric, whether the gate is an upper or lower bound); the config schema offers exactly these
GATES = {
    "max_mean_kld": ("mean_kld", "max"),
    "max_p99_kld": ("p99_kld", "max"),
    "max_delta_ppl": ("max_delta_ppl", "max"),
    "min_top1": ("top1_agreement", "min"),
    "min_stop_rate": ("stop_rate", "min"),
    "min_identical_answers": ("answers_identical", "min"),
    "min_accuracy": ("answer_accuracy", "min"),
}
ANSWER_GATES = ("min_stop_rate", "min_identical_answers", "min_accuracy")


def check_gates(metrics: Metrics, gates: dict | None, label: str) -> list[str]:
    """Failures of the configured quality gates, each one line naming artifact, metric, threshold and value."""
    failures = []
    for gate, threshold in (gates or {}).items():
        if gate not in GATES:
            raise PipelineError(f"unknown quality gate {gate!r} (one of {', '.join(GATES)})")
        metric, how = GATES[gate]
        value = getattr(metrics, metric)
        if value is None:
            why = " (evaluation.prompts)" if gate in ANSWER_GATES else ""
            raise PipelineError(f"{label}: gate {gate} needs {metric}, which was not measured for this artifact{why}")
        if (how == "max" and value > threshold) or (how == "min" and value < threshold):
            failures.append(f"{label}: quality gate failed: {metric} = {value:.6g}, {gate} = {threshold:g}")
    return failures


# ---------------------------------------------------------------- scoring maths (numpy)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


def kld_stats(k: np.ndarray) -> dict:
    return {"mean_kld": float(k.mean()), "median_kld": float(np.median(k)), "p99_kld": float(np.quantile(k, 0.99))}


def token_scores(logits: np.ndarray, targets: np.ndarray, ref: np.ndarray | None) -> dict[str, np.ndarray]:
    """Each next token's scores [windows, n_ctx - 1] from the logits [windows, n_ctx, vocab] of windows whose next
    tokens are ``targets``: its NLL, and against ``ref`` (the reference's log-probs) the reference's NLL, the KLD
    and whether the top-1 tokens agree."""
    lp = log_softmax(logits[:, :-1].astype(np.float32))
    tgt = targets[..., None].astype(np.int64)
    out = {"nll": -np.take_along_axis(lp, tgt, -1)[..., 0]}
    if ref is not None:
        v = min(ref.shape[-1], lp.shape[-1])
        lp, ref = lp[..., :v], ref[..., :v]
        out["kld"] = np.maximum((np.exp(ref) * (ref - lp)).sum(-1), 0)
        out["top1"] = ref.argmax(-1) == lp.argmax(-1)
        out["ref_nll"] = -np.take_along_axis(ref, tgt, -1)[..., 0]
    return out


class TextScorer:
    """Accumulates one text's scores from batches of logits: NLL, and against the reference KLD and top-1."""

    def __init__(self, windows: np.ndarray, ref_lp: np.ndarray | None):
        self.targets = windows[:, 1:].astype(np.int64)
        self.ref_lp = ref_lp
        self.nll, self.ref_nll, self.n, self.agree, self.row = 0.0, 0.0, 0, 0, 0
        self.klds: list[np.ndarray] = []

    def add(self, logits: np.ndarray) -> None:
        """Logits [batch, n_ctx, vocab] of the next windows."""
        b = logits.shape[0]
        ref = self.ref_lp[self.row : self.row + b] if self.ref_lp is not None else None
        self.add_scores(token_scores(logits, self.targets[self.row : self.row + b], ref))

    def add_scores(self, scores: dict[str, np.ndarray]) -> None:
        """The next windows' :func:`token_scores` (computed here, or by a GGUF's build check on the same tokens)."""
        if self.ref_lp is not None:
            self.klds.append(np.asarray(scores["kld"], dtype=np.float32).ravel())
            self.agree += int(np.sum(scores["top1"]))
            self.ref_nll += float(np.sum(scores["ref_nll"], dtype=np.float64))
        self.nll += float(np.sum(scores["nll"], dtype=np.float64))
        self.n += np.size(scores["nll"])
        self.row += np.shape(scores["nll"])[0]

    def kld(self) -> np.ndarray | None:
        return np.concatenate(self.klds).astype(np.float64) if self.klds else None

    def result(self, **extra) -> TextMetrics:
        ppl = math.exp(self.nll / self.n)
        k = self.kld()
        if k is None:
            return TextMetrics(scored_tokens=self.n, ppl=ppl, **extra)
        ref_ppl = math.exp(self.ref_nll / self.n)
        return TextMetrics(
            **extra,
            scored_tokens=self.n,
            ppl=ppl,
            ref_ppl=ref_ppl,
            delta_ppl=ppl - ref_ppl,
            top1_agreement=self.agree / self.n,
            **kld_stats(k),
        )
