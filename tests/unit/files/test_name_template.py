"""``name_template`` (SPEC §2, §4): the outputs' stem from {stem}, {ext} and {folder}.

The collision and 255-byte rules apply after templating.
"""

from __future__ import annotations

from itertools import islice

from bgsyncd.files import outputs


def test_the_template_makes_the_stem_and_the_collision_rule_follows() -> None:
    got = list(islice(outputs.output_candidates("d/a.jpg", "png", "{stem}-nobg", "shop"), 4))
    assert got == ["d/a-nobg.png", "d/a.jpg-nobg.png", "d/a.jpg-nobg~2.png", "d/a.jpg-nobg~3.png"]


def test_every_field_is_filled_in() -> None:
    first = next(outputs.output_candidates("x/Photo 1.JPEG", "webp", "{folder}_{stem}_{ext}", "p"))
    assert first == "x/p_Photo 1_JPEG.webp"
    # No extension: {ext} is empty, and the candidates still never repeat.
    three = list(islice(outputs.output_candidates("README", "png", "{stem}.{ext}", "p"), 3))
    assert three == ["README..png", "README.~2.png", "README.~3.png"]


def test_a_templated_name_too_long_is_cut_and_tagged_after_templating() -> None:
    rel = "a" * 240 + ".jpg"
    for candidate in islice(outputs.output_candidates(rel, "png", "{stem}-{folder}", "x" * 40), 5):
        assert len(candidate.encode("utf-8")) <= 255
    first, second = islice(outputs.output_candidates(rel, "png", "{stem}-{folder}", "x" * 40), 2)
    assert first != second and first.endswith(".png")


def test_the_default_template_gives_0_2_s_names() -> None:
    for rel in ("dir/a.jpg", "d/README", "é" * 127 + ".jpg"):
        default = list(islice(outputs.output_candidates(rel, "png"), 4))
        assert list(islice(outputs.output_candidates(rel, "png", "{stem}", "f"), 4)) == default
