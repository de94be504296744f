"""A tensor derived from parameters, computed once and kept while they do not change."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence

import torch


def parameter_state(parameters: Iterable[torch.Tensor]) -> tuple:
    """What tells whether parameters changed, without reading their values: each one's address,
    version counter (bumped by in-place updates), device, dtype and shape."""
    return tuple((p.data_ptr(), p._version, p.device, p.dtype, p.shape) for p in parameters)


class DerivedTensor:
    """Holds one tensor computed from `parameters` (a positional embedding resized to a grid,
    say) and recomputes it only when they change or the caller's key differs.

    A parameter changes by a new tensor (a new address) or in place (its version counter: an
    optimiser step, `load_state_dict`). The entry keeps the parameters' tensors alive, so no new
    tensor can take an old address while the entry stands. While autograd records and a
    parameter requires grad, it always recomputes: the result must carry its own graph.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: torch.Tensor | None = None
        self._sources: tuple[torch.Tensor, ...] = ()

    def get(
        self, parameters: Sequence[torch.Tensor], key: Hashable, compute: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        if torch.is_grad_enabled() and any(p.requires_grad for p in parameters):
            return compute()
        state = (key, parameter_state(parameters))
        if state != self._key or self._value is None:
            self._value = compute()
            self._key, self._sources = state, tuple(p.detach() for p in parameters)
        return self._value
