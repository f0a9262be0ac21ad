"""The recipe templating rules (`.ims_recipe_template.yaml` + template_dictionary)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ims.stages.templating import (
    TEMPLATE_CONFIG,
    TemplatingError,
    dictionary_from_records,
    dump_template_dictionary,
    parse_template_dictionary,
    render_recipe,
)


def _recipe(tmp_path: Path, files: dict[str, str], template_files: list[str] | None) -> Path:
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    for name, text in files.items():
        path = recipe / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if template_files is not None:
        (recipe / TEMPLATE_CONFIG).write_text("template_files:\n" + "".join(f"  - {n}\n" for n in template_files))
    return recipe


def test_record_list_becomes_a_mapping() -> None:
    records = [{"key": "a", "value": "1"}, {"key": "b", "value": "x"}, {"key": "a", "value": "2"}]
    assert dictionary_from_records(records) == {"a": "2", "b": "x"}
    assert dictionary_from_records(None) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"mirror": "http://m/debian", "n": 3}', {"mirror": "http://m/debian", "n": 3}),
        ("mirror: http://m/debian\n", {"mirror": "http://m/debian"}),
        ('[{"key": "mirror", "value": "http://m"}]', {"mirror": "http://m"}),
        ("", {}),
        (None, {}),
        ("{}", {}),
        ("null", {}),
    ],
)
def test_parse_template_dictionary(text: str | None, expected: dict[str, object]) -> None:
    assert parse_template_dictionary(text) == expected


@pytest.mark.parametrize("text", ['"just a string"', "[1, 2]", "{unclosed", '[{"value": 1}]'])
def test_parse_template_dictionary_rejects(text: str) -> None:
    with pytest.raises(TemplatingError):
        parse_template_dictionary(text)


def test_dump_round_trips() -> None:
    values = {"b": "2", "a": "1"}
    assert parse_template_dictionary(dump_template_dictionary(values)) == values


def test_listed_files_are_rendered_in_place_keeping_mode(tmp_path: Path) -> None:
    recipe = _recipe(
        tmp_path,
        {
            "config.xml": '<source path="{{ mirror }}"/>\n',
            "config.sh": "#!/bin/sh\necho {{ greeting | upper }}\n",
            "untouched.txt": "{{ mirror }}\n",
            "parts/repo.xml": "{% include 'parts/inner.txt' %}",
            "parts/inner.txt": "inner {{ mirror }}",
        },
        ["config.xml", "config.sh", "parts/repo.xml"],
    )
    (recipe / "config.sh").chmod(0o750)
    rendered = render_recipe(recipe, {"mirror": "http://m/debian", "greeting": "hi"})
    assert [p.name for p in rendered] == ["config.xml", "config.sh", "repo.xml"]
    assert (recipe / "config.xml").read_text() == '<source path="http://m/debian"/>\n'
    assert (recipe / "config.sh").read_text() == "#!/bin/sh\necho HI\n"
    assert stat.S_IMODE((recipe / "config.sh").stat().st_mode) == 0o750
    assert (recipe / "untouched.txt").read_text() == "{{ mirror }}\n"
    assert (recipe / "parts/repo.xml").read_text() == "inner http://m/debian"
    assert not [p for p in recipe.iterdir() if p.name.startswith(".config")]  # no temp files left


def test_templating_expected_but_dictionary_empty_is_an_error(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, {"config.xml": "{{ mirror }}"}, ["config.xml"])
    with pytest.raises(TemplatingError, match="template_dictionary is empty"):
        render_recipe(recipe, {})
    assert (recipe / "config.xml").read_text() == "{{ mirror }}"


def test_dictionary_without_template_file_only_warns(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, {"config.xml": "{{ mirror }}"}, None)
    warnings: list[str] = []
    assert render_recipe(recipe, {"mirror": "x"}, warn=warnings.append) == []
    assert len(warnings) == 1 and TEMPLATE_CONFIG in warnings[0]
    assert (recipe / "config.xml").read_text() == "{{ mirror }}"


def test_no_template_file_and_no_dictionary_is_silent(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, {"config.xml": "x"}, None)
    warnings: list[str] = []
    assert render_recipe(recipe, {}, warn=warnings.append) == []
    assert warnings == []


def test_empty_template_list_needs_no_dictionary(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, {"config.xml": "{{ x }}"}, [])
    assert render_recipe(recipe, {}) == []


@pytest.mark.parametrize("name", ["../outside.xml", "/etc/hostname", "link-out.xml", "."])
def test_template_file_outside_the_recipe_is_refused(tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside.xml"
    outside.write_text("{{ x }}")
    recipe = _recipe(tmp_path, {"config.xml": "x"}, [name])
    (recipe / "link-out.xml").symlink_to(outside)
    with pytest.raises(TemplatingError, match="outside the recipe"):
        render_recipe(recipe, {"x": "1"})
    assert outside.read_text() == "{{ x }}"


def test_missing_template_file_is_refused(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, {"config.xml": "x"}, ["config.xml", "nothere.xml"])
    with pytest.raises(TemplatingError, match="'nothere.xml' does not exist"):
        render_recipe(recipe, {"x": "1"})


def test_bad_template_config(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, {"config.xml": "x"}, None)
    (recipe / TEMPLATE_CONFIG).write_text("template_files: config.xml\n")
    with pytest.raises(TemplatingError, match="list of paths"):
        render_recipe(recipe, {"x": "1"})
    (recipe / TEMPLATE_CONFIG).write_text("template_files: [\n")
    with pytest.raises(TemplatingError, match="not valid YAML"):
        render_recipe(recipe, {"x": "1"})


def test_undefined_variables_render_empty_with_a_warning(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, {"config.xml": "[{{ mirror }}][{{ other }}]"}, ["config.xml"])
    warnings: list[str] = []
    render_recipe(recipe, {"mirror": "m"}, warn=warnings.append)
    assert (recipe / "config.xml").read_text() == "[m][]"
    assert len(warnings) == 1 and "other" in warnings[0]


def test_strict_mode_refuses_undefined(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, {"config.xml": "{{ other }}"}, ["config.xml"])
    with pytest.raises(TemplatingError, match="other"):
        render_recipe(recipe, {"mirror": "m"}, strict=True)


def test_template_syntax_error_names_the_file(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, {"config.xml": "{% if %}"}, ["config.xml"])
    with pytest.raises(TemplatingError, match="config.xml"):
        render_recipe(recipe, {"x": "1"})


def test_templates_are_sandboxed(tmp_path: Path) -> None:
    """A recipe is user input rendered as root: no walking to Python internals."""
    recipe = _recipe(tmp_path, {"config.xml": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}, ["config.xml"])
    with pytest.raises(TemplatingError):
        render_recipe(recipe, {"x": "1"})


def test_shipped_recipes_template_with_the_mirror() -> None:
    import ims

    recipes = Path(ims.__file__).parent / "recipes"
    for name in ("debian-bookworm", "debian-bookworm-tbz"):
        text = (recipes / name / "config.xml").read_text()
        assert "{{ debian_mirror }}" in text
        assert "config.xml" in (recipes / name / TEMPLATE_CONFIG).read_text()
