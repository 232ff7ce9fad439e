"""The streaming merge against PEFT's merge_and_unload, tensor by tensor and on model outputs, for every
adapter kind it accepts; and the refusals for what it cannot merge exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_adapter, make_llama
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from loraforge.errors import PipelineError
from loraforge.merging import merge

# Tolerances per base dtype. PEFT adds the delta in the base dtype (two roundings: delta, then the sum);
# the streaming merge adds in float32 and rounds once, so the two may differ by one unit in the last place.
ULP = {torch.float32: 2**-20, torch.float16: 2**-10, torch.bfloat16: 2**-7}
LOGIT_TOL = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 3e-1}


def peft_reference(base, adapters, weights=None, resize=None):
    """PEFT's own merge: load each adapter onto the (merged-so-far) model and merge_and_unload, in order."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto")
    if resize:
        model.resize_token_embeddings(resize)
    for i, ad in enumerate(adapters):
        pm = PeftModel.from_pretrained(model, str(ad))
        if weights and weights[i] != 1.0:
            for m in pm.modules():
                if isinstance(m, LoraLayer):
                    m.scale_layer(weights[i])
        model = pm.merge_and_unload()
    return model.eval()


def merged_state(out_dir):
    state = {}
    for f in sorted(out_dir.glob("*.safetensors")):
        state.update(load_file(f))
    return state


def assert_same(out_dir, ref_model, dtype):
    ours = merged_state(out_dir)
    ref = {k: v for k, v in ref_model.state_dict().items()}
    if ref_model.config.tie_word_embeddings:
        ref = {k: v for k, v in ref.items() if k != "lm_head.weight"}
    assert set(ours) == set(ref), set(ours) ^ set(ref)
    changed = 0
    for k, v in ref.items():
        assert ours[k].dtype == v.dtype, k
        assert ours[k].shape == v.shape, k
        scale = v.float().abs().max().item() + 1e-12
        diff = (ours[k].float() - v.float()).abs().max().item()
        assert diff <= 2 * ULP[dtype] * scale + 1e-7, (k, diff, scale)
        changed += int(diff > 0)
    model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype="auto").eval()
    ids = torch.randint(0, ref_model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(ids).logits.float(), ref_model(ids).logits.float()
    assert (a - b).abs().max().item() <= LOGIT_TOL[dtype]
    return ours


@pytest.fixture(scope="module")
def root(tmp_path_factory, real_tokenizer):
    return tmp_path_factory.mktemp("merge")


@pytest.fixture(scope="module")
def bases(root):
    return {
        dt: make_llama(root / f"base-{dt}".replace("torch.", ""), dtype=dt, hidden=256, inter=512)
        for dt in (torch.float32, torch.bfloat16, torch.float16)
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_plain_lora_every_dtype(bases, tmp_path, dtype):
    ad = make_adapter(bases[dtype], tmp_path / "ad", r=8)
    merge(bases[dtype], [ad], tmp_path / "out")
    ours = assert_same(tmp_path / "out", peft_reference(bases[dtype], [ad]), dtype)
    base = load_file(bases[dtype] / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(ours[q], base[q])
    assert torch.equal(ours["model.norm.weight"], base["model.norm.weight"])  # untouched tensors: byte copies


@pytest.mark.parametrize(
    "kwargs",
    [
        {"use_rslora": True},
        {"rank_pattern": {"q_proj": 4, "layers.1.mlp.down_proj": 2}, "alpha_pattern": {"v_proj": 3}},
        {"use_dora": True},
        {"use_dora": True, "use_rslora": True},
    ],
    ids=["rslora", "rank-alpha-pattern", "dora", "dora-rslora"],
)
def test_lora_variants(bases, tmp_path, kwargs):
    base = bases[torch.float32]
    ad = make_adapter(base, tmp_path / "ad", r=8, **kwargs)
    cfg = json.loads((ad / "adapter_config.json").read_text())
    for k, v in kwargs.items():
        assert cfg[k] == v
    merge(base, [ad], tmp_path / "out")
    assert_same(tmp_path / "out", peft_reference(base, [ad]), torch.float32)


def test_dora_bf16(bases, tmp_path):
    ad = make_adapter(bases[torch.bfloat16], tmp_path / "ad", r=8, use_dora=True)
    merge(bases[torch.bfloat16], [ad], tmp_path / "out")
    assert_same(tmp_path / "out", peft_reference(bases[torch.bfloat16], [ad]), torch.bfloat16)


def test_modules_to_save_replaces_wholesale(bases, tmp_path):
    base = bases[torch.float32]
    ad = make_adapter(base, tmp_path / "ad", r=8, modules_to_save=["lm_head"])
    assert "base_model.model.lm_head.weight" in load_file(ad / "adapter_model.safetensors")
    merge(base, [ad], tmp_path / "out")
    ours = assert_same(tmp_path / "out", peft_reference(base, [ad]), torch.float32)
    saved = load_file(ad / "adapter_model.safetensors")["base_model.model.lm_head.weight"]
    assert torch.equal(ours["lm_head.weight"], saved)


def test_fan_in_fan_out_gpt2_conv1d(root, tmp_path):
    from bench.families import FAMILIES, build_model

    base = root / "gpt2"
    if not base.exists():
        build_model(FAMILIES["gpt2"], base)
    ad = make_adapter(base, tmp_path / "ad", r=4, targets=["c_attn", "c_proj"], fan_in_fan_out=True)
    merge(base, [ad], tmp_path / "out")
    assert_same(tmp_path / "out", peft_reference(base, [ad]), torch.float32)


def test_sharded_base_and_sharded_output(root, tmp_path):
    base = make_llama(root / "sharded", hidden=256, inter=512, shard_mb=1)
    assert (base / "model.safetensors.index.json").exists()
    ad = make_adapter(base, tmp_path / "ad", r=8)
    merge(base, [ad], tmp_path / "out", shard_size_mb=1)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    tensors = merged_state(tmp_path / "out").values()
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in tensors)
    assert_same(tmp_path / "out", peft_reference(base, [ad]), torch.float32)


def test_stacked_adapters_with_weights(bases, tmp_path):
    base = bases[torch.float32]
    a = make_adapter(base, tmp_path / "a", seed=1, r=8)
    b = make_adapter(base, tmp_path / "b", seed=2, r=4, use_dora=True)
    merge(base, [{"path": a, "weight": 0.5}, {"path": b, "weight": 1.5}], tmp_path / "out")
    assert_same(tmp_path / "out", peft_reference(base, [a, b], weights=[0.5, 1.5]), torch.float32)


def test_tied_embeddings_lora_on_embed_tokens(root, tmp_path):
    """A tied base stays tied: the delta on embed_tokens also changes the output layer, exactly as in PEFT."""
    base = make_llama(root / "tied", tied=True, hidden=256, inter=512)
    ad = make_adapter(base, tmp_path / "ad", r=8, targets=["embed_tokens", "q_proj"])
    merge(base, [ad], tmp_path / "out")
    ours = assert_same(tmp_path / "out", peft_reference(base, [ad]), torch.float32)
    assert "lm_head.weight" not in ours
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True


def test_tied_embeddings_lm_head_change_is_refused(root, tmp_path):
    base = make_llama(root / "tied2", tied=True, hidden=256, inter=512)
    ad = make_adapter(base, tmp_path / "ad", r=8, modules_to_save=["lm_head"])
    with pytest.raises(PipelineError, match="ties lm_head to embed_tokens"):
        merge(base, [ad], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_added_tokens_resized_embeddings_and_tokenizer_from_adapter(bases, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    base = bases[torch.float32]
    tok = AutoTokenizer.from_pretrained(str(base))
    tok.add_special_tokens({"additional_special_tokens": ["<|tool|>", "<|end_tool|>"]})
    model = AutoModelForCausalLM.from_pretrained(str(base))
    model.resize_token_embeddings(len(tok))
    pm = get_peft_model(
        model,
        LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens", "lm_head"]
        ),
    )
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n or "modules_to_save" in n:
                p.add_(torch.randn_like(p) * 0.05)
    ad = tmp_path / "ad"
    pm.save_pretrained(str(ad))
    tok.save_pretrained(str(ad))
    merge(base, [ad], tmp_path / "out")
    assert_same(tmp_path / "out", peft_reference(base, [ad], resize=len(tok)), torch.float32)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["vocab_size"] == len(tok)
    merged_tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert merged_tok.convert_tokens_to_ids("<|tool|>") == len(tok) - 2


def test_merge_never_writes_the_base(bases, tmp_path):
    from loraforge.io.hashing import sha256_file, tree_files

    base = shutil.copytree(bases[torch.bfloat16], tmp_path / "base")
    before = {p.name: sha256_file(p) for p in tree_files(base)}
    ad = make_adapter(base, tmp_path / "ad", r=8)
    merge(base, [ad], tmp_path / "out")
    with pytest.raises(PipelineError, match="must not be inside the base model directory"):
        merge(base, [ad], base / "merged")
    assert {p.name: sha256_file(p) for p in tree_files(base)} == before


def test_refusals_write_nothing(bases, tmp_path):
    base = bases[torch.float32]
    ad = make_adapter(base, tmp_path / "ad", r=8)
    t = load_file(ad / "adapter_model.safetensors")
    key = next(k for k in t if "lora_A" in k)
    t[key] = t[key][:, :100].contiguous()
    save_file(t, ad / "adapter_model.safetensors")
    with pytest.raises(PipelineError, match="does not match base weight"):
        merge(base, [ad], tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["ad"]
