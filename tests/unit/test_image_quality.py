"""The download gate at its boundaries, the perceptual hash, and the near-duplicate index."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from dpe.image_quality import (
    DUPLICATE_DISTANCE,
    MIN_SHARPNESS,
    GateReason,
    NearDuplicates,
    Thresholds,
    gate,
    gate_and_hash,
    hamming,
    laplacian_variance,
    phash,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ImageEnhance
from dpe_testkit.pictures import blurred, encode, scene


def test_sharp_photo_passes_with_its_measurements() -> None:
    verdict = gate(encode(scene(1)))
    assert verdict.ok and verdict.reason is None
    assert (verdict.width, verdict.height) == (640, 480)
    assert verdict.sharpness > MIN_SHARPNESS


def test_gate_and_hash_from_one_decode_agree_with_each_alone() -> None:
    thresholds = Thresholds()
    for data in (encode(scene(1)), encode(blurred(scene(1))), encode(scene(2, (200, 200))), b"not a picture"):
        verdict, image_hash = gate_and_hash(data, thresholds)
        assert verdict == thresholds.check(data)
        assert image_hash == (phash(data) if verdict.ok else None)


def test_blurred_copy_is_refused_as_blurry() -> None:
    data = encode(blurred(scene(1)))
    assert len(data) > 20_000
    verdict = gate(data)
    assert verdict.reason is GateReason.blurry
    assert verdict.sharpness < MIN_SHARPNESS


@pytest.mark.parametrize(
    ("size", "ok"),
    [((512, 200), True), ((200, 512), True), ((511, 511), False), ((600, 600), True)],
)
def test_one_side_of_at_least_512_pixels_is_enough(size: tuple[int, int], ok: bool) -> None:
    verdict = gate(encode(scene(2, size)), min_bytes=0)
    assert verdict.ok is ok
    assert verdict.reason is (None if ok else GateReason.too_small)


def test_byte_limits_are_inclusive() -> None:
    data = encode(scene(3))
    assert gate(data, min_bytes=len(data)).ok
    assert gate(data, min_bytes=len(data) + 1).reason is GateReason.too_small
    assert gate(data, max_bytes=len(data)).ok
    assert gate(data, max_bytes=len(data) - 1).reason is GateReason.too_large


def test_sharpness_limit_is_inclusive() -> None:
    data = encode(scene(4))
    measured = gate(data).sharpness
    assert gate(data, min_sharpness=measured).ok
    assert gate(data, min_sharpness=measured + 1e-3).reason is GateReason.blurry


def test_default_limits_refuse_small_files() -> None:
    tiny = encode(scene(5, (640, 480)), "JPEG", quality=5)
    assert len(tiny) < 20_000
    assert gate(tiny).reason is GateReason.too_small


@pytest.mark.parametrize("data", [b"", b"not an image at all" * 2000, encode(scene(6))[:30_000]])
def test_undecodable_bytes_are_not_images(data: bytes) -> None:
    assert gate(data, min_bytes=0).reason is GateReason.not_an_image


def test_thresholds_carry_the_same_defaults_and_reject_nonsense() -> None:
    data = encode(scene(7))
    assert Thresholds().check(data) == gate(data)
    with pytest.raises(ValueError, match="max_bytes"):
        Thresholds(min_bytes=10, max_bytes=5)


def test_laplacian_variance_matches_a_direct_computation() -> None:
    gray = np.random.default_rng(0).integers(0, 256, (9, 11)).astype(float)
    values = [
        gray[y - 1, x] + gray[y + 1, x] + gray[y, x - 1] + gray[y, x + 1] - 4 * gray[y, x]
        for y in range(1, 8)
        for x in range(1, 10)
    ]
    assert laplacian_variance(gray) == pytest.approx(np.var(values), rel=1e-6)
    assert laplacian_variance(np.full((20, 20), 128.0)) == 0.0


def test_phash_is_stable_under_reencoding_resizing_and_brightening() -> None:
    picture = scene(8)
    original = phash(encode(picture))
    copies = [
        encode(picture),
        encode(picture, "JPEG", quality=60),
        encode(picture.resize((320, 240))),
        encode(ImageEnhance.Brightness(picture).enhance(1.1)),
        encode(picture, "WEBP", quality=70),
    ]
    assert [hamming(original, phash(copy)) <= DUPLICATE_DISTANCE // 2 for copy in copies] == [True] * len(copies)
    assert hamming(original, phash(copies[0])) == 0


def test_phash_tells_different_pictures_apart() -> None:
    hashes = [phash(encode(scene(seed))) for seed in range(10, 16)]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(distances) > 2 * DUPLICATE_DISTANCE
    assert all(0 <= value < 1 << 64 for value in hashes)


def test_phash_refuses_non_images() -> None:
    with pytest.raises(ValueError, match="not a readable image"):
        phash(b"\x89PNG broken")


def _flip(value: int, bits: int, rng: random.Random) -> int:
    for bit in rng.sample(range(64), bits):
        value ^= 1 << bit
    return value


@pytest.mark.slow
def test_near_duplicates_finds_copies_among_20k_hashes_far_faster_than_a_scan() -> None:
    """The index answers without comparing a probe with every stored hash: measured against a
    linear scan in the same run, so the machine's load cancels out."""
    rng = random.Random(0)
    index = NearDuplicates(DUPLICATE_DISTANCE)
    stored = [rng.getrandbits(64) for _ in range(20_000)]
    for number, value in enumerate(stored):
        index.add(f"image-{number}", value)
    probes = list(range(0, 20_000, 10))
    found = [index.match(_flip(stored[n], rng.randint(0, DUPLICATE_DISTANCE), rng)) for n in probes]
    strangers = [rng.getrandbits(64) for _ in range(200)]
    started = time.perf_counter()
    assert [index.match(value) for value in strangers] == [None] * 200
    indexed = time.perf_counter() - started
    started = time.perf_counter()
    assert not [value for value in strangers if any(hamming(value, other) <= DUPLICATE_DISTANCE for other in stored)]
    scanned = time.perf_counter() - started
    assert found == [f"image-{n}" for n in probes]
    assert len(index) == 20_000
    assert scanned / indexed > 5.0


def test_nearest_match_wins_and_ties_go_to_the_earliest() -> None:
    index = NearDuplicates(4)
    index.add("far", 0b1111)
    index.add("near", 0b0001)
    index.add("near-too", 0b0001)
    assert index.match(0) == "near"
    assert index.match(1 << 40 | 1 << 41 | 1 << 42 | 1 << 43 | 1 << 44) is None


@pytest.mark.parametrize(("threshold", "bands"), [(-1, 4), (64, 4), (8, 0), (8, 65), (16, 1)])
def test_near_duplicates_rejects_impossible_settings(threshold: int, bands: int) -> None:
    with pytest.raises(ValueError):
        NearDuplicates(threshold, bands=bands)


@settings(max_examples=60, deadline=None)
@given(
    stored=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40),
    flips=st.lists(st.integers(0, 63), max_size=14),
    pick=st.integers(0, 39),
    setting=st.sampled_from([1, 2, 3, 4, 5, 8]).flatmap(lambda b: st.tuples(st.integers(0, 3 * b - 1), st.just(b))),
)
def test_near_duplicates_agrees_with_a_full_scan(
    stored: list[int], flips: list[int], pick: int, setting: tuple[int, int]
) -> None:
    threshold, bands = setting
    index = NearDuplicates(threshold, bands=bands)
    for number, value in enumerate(stored):
        index.add(str(number), value)
    query = stored[pick % len(stored)]
    for bit in flips:
        query ^= 1 << bit
    distances = [(hamming(query, value), number) for number, value in enumerate(stored)]
    best = min(distances)
    expected = str(best[1]) if best[0] <= threshold else None
    assert index.match(query) == expected
