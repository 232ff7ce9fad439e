"""lm-evaluation-harness against a running server, in lm-eval's own environment (it imports nothing of loraforge).

``python worker.py request.json``: the request names the server's chat completions URL, which server it is, the
user's task directory and task names, and where to write the result. The tasks are loaded from that directory only
(not lm-eval's built-in ones), their output types checked first: a task that needs prompt log-probabilities
(loglikelihood, multiple_choice, loglikelihood_rolling) is refused against llama-server, which returns none
(lm-eval would score it at chance: ggml-org/llama.cpp#27174). Exit 2 with one line on any refusal.
"""

import json
import os
import sys
import time

LOGLIKELIHOOD = ("loglikelihood", "multiple_choice", "loglikelihood_rolling")


def main(request_file: str) -> int:
    req = json.loads(open(request_file).read())
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local data only: nothing is fetched from a hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=req["include_path"], include_defaults=False)
    known = set(tm.all_tasks) | set(tm.all_groups) | set(tm.all_tags)
    for name in req["tasks"]:
        if name not in known:
            print(
                f"error: lm-eval task {name!r} is not in {req['include_path']} ({', '.join(sorted(known)) or 'none'})"
            )
            return 2
    loaded = tm.load(req["tasks"])
    types = {name: task.OUTPUT_TYPE for name, task in loaded["tasks"].items()}
    if req["server"] == "llama-server":
        bad = {n: t for n, t in types.items() if t in LOGLIKELIHOOD}
        if bad:
            name, kind = sorted(bad.items())[0]
            print(
                f"error: lm-eval task {name} is a {kind} task: llama-server returns no prompt log-probabilities, so "
                "lm-eval would score it at chance (ggml-org/llama.cpp#27174); run generate_until tasks against a "
                "GGUF, and log-likelihoods through evaluation.texts"
            )
            return 2
    if req.get("check_only"):
        json.dump({"output_types": types}, open(req["out"], "w"))
        return 0
    model_args = {
        "model": req["model"],
        "base_url": req["url"],
        "num_concurrent": 1,
        "max_retries": 1,
        "tokenizer_backend": "none",
        "timeout": req.get("timeout", 600),
    }
    t0 = time.time()
    out = lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args=model_args,
        tasks=req["tasks"],
        task_manager=tm,
        apply_chat_template=True,
        limit=req.get("limit"),
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
        log_samples=False,
    )
    results = {}
    for task, metrics in out["results"].items():
        values = {k: v for k, v in metrics.items() if k != "alias" and isinstance(v, (int, float))}
        results[task] = {"values": values, "n_samples": out.get("n-samples", {}).get(task, {}).get("effective")}
    record = {
        "tasks": results,
        "output_types": types,
        "seconds": round(time.time() - t0, 2),
        "lm_eval": lm_eval.__version__,
        "model": "local-chat-completions",
    }
    json.dump(record, open(req["out"], "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
