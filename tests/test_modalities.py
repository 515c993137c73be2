import pytest
import torch

from dmrnet.checks import check_present
from dmrnet.errors import DataError, UnknownNameError
from dmrnet.modalities import (
    CombinationSampler,
    ModalitySet,
    availability_weights,
)

VIEWS = ModalitySet(("rgb", "depth", "ir"))


def test_combinations_are_all_nonempty_subsets_ordered_by_size():
    combos = VIEWS.combinations()
    assert len(combos) == 7
    assert combos[:3] == [(0,), (1,), (2,)]
    assert combos[-1] == (0, 1, 2) == VIEWS.full
    assert len(ModalitySet(tuple("abcdef")).combinations()) == 63


def test_parse_and_format_round_trip_in_modality_order():
    assert VIEWS.parse("ir+rgb") == (0, 2)
    assert VIEWS.format((2, 0)) == "rgb+ir"
    for combo in VIEWS.combinations():
        assert VIEWS.parse(VIEWS.format(combo)) == combo


@pytest.mark.parametrize("text", ["rgb+thermal", "", "rgb++ir", "rgb+rgb"])
def test_parse_rejects_bad_combinations_naming_them(text):
    with pytest.raises(UnknownNameError, match="combination|modality"):
        VIEWS.parse(text)


def test_unknown_modality_error_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="rgb\\+depth\\+ir"):
        VIEWS.parse("thermal")


def test_combination_index_matches_combinations_order():
    masks = VIEWS.masks(VIEWS.combinations())
    assert VIEWS.combination_index(masks).tolist() == list(range(7))
    assert VIEWS.combination_index(torch.zeros(1, 3, dtype=torch.bool)).tolist() == [-1]


def test_check_present_names_the_empty_sample():
    present = torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    with pytest.raises(DataError, match="sample 1"):
        check_present(present, "train.npz")


def test_uniform_sampler_is_uniform_over_available_subsets():
    generator = torch.Generator().manual_seed(0)
    sampler = CombinationSampler(VIEWS, "uniform")
    present = torch.ones(21000, 3, dtype=torch.bool)
    present[:7000, 2] = False  # a third of the samples really lack ir
    mask = sampler.sample(present, generator)
    assert not (mask & ~present).any()
    assert mask.any(-1).all()
    index = VIEWS.combination_index(mask[7000:])
    counts = torch.bincount(index, minlength=7).float() / index.numel()
    assert torch.allclose(counts, torch.full((7,), 1 / 7), atol=0.015)
    # Samples without ir: uniform over rgb, depth, rgb+depth.
    index = VIEWS.combination_index(mask[:7000])
    counts = torch.bincount(index, minlength=7).float() / index.numel()
    assert torch.allclose(counts[[0, 1, 3]], torch.full((3,), 1 / 3), atol=0.02)
    assert counts[[2, 4, 5, 6]].sum() == 0


def test_independent_sampler_drops_with_p_and_never_empties():
    generator = torch.Generator().manual_seed(1)
    sampler = CombinationSampler(VIEWS, "independent", p=0.3)
    present = torch.ones(20000, 3, dtype=torch.bool)
    mask = sampler.sample(present, generator)
    assert mask.any(-1).all()
    kept = mask.float().mean().item()
    # P(kept) = 0.7 plus the re-kept modality of all-dropped samples (0.3^3 / 3 each).
    assert abs(kept - (0.7 + 0.3**3 / 3)) < 0.01


def test_fixed_sampler_intersects_with_availability():
    sampler = CombinationSampler(VIEWS, "fixed", fixed=(0, 1))
    present = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    mask = sampler.sample(present)
    assert mask.tolist() == [[True, True, False], [False, True, False], [False, False, True]]


def test_availability_weights_sum_to_one_and_favour_large_sets_when_p_high():
    combos = VIEWS.combinations()
    weights = availability_weights(VIEWS, combos, 0.9)
    assert sum(weights) == pytest.approx(1.0)
    assert weights[-1] == max(weights)
    assert availability_weights(VIEWS, combos, 0.5) == pytest.approx([1 / 7] * 7)
