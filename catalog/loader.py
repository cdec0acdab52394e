"""One entry point for model files: a GGUF file or a Hugging Face directory."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from catalog.errors import ModelNotFoundError
from catalog.model_config import ModelConfig
from catalog.quant import QuantizedTensor


@dataclass
class LoadedModel:
    name: str
    path: Path
    format: str  # 'gguf' | 'hf'
    config: ModelConfig
    tokenizer: object  # catalog.tokenizer.Tokenizer
    weights: dict[str, torch.Tensor | QuantizedTensor] = field(repr=False)

    @property
    def weight_formats(self) -> tuple[str, ...]:
        """Formats the weights can run in: 'native' only when some are quantized."""
        quantized = any(isinstance(w, QuantizedTensor) for w in self.weights.values())
        return ("native", "fp32", "bf16") if quantized else ("fp32", "bf16")

    @property
    def native_format(self) -> str:
        qtypes = sorted({w.qtype for w in self.weights.values() if isinstance(w, QuantizedTensor)})
        return "+".join(qtypes) if qtypes else "fp32"


def load_model(path: str | Path) -> LoadedModel:
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if path.is_dir():
        from catalog.hf_loader import load_hf_dir

        return load_hf_dir(path)
    if path.suffix.lower() == ".gguf":
        from catalog.gguf_loader import load_gguf

        return load_gguf(path)
    raise ModelNotFoundError(f"{path} is neither a .gguf file nor a Hugging Face model directory")
