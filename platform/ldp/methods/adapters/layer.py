"""One Houlsby bottleneck adapter: ``h + W_up act(W_down h)`` (the skip is inside the adapter)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BottleneckAdapter"]


class BottleneckAdapter(nn.Module):
    """(…, d) -> (…, d); identity at init because ``up`` starts at zero."""

    def __init__(
        self,
        hidden_size: int,
        bottleneck: int,
        *,
        activation: str = "gelu",
        init_std: float = 0.01,
        device=None,
    ) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck, device=device)
        self.up = nn.Linear(bottleneck, hidden_size, device=device)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        with torch.no_grad():
            self.down.weight.normal_(0.0, init_std)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def adapter_params(self) -> list[nn.Parameter]:
        return [self.down.weight, self.down.bias, self.up.weight, self.up.bias]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.to(self.down.weight.dtype)
        return hidden + self.up(self.act(self.down(x))).to(hidden.dtype)
