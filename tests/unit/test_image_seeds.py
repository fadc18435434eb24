"""The engine tests' image seeds (tests/engine/harness.py): a function of the test's id
only, so a test sends the same images alone, in a subset or in any order."""

from tests.engine import harness


def seeds(test_id: str, n: int = 5) -> list[int]:
    harness.seed_images(test_id)
    return [harness.fresh_seed() for _ in range(n)]


def test_a_test_gets_the_same_seeds_whatever_ran_before():
    first = seeds("tests/engine/test_x.py::test_a[qwen3.5]")
    seeds("tests/engine/test_x.py::test_b[qwen3.5]", 700)  # another test, many images
    assert seeds("tests/engine/test_x.py::test_a[qwen3.5]") == first
    assert len(set(first)) == len(first)


def test_two_tests_never_share_an_image():
    ids = [f"tests/engine/test_x.py::test_{name}[{family}]" for name in "abcdefgh" for family in ("llava-1.5", "qwen3.5", "gemma3")]
    ranges = [seeds(i, 1000) for i in ids]
    assert len({s for r in ranges for s in r}) == 1000 * len(ids)
