import pytest

from services.trainer.data.frames import evenly_spaced, select_frames


@pytest.mark.parametrize(
    ("mode", "frame_count", "interval", "expected"),
    [
        ("first", 24, 5, [0]),
        ("first", 1, 5, [0]),
        ("first", 0, 5, []),
        ("key_frames", 24, 5, [0, 6, 12, 18]),
        ("key_frames", 36, 5, [0, 9, 18, 27]),
        ("key_frames", 10, 5, [0, 2, 4, 6]),
        ("key_frames", 7, 5, [0, 1, 2, 3]),
        ("key_frames", 4, 5, [0, 1, 2, 3]),
        ("key_frames", 3, 5, [0, 1, 2]),
        ("key_frames", 2, 5, [0, 1]),
        ("key_frames", 1, 5, [0]),
        ("key_frames", 0, 5, []),
        ("interval", 24, 5, [0, 5, 10, 15, 20]),
        ("interval", 25, 5, [0, 5, 10, 15, 20]),
        ("interval", 26, 5, [0, 5, 10, 15, 20, 25]),
        ("interval", 5, 5, [0]),
        ("interval", 3, 1, [0, 1, 2]),
        ("all", 5, 5, [0, 1, 2, 3, 4]),
        ("all", 1, 5, [0]),
    ],
)
def test_documented_indices(mode, frame_count, interval, expected):
    assert select_frames(mode, frame_count, interval) == expected


@pytest.mark.parametrize(
    ("mode", "frame_count", "interval", "cap", "expected"),
    [
        ("all", 24, 5, 10, [0, 2, 4, 7, 9, 12, 14, 16, 19, 21]),
        ("all", 24, 5, 4, [0, 6, 12, 18]),
        ("interval", 24, 2, 5, [0, 4, 8, 14, 18]),
        ("key_frames", 24, 5, 2, [0, 12]),
        ("key_frames", 24, 5, 1, [0]),
        ("key_frames", 24, 5, 10, [0, 6, 12, 18]),
        ("first", 24, 5, 1, [0]),
    ],
)
def test_cap_keeps_an_evenly_spaced_subset(mode, frame_count, interval, cap, expected):
    assert select_frames(mode, frame_count, interval, cap) == expected


def test_cap_never_exceeded_and_indices_valid():
    for mode in ("first", "key_frames", "interval", "all"):
        for frame_count in range(0, 50):
            for cap in (1, 3, 10):
                got = select_frames(mode, frame_count, 3, cap)
                assert len(got) <= cap
                assert got == sorted(set(got))
                assert all(0 <= i < frame_count for i in got)
                if frame_count:
                    assert got[0] == 0


def test_evenly_spaced():
    assert evenly_spaced([1, 2, 3], None) == [1, 2, 3]
    assert evenly_spaced([1, 2, 3], 5) == [1, 2, 3]
    assert evenly_spaced(list(range(10)), 3) == [0, 3, 6]
    assert evenly_spaced(list(range(10)), 0) == []


@pytest.mark.parametrize(("mode", "interval"), [("sideways", 5), ("interval", 0)])
def test_rejects_bad_arguments(mode, interval):
    with pytest.raises(ValueError):
        select_frames(mode, 24, interval)
