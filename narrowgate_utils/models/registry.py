"""Family registry and the single ``load`` entry point for all three model tiers."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch

from .base import Adapter

#: family name -> "module:Class" (imported lazily so one broken family never blocks another)
ADAPTERS: dict[str, str] = {
    "chameleon": "narrowgate_utils.models.chameleon:ChameleonAdapter",
    "emu3": "narrowgate_utils.models.emu3:Emu3Adapter",
    "llava": "narrowgate_utils.models.llava:LlavaAdapter",
    "llava_next": "narrowgate_utils.models.llava:LlavaNextAdapter",
    "llava_onevision": "narrowgate_utils.models.llava:LlavaOnevisionAdapter",
    "pixtral": "narrowgate_utils.models.pixtral:PixtralAdapter",
    "janus": "narrowgate_utils.models.janus:JanusAdapter",
    "qwen2_vl": "narrowgate_utils.models.qwen2vl:Qwen2VLAdapter",
    "idefics3": "narrowgate_utils.models.idefics3:Idefics3Adapter",
}
SUPPORTED_FAMILIES = tuple(ADAPTERS)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def adapter_class(family: str) -> type[Adapter]:
    if family not in ADAPTERS:
        raise ValueError(f"Unknown model family '{family}'. Supported families: {', '.join(SUPPORTED_FAMILIES)}.")
    module_name, class_name = ADAPTERS[family].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def family_of(config: Any) -> str:
    """Map a transformers config to an adapter family (Pixtral is LLaVA with a Pixtral tower; SmolVLM2 is Idefics3)."""
    model_type = getattr(config, "model_type", None)
    if model_type == "llava" and getattr(getattr(config, "vision_config", None), "model_type", None) == "pixtral":
        return "pixtral"
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        return "qwen2_vl"
    if model_type == "smolvlm":  # SmolVLM2: Idefics3's architecture and image expansion
        return "idefics3"
    if model_type in ADAPTERS:
        return model_type
    raise ValueError(
        f"Model type '{model_type}' is not supported. Supported families: {', '.join(SUPPORTED_FAMILIES)} "
        "(add an adapter in narrowgate_utils/models/ for a new family)."
    )


def adapter_for(model: torch.nn.Module, processor: Any, model_id: str | Path = "",
                checkpoint_dir: str | Path | None = None) -> Adapter:
    """Wrap an already loaded model and its processor in the right adapter."""
    return adapter_class(family_of(model.config))(model, processor, model_id, checkpoint_dir)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype '{dtype}'; use one of {sorted(_DTYPES)}.")
    return _DTYPES[dtype]


def check_device(device: str) -> None:
    """Raise a ValueError for an unknown device or a CUDA device on a machine without one."""
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"Unknown device '{device}'; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto' (shard over the "
                         "visible GPUs).") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device='{device}' was requested but no CUDA GPU is available; use device='cpu'.")


#: sub-configs holding a vision encoder: no chapter reads their attention, so they keep fused attention
VISION_SUB_CONFIGS = ("vision_config",)


def attention_implementations(config: Any, attn_implementation: str) -> str | dict[str, str]:
    """``attn_implementation`` for the language model, ``sdpa`` for the vision tower.

    Eager attention is needed only where post-softmax weights are read or edited, all in the
    language model. Pixtral's tower packs every image of a batch into one sequence, so eager
    attention there would hold a (patches in the batch)² matrix per head (≈94 GB per layer at
    batch 32 of COCO images). A config without a vision sub-config gets the plain string.
    """
    sub_configs = getattr(config, "sub_configs", {}) or {}
    towers = [name for name in VISION_SUB_CONFIGS if name in sub_configs and getattr(config, name, None) is not None]
    if not towers or attn_implementation == "sdpa":
        return attn_implementation
    return {"": attn_implementation, **{name: attn_implementation for name in sub_configs if name not in towers},
            **{name: "sdpa" for name in towers}}


def resolve_checkpoint(model_id: str | Path) -> str:
    """Toy-world names become their trained local dirs (an untrained one is an error); local dirs stay; hub ids
    are checked against offline mode."""
    name = str(model_id)
    if name.startswith("toy-"):
        from ..toy.registry import ensure_toy_model

        return str(ensure_toy_model(name))
    if Path(name).exists():
        if not (Path(name) / "config.json").exists():
            raise ValueError(f"Local checkpoint '{name}' has no config.json; point model_id at a Hugging Face checkpoint directory.")
        return name
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ValueError(
                f"'{name}' is neither a local directory nor in the Hugging Face cache, and HF_HUB_OFFLINE=1 forbids "
                "downloading it. Download it on a machine with hub access (huggingface-cli download "
                f"{name}) or pass a local checkpoint path."
            )
    return name


def load(
    model_id: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    device_map: str | dict | None = None,
    attn_implementation: str = "eager",
    trust_remote_code: bool = False,
    remote: bool | str = False,
) -> Adapter:
    """Load a real checkpoint (hub id or local dir) or a toy-world model and wrap it in its adapter.

    ``attn_implementation='eager'`` is the default because post-softmax attention weights
    (chapter 02, the attention part of 07/08) need it; chapters that read only residual streams
    (01, 03, 05) pass ``'sdpa'``, and the attention knockout runs on either (its kernel follows the
    loaded implementation, see ``knockout_attention``). Only safetensors weights are loaded;
    ``trust_remote_code`` stays off unless the caller passes ``True``. ``device="auto"`` is
    short for ``device_map="auto"`` (accelerate shards the model over the visible GPUs, e.g. a
    34B model; the notebooks take it as ``-p device auto``).

    ``remote`` sends every nnsight trace (residual / attention extraction, activation
    patching) to a hosted backend: ``True`` for NDIF (configure the key with
    ``nnsight.CONFIG.set_default_api_key``), or a host URL. The model is then built on the meta
    device from its config (no weights are downloaded); steps that need local weights
    (generation, knockout, fine-tuning) raise. ``"local"`` loads the weights and runs traces
    through nnsight's serialising simulation of the remote path (a dry run, for testing).
    """
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    if dtype == "auto":  # bf16 on GPUs (a 7B model in float32 does not fit one 40 GB card), float32 on CPU
        on_gpu = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        dtype = "bfloat16" if on_gpu else "float32"
    torch_dtype = resolve_dtype(dtype)
    if device == "auto" and device_map is None:
        device_map = "auto"
    if device_map is None:
        check_device(device)
    if not isinstance(remote, (bool, str)) or remote == "":
        raise ValueError(f"remote must be False, True, 'local' or a host URL, got {remote!r}.")
    checkpoint = resolve_checkpoint(model_id)
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    cls = adapter_class(family_of(config))
    attention = attention_implementations(config, attn_implementation)
    model_class = cls.model_class()
    if remote and remote != "local":  # weights stay on the server: only the structure, on the meta device
        # auto classes (Qwen2-VL) build from a config with ``from_config``, concrete ones with ``_from_config``
        build = getattr(model_class, "from_config", None) if model_class.__name__.startswith("Auto") else None
        with torch.device("meta"):
            model = (build or model_class._from_config)(config, dtype=torch_dtype, attn_implementation=attention)
    else:
        # straight onto the requested device (a 7B model never passes through host RAM in float32)
        model = model_class.from_pretrained(
            checkpoint,
            dtype=torch_dtype,
            device_map=device_map if device_map is not None else (None if device == "cpu" else device),
            attn_implementation=attention,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
    model.eval()
    try:
        processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, ImportError):  # no processor shipped (toy models)
        processor = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    return cls(model, processor, model_id, checkpoint_dir=checkpoint, remote=remote)
