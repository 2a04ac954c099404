"""Layers by role, found by running the model once on one random input and watching every module.

A method that needs "the last spatial map" or "the penultimate vector" asks for the role instead of a name, so it
works on any architecture. Roles (each a list of module paths, as ``named_modules()`` spells them):

- ``saliency``: the map a saliency method reads. A "level" is one spatial resolution (h×w > 1×1, the input's aspect)
  represented by the last module that outputs it, skipping an upsampling (output larger than input) and the
  internals of a block that leaves the resolution (``layer4.0.bn1`` of a ResNet-50, 14×14 inside ``layer4``, is not
  the 14×14 level; ``layer3`` is). Among the last two levels: the later one if it has at least 7×7 (Grad-CAM's grid
  on a 224-pixel ResNet), else the larger of the two. ResNet-18 gives ``layer4`` (7×7) at 224, ``layer3`` (4×4) at
  64, where ``layer4`` is 2×2. It never goes further back than two levels, even to reach 7×7: a map three stages
  before the head holds edges and textures, not what tells the classes apart.
- ``last_maps``: the last module of each of the last two levels, earlier first (FLINT's multi-layer input).
- ``penultimate``: the vector the final classifier layer reads — the module whose output, flattened, equals the
  final layer's input; among several equal ones (ReLU then Dropout) the first, whose output is the same in training.

A module called several times (torchvision's ResNet reuses one ReLU per block) is represented by its last call; the
outermost of several modules returning the same tensor is the one that finishes last (``layer3`` rather than
``layer3.1.relu``), which is the robust one to hook.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from interp_ray.errors import UserError

ROLES = ("saliency", "last_maps", "penultimate")
MIN_SALIENCY_SIDE = 7
KEEP_NUMEL = 1 << 18   # the probe keeps copies of tensors up to 1 MiB of float32


@dataclass
class Probe:
    """What one forward pass showed: per module its type, per-row output and input shapes (None: not called) and
    call count, in definition order; the order in which calls finished; copies of the smaller outputs and inputs;
    and the model's output."""
    types: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)   # names, each at the position of its last call
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    output: torch.Tensor | None = None
    input_shape: tuple[int, ...] = ()


def _tensor(x):
    if isinstance(x, (tuple, list)) and x:
        x = x[0]
    return x if isinstance(x, torch.Tensor) else None


def probe(net: nn.Module, input_shape: tuple[int, ...], *, seed: int = 0) -> Probe:
    """Run ``net`` once (eval mode, no grad) on a seeded random input of ``input_shape`` (C×H×W) in [0, 1]."""
    found = Probe(input_shape=tuple(input_shape))
    order: list[str] = []
    modules = [(name, m) for name, m in net.named_modules() if name]

    def hook(name):
        def record(_module, inputs, output):
            out = _tensor(output)
            found.calls[name] += 1
            order.append(name)
            # Copies, since a later in-place op (ReLU(inplace=True), Hardswish) would rewrite what was seen; only of
            # tensors up to KEEP_NUMEL (vectors, small maps: where the penultimate is looked for), so probing a
            # ResNet-152 does not hold every feature map at once.
            if out is not None:
                found.shapes[name] = tuple(int(s) for s in out.shape[1:])
                if out.numel() <= KEEP_NUMEL:
                    found.outputs[name] = out.detach().clone()
            first = _tensor(inputs)
            if first is not None:
                found.input_shapes[name] = tuple(int(s) for s in first.shape[1:])
                if first.numel() <= KEEP_NUMEL:
                    found.inputs[name] = first.detach().clone()
        return record

    for name, m in modules:
        found.types[name], found.shapes[name], found.calls[name] = type(m).__name__, None, 0
    handles = [m.register_forward_hook(hook(name)) for name, m in modules]
    was_training = net.training
    x = torch.rand((1, *input_shape), generator=torch.Generator().manual_seed(seed))
    try:
        param = next(net.parameters(), None)
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype)
        net.eval()
        with torch.no_grad():
            found.output = _tensor(net(x))
    except RuntimeError as e:
        raise UserError(f"the model cannot take an input of {'×'.join(map(str, input_shape))} "
                        f"({str(e).strip().splitlines()[0][:200]}); set in_channels / image_size") from None
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    last = {name: i for i, name in enumerate(order)}
    found.finished = sorted(last, key=last.__getitem__)
    return found


def _is_map(shape, input_shape: tuple[int, ...]) -> bool:
    """C×h×w larger than 1×1 with the input's aspect (within a pixel per input side): a ConvNeXt block's
    channels-last tensor (7×7×768) is 3-D too, but its "h×w" of 7×768 is no image grid."""
    if shape is None or len(shape) != 3 or shape[1] * shape[2] <= 1:
        return False
    if len(input_shape) != 3:
        return True
    (_, h, w), (_, hi, wi) = shape, input_shape
    return abs(h * wi - w * hi) <= max(hi, wi)


def find_roles(model: nn.Module, input_shape: tuple[int, ...] | None = None, *,
               probed: Probe | None = None) -> dict[str, list[str]]:
    """``{role: [module paths]}`` for the roles the model has (see the module docstring); a role the model lacks is
    absent (``missing_role`` says why in one line). ``model`` is a Classifier (its ``net`` is probed at its
    ``input_shape``) or any ``nn.Module`` with ``input_shape`` given."""
    net = getattr(model, "net", model)
    if probed is None:
        shape = input_shape or getattr(model, "input_shape", None)
        if shape is None:
            raise UserError("find_roles needs the input shape (C, H, W) of a plain nn.Module")
        probed = probe(net, tuple(shape))
    roles: dict[str, list[str]] = {}
    # One level per resolution, represented by the last module (in finishing order) that outputs it.
    levels: dict[tuple[int, int], str] = {}
    for name in probed.finished:
        shape, given = probed.shapes[name], probed.input_shapes.get(name)
        # An upsampling module (VGG's AdaptiveAvgPool2d((7, 7)) on a 2×2 map) adds resolution, not information.
        grows = given is not None and len(given) == 3 and shape is not None and len(shape) == 3 \
            and shape[1] * shape[2] > given[1] * given[2]
        if _is_map(shape, probed.input_shape) and not grows and not _inside_transition(name, shape, probed):
            levels.pop(shape[1:], None)   # re-insert so dict order is the order of each level's last module
            levels[shape[1:]] = name
    last_two = list(levels.items())[-2:]
    if last_two:
        roles["last_maps"] = [name for _, name in last_two]
        big = [name for (h, w), name in reversed(last_two) if min(h, w) >= MIN_SALIENCY_SIDE]
        roles["saliency"] = big[:1] or [max(last_two, key=lambda item: item[0][0] * item[0][1])[1]]
    penultimate = _penultimate(probed)
    if penultimate:
        roles["penultimate"] = [penultimate]
    return roles


def _inside_transition(name: str, shape: tuple[int, ...], probed: Probe) -> bool:
    """Whether ``name`` works inside a block that takes its resolution in and gives another out (a strided
    bottleneck: ``layer4.0.bn1`` of ResNet-50 is 14×14 inside ``layer4``, 14×14 → 7×7): such a module is the block's
    internals, and the level's map is the block before it (``layer3``)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        ancestor = ".".join(parts[:i])
        given, out = probed.input_shapes.get(ancestor), probed.shapes.get(ancestor)
        if given is not None and out is not None and len(given) == 3 and len(out) == 3 \
                and given[1:] == shape[1:] and out[1:] != shape[1:]:
            return True
    return False


def _penultimate(probed: Probe) -> str | None:
    out = probed.output
    if out is None:
        return None
    finished = probed.finished
    final = next((n for n in reversed(finished) if n in probed.outputs and n in probed.inputs
                  and not any(c.startswith(n + ".") for c in probed.types)
                  and probed.outputs[n].shape == out.shape and torch.equal(probed.outputs[n], out)), None)
    if final is None:  # the logits leave the last module through a functional op (a scale, a log_softmax)
        final = next((n for n in reversed(finished) if probed.types[n] == "Linear" and n in probed.inputs
                      and probed.shapes[n] == tuple(out.shape[1:])), None)
    if final is None:
        return None
    vec = probed.inputs[final].reshape(1, -1)
    run: list[str] = []
    for name in reversed(finished[:finished.index(final)]):
        o = probed.outputs.get(name)
        same = o is not None and o.numel() == vec.numel() and torch.equal(o.reshape(1, -1), vec)
        if same:
            run.append(name)
        elif run:
            break
    return run[-1] if run else None


def missing_role(role: str, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> str:
    """One line saying why ``model`` has no layer in ``role``."""
    shape = "×".join(map(str, input_shape or getattr(model, "input_shape", ())))
    if role in ("saliency", "last_maps"):
        return (f"no layer of this model outputs a spatial map larger than 1×1 at input {shape}, so it has no "
                f"'{role}' layer and a saliency method cannot apply; name a layer explicitly if one fits")
    if role == "penultimate":
        return ("no module's output equals the input of the final classifier layer (it is computed outside any "
                "module, e.g. by a functional call in forward()); name the penultimate layer explicitly")
    return f"unknown role {role!r}; valid: {', '.join(ROLES)}"


def layers_for_role(model: nn.Module, role: str, input_shape: tuple[int, ...] | None = None) -> list[str]:
    """The module paths in ``role``, or a one-line ``UserError`` when the model has none."""
    if role not in ROLES:
        raise UserError(missing_role(role, model, input_shape))
    roles = model.roles() if hasattr(model, "roles") and input_shape is None else find_roles(model, input_shape)
    if role not in roles:
        raise UserError(missing_role(role, model, input_shape))
    return roles[role]
