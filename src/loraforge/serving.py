"""What a server serves, told from one request: the **probe** of an artifact.

A probe is the first ``PROMPT_TOKENS`` token ids of the artifact's evaluation reference, and the greedy
continuation of ``NEW_TOKENS`` tokens that the artifact's own serving engine gives it, with each chosen token's
log-prob and the runner-up's. The evaluation records it (llama-server for a GGUF and a LoRA GGUF, vLLM for the
GPU-serving forms) and the registry keeps it with the version; ``loraforge-registry verify-served`` later sends the
same prompt to a running server (llama-server's ``/completion`` or vLLM's ``/v1/completions``, by token ids, so no
tokenizer or chat template takes part) and compares (:func:`compare`):

- every continuation token must be the registered one, except at a registered near-tie (the runner-up within
  ``2 * tolerance`` nats) after the first token, where another engine or GPU may pick the other token; comparison
  stops there;
- the mean absolute difference of the chosen tokens' log-probs must be at most ``tolerance`` (default 0.05 nats:
  the same GGUF on llama.cpp's CPU and CUDA backends, or a checkpoint through vLLM in bfloat16 against float32,
  differ by less; another adapter, another revision or another quantization differs by more).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from .errors import PipelineError

log = logging.getLogger(__name__)

PROMPT_TOKENS = 32
NEW_TOKENS = 16
TOLERANCE = 0.05


def probe_prompt(reference) -> list[int]:
    """The probe's prompt: the first ``PROMPT_TOKENS`` tokens of the reference's first window (its BOS included)."""
    from safetensors import safe_open

    with safe_open(str(reference), framework="np") as f:
        first = json.loads(f.metadata()["loraforge"])["texts"]
        windows = f.get_tensor(f"tokens.{next(iter(first))}")
    return [int(t) for t in windows[0][:PROMPT_TOKENS]]


def post_json(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise PipelineError(f"{url}: HTTP {e.code}: {e.read().decode(errors='replace')[:300]}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise PipelineError(f"{url}: no answer ({getattr(e, 'reason', e)})") from None


def get_json(url: str, timeout: float = 10) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise PipelineError(f"{url}: no answer ({getattr(e, 'reason', e)})") from None


def server_kind(url: str) -> str:
    """``vllm`` or ``llama-server``: vLLM answers ``/version``, llama-server ``/props``."""
    url = url.rstrip("/")
    if (v := get_json(url + "/version")) and "version" in v:
        return "vllm"
    if (p := get_json(url + "/props")) and "default_generation_settings" in p:
        return "llama-server"
    raise PipelineError(f"{url}: neither a vLLM server (/version) nor a llama-server (/props)")


def probe_llama_server(url: str, prompt: list[int], lora: list[dict] | None = None, timeout: float = 120) -> dict:
    """The greedy continuation of ``prompt`` from llama-server's native ``/completion`` (top-1 sampling; the
    log-probs are the softmax of the raw logits)."""
    body = {
        "prompt": prompt,
        "n_predict": NEW_TOKENS,
        "samplers": ["top_k"],
        "top_k": 1,
        "n_probs": 2,
        "return_tokens": True,
        "cache_prompt": False,
    }
    if lora is not None:
        body["lora"] = lora
    r = post_json(url.rstrip("/") + "/completion", body, timeout)
    probs = r.get("completion_probabilities") or []
    if len(probs) != NEW_TOKENS:
        raise PipelineError(f"{url}: llama-server returned {len(probs)} of {NEW_TOKENS} probe tokens")
    return probe_record(
        "llama-server",
        prompt,
        [(p["id"], p["logprob"], [(q["id"], q["logprob"]) for q in p["top_logprobs"]]) for p in probs],
    )


def probe_vllm_server(url: str, model: str, prompt: list[int], timeout: float = 120) -> dict:
    """The greedy continuation of ``prompt`` from vLLM's ``/v1/completions`` (token ids in, token ids out)."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": NEW_TOKENS,
        "temperature": 0,
        "logprobs": 2,
        "return_tokens_as_token_ids": True,
        "ignore_eos": True,
    }
    r = post_json(url.rstrip("/") + "/v1/completions", body, timeout)
    lp = r["choices"][0]["logprobs"]

    def tid(s: str) -> int:
        return int(s.removeprefix("token_id:"))

    steps = [
        (tid(t), v, [(tid(k), x) for k, x in top.items()])
        for t, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True)
    ]
    return probe_record("vLLM", prompt, steps)


def probe_record(engine: str, prompt: list[int], steps: list[tuple[int, float, list[tuple[int, float]]]]) -> dict:
    """A probe record from (chosen id, its log-prob, the top (id, log-prob)s) per generated token."""
    tokens, logprobs, runner_up = [], [], []
    for chosen, lp, top in steps:
        others = sorted((v for t, v in top if t != chosen), reverse=True)
        tokens.append(int(chosen))
        logprobs.append(round(float(lp), 5))
        runner_up.append(round(float(others[0]), 5) if others else None)
    return {"engine": engine, "prompt": prompt, "tokens": tokens, "logprobs": logprobs, "runner_up": runner_up}


def compare(registered: dict, served: dict, tolerance: float = TOLERANCE) -> dict:
    """The served probe against the registered one: ``ok``, the tokens compared, the mean |Δ log-prob|, and
    ``why`` (one line) when not ok. See the module's docstring for the rule."""
    if served["prompt"] != registered["prompt"]:
        raise PipelineError("the served probe answers another prompt than the registered one")
    compared, diffs = 0, []
    why = diverged = None
    for i, (want, got) in enumerate(zip(registered["tokens"], served["tokens"], strict=True)):
        if want != got:
            ru = registered["runner_up"][i]
            diverged = (
                f"token {i + 1} of the greedy continuation is {got} where the registered version gives {want} "
                f"(log-prob {registered['logprobs'][i]:.3f}, runner-up {'none' if ru is None else round(ru, 3)})"
            )
            near_tie = ru is not None and registered["logprobs"][i] - ru <= 2 * tolerance
            if not near_tie or i == 0:  # after a near-tie only the tokens before it compare, and there are none
                why = diverged
            break
        compared += 1
        diffs.append(abs(registered["logprobs"][i] - served["logprobs"][i]))
    mean = sum(diffs) / len(diffs) if diffs else None
    if why is None and mean > tolerance:
        why = f"mean |Δ log-prob| {mean:.4f} over {compared} tokens is above the tolerance {tolerance}"
    return {"ok": why is None, "compared_tokens": compared, "mean_abs_logprob_diff": mean, "why": why}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def await_health(
    proc: subprocess.Popen, url: str, what: str, started: float, startup_timeout: float, log_path: Path
) -> None:
    """Until ``url/health`` answers 200; a server that exits first, or is not up ``startup_timeout`` seconds after
    ``started`` (time.monotonic), fails in one line with the tail of its log."""

    def tail() -> str:
        lines = [ln for ln in log_path.read_text(errors="replace").strip().splitlines() if ln.strip()]
        return " | ".join(ln.strip() for ln in lines[-3:])

    while True:
        if proc.poll() is not None:
            raise PipelineError(f"{what} exited ({proc.returncode}) while starting: {tail()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > started + startup_timeout:
            raise PipelineError(f"{what} did not answer {url}/health within {startup_timeout:.0f} s: {tail()}")
        time.sleep(0.2)


@contextlib.contextmanager
def local_server(
    cmd: list[str], url: str, what: str, startup_timeout: float, env: dict | None = None, wait: bool = True
) -> Iterator[tuple[subprocess.Popen, Path]]:
    """Run a server (``cmd``, listening on loopback at ``url``) until ``url/health`` answers 200, yield (process,
    log file), and stop it by its PID (its process group) on exit, also on failure. A server that exits or does not
    answer within ``startup_timeout`` seconds fails in one line with the tail of its log. ``wait=False`` yields at
    once: the caller waits (:func:`await_health`) after other work, while the server loads."""
    log_file = tempfile.NamedTemporaryFile(prefix="loraforge-server.", suffix=".log", delete=False)
    log_path = Path(log_file.name)
    log.info("starting %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        if wait:
            await_health(proc, url, what, time.monotonic(), startup_timeout, log_path)
        yield proc, log_path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log_file.close()
        log.info("%s log:\n%s", what, log_path.read_text(errors="replace")[-3000:])
        log_path.unlink(missing_ok=True)
