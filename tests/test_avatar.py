"""Unit tests of the avatar's parts: Laplacian, ADC bookkeeping, deformation, networks, checkpoints."""
import math
import os

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from npga_taichi.avatar.config import AvatarConfig, TrainConfig, configs_from_json, configs_to_json, preset
from npga_taichi.avatar.deformation import FrameCode, ScratchForwardField
from npga_taichi.avatar.detail_network import DetailNetwork
from npga_taichi.avatar.density_control import GradientStats, densify_and_prune, reset_opacity
from npga_taichi.avatar.gaussians import CanonicalGaussians
from npga_taichi.conventions import SH_C0
from npga_taichi.avatar.laplacian import KnnLaplacian, knn_graph, laplacian, laplacian_loss
from npga_taichi.avatar.model import NPGAAvatar, avatar_from_state, avatar_state
from npga_taichi.avatar.rotations import quat_multiply, quat_to_rotmat, rotmat_to_quat
from npga_taichi.avatar.screen_cnn import ScreenCNN
from npga_taichi.avatar.trainer import build_optimizer
from npga_taichi.checkpoint import load_checkpoint, save_checkpoint


# ------------------------------------------------------------------------------------ Laplacian
def test_knn_graph_matches_brute_force_and_excludes_self():
    pts = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    graph = knn_graph(pts, 6)
    d = torch.cdist(pts, pts)
    d.fill_diagonal_(float("inf"))
    brute = torch.topk(d, 6, largest=False).indices
    assert graph.shape == (200, 6)
    assert torch.equal(torch.sort(graph, dim=1).values, torch.sort(brute, dim=1).values)


def test_laplacian_of_constant_field_is_zero_and_of_varying_field_is_not():
    pts = torch.randn(300, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    graph = knn_graph(pts, 8)
    const = torch.full((300, 5), 0.37, dtype=torch.float64)
    assert float(laplacian_loss(const, graph)) < 1e-28
    # A linear field has a non-zero uniform Laplacian on an irregular graph; explicit formula check.
    field = pts @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    expected = torch.stack([field[i] - field[graph[i]].mean() for i in range(300)])
    assert torch.allclose(laplacian(field, graph), expected)
    assert float(laplacian_loss(field, graph)) > 1e-3
    assert float(KnnLaplacian(graph).loss(const)) < 1e-28


@pytest.mark.parametrize("n, k", [(300, 8), (5, 8)])  # (5, 8): rows repeat their farthest neighbour
def test_sparse_laplacian_matches_its_gather_twin_with_the_same_upstream_gradient(n, k):
    gen = torch.Generator().manual_seed(n)
    graph = knn_graph(torch.randn(n, 3, generator=gen), k)
    op = KnnLaplacian(graph)
    for shape in [(n, 7), (n,), (n, 2, 3)]:
        values = torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
        upstream = torch.randn(*shape, dtype=torch.float64, generator=gen)
        out, ref = op(values), laplacian(values, graph)
        assert out.shape == ref.shape == values.shape
        assert torch.allclose(out, ref, atol=1e-12)
        (grad,) = torch.autograd.grad(out, values, upstream)
        (grad_ref,) = torch.autograd.grad(ref, values, upstream)
        assert torch.allclose(grad, grad_ref, atol=1e-12)
        assert torch.allclose(op.loss(values), laplacian_loss(values, graph), atol=1e-12)
    values = torch.randn(n, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: op(v), (values,))
    with pytest.raises(ValueError, match="rows"):
        op(torch.zeros(n + 1, 3))


def test_avatar_rebuilds_its_sparse_laplacian_when_the_graph_changes():
    avatar = _small_avatar()
    avatar.rebuild_graph()
    first = avatar.graph_laplacian
    assert avatar.graph_laplacian is first  # cached
    avatar.gaussians.resize(len(avatar.gaussians) - 3)
    avatar.rebuild_graph()
    second = avatar.graph_laplacian
    assert second is not first and second.neighbors.shape[0] == len(avatar.gaussians)


# ------------------------------------------------------------------------------------------ ADC
def _cloud(n=64, latent_dim=4, sh_degree=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    cloud = CanonicalGaussians(n, 3, sh_degree, latent_dim)
    with torch.no_grad():
        cloud.means.copy_(torch.randn(n, 3, generator=g))
        cloud.quats.copy_(torch.randn(n, 4, generator=g))
        cloud.log_scales.copy_(math.log(0.005) + torch.rand(n, 3, generator=g) * 3)  # 0.005 .. 0.1
        cloud.opacity_logits.copy_(torch.randn(n, generator=g))
        cloud.colors.copy_(torch.randn(n, 3, generator=g))
        cloud.sh_rest.copy_(torch.randn(n, 8, 3, generator=g))
        cloud.latents.copy_(torch.randn(n, latent_dim, generator=g))
    return cloud


def _adam_with_state(cloud):
    opt = torch.optim.Adam([{"params": [p], "lr": 1e-3} for p in cloud.per_gaussian().values()])
    loss = sum((p * torch.randn_like(p)).sum() for p in cloud.per_gaussian().values())
    loss.backward()
    opt.step()
    return opt


def test_densify_keeps_params_optimizer_state_and_stats_consistent():
    cloud = _cloud()
    opt = _adam_with_state(cloud)
    n = len(cloud)
    old = {k: v.detach().clone() for k, v in cloud.per_gaussian().items()}
    old_state = {k: {s: opt.state[p][s].clone() for s in ("exp_avg", "exp_avg_sq")}
                 for k, p in cloud.per_gaussian().items()}
    # Tag every Gaussian with its original index in latents[:, 0] to follow rows through ADC.
    with torch.no_grad():
        cloud.latents[:, 0] = torch.arange(n, dtype=torch.float32)
    old["latents"][:, 0] = torch.arange(n, dtype=torch.float32)
    stats = GradientStats(n)
    grads = torch.zeros(n, 2)
    grads[::3, 0] = 1e-2  # every third Gaussian is "under-reconstructed"
    stats.update(grads, torch.ones(n, dtype=torch.int32), 2, 2)
    with torch.no_grad():
        cloud.opacity_logits[1] = -10.0  # transparent -> pruned (1 is not a multiple of 3)
    extent = 1.0
    small = cloud.scales().max(-1).values <= 0.02 * extent
    high = torch.zeros(n, dtype=torch.bool)
    high[::3] = True
    result = densify_and_prune(cloud, opt, stats, grad_threshold=1e-3, extent=extent, percent_dense=0.02,
                               prune_opacity=0.005, max_scale_frac=1.0, max_gaussians=1000,
                               generator=torch.Generator().manual_seed(0))
    assert result.cloned == int((high & small).sum()) and result.split == int((high & ~small).sum())
    assert result.pruned == 1
    m = len(cloud)
    assert m == n - 1 + result.cloned + result.split
    tags = cloud.latents[:, 0].detach().round().long()
    assert 1 not in tags.tolist()
    params = cloud.per_gaussian()
    group_params = [p for g in opt.param_groups for p in g["params"]]
    for name, p in params.items():
        assert p.shape[0] == m, name
        assert any(p is q for q in group_params), f"{name} not in the optimiser"
        for s in ("exp_avg", "exp_avg_sq"):
            assert opt.state[p][s].shape == p.shape
    # Kept originals: identical parameters and Adam moments; new rows: zero moments.
    first = {}
    for row, tag in enumerate(tags.tolist()):
        first.setdefault(tag, row)
    for row, tag in enumerate(tags.tolist()):
        is_new = first[tag] != row or bool(high[tag] & ~small[tag])
        for name, p in params.items():
            for s in ("exp_avg", "exp_avg_sq"):
                expected = torch.zeros_like(old_state[name][s][tag]) if is_new else old_state[name][s][tag]
                assert torch.equal(opt.state[p][s][row], expected), (name, s, row)
            if name not in ("means", "log_scales") or not bool(high[tag] & ~small[tag]):
                if name == "latents":
                    assert torch.equal(p[row, 1:], old[name][tag, 1:])
                else:
                    assert torch.equal(p[row], old[name][tag]), (name, row)
        if bool(high[tag] & ~small[tag]):  # split child: shrunk by 1.6
            assert torch.allclose(params["log_scales"][row], old["log_scales"][tag] - math.log(1.6))
    assert stats.grad_sum.shape == (m,) and float(stats.count[first[2]]) == 1.0
    # The optimiser still steps with the new shapes.
    loss = sum(p.sum() for p in params.values())
    loss.backward()
    opt.step()


def test_densify_respects_the_cap_and_prefers_large_gradients():
    cloud = _cloud(n=50)
    opt = _adam_with_state(cloud)
    stats = GradientStats(50)
    grads = torch.zeros(50, 2)
    grads[:, 0] = torch.linspace(1e-2, 2e-2, 50)
    stats.update(grads, torch.ones(50, dtype=torch.int32), 2, 2)
    with torch.no_grad():
        cloud.opacity_logits.fill_(2.0)
    before = cloud.means.detach().clone()
    densify_and_prune(cloud, opt, stats, grad_threshold=1e-3, extent=1.0, percent_dense=1.0,
                      prune_opacity=0.005, max_scale_frac=10.0, max_gaussians=55)
    assert len(cloud) == 55
    # percent_dense=1 -> all clones; the 5 with the largest gradients (rows 45..49) were cloned.
    assert torch.equal(cloud.means[50:], before[45:50])


def test_opacity_reset_caps_opacity_and_clears_its_moments():
    cloud = _cloud()
    opt = _adam_with_state(cloud)
    reset_opacity(cloud, opt, 0.01)
    assert float(cloud.opacities().detach().max()) <= 0.01 + 1e-6
    assert float(opt.state[cloud.opacity_logits]["exp_avg"].abs().max()) == 0.0


def test_avatar_graph_and_optimizer_follow_densification():
    cfg = AvatarConfig(num_init_gaussians=40, max_gaussians=200, latent_dim=4, sh_degree=1, detail_hidden=8,
                       detail_layers=1, scratch_field_hidden=8, scratch_field_layers=1, knn_k=4)
    avatar = NPGAAvatar(cfg, None, exp_dim=3)
    with torch.no_grad():
        avatar.gaussians.means.copy_(torch.randn(40, 3))
        avatar.gaussians.log_scales.fill_(math.log(0.001))
        avatar.gaussians.opacity_logits.fill_(1.0)
    avatar.rebuild_graph()
    _, tcfg = preset("tiny")
    opt = build_optimizer(avatar, tcfg)
    stats = GradientStats(40)
    stats.update(torch.ones(40, 2), torch.ones(40, dtype=torch.int32), 2, 2)
    densify_and_prune(avatar.gaussians, opt, stats, grad_threshold=1e-3, extent=1.0, percent_dense=0.01,
                      prune_opacity=0.005, max_scale_frac=1.0, max_gaussians=200)
    avatar.rebuild_graph()
    assert len(avatar.gaussians) == 80 and avatar.neighbors.shape == (80, 4)
    assert torch.equal(avatar.neighbors, knn_graph(avatar.gaussians.means, 4))
    names = {g["name"]: g["params"][0] for g in opt.param_groups if len(g["params"]) == 1}
    for name in ("means", "quats", "log_scales", "opacity_logits", "colors", "sh_rest", "latents"):
        assert names[name] is getattr(avatar.gaussians, name)


# ---------------------------------------------------------------------------------- deformation
def test_rotation_helpers_agree_with_scipy():
    rots = Rotation.random(20, random_state=0)
    for r in rots:
        m = torch.tensor(r.as_matrix())
        q = rotmat_to_quat(m)
        assert torch.allclose(quat_to_rotmat(q), m, atol=1e-12)
    a, b = Rotation.random(2, random_state=1)
    qa = torch.tensor(np.roll(a.as_quat(), 1))  # scipy is xyzw
    qb = torch.tensor(np.roll(b.as_quat(), 1))
    assert torch.allclose(quat_to_rotmat(quat_multiply(qa, qb)), torch.tensor((a * b).as_matrix()), atol=1e-12)


def _small_avatar(**overrides):
    base = dict(num_init_gaussians=30, max_gaussians=60, latent_dim=4, sh_degree=1, detail_hidden=16,
                detail_layers=2, scratch_field_hidden=16, scratch_field_layers=2, knn_k=4)
    base.update(overrides)
    avatar = NPGAAvatar(AvatarConfig(**base), None, exp_dim=5)
    with torch.no_grad():
        g = avatar.gaussians
        g.means.copy_(torch.randn(30, 3))
        g.quats.copy_(torch.randn(30, 4))
        g.log_scales.copy_(torch.randn(30, 3) - 3)
        g.colors.copy_(torch.randn(30, g.colors.shape[1]))
        if "latents" in g.names:
            g.latents.copy_(torch.randn(30, g.latent_dim))
    return avatar


def test_rigid_pose_is_applied_after_deformation():
    torch.manual_seed(0)
    avatar = _small_avatar(static=True)
    rot = torch.tensor(Rotation.random(random_state=3).as_matrix(), dtype=torch.float32)
    trans = torch.tensor([0.1, -0.2, 0.3])
    out = avatar.gaussians_for_frame(torch.randn(5), rot, trans, 0.25)
    g = avatar.gaussians
    assert torch.allclose(out["means"], 0.25 * g.means @ rot.T + trans, atol=1e-6)
    assert torch.allclose(out["scales"], 0.25 * g.scales(), atol=1e-7)
    world_rot = quat_to_rotmat(out["quats"])
    assert torch.allclose(world_rot, rot @ quat_to_rotmat(g.quats), atol=1e-5)
    assert out["sh_degree"] == 1 and out["colors"].shape == (30, 4, 3)


def test_untrained_detail_network_and_lifting_change_nothing():
    torch.manual_seed(0)
    avatar = _small_avatar()
    z = torch.randn(5)
    with torch.no_grad():  # give F a non-trivial motion so the check is meaningful
        avatar.field.mlp.out.weight.normal_(0, 0.1)
    moved = avatar.gaussians_for_frame(z, torch.eye(3), torch.zeros(3), 1.0)
    x = avatar.gaussians.means
    expected = avatar.field(x, z, features=avatar.gaussians.latents)
    assert torch.allclose(moved["means"], expected, atol=1e-6)   # G's last layer starts at zero
    assert torch.allclose(moved["opacities"], avatar.gaussians.opacities())
    assert not torch.allclose(expected, x)
    # Gradients reach F, G, latents and every Gaussian parameter.
    loss = sum(v.sum() for k, v in moved.items() if isinstance(v, torch.Tensor))
    loss = loss + avatar.deform(FrameCode(z, torch.eye(3), torch.zeros(3), 1.0)).dynamics.pow(2).sum()
    loss.backward()
    assert avatar.gaussians.latents.grad is not None and avatar.detail.mlp.out.weight.grad.abs().sum() > 0


def test_detail_network_sees_fs_displacement_or_the_code_as_configured():
    """A deformation-conditioned G changes with z only through F's displacement of each Gaussian
    (where F does not move a Gaussian, a new code changes nothing G adds there); a
    code-conditioned G changes with z even where F is still."""
    from npga_taichi.avatar.detail_network import DEFORMATION_SCALE, fourier_features

    z0, z1 = torch.randn(5), torch.randn(5)
    frame = lambda z: FrameCode(z, torch.eye(3), torch.zeros(3), 1.0)  # noqa: E731
    for conditioning in ("deformation", "code"):
        torch.manual_seed(0)
        avatar = _small_avatar(detail_conditioning=conditioning)
        with torch.no_grad():
            avatar.detail.mlp.out.weight.normal_(0, 0.1)  # a trained G: its output depends on its inputs
        still = [avatar.deform(frame(z)).means for z in (z0, z1)]  # F is the identity at init
        assert torch.equal(still[0], still[1]) == (conditioning == "deformation")
    # with F moving the Gaussians, G's input is exactly that motion (scaled, detached)
    with torch.no_grad():
        avatar_d = _small_avatar(detail_conditioning="deformation")
        avatar_d.field.mlp.out.weight.normal_(0, 0.1)
        avatar_d.detail.mlp.out.weight.normal_(0, 0.1)
    g = avatar_d.gaussians
    moved = avatar_d.field(g.means, z1, features=g.latents)
    point = torch.cat([fourier_features(g.means, avatar_d.config.detail_pos_freqs), g.latents], dim=-1)
    inputs = torch.cat([point, DEFORMATION_SCALE * (moved - g.means)], dim=-1)
    at_rest = torch.cat([point, torch.zeros_like(moved)], dim=-1)  # G relative to rest: no displacement
    d_means = (avatar_d.detail.mlp(inputs, None) - avatar_d.detail.mlp(at_rest, None))[:, :3]
    posed = avatar_d.deform(frame(z1))
    assert torch.allclose(posed.means, moved + d_means, atol=1e-6)
    assert not torch.allclose(posed.means, avatar_d.deform(frame(z0)).means)
    # G does not push F: F's parameters get no gradient through G's input
    avatar_d.zero_grad()
    avatar_d.detail(g.means, g.latents, None, moved - g.means)["d_means"].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in avatar_d.field.parameters())


def test_runs_saved_before_detail_conditioning_existed_load_with_the_code_conditioned_g_they_had():
    data = AvatarConfig().to_dict()
    del data["detail_conditioning"]
    assert AvatarConfig.from_dict(data).detail_conditioning == "code"
    saved = AvatarConfig(detail_conditioning="deformation").to_dict()
    assert AvatarConfig.from_dict(saved).detail_conditioning == "deformation"
    with pytest.raises(ValueError, match="detail_conditioning"):
        AvatarConfig(detail_conditioning="pose").validate()


@pytest.mark.parametrize("conditioning", ["code", "deformation"])
def test_detail_network_relative_to_rest_is_zero_at_rest_and_its_difference_elsewhere(conditioning):
    torch.manual_seed(0)
    avatar = _small_avatar(detail_conditioning=conditioning, detail_relative_to_rest=True)
    plain = _small_avatar(detail_conditioning=conditioning, detail_relative_to_rest=False)
    with torch.no_grad():
        avatar.field.mlp.out.weight.normal_(0, 0.1)  # F moves the Gaussians for a non-zero code
        avatar.detail.mlp.out.weight.normal_(0, 0.1)  # a trained G: not zero anywhere
        avatar.detail.mlp.out.bias.normal_(0, 0.1)
        plain.load_state_dict(avatar.state_dict())
    g = avatar.gaussians
    rest = torch.zeros(5)
    moved = avatar.field(g.means, rest, features=g.latents)
    # rest: a zero code, or no displacement from F; there every output of G is zero
    rest_inputs = (rest, None) if conditioning == "code" else (None, torch.zeros_like(g.means))
    for name, value in avatar.detail(g.means, g.latents, *rest_inputs).items():
        assert torch.equal(value, torch.zeros_like(value)), name
    # the same weights unconstrained are not zero at rest, so the zero above is the subtraction
    assert plain.detail(g.means, g.latents, *rest_inputs)["d_colors"].abs().min() > 0
    z = torch.randn(5)
    code = None if conditioning == "deformation" else z
    deformation = (avatar.field(g.means, z, features=g.latents) - g.means) if conditioning == "deformation" else None
    relative = avatar.detail(g.means, g.latents, code, deformation)
    unconstrained = plain.detail(g.means, g.latents, code, deformation)
    zero_deformation = None if deformation is None else torch.zeros_like(deformation)
    at_rest = plain.detail(g.means, g.latents, None if code is None else torch.zeros(5), zero_deformation)
    for name in relative:
        assert torch.allclose(relative[name], unconstrained[name] - at_rest[name], atol=1e-6), name
    # the whole avatar at rest (zero code, no eye closure, no part motion) is F's motion alone
    frame = FrameCode(rest, torch.eye(3), torch.zeros(3), 1.0)
    posed = avatar.deform(frame)
    if conditioning == "code":
        assert torch.allclose(posed.means, moved, atol=1e-6)
        assert torch.allclose(posed.colors, g.colors, atol=1e-6)
        assert not torch.allclose(plain.deform(frame).means, moved, atol=1e-4)
    # gradients reach G's weights through the difference
    avatar.zero_grad()
    avatar.deform(FrameCode(z, torch.eye(3), torch.zeros(3), 1.0)).means.sum().backward()
    assert avatar.detail.mlp.point_in.weight.grad.abs().sum() > 0
    # checkpoints keep the setting and G
    with torch.no_grad():
        restored = avatar_from_state(avatar_state(avatar), "test")
        assert restored.detail.relative_to_rest and not avatar_from_state(avatar_state(plain), "test").detail.relative_to_rest
        assert torch.equal(restored.deform(frame).means, avatar.deform(frame).means)


def test_detail_code_noise_reaches_g_alone():
    # The trainer's augmentation: G sees z + noise, F (the prior's motion) the tracked z.
    torch.manual_seed(0)
    avatar = _small_avatar()
    with torch.no_grad():
        avatar.field.mlp.out.weight.normal_(0, 0.1)
        avatar.detail.mlp.out.weight.normal_(0, 0.1)
    g, z, noise = avatar.gaussians, torch.randn(5), 0.3 * torch.randn(5)
    pose = (torch.eye(3), torch.zeros(3), 1.0)
    with torch.no_grad():
        noisy = avatar.deform(FrameCode(z, *pose), noise)
        g_saw = avatar.deform(FrameCode(z + noise, *pose))
        for name in noisy.detail:
            assert torch.equal(noisy.detail[name], g_saw.detail[name]), name
        f_part = noisy.means - noisy.detail["d_means"]
        assert torch.allclose(f_part, avatar.field(g.means, z, features=g.latents), atol=1e-6)
        assert not torch.allclose(f_part, avatar.field(g.means, z + noise, features=g.latents), atol=1e-4)
        assert torch.equal(avatar.deform(FrameCode(z, *pose), torch.zeros(5)).means, avatar.deform(FrameCode(z, *pose)).means)


def test_configs_saved_before_a_field_existed_load_as_they_were_trained():
    data = TrainConfig().to_dict()
    del data["detail_code_noise"]
    assert TrainConfig().detail_code_noise > 0 and TrainConfig.from_dict(data).detail_code_noise == 0
    assert TrainConfig.from_dict(TrainConfig(detail_code_noise=0.2).to_dict()).detail_code_noise == 0.2
    with pytest.raises(ValueError, match="detail_code_noise"):
        TrainConfig(detail_code_noise=-1).validate()


def test_runs_saved_before_g_relative_to_rest_load_with_the_unconstrained_g_they_had():
    assert AvatarConfig().detail_relative_to_rest is True
    data = AvatarConfig().to_dict()
    del data["detail_relative_to_rest"]
    assert AvatarConfig.from_dict(data).detail_relative_to_rest is False
    saved = AvatarConfig(detail_relative_to_rest=True).to_dict()
    assert AvatarConfig.from_dict(saved).detail_relative_to_rest is True
    with pytest.raises(ValueError, match="per-frame input"):
        DetailNetwork(latent_dim=4, code_dim=0, color_dim=3, hidden=8, layers=2, relative_to_rest=True)


def test_scratch_field_is_identity_at_init_and_rejects_missing_features():
    f = ScratchForwardField(exp_dim=4, feature_dim=3, hidden=8, layers=2)
    x = torch.randn(10, 3)
    assert torch.equal(f(x, torch.randn(4), torch.randn(10, 3)), x)
    with pytest.raises(ValueError, match="features"):
        f(x, torch.randn(4))


def test_screen_cnn_starts_as_alpha_compositing_over_background():
    cnn = ScreenCNN(6, hidden=8, layers=2, background=(1.0, 0.5, 0.0))
    feats = torch.randn(1, 6, 9, 7)
    out = cnn(feats)
    assert out.shape == (1, 3, 9, 7)
    assert torch.allclose(out, feats[:, :3] + torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1))


def test_initialize_sets_colours_scales_and_opacity():
    cloud = CanonicalGaussians(1, 3, 3, 4)
    pts = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [0, 0.2, 0], [0, 0, 0.3]])
    rgb = torch.tensor([[0.2, 0.4, 0.6]] * 4)
    cloud.initialize(pts, rgb, init_opacity=0.1, latent_std=0.0)
    assert len(cloud) == 4 and cloud.sh_rest.shape == (4, 15, 3)
    assert torch.allclose(0.5 + SH_C0 * cloud.colors, rgb, atol=1e-6)
    assert torch.allclose(cloud.opacities(), torch.full((4,), 0.1))
    # Point 0's three neighbours are at 0.1, 0.2, 0.3: spacing 0.2.
    assert torch.allclose(cloud.scales()[0], torch.full((3,), 0.2), atol=1e-6)


def test_initial_gaussians_reach_down_the_neck_only_as_far_as_asked():
    """The capture's cameras see the neck below F's distillation box (the back of the neck in a
    profile camera went missing without Gaussians started there): init_neck_extension lowers
    the sampled box's floor, on the shipped prior's surface."""
    from npga_taichi.avatar.model import create_avatar
    from npga_taichi.prior.distill import canonical_box
    from npga_taichi.prior.model import load_prior
    from npga_taichi.prior.pretrained import SHIPPED_PRIOR

    prior = load_prior(SHIPPED_PRIOR)
    z_geo, z_app = torch.zeros(prior.config.lat_dim_geo), torch.zeros(prior.config.lat_dim_app)
    floor = float(canonical_box(prior, z_geo)[0][1])
    lows = {}
    for extension in (0.0, 0.25):
        cfg = AvatarConfig(num_init_gaussians=400, max_gaussians=800, latent_dim=4, sh_degree=0,
                           detail_hidden=16, detail_layers=2, init_neck_extension=extension)
        y = create_avatar(cfg, prior, z_geo, z_app, exp_dim=4, field=None).gaussians.means[:, 1]
        assert float(y.min()) >= floor - extension - 1e-4
        lows[extension] = int((y < floor - 0.1).sum())
    assert lows[0.0] == 0 and lows[0.25] >= 10
    with pytest.raises(ValueError, match="init_neck_extension"):
        AvatarConfig(init_neck_extension=-0.1).validate()


# --------------------------------------------------------------------------- config, checkpoint
def test_config_round_trip_and_validation():
    a, t = preset("tiny")
    a2, t2, extra = configs_from_json(configs_to_json(a, t, {"data": "x"}))
    assert a2 == a and t2 == t and extra == {"data": "x"}
    with pytest.raises(ValueError, match="sh_degree"):
        AvatarConfig(sh_degree=4).validate()
    with pytest.raises(ValueError, match="unknown AvatarConfig fields"):
        configs_from_json('{"avatar": {"bogus": 1}, "train": {}}')


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint({"step": 1, "x": torch.arange(5)}, path)

    def exploding_save(obj, target):
        with open(target, "wb") as handle:
            handle.write(b"partial garbage")
        raise KeyboardInterrupt  # the process "dies" halfway through writing

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="lacks keys"):
        load_checkpoint(path, required_keys=("avatar",))
