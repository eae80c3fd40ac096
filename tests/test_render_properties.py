"""Property tests: our rasterizer equals the oracle (float64, forward and all gradients) on awkward
scenes: empty, all culled, behind / straddling the near plane, needles and pancakes, scales from
1e-6 to 1e2, opacities 0 and 1, image sizes that are not multiples of 16, 1 and 64 channels."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scenes import make_scene
from test_render import assert_matches_oracle

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def awkward_scenes(draw):
    n = draw(st.integers(0, 10))
    width = draw(st.integers(1, 40))
    height = draw(st.integers(1, 40))
    channels = draw(st.sampled_from([1, 3, 64]))
    seed = draw(st.integers(0, 10_000))
    scene = make_scene(n, max(width, 8), max(height, 8), seed=seed, channels=channels)
    g = torch.Generator().manual_seed(seed + 1)
    if n:
        # per-axis log10 scales anywhere in [-6, 2]: needles (one large axis), pancakes, dust, giants
        log10 = torch.empty(n, 3, dtype=torch.float64).uniform_(-6.0, 2.0, generator=g)
        scene["scales"] = 10.0 ** log10
        special = draw(st.lists(st.sampled_from(["none", "opacity0", "opacity1", "behind", "straddle", "near"]),
                                min_size=n, max_size=n))
        rot, trans = scene["viewmat"][:3, :3], scene["viewmat"][:3, 3]
        cam = scene["means"] @ rot.T + trans
        for i, kind in enumerate(special):
            if kind == "opacity0":
                scene["opacities"][i] = 0.0
            elif kind == "opacity1":
                scene["opacities"][i] = 1.0
            elif kind == "behind":
                cam[i, 2] = -cam[i, 2]
            elif kind == "straddle":  # centre just in front of the near plane, extent crossing it
                cam[i, 2] = 0.012
                scene["scales"][i] = 0.05
            elif kind == "near":  # centre between the camera and the near plane: culled
                cam[i, 2] = 0.005
        scene["means"] = (cam - trans) @ rot
    return scene, width, height


@SETTINGS
@given(awkward_scenes())
def test_awkward_scenes_match_oracle(case):
    scene, width, height = case
    assert_matches_oracle(scene, width, height)


@SETTINGS
@given(st.integers(0, 3), st.integers(0, 10_000), st.integers(1, 37), st.integers(1, 37))
def test_sh_scenes_match_oracle(degree, seed, width, height):
    scene = make_scene(8, max(width, 8), max(height, 8), seed=seed, sh_degree=degree, log_scale=-2.0)
    assert_matches_oracle(scene, width, height, sh_degree=degree)
