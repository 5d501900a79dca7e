"""The slots' modules as one set of stacked parameters, and a forward pass over all of them at once.

How a module is stacked (``"batched"``, ``"vmap"``, or ``"single"`` for one
slot) and which modules can be: see :mod:`tlkit.train.seeds`. The loop that
trains the stack is :mod:`tlkit.train.slots`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tlkit.errors import HeadError

_ELEMENTWISE = (nn.Sequential, nn.Identity, nn.Tanh, nn.ReLU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU)


class NotVectorisable(HeadError):
    """This module cannot train several seeds in one pass; train them one by one."""


class SeedLinear(nn.Module):
    """``nn.Linear`` with a leading seed axis: weight (S, out, in), bias (S, out); x (S, B, in) -> (S, B, out).

    Computed as weight @ x^T (then viewed transposed): the weight gradient
    g^T @ x then comes out in the weight's own layout, about twice as fast
    as x @ weight^T at many seeds. Rows shared by every seed (x expanded
    from (B, in), as in evaluation) take one matrix product for all seeds.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seeds, n_out = self.weight.shape[:2]
        if x.stride(0) == 0:  # the same rows for every seed
            out = (self.weight.flatten(0, 1) @ x[0].T).view(seeds, n_out, -1)
            if self.bias is not None:
                out = out + self.bias.unsqueeze(-1)
        elif self.bias is None:
            out = torch.bmm(self.weight, x.transpose(1, 2))
        else:
            out = torch.baddbmm(self.bias.unsqueeze(-1), self.weight, x.transpose(1, 2))
        return out.transpose(1, 2)


class _Stacked:
    """The seeds' parameters as stacked tensors, and a forward pass over all seeds at once."""

    method: str

    def __init__(self, modules: list[nn.Module], device: torch.device):
        self.keys = list(modules[0].state_dict().keys())
        params, buffers = torch.func.stack_module_state(modules)  # {name: (S, ...)}, params are fresh leaves
        self.params = {k: v.to(device).detach().requires_grad_() for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in buffers.items()}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    @staticmethod
    def slot_view(vector: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """A (slots,) vector shaped to broadcast over ``param``'s leading slot axis."""
        return vector.view(-1, *[1] * (param.dim() - 1))

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """x (S, B, F) -> logits (S, B, C); ``shared_input``: x is (B, F), the same rows for every seed."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> None:
        raise NotImplementedError

    def state_dict(self, index: int) -> dict:
        """Seed ``index``'s state dict, keys in the module's own order, on the CPU."""
        tensors = {**self.params, **self.buffers}
        return {k: tensors[k][index].detach().cpu().clone() for k in self.keys}


class _Batched(_Stacked):
    method = "batched"

    def __init__(self, modules, device):
        super().__init__(modules, device)
        self.module = SeedLinear() if type(modules[0]) is nn.Linear else copy.deepcopy(modules[0])
        for parent in list(self.module.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, SeedLinear())
        for name, tensor in {**self.params, **self.buffers}.items():
            owner_name, _, attr = name.rpartition(".")
            owner = self.module.get_submodule(owner_name)
            owner._parameters.pop(attr, None)
            owner._buffers.pop(attr, None)
            if name in self.params:
                owner.register_parameter(attr, nn.Parameter(tensor))
                self.params[name] = owner._parameters[attr]
            else:
                owner.register_buffer(attr, tensor)
        for parent in self.module.modules():  # a Linear without bias
            if isinstance(parent, SeedLinear) and "bias" not in parent._parameters:
                parent.register_parameter("bias", None)

    def forward(self, x, shared_input=False):
        if shared_input:
            x = x.expand(len(next(iter(self.params.values()))), *x.shape)
        return self.module(x)

    def train(self, mode=True):
        self.module.train(mode)


class _Vmapped(_Stacked):
    method = "vmap"

    def __init__(self, modules, device):
        super().__init__(modules, device)
        self.module = copy.deepcopy(modules[0]).to(device)

        def call(params, buffers, x):
            return torch.func.functional_call(self.module, (params, buffers), (x,))

        self._per_seed = torch.vmap(call, in_dims=(0, 0, 0))
        self._shared = torch.vmap(call, in_dims=(0, 0, None))

    def forward(self, x, shared_input=False):
        return (self._shared if shared_input else self._per_seed)(self.params, self.buffers, x)

    def train(self, mode=True):
        self.module.train(mode)


class _Single:
    """One slot: its module runs as it is (no slot axis in its parameters), the way a single fit always ran."""

    method = "single"

    def __init__(self, modules: list[nn.Module], device: torch.device):
        self.module = modules[0].to(device)
        self.params = {k: p for k, p in self.module.named_parameters() if p.requires_grad}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    @staticmethod
    def slot_view(vector: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        return vector.reshape([1] * param.dim())

    def forward(self, x: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        return self.module(x if shared_input else x[0]).unsqueeze(0)

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def state_dict(self, index: int) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}


def stack(modules: list[nn.Module], method: str, device: torch.device):
    """The slots' modules as one stacked pass: "single" (one module as it is), "batched"/"broadcast" or "vmap"."""
    if method == "single":
        return _Single(modules, device)
    return (_Batched if method in ("batched", "broadcast") else _Vmapped)(modules, device)


def seed_axis(module: nn.Module) -> str | None:
    """How ``module`` trains many seeds in one pass: ``"broadcast"``, ``"vmap"`` or None (see the module
    docstring). Its own ``seed_axis`` attribute if it has one, else inferred from what it is made of."""
    declared = getattr(module, "seed_axis", "undeclared")
    if declared != "undeclared":
        if declared not in ("broadcast", "vmap", None):
            raise ValueError(f"{type(module).__name__}.seed_axis must be 'broadcast', 'vmap' or None, got {declared!r}")
        if declared == "broadcast" and not all(seed_axis(child) == "broadcast" for child in module.children()):
            return "vmap"
        return declared
    if type(module) is nn.Linear:
        return "broadcast"
    if isinstance(module, _ELEMENTWISE) and not any(True for _ in module.parameters(recurse=False)):
        children = [seed_axis(child) for child in module.children()]
        if None in children:
            return None
        return "broadcast" if all(c == "broadcast" for c in children) else "vmap"
    return "vmap"
