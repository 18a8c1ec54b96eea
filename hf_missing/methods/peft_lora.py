"""peft's LoRA on the Linear modules of the backbone's encoder layers, named by role: shared by the methods that
adapt the frozen encoders with LoRA (CMPT, and the plain ``lora`` method).

A target is a role of the backbone interface (``interface.lora_roles``: CLIP ``q`` -> ``self_attn.q_proj``, ViLT and
BERT ``q`` -> ``attention...query``) or a module path relative to an encoder layer; :func:`resolve_lora_paths` turns
the targets into the layer's Linear paths, and :func:`add_lora` wraps each one with peft's own LoRA ``Linear`` (or a
subclass that renames its containers), so peft saves, loads, disables and deletes it with the method's adapter.
"""

from __future__ import annotations

from peft import LoraConfig
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from ..backbones import BackboneInterface

LORA_ROLES = ("q", "k", "v", "o", "mlp_in", "mlp_out")  # the roles a backbone interface maps (``lora_roles``)


def check_lora_settings(rank: int, alpha: float, dropout: float, names: tuple[str, str, str],
                        rank_hint: tuple[str, str]) -> None:
    """A config's LoRA rank (>= 1), alpha (> 0) and dropout ([0, 1)), ``names`` as the config calls them."""
    if rank < 1:
        raise ValueError(f"{names[0]} must be a positive integer {rank_hint[0]}, got {rank}; {rank_hint[1]}")
    if alpha <= 0 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"{names[1]} must be positive and {names[2]} in [0, 1), got {alpha} and {dropout}.")


def lora_config(rank: int, alpha: float, dropout: float, inference_mode: bool) -> LoraConfig:
    """The peft ``LoraConfig`` that :func:`add_lora` builds its layers from."""
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, inference_mode=inference_mode)


def linear_names(layer: nn.Module) -> list[str]:
    """Paths, relative to an encoder layer, of its Linear modules (LoRA-wrapped ones by their wrapper's path)."""
    wrapped = [name for name, module in layer.named_modules() if isinstance(module, LoraLayer)]
    return [name for name, module in layer.named_modules() if isinstance(module, LoraLayer) or (
        isinstance(module, nn.Linear) and not any(name.startswith(f"{w}.") for w in wrapped))]


def resolve_lora_paths(layer: nn.Module, targets: list[str], interface: BackboneInterface, option: str) -> list[str]:
    """The Linear paths inside ``layer`` that ``targets`` (roles or relative paths) name; errors, naming the
    method's ``option``, for a target that names nothing."""
    available = linear_names(layer)
    paths = []
    for target in targets:
        wanted = interface.lora_roles.get(target, target)
        found = [n for n in available if n == wanted or n.endswith(f".{wanted}")]
        if not found:
            raise ValueError(f"{option} entry {target!r} matches no Linear layer of a "
                             f"{interface.model_type} encoder layer; use a role of {sorted(interface.lora_roles)} "
                             f"or a path among {available}.")
        paths += [p for p in found if p not in paths]
    return paths


def check_lora_targets(interface: BackboneInterface, targets: list[str], option: str) -> None:
    """Raise before anything is injected when a target names no Linear layer in some stream of the backbone."""
    for stream in interface.streams:
        resolve_lora_paths(interface.layers(stream.name)[0], targets, interface, option)


def add_lora(layer: nn.Module, paths: list[str], adapter_name: str, config: LoraConfig,
             linear_cls: type[LoraLinear] = LoraLinear) -> None:
    """Wrap each Linear at ``paths`` in ``layer`` with peft's LoRA (``linear_cls``) for ``adapter_name``, or add the
    adapter to a wrapper already there."""
    for path in paths:
        module = layer.get_submodule(path)
        if isinstance(module, LoraLayer):
            module.update_layer(adapter_name, config.r, lora_alpha=config.lora_alpha, config=config)
            continue
        parent_path, _, name = path.rpartition(".")
        parent = layer.get_submodule(parent_path) if parent_path else layer
        setattr(parent, name, linear_cls(module, adapter_name, config=config, r=config.r,
                                         lora_alpha=config.lora_alpha))
