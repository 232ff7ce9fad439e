"""vLLM in the loop: the GPU-serving forms (GPTQ / AWQ / W8A8 checkpoints, the base's checkpoint with an adapter as
vLLM's LoRA) scored through vLLM itself, in an environment of its own (:mod:`.environment`), by a worker that imports
nothing of loraforge (:mod:`.worker`), against the same float32 reference as every other form (:mod:`.scoring`).
"""

from .environment import PYTHON_ENV, VLLM, env_dir, main, setup_env, tool_python
from .scoring import TOLERANCE, TOP_K, cross_check, lumped_kld, served_check, served_logprobs, served_metrics

__all__ = [
    "PYTHON_ENV",
    "TOLERANCE",
    "TOP_K",
    "VLLM",
    "cross_check",
    "env_dir",
    "lumped_kld",
    "main",
    "served_check",
    "served_logprobs",
    "served_metrics",
    "setup_env",
    "tool_python",
]
