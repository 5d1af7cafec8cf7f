"""Finishing settings (SPEC §9): presets, renditions, margins, canvases, name templates.

``load_settings`` on real files; each refusal is one line naming the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bgsyncd.config.finishing import (
    Canvas,
    Margin,
    check_template,
    parse_canvas,
    parse_margin,
)
from bgsyncd.config.loading import render_settings
from bgsyncd.config.schema import Settings
from bgsyncd.errors import ConfigError
from bgsyncd.files.names import fill_template
from bgsyncd.service.backends import load_settings
from tests.support.configs import FOLDER

pytestmark = pytest.mark.usefixtures("clean_env")


def load(path: Path, text: str) -> Settings:
    path.write_text(text, encoding="utf-8")
    return load_settings(path)


def error(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, create_folders=False)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_the_finishing_defaults_are_the_spec_s(cfg: Path) -> None:
    (folder,) = load(cfg, FOLDER).folders
    f = folder.finishing()
    assert (f.edges, f.name_template, f.crop, f.shadow) == ("refine", "{stem}", False, False)
    assert (f.margin, f.canvas, f.align, f.max_side) == (Margin(0, False), None, "center", 0)
    assert folder.rendition == () and not f.reshapes


def test_amazon_fills_in_exactly_the_spec_s_keys(cfg: Path) -> None:
    (folder,) = load(cfg, FOLDER + 'preset = "amazon"\n').folders
    assert (folder.crop, folder.canvas, folder.margin) == (True, "2000x2000", "7.5%")
    assert (folder.align, folder.background, folder.format) == ("center", "#ffffff", "jpeg")
    f = folder.finishing()
    assert f.canvas == Canvas(2000, 2000, fixed=True) and f.margin == Margin(7.5, True)


def test_shopify_fills_in_exactly_the_spec_s_keys(cfg: Path) -> None:
    (folder,) = load(cfg, FOLDER + 'preset = "shopify"\n').folders
    assert (folder.crop, folder.canvas, folder.margin) == (True, "2048x2048", "5%")
    assert (folder.align, folder.background, folder.format) == ("center", "#ffffff", "jpeg")


def test_a_key_set_beside_a_preset_wins(cfg: Path) -> None:
    text = FOLDER + 'preset = "amazon"\nformat = "webp"\nbackground = "#eeeeee"\nmargin = "0"\n'
    (folder,) = load(cfg, text).folders
    assert (folder.format, folder.background, folder.margin) == ("webp", "#eeeeee", "0")
    assert folder.canvas == "2000x2000"


def test_an_unknown_preset_names_the_key_and_the_known_ones(cfg: Path) -> None:
    message = error(cfg, FOLDER + 'preset = "ebay"\n')
    assert "folder[0].preset" in message and "amazon" in message and "shopify" in message


def test_a_rendition_takes_its_folder_s_unset_keys_after_its_own_preset(cfg: Path) -> None:
    text = (
        FOLDER
        + 'format = "webp"\nname_template = "{stem}-cut"\nshadow = true\n'
        + '[[folder.rendition]]\noutbox = "amazon"\npreset = "amazon"\n'
        + '[[folder.rendition]]\noutbox = "masks"\noutput = "mask"\nmax_side = 512\n'
    )
    (folder,) = load(cfg, text).folders
    amazon, masks = folder.rendition
    assert (amazon.format, amazon.canvas, amazon.background) == ("jpeg", "2000x2000", "#ffffff")
    assert amazon.name_template == "{stem}-cut" and amazon.shadow
    assert (masks.output, masks.max_side, masks.format, masks.shadow) == ("mask", 512, "webp", True)
    assert masks.outbox == cfg.parent / "masks"  # relative to the file, like every folder
    assert masks.finishing("resize").edges == "resize"


def test_a_jpeg_rendition_without_a_background_names_the_rendition_s_key(cfg: Path) -> None:
    text = FOLDER + '[[folder.rendition]]\noutbox = "r"\nformat = "jpeg"\n'
    assert "folder[0].rendition[0].background" in error(cfg, text)


def test_a_rendition_without_an_outbox_or_with_an_unknown_key_is_refused(cfg: Path) -> None:
    assert "folder[0].rendition[0].outbox: missing" in error(
        cfg, FOLDER + '[[folder.rendition]]\npreset = "amazon"\n'
    )
    message = error(cfg, FOLDER + '[[folder.rendition]]\noutbox = "r"\ncanvass = "1:1"\n')
    assert "folder[0].rendition[0].canvass: unknown key (did you mean canvas?)" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("margin", '"5"'),
        ("margin", '"-5%"'),
        ("margin", '"50%"'),
        ("margin", '"5 pt"'),
        ("canvas", '"2000"'),
        ("canvas", '"0x100"'),
        ("canvas", '"0:1"'),
        ("canvas", '"99999x10"'),
        ("align", '"top"'),
        ("edges", '"sharpen"'),
        ("max_side", "-1"),
    ],
)
def test_a_bad_finishing_value_names_its_key(cfg: Path, key: str, value: str) -> None:
    assert f"folder[0].{key}:" in error(cfg, FOLDER + f"{key} = {value}\n")


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("", "empty"),
        ("{ext}", "empty"),
        (".", "'.'"),
        ("..", "'..'"),
        ("{ext}..", "'..'"),
        ("a/{stem}", "/"),
        ("{name}", "unknown field {name}"),
        ("{stem!r}", "no format spec"),
        ("{stem:>10}", "no format spec"),
        ("{stem", "brace"),
    ],
)
def test_a_template_that_could_make_a_bad_name_is_refused(
    cfg: Path, template: str, why: str
) -> None:
    message = error(cfg, FOLDER + f"name_template = {template!r}\n".replace("'", '"', 2))
    assert "folder[0].name_template:" in message and why in message


def test_good_templates_fill_in_their_fields() -> None:
    for template in ("{stem}", "{stem}-nobg", "{folder}_{stem}.{ext}", "{ext}x", "{{{stem}}}"):
        check_template(template)
    assert fill_template("{folder}_{stem}-{ext}", stem="a b", ext="jpg", folder="p") == "p_a b-jpg"
    assert fill_template("{{{stem}}}", stem="a", ext="", folder="p") == "{a}"


def test_margins_and_canvases_parse() -> None:
    assert parse_margin("0") == Margin(0, False)
    assert parse_margin("7.5%") == Margin(7.5, True)
    assert parse_margin("40px") == Margin(40, False)
    assert parse_canvas("") is None
    assert parse_canvas("2048x1536") == Canvas(2048, 1536, fixed=True)
    assert parse_canvas("4:5") == Canvas(4, 5, fixed=False)


def test_check_config_shows_the_effective_finishing_with_the_preset_expanded(cfg: Path) -> None:
    text = FOLDER + 'preset = "shopify"\n[[folder.rendition]]\noutbox = "m"\noutput = "mask"\n'
    shown = render_settings(load(cfg, text))
    folder = shown[shown.index("[[folder]]") : shown.index("[[folder.rendition]]")]
    assert 'canvas = "2048x2048"' in folder and 'margin = "5%"' in folder
    assert 'format = "jpeg"' in folder and "rendition" not in folder
    rendition = shown[shown.index("[[folder.rendition]]") :]
    assert 'output = "mask"' in rendition and 'canvas = "2048x2048"' in rendition
    assert f'outbox = "{cfg.parent / "m"}"' in rendition


def test_a_rendition_s_outbox_is_created_and_checked_like_every_output_tree(cfg: Path) -> None:
    load(cfg, FOLDER + '[[folder.rendition]]\noutbox = "deep/amazon"\n')
    assert (cfg.parent / "deep/amazon").is_dir()
    inside = error(cfg, FOLDER + '[[folder.rendition]]\noutbox = "in/amazon"\n')
    assert "folder[0].rendition[0].outbox" in inside and "picked up as new inputs" in inside
    same = error(cfg, FOLDER + '[[folder.rendition]]\noutbox = "out"\n')
    assert "folder[0].rendition[0].outbox" in same and "collide" in same
    two = FOLDER + '[[folder.rendition]]\noutbox = "r"\n[[folder.rendition]]\noutbox = "r/x"\n'
    assert "folder[0].rendition[1].outbox" in error(cfg, two)


def test_a_template_using_a_folder_name_with_a_slash_is_refused(cfg: Path) -> None:
    text = FOLDER + 'name = "a/b"\nname_template = "{folder}-{stem}"\n'
    assert "folder[0].name_template: uses {folder}" in error(cfg, text)
    load(cfg, FOLDER + 'name = "a/b"\n')  # harmless without {folder}
