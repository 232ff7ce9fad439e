"""Torch model code: HF models loaded whole (``hf``) or streamed layer by layer from their shards within a memory
budget (``streamed``), and PEFT adapters applied to either (``peft``)."""
