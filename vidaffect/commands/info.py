"""`vidaffect info`: human-readable descriptions of store folders, store files,
checkpoints and recipes."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from vidaffect.errors import ParameterError
from vidaffect.io.recipe import load_recipe
from vidaffect.io.store import describe_stages, list_stores
from vidaffect.stages import registry


def describe(target: str | Path) -> str:
    target = Path(target)
    if target.is_dir():
        return describe_store_dir(target)
    if target.suffix == ".h5":
        return describe_store_file(target)
    if target.suffix in (".ckpt", ".pt", ".pth"):
        from vidaffect.learn.checkpoint import describe as describe_checkpoint

        return describe_checkpoint(target)
    raise ParameterError(f"{target}: expected a store folder, a .h5 store or a .ckpt checkpoint")


def describe_store_dir(root: Path) -> str:
    stores = list_stores(root)
    if not stores:
        return f"{root}: no feature stores (run `vidaffect extract VIDEOS --store {root}`)"
    lines = [f"{root}: {len(stores)} video(s)", ""]
    header = f"{'video':<32} {'frames':>7} {'fps':>6}  stages (valid fraction)"
    lines += [header, "-" * len(header)]
    totals: dict[str, list[float]] = {}
    params: dict[str, set[str]] = {}
    for vid, path in stores.items():
        try:
            with h5py.File(path, "r") as h5:
                stages = describe_stages(h5)
                n = int(h5.attrs.get("frame_count", 0))
                fps = float(h5.attrs.get("fps", 0))
        except OSError as exc:
            lines.append(f"{vid:<32} unreadable ({exc})")
            continue
        for s in stages:
            totals.setdefault(s["stage"], []).append(s["valid_fraction"])
            params.setdefault(s["stage"], set()).add(json.dumps(s["params"], sort_keys=True))
        cells = ", ".join(f"{s['stage']} ({s['valid_fraction']:.2f})" for s in stages)
        lines.append(f"{vid:<32} {n:>7} {fps:>6.2f}  {cells}")
    lines += ["", "stages:"]
    for stage, fractions in totals.items():
        variants = params[stage]
        p = next(iter(variants)) if len(variants) == 1 else f"{len(variants)} different parameter sets"
        lines.append(f"  {stage}: {len(fractions)} video(s), mean valid {np.mean(fractions):.2f}; params {p}")
    return "\n".join(lines)


def describe_store_file(path: Path) -> str:
    lines = [str(path)]
    with h5py.File(path, "r") as h5:
        for key, value in sorted(h5.attrs.items()):
            lines.append(f"  @{key} = {value}")
        lines.append("datasets:")

        def visit(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset):
                extra = ""
                if name.endswith("/valid") and len(obj):
                    extra = f"  valid {np.asarray(obj).mean():.2f}"
                lines.append(f"  /{name:<28} {str(obj.shape):<18} {obj.dtype}{extra}")

        h5.visititems(visit)
        lines.append("stages:")
        for s in describe_stages(h5):
            note = f"  note: {s['note']}" if s["note"] else ""
            lines.append(
                f"  {s['stage']} (group /{s['group']}, v{s['version']}, hash {s['params_hash']}, {s['completed']}){note}"
            )
            lines.append(f"    params {json.dumps(s['params'], sort_keys=True)}")
    return "\n".join(lines)


def describe_recipe(name: str) -> str:
    """Every stage of a recipe with every parameter (the recipe's value, else the
    default) and what it means, then the training options and network sizes it sets."""
    spec = load_recipe(name)
    lines = [f"recipe {spec['name']}", "stages:"]
    for stage in spec["stages"]:
        cls = registry.stage_class(stage)
        params = registry.make_params(cls, spec["stages"][stage])
        lines.append(f"  {stage}:")
        for field, _, meaning in cls.Params.describe():
            lines.append(f"    {field:<24} {getattr(params, field)!s:<12} {meaning}")
    default = load_recipe(None)
    for section in ("train", "model"):  # what the recipe leaves out comes from the default recipe
        lines.append(f"{section}:")
        lines += [f"  {k}: {v}" for k, v in {**default[section], **spec[section]}.items()]
    return "\n".join(lines)
