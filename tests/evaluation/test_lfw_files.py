"""pairs.txt parsing, the identification split and --limit subsets; checked on the real files when present."""

from __future__ import annotations

import pytest

from models.evaluation.lfw import (
    LfwImage,
    PairsFormatError,
    identification_split,
    limit_pairs,
    limit_split,
    list_images,
    parse_pairs,
    read_pairs,
)
from tests._ci import skip_or_fail_in_ci
from tests.conftest import LFW, SHARED

PAIRS = SHARED / "data" / "lfw-pairs.txt"

TWO_FOLDS = """2\t2
Ann\t1\t2
Ann\t1\t3
Ann\t1\tBob\t1
Ann\t2\tBob\t2
Cid\t1\t3
Cid\t2\t3
Cid\t1\tDee\t4
Dee\t2\tEve\t1
"""


def test_parse_pairs_reads_folds_kinds_and_image_numbers() -> None:
    pairs = parse_pairs(TWO_FOLDS)
    assert [(p.fold, p.same) for p in pairs] == [(0, True)] * 2 + [(0, False)] * 2 + [(1, True)] * 2 + [
        (1, False)
    ] * 2
    assert pairs[0].left == LfwImage("Ann", 1) and pairs[0].right == LfwImage("Ann", 2)
    assert pairs[7].left == LfwImage("Dee", 2) and pairs[7].right == LfwImage("Eve", 1)


def test_lfw_image_path_pads_the_number_to_four_digits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert LfwImage("Ann_Lee", 7).path(tmp_path) == tmp_path / "Ann_Lee" / "Ann_Lee_0007.jpg"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1"),
        ("2 1\nA 1 2\nA 1 B 1\n", "expected 2×1×2 = 4 pairs, got 2"),
        ("1 1\nA 1 B 2\nA 1 B 1\n", "line 2: a matched pair is 'name n1 n2'"),
        ("1 1\nA 1 2\nA 1 2\n", "line 3: a mismatched pair is 'name1 n1 name2 n2'"),
        ("1 1\nA one 2\nA 1 B 1\n", "line 2: image numbers must be integers"),
    ],
)
def test_parse_pairs_names_the_offending_line(text: str, message: str) -> None:
    with pytest.raises(PairsFormatError, match=message):
        parse_pairs(text)


def test_identification_split_puts_the_lowest_number_in_the_gallery() -> None:
    images = [LfwImage("A", 3), LfwImage("A", 1), LfwImage("A", 2), LfwImage("B", 5)]
    split = identification_split(images)
    assert split.gallery == (LfwImage("A", 1), LfwImage("B", 5))
    assert split.probes == (LfwImage("A", 2), LfwImage("A", 3))


def test_limit_pairs_keeps_every_fold_and_both_kinds() -> None:
    kept = limit_pairs(parse_pairs(TWO_FOLDS), 4)
    assert [(p.fold, p.same) for p in kept] == [(0, True), (0, False), (1, True), (1, False)]
    assert len(limit_pairs(parse_pairs(TWO_FOLDS), 1)) == 4  # at least one of each kind per fold


def test_limit_split_takes_probes_round_robin_over_people() -> None:
    images = [LfwImage("A", n) for n in range(1, 10)] + [LfwImage("B", n) for n in range(1, 4)]
    split = limit_split(identification_split(images), ["A", "B"], 4)
    assert split.gallery == (LfwImage("A", 1), LfwImage("B", 1))
    assert sorted({p.name for p in split.probes}) == ["A", "B"]
    assert len(split.probes) == 4


def test_the_real_pairs_file_has_ten_folds_of_300_matched_and_300_mismatched() -> None:
    if not PAIRS.is_file():
        skip_or_fail_in_ci(f"needs {PAIRS} (../shared)")
    pairs = read_pairs(PAIRS)
    assert len(pairs) == 6000
    assert {p.fold for p in pairs} == set(range(10))
    assert sum(p.same for p in pairs) == 3000


def test_the_real_lfw_split_has_5749_gallery_images_and_7484_probes() -> None:
    if not LFW.is_dir():
        skip_or_fail_in_ci(f"needs {LFW} (../shared)")
    split = identification_split(list_images(LFW))
    assert (len(split.gallery), len(split.probes)) == (5749, 7484)
