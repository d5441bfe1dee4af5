"""Which torch device the neural parts run on."""

from __future__ import annotations

from vidaffect.errors import ParameterError

DEVICES = ("auto", "cpu", "cuda")  # what --device accepts; "cuda:N" picks one GPU


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``; ``"cuda"`` or
    ``"cuda:N"`` on a machine without one is a :class:`ParameterError`."""
    if device != "auto":
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ParameterError(f"--device {device}: PyTorch sees no CUDA device on this machine")
        elif device != "cpu":
            raise ParameterError(f"--device {device!r}: choose one of {', '.join(DEVICES)} or cuda:N")
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"
