"""The detail network G and the conditioned MLP it (and a scratch F) is built from.

G predicts, per Gaussian and frame, what the forward field F cannot: a residual position
offset, a rotation change, a log-scale change, a colour change and an opacity change. Its last
layer starts at zero, so an untrained G is the identity (the avatar starts as "F only").

What G sees of the expression (``AvatarConfig.detail_conditioning``):

* ``"code"`` (default): the paper's G(x, f, z_exp), the frame's whole expression code;
* ``"deformation"``: G(x, f, F(x, z_exp, f) - x), F's displacement of this Gaussian. A held-out
  sequence combines expressions that training showed only apart (NPGA's FREE); for a
  code-conditioned G such a code is new everywhere on the face, while F's displacement at the
  chin or a mouth corner is one it has seen there. But G then sees only what F moves: where the
  tracked codes carry more than F makes of them, the code serves G better. Measured both ways
  in the README (*What G should see*): better for an identity whose codes carry little but the
  jaw and wander (``benchmarks/code_content.py``), worse for one whose codes carry more.

Either way the frame's eye closure (when the avatar takes one) is G's per-frame code.

``relative_to_rest`` (``AvatarConfig.detail_relative_to_rest``, on by default): G's output minus
its output at the rest inputs (a zero code, the prior's neutral expression, with open eyes and
parts at rest; no displacement from F), so G is zero at rest and carries only what changes with
the expression. Unconstrained, G learns mostly a correction common to every frame (README,
*G relative to rest*), which the canonical Gaussians hold better.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def fourier_features(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """[x, sin(2^k pi x), cos(2^k pi x) for k < num_freqs]: (N, 3) -> (N, 3 + 6 num_freqs)."""
    if num_freqs <= 0:
        return x
    freqs = (2.0 ** torch.arange(num_freqs, dtype=x.dtype, device=x.device)) * math.pi
    angles = (x[..., None] * freqs).flatten(-2)
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)


class ConditionedMLP(nn.Module):
    """MLP over per-point inputs (N, P) conditioned on one code (E,) shared by all points.

    The first layer is split as W_p p + (W_z z + b): identical to concatenating z to every
    point, but the code's product is computed once per frame instead of N times (matters on the
    CPU where MLPs dominate the step time). SiLU activations; ``zero_last`` zero-initialises the
    output layer so the network starts as "no change".
    """

    def __init__(self, point_dim: int, code_dim: int, out_dim: int, hidden: int, layers: int,
                 zero_last: bool = True):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.point_dim, self.code_dim = point_dim, code_dim
        self.point_in = nn.Linear(point_dim, hidden)
        self.code_in = nn.Linear(code_dim, hidden, bias=False) if code_dim > 0 else None
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, out_dim)
        self.act = nn.SiLU()
        if zero_last:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, points: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
        """points: (N, P); code: (E,) or (1, E) or None when code_dim == 0 -> (N, out_dim)."""
        if points.shape[-1] != self.point_dim:
            raise ValueError(f"expected {self.point_dim} per-point inputs, got {points.shape[-1]}")
        h = self.point_in(points)
        if self.code_in is not None:
            if code is None:
                raise ValueError("this network needs a code (expression) input")
            h = h + self.code_in(code.reshape(1, -1).to(h.dtype))
        h = self.act(h)
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h)


# F's displacements are a few hundredths of a canonical unit (the jaw ~0.1): x10 brings them to
# the range of the other inputs.
DEFORMATION_SCALE = 10.0


class DetailNetwork(nn.Module):
    """G(x_can, f, [F's displacement,] code) -> per-Gaussian changes (all zero at initialisation).

    ``code_dim``: size of the per-frame code (z_exp and/or the eye closure; 0 for none);
    ``deformation_input``: G also takes F's displacement (N, 3) of each Gaussian, in canonical
    units scaled by :data:`DEFORMATION_SCALE`, detached (G does not push F);
    ``relative_to_rest``: return G(inputs) - G(rest inputs), a zero code and no displacement
    (see the module docstring).

    Returns a dict of
      ``d_means``      (N, 3)  position offset in canonical units, added after F
      ``d_quats``      (N, 4)  added to the identity quaternion (1, 0, 0, 0), then multiplied
      ``d_log_scales`` (N, 3)
      ``d_colors``     (N, C)  added to the SH DC coefficients / rendered features
      ``d_opacity``    (N,)    added to the opacity logit
    """

    def __init__(self, latent_dim: int, code_dim: int, color_dim: int, hidden: int, layers: int,
                 pos_freqs: int = 4, deformation_input: bool = False, relative_to_rest: bool = False):
        super().__init__()
        if relative_to_rest and code_dim == 0 and not deformation_input:
            raise ValueError("a DetailNetwork relative to rest needs a per-frame input "
                             "(a code or F's displacement); without one it is zero everywhere")
        self.latent_dim, self.color_dim, self.pos_freqs = latent_dim, color_dim, pos_freqs
        self.deformation_input, self.relative_to_rest = deformation_input, relative_to_rest
        self.out_dims = {"d_means": 3, "d_quats": 4, "d_log_scales": 3, "d_colors": color_dim,
                         "d_opacity": 1}
        point_dim = 3 + 6 * pos_freqs + latent_dim + (3 if deformation_input else 0)
        self.mlp = ConditionedMLP(point_dim, code_dim, sum(self.out_dims.values()), hidden, layers)

    def forward(self, x_can: torch.Tensor, latents: torch.Tensor | None, code: torch.Tensor | None,
                deformation: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x_can (N, 3), latents (N, D) or None, code (C,) or None, deformation (N, 3) or None."""
        inputs = [fourier_features(x_can, self.pos_freqs)]
        if self.latent_dim > 0:
            if latents is None:
                raise ValueError("DetailNetwork was built with latents but got none")
            inputs.append(latents)
        rest_inputs = list(inputs)
        if self.deformation_input:
            if deformation is None:
                raise ValueError("DetailNetwork was built to see F's displacement but got none")
            inputs.append(DEFORMATION_SCALE * deformation.detach())
            rest_inputs.append(torch.zeros_like(deformation))
        out = self.mlp(torch.cat(inputs, dim=-1), code)
        if self.relative_to_rest:
            out = out - self.mlp(torch.cat(rest_inputs, dim=-1), None if code is None else torch.zeros_like(code))
        parts = dict(zip(self.out_dims, out.split(list(self.out_dims.values()), dim=-1)))
        parts["d_opacity"] = parts["d_opacity"][:, 0]
        return parts
