"""The one target-rank formula r(p) = floor(p d1 d2 / (d1 + d2)), clamped (paper E.1.1)."""
import itertools
import math

import pytest

from q3r.ranks import resolve_rank, target_rank

from tests.reference import target_rank_ref


def test_vit_tiny_example_from_the_paper():
    assert target_rank((192, 192), 0.2) == 19          # the paper's ViT-Tiny number
    assert target_rank((768, 192), 0.2) == 30          # fc1 of ViT-Tiny: floor(0.2*768*192/960)
    assert target_rank((192, 768), 0.2) == 30


@pytest.mark.parametrize("shape", [(2, 2), (3, 7), (12, 30), (30, 12), (20, 20), (192, 192),
                                   (576, 192), (1000, 2), (64, 4096)])
@pytest.mark.parametrize("p", [0.001, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.999, 1.0])
def test_formula_matches_reference(shape, p):
    d1, d2 = shape
    r = target_rank(shape, p)
    assert isinstance(r, int)
    assert r == target_rank_ref(d1, d2, p)
    assert 1 <= r <= min(d1, d2) - 1


def test_rank_r_factors_hold_at_most_p_of_the_numbers():
    for d1, d2, p in itertools.product((8, 30, 192), (8, 50, 768), (0.1, 0.2, 0.4, 1.0)):
        r = target_rank((d1, d2), p)
        unclamped = math.floor(p * d1 * d2 / (d1 + d2))
        if unclamped >= 1:
            assert r * (d1 + d2) <= p * d1 * d2 + 1e-9
            assert (r + 1) * (d1 + d2) > p * d1 * d2     # and it is the largest such rank


def test_clamps_at_both_ends():
    # lower end: the floor is 0, clamped up to 1
    assert math.floor(0.01 * 12 * 30 / 42) == 0
    assert target_rank((12, 30), 0.01) == 1
    assert target_rank((30, 12), 1e-6) == 1
    # upper end: never min(d1, d2) or more, even at p = 1 on the smallest / thinnest shapes
    assert target_rank((2, 2), 1.0) == 1
    assert target_rank((1000, 2), 1.0) == 1
    assert target_rank((2, 1000), 1.0) == 1
    assert target_rank((3, 3), 1.0) == 1
    assert target_rank((4, 4), 1.0) == 2
    for d1, d2 in itertools.product(range(2, 12), range(2, 12)):
        assert target_rank((d1, d2), 1.0) <= min(d1, d2) - 1


def test_leading_batch_dimensions_are_ignored():
    assert target_rank((5, 192, 192), 0.2) == 19


@pytest.mark.parametrize("bad", [0.0, -0.1, -1.0, 1.0000001, 1.5, 2.0, float("nan"), float("inf")])
def test_bad_fraction_raises_naming_the_value(bad):
    with pytest.raises(ValueError) as info:
        target_rank((20, 20), bad)
    assert repr(bad) in str(info.value) or str(bad) in str(info.value)


def test_bool_fraction_is_rejected():
    with pytest.raises(ValueError, match="True"):
        target_rank((20, 20), True)


def test_resolve_rank_int_and_fraction():
    assert resolve_rank((20, 30), 0.2) == target_rank_ref(20, 30, 0.2)
    assert resolve_rank((20, 30), 1) == 1
    assert resolve_rank((20, 30), 19) == 19
    for bad in (0, 20, 25, -3):
        with pytest.raises(ValueError, match=str(bad)):
            resolve_rank((20, 30), bad)


@pytest.mark.parametrize("shape", [(1, 5), (5, 1), (3, 1, 8)])
def test_a_side_under_two_is_refused_naming_the_matrix_shape(shape):
    with pytest.raises(ValueError) as info:
        target_rank(shape, 0.5)
    d1, d2 = shape[-2:]
    assert str(info.value) == f"a rank-regularized matrix needs both sides >= 2, but got shape={(d1, d2)}"


@pytest.mark.parametrize("flag", [True, False])
def test_resolve_rank_refuses_a_bool_naming_it(flag):
    """True is an int to isinstance: refused as a bool first, not taken as the absolute rank 1."""
    with pytest.raises(ValueError) as info:
        resolve_rank((20, 30), flag)
    assert str(info.value) == f"target rank must be a fraction in (0, 1] or an int >= 1, but got rank={flag}"


def test_resolve_rank_names_the_allowed_range_of_an_absolute_rank():
    with pytest.raises(ValueError) as info:
        resolve_rank((30, 20, 50), 25)
    assert str(info.value) == ("an absolute target rank must lie in [1, min(d1, d2) - 1] = [1, 19] "
                               "for shape (20, 50), but got rank=25")
