"""The built docs as a reader meets them in a browser: galleries, recipe pages, the status
page's table, links, and screenshots in docs/_build/screenshots/."""

import html.parser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "docs" / "_build" / "html"
GALLERIES = {"recipes": "auto_recipes", "onnx_recipes": "auto_onnx_recipes"}
RECIPES = sorted(p for src in GALLERIES for p in (ROOT / src).glob("**/*.py"))


def _page(recipe: Path) -> str:
    """The built page of a recipe, relative to the HTML root."""
    source = recipe.relative_to(ROOT)
    return "/".join([GALLERIES[source.parts[0]], *source.parts[1:-1], source.stem + ".html"])


def _recipe_id(recipe: Path) -> str:
    return str(recipe.relative_to(ROOT))


def test_recipes_are_found():
    assert len(RECIPES) >= 20, RECIPES


@pytest.mark.parametrize("source", sorted(GALLERIES))
def test_every_recipe_is_in_its_gallery_index(visit, source):
    gallery = GALLERIES[source]
    page = visit.open(f"{gallery}/index.html")
    thumbnails = page.locator(".sphx-glr-thumbcontainer")
    hrefs = thumbnails.locator("a").evaluate_all("links => links.map(a => a.href)")
    shown = {urlsplit(h).path.lstrip("/").split("#")[0] for h in hrefs}
    expected = {_page(r) for r in RECIPES if r.relative_to(ROOT).parts[0] == source}
    assert expected - shown == set(), f"recipes missing from {gallery}/index.html"
    assert thumbnails.count() == len(expected)
    for i in range(thumbnails.count()):
        assert thumbnails.nth(i).is_visible()
    broken = page.locator(".sphx-glr-thumbcontainer img").evaluate_all(
        "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    assert broken == [], f"thumbnails that do not load: {broken}"


@pytest.mark.parametrize("recipe", RECIPES, ids=_recipe_id)
def test_recipe_page_shows_its_output_and_images(visit, recipe):
    page = visit.open(_page(recipe))
    outputs = page.locator(".sphx-glr-script-out")
    assert outputs.count() >= 1, f"{recipe.name}: no printed output on its page"
    assert outputs.last.is_visible()
    assert "check passed:" in outputs.last.inner_text(), (
        f"{recipe.name}: its last output block does not show its final check"
    )
    article = page.locator("article.bd-article")
    images = article.locator("img")
    for i in range(images.count()):  # lazy images load when scrolled into view
        images.nth(i).scroll_into_view_if_needed()
    page.wait_for_load_state("load")
    broken = images.evaluate_all(
        "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    assert broken == [], f"{recipe.name}: images that do not load: {broken}"
    # Code cells are not cut off: every line of a code cell fits in its block.
    cut = article.locator("div.highlight-Python pre").evaluate_all(
        "pres => pres.filter(p => p.scrollWidth > p.clientWidth + 1)"
        ".map(p => p.textContent.split('\\n').reduce((a, b) => a.length > b.length ? a : b))"
    )
    assert cut == [], f"{recipe.name}: code lines wider than their block: {cut}"
    # Every page reports the time its recipe ran (a build that skipped it says 0.000 s).
    timing = page.locator("p.sphx-glr-timing").inner_text()
    assert "0 minutes 0.000 seconds" not in timing, timing


def _model_table(page):
    """The per-model table and its controls: the one table with a verdict select."""
    controls = page.locator(".model-table-controls").filter(has=page.locator("select"))
    assert controls.count() == 1, "the status page has one table of verdicts with controls"
    table = page.locator("#" + controls.locator("input").get_attribute("aria-controls"))
    return controls, table


def test_status_filter_finds_llama(visit, screenshots):
    page = visit.open("status/text-generation/index.html")
    controls, table = _model_table(page)
    controls.scroll_into_view_if_needed()
    page.evaluate("window.scrollBy(0, -80)")
    page.screenshot(path=str(screenshots / "status.png"))
    rows = table.locator("tbody tr")
    total = rows.count()
    assert total > 100
    first = rows.locator("td:first-child")
    controls.locator("input").fill("llama")
    names = first.evaluate_all(
        "cells => cells.map(c => [c.textContent.trim(), !c.closest('tr').hidden])"
    )
    visible = [name for name, shown in names if shown]
    assert "llama" in visible, "the llama row must stay visible"
    hidden_rows = [name for name, shown in names if not shown]
    assert hidden_rows, "rows without llama must hide"
    for i in range(total):
        row = rows.nth(i)
        assert row.is_visible() == ("llama" in row.inner_text().lower())
    assert controls.locator(".model-table-count").inner_text() == f"{len(visible)} of {total} rows"
    page.screenshot(path=str(screenshots / "status_filtered_llama.png"))
    controls.locator("input").fill("")
    assert all(rows.nth(i).is_visible() for i in range(total))


def test_status_verdict_select_and_sorting(visit):
    page = visit.open("status/text-generation/index.html")
    controls, table = _model_table(page)
    rows = table.locator("tbody tr")
    total = rows.count()
    # Verdicts are words in coloured labels, not glyphs.
    labels = table.locator("tbody td span.verdict").all_inner_texts()
    assert len(labels) >= total and set(labels) == {"pass", "fail"}, set(labels)
    colours = table.locator("span.verdict-pass, span.verdict-fail").evaluate_all(
        "spans => new Set(spans.map(s => getComputedStyle(s).backgroundColor)).size"
    )
    assert colours == 2, "pass and fail labels have different colours"
    verdicts = "r => r.querySelectorAll('.verdict-fail').length > 0"
    controls.locator("select").select_option("fail")
    fails = rows.evaluate_all(f"rows => rows.filter(r => !r.hidden).map({verdicts})")
    assert fails and all(fails), "failing: only rows with a failing verdict"
    controls.locator("select").select_option("pass")
    passes = rows.evaluate_all(f"rows => rows.filter(r => !r.hidden).map({verdicts})")
    assert passes and not any(passes)
    assert len(fails) + len(passes) == total
    controls.locator("select").select_option("all")
    # Sorting by the first column twice reverses the order of the model types.
    header = table.locator("thead th").first
    first = rows.locator("td:first-child")
    header.locator("button").click()
    ascending = first.all_inner_texts()
    assert ascending == sorted(ascending, key=str.lower)
    header.locator("button").click()
    assert first.all_inner_texts() == ascending[::-1]
    assert header.get_attribute("aria-sort") == "descending"


def test_screenshots_of_index_and_a_recipe(visit, screenshots):
    page = visit.open("index.html")
    page.screenshot(path=str(screenshots / "index.png"), full_page=True)
    recipe = next(r for r in RECIPES if r.stem == "plot_untrained_tiny_llm")
    page = visit.open(_page(recipe))
    page.screenshot(path=str(screenshots / "recipe.png"), full_page=True)
    for name in ["index.png", "recipe.png", "status.png"]:
        assert (screenshots / name).stat().st_size > 10_000, name


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and (name == "href" or (name == "src" and tag in {"img", "script"})):
                self.targets.append(value)


def test_no_internal_link_is_broken():
    # Every page; _static/ holds the theme's template files, not pages.
    pages = sorted(p for p in HTML.rglob("*.html") if p.relative_to(HTML).parts[0] != "_static")
    assert len(pages) > 30
    broken = []
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for target in parser.targets:
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or not parts.path:  # external, or an anchor here
                continue
            resolved = (page.parent / unquote(parts.path)).resolve()
            if resolved.is_dir():
                resolved = resolved / "index.html"
            if not resolved.exists():
                broken.append(f"{page.relative_to(HTML)} -> {target}")
    assert broken == [], "broken links:\n" + "\n".join(broken[:50])
