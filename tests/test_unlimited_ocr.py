"""Unlimited-OCR (families/unlimited_ocr.py): each image's global view and local crops,
whose feature rows get_image_features lays out in a Python loop over the crop grids
(crops as one picture, global view, every line ended by a newline, then a separator),
exported with that order precomputed; and its decoder's cache, the prompt's states kept
apart from a sliding window of decoded tokens, flattened into both parts."""

import ast
import copy
import inspect
import os
import types

import pytest
import torch
import torch.utils._pytree as pytree

from exportcheck import cache_pytrees, export_patches, untrained_model
from exportcheck.families import INPUT_LAYOUTS, deepseek_ocr2, unlimited_ocr
from exportcheck.tasks.text_generation import _contiguous

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def built():
    assert INPUT_LAYOUTS["unlimited_ocr"][0] is unlimited_ocr.LAYOUT  # registered
    return untrained_model("unlimited_ocr", task="image-text-to-text")


@pytest.fixture(scope="module")
def model(built):
    return built.model


def _image_processor_source():
    # the module imports torchvision, which is not installed: read its source instead
    from transformers.models import unlimited_ocr as package

    path = os.path.join(package.__path__[0], "image_processing_unlimited_ocr.py")
    with open(path) as f:
        return f.read()


def test_the_tiling_and_defaults_are_the_image_processors():
    tree = ast.parse(_image_processor_source())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    own = ast.get_source_segment(_image_processor_source(), functions["get_optimal_tiled_canvas"])
    shared = inspect.getsource(deepseek_ocr2._processor_module().get_optimal_tiled_canvas)
    # the same function, decorator aside: its grid is the one unlimited_ocr.grid reads
    assert own.strip() == shared.split("\n", 1)[1].strip()
    processor = next(
        n
        for n in tree.body
        if isinstance(n, ast.ClassDef) and n.name == "UnlimitedOcrImageProcessor"
    )
    defaults = {
        t.id: ast.literal_eval(n.value)
        for n in processor.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name) and t.id in ("size", "tile_size", "min_patches", "max_patches")
    }
    assert defaults == {
        "size": {"height": unlimited_ocr.GLOBAL_SIDE, "width": unlimited_ocr.GLOBAL_SIDE},
        "tile_size": unlimited_ocr.CROP_SIDE,
        "min_patches": unlimited_ocr.CROPS_MIN,
        "max_patches": unlimited_ocr.CROPS_MAX_IMAGE,
    }
    assert unlimited_ocr.grid(640, 640) == (0, 0)
    assert unlimited_ocr.grid(1000, 700) == (3, 2)


@pytest.mark.parametrize(
    ("size", "tile", "patch", "rows"),
    [(1024, 640, 16, (16, 10)), (128, 80, 4, (8, 5))],  # full size, and the tiny one
)
def test_image_tokens_are_the_processors(size, tile, patch, rows):
    from transformers.models.unlimited_ocr.processing_unlimited_ocr import UnlimitedOcrProcessor

    processor = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(size={"height": size, "width": size}, tile_size=tile),
        patch_size=patch,
        downsample_ratio=4,
        image_token="#",
    )
    grids = [(0, 0), (3, 2), (1, 3), (6, 4)]
    inputs = {
        "num_local_patches": [c * r for c, r in grids],
        "patches_grid": [[c, r] if c * r else [1, 1] for c, r in grids],
    }
    written = [
        len(UnlimitedOcrProcessor.replace_image_token(processor, inputs, i))
        for i in range(len(grids))
    ]
    assert unlimited_ocr.feature_index(grids, *rows).shape[0] == sum(written)


def test_the_tiny_views_give_the_rows_the_index_counts(model):
    side, crop = unlimited_ocr.sides(model)
    assert (side, crop) == (128, 80)
    with torch.no_grad():
        views = model.model.vision_tower(torch.randn(1, 3, side, side)).last_hidden_state
        crops = model.model.vision_tower(torch.randn(2, 3, crop, crop)).last_hidden_state
    assert views.shape[1] == 8 * 8 and crops.shape[1] == 5 * 5


def test_feature_index_lays_the_crops_out_as_one_picture():
    # one image of 2 x 1 crops of 2 x 2 rows and a view of 2 x 2 rows; a second without
    # crops. Rows: views 0-7, crops 8-15, newline 16, separator 17
    index = unlimited_ocr.feature_index([(2, 1), (0, 0)], 2, 2)
    assert index.tolist() == [
        *[8, 9, 12, 13, 16],  # the first line of both crops
        *[10, 11, 14, 15, 16],
        *[0, 1, 16, 2, 3, 16],  # the global view
        17,
        *[4, 5, 16, 6, 7, 16],  # the second image's view
        17,
    ]


def test_a_wrong_index_is_refused(model):
    feeds = unlimited_ocr.images(model, [(1000, 700), (500, 400)], torch.Generator())
    assert unlimited_ocr.grids_of(model, feeds) == [(3, 2), (0, 0)]
    flipped = {**feeds, "feature_index": feeds["feature_index"].flip(0)}
    with pytest.raises(ValueError, match="not the processor's order"):
        unlimited_ocr.grids_of(model, flipped)
    fewer = {**feeds, "pixel_values_local": feeds["pixel_values_local"][:2]}
    with pytest.raises(ValueError, match="not the processor's order"):
        unlimited_ocr.grids_of(model, fewer)


def test_the_exported_encoder_matches_get_image_features_on_unseen_images(model):
    generator = torch.Generator().manual_seed(3)
    sets, _ = unlimited_ocr.image_sets(model, generator)  # each checked at build
    encoder = unlimited_ocr.encoder(model)
    shapes, _ = unlimited_ocr.image_shapes(model)
    with export_patches(encoder), torch.no_grad():
        program = torch.export.export(encoder, (), copy.deepcopy(sets[0]), dynamic_shapes=shapes)
    seen = {tuple(s) for sizes in unlimited_ocr.IMAGES for s in sizes}
    unseen = [
        [(1300, 900), (200, 700), (640, 500)],  # 3 x 2, none, none (not over 640)
        [(600, 600), (300, 300)],  # no crops in the whole call
        [(2500, 600), (1100, 1100), (100, 100), (900, 2800)],
    ]
    assert not seen & {s for sizes in unseen for s in sizes}
    for sizes in unseen:
        feeds = unlimited_ocr.images(model, sizes, generator)
        given = unlimited_ocr.processor_image(model, feeds)
        grids = [unlimited_ocr.grid(w, h) for w, h in sizes]
        assert given["num_local_patches"] == [c * r for c, r in grids]
        assert ("pixel_values_local" in given) == any(c * r for c, r in grids)
        with torch.no_grad():
            got = program.module()(**copy.deepcopy(feeds))
            own = model.model.get_image_features(**given)
        expected = torch.cat(list(own.pooler_output))
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) < 1e-5


def test_the_merged_features_generate_what_generate_gives_from_the_processors_inputs(model):
    generator = torch.Generator().manual_seed(23)
    # one image of 2 x 1 crops, one without: 5 x 11 + 8 x 9 + 1 and 8 x 9 + 1 rows
    feeds = unlimited_ocr.images(model, [(1000, 500), (600, 500)], generator)
    given = unlimited_ocr.processor_image(model, feeds)
    assert given["patches_grid"] == [[2, 1], [1, 1]]
    token = model.config.image_token_id
    text = torch.randint(3, 900, (2, 140), generator=generator)
    assert not (text == token).any()
    ids = text.clone()
    ids[0, 4:132] = token  # the first image's 128 rows
    ids[1, 30:103] = token  # the second's 73
    mask = torch.ones_like(ids)
    with torch.no_grad():
        features = unlimited_ocr.encoder(model)(**feeds)
        embeds = model.get_input_embeddings()(ids)
        merged = embeds.masked_scatter((ids == token)[..., None], features)
        settings = {"max_new_tokens": 6, "do_sample": False}
        own = model.generate(input_ids=ids, attention_mask=mask, **given, **settings)
        mine = model.generate(inputs_embeds=merged, attention_mask=mask, **settings)
        logits = model(input_ids=ids, attention_mask=mask, **given).logits
        merged_logits = model(inputs_embeds=merged, attention_mask=mask).logits
    assert float((logits - merged_logits).abs().max()) < 1e-5
    assert torch.equal(own[:, ids.shape[1] :], mine[:, -6:])


def _cache(model, batch, prompt, decoded, generator):
    """The model's cache after a prompt of ``prompt`` random embeddings, then ``decoded``
    more in a second forward (its window), and those embeddings."""
    width = model.config.get_text_config(decoder=True).hidden_size
    embeds = torch.randn((batch, prompt + decoded, width), generator=generator)
    ones = torch.ones((batch, prompt + decoded), dtype=torch.int64)
    with torch.no_grad():
        out = model(inputs_embeds=embeds[:, :prompt], attention_mask=ones[:, :prompt])
        cache = out.cache
        if decoded:
            given = {"inputs_embeds": embeds[:, prompt:], "attention_mask": ones}
            cache = model(**given, cache=cache).cache
    return cache, embeds


def _counters(layer):
    return (layer.prefill_length, layer.prefill_cumulative_length, layer.cumulative_length)


def test_the_cache_flattens_into_the_prompt_and_the_window_and_back(model):
    generator = torch.Generator().manual_seed(5)
    after_prompt, _ = _cache(model, 2, 9, 0, generator)
    decoding, _ = _cache(model, 2, 9, 4, generator)
    layer = after_prompt.layers[0]
    assert type(layer).__name__ == "UnlimitedOcrDynamicReferenceSlidingWindowLayer"
    assert layer.keys.shape == (0,) and _counters(layer) == (9, 9, 0)  # the lazy 1-D tensor
    assert _counters(decoding.layers[0]) == (9, 9, 4)
    with cache_pytrees():
        leaves, spec = pytree.tree_flatten(after_prompt)
        more, more_spec = pytree.tree_flatten(decoding)
        rebuilt = pytree.tree_unflatten(leaves, spec)
        rebuilt_decoding = pytree.tree_unflatten(more, more_spec)
    # one spec for both: what a step returns can be fed to the program that took the cache
    assert spec == more_spec
    layers = len(after_prompt.layers)
    shapes = [tuple(t.shape) for t in leaves]
    heads, dim = layer.prefill_keys.shape[1], layer.prefill_keys.shape[3]
    # keys, values (the empty window), then prefill_keys, prefill_values, layer by layer
    assert shapes == [(2, heads, 0, dim)] * 2 * layers + [(2, heads, 9, dim)] * 2 * layers
    assert [tuple(t.shape[2:3]) for t in more] == [(4,)] * 2 * layers + [(9,)] * 2 * layers
    for original, back in [(after_prompt, rebuilt), (decoding, rebuilt_decoding)]:
        for a, b in zip(original.layers, back.layers, strict=True):
            assert type(a) is type(b) and _counters(a) == _counters(b)
            assert torch.equal(a.prefill_keys, b.prefill_keys)
            assert torch.equal(a.prefill_values, b.prefill_values)
            assert a.keys.numel() == b.keys.numel() and a.values.numel() == b.values.numel()
        # the rebuilt cache behaves as the model's own on the next step
        step = torch.randn((2, 3, model.config.get_text_config(decoder=True).hidden_size))
        mask = torch.ones((2, original.get_seq_length() + 3), dtype=torch.int64)
        with torch.no_grad():
            want = model(inputs_embeds=step, attention_mask=mask, cache=copy.deepcopy(original))
            got = model(inputs_embeds=step, attention_mask=mask, cache=back)
        assert torch.equal(got.logits, want.logits)
        assert _counters(got.cache.layers[0]) == _counters(want.cache.layers[0])


def test_the_decoder_sets_hold_the_prompt_and_decoded_tokens_apart(built):
    step = next(c for c in built.components if c.name == "decoder")
    assert len(step.input_sets) == len(unlimited_ocr.DECODED_TOKENS)
    for feeds, decoded, label in zip(
        step.input_sets, unlimited_ocr.DECODED_TOKENS, step.labels, strict=True
    ):
        layer = feeds["cache"].layers[0]
        prompt = layer.prefill_keys.shape[2]
        assert layer.keys.dim() == 4 and layer.keys.shape[2] == decoded
        assert _counters(layer) == (prompt, prompt, decoded)
        assert f"({prompt} prompt + {decoded} decoded)" in label
    assert unlimited_ocr.DECODED_TOKENS[0] > 1  # traced: a length export does not fix


def test_the_exported_decoder_step_matches_eager_on_unseen_caches(built):
    model = built.model
    step = next(c for c in built.components if c.name == "decoder")
    with export_patches(step.module), torch.no_grad():
        program = torch.export.export(
            step.module, (), copy.deepcopy(step.input_sets[0]), dynamic_shapes=step.dynamic_shapes
        )
    seen = {
        (f["cache"].layers[0].prefill_keys.shape[2], f["cache"].layers[0].keys.shape[2])
        for f in step.input_sets
    }
    generator = torch.Generator().manual_seed(11)
    width = model.config.get_text_config(decoder=True).hidden_size
    # (batch, new tokens, prompt, decoded): an empty window, a one-token prompt, both parts
    for batch, new, prompt, decoded in [(3, 7, 45, 0), (1, 2, 1, 37), (2, 11, 33, 50)]:
        assert (prompt, decoded) not in seen
        cache, before = _cache(model, batch, prompt, decoded, generator)
        feeds = {
            "inputs_embeds": torch.randn((batch, new, width), generator=generator),
            "attention_mask": torch.ones((batch, prompt + decoded + new), dtype=torch.int64),
            "cache": _contiguous(cache),
        }
        with torch.no_grad(), cache_pytrees():
            got = program.module()(**copy.deepcopy(feeds))
            want = step.module(**copy.deepcopy(feeds))
            whole = model(
                inputs_embeds=torch.cat([before, feeds["inputs_embeds"]], 1),
                attention_mask=feeds["attention_mask"],
                use_cache=False,
            ).logits[:, -new:]
            got_leaves = pytree.tree_leaves(got["cache"])
            want_leaves = pytree.tree_leaves(want["cache"])
        assert float((got["logits"] - want["logits"]).abs().max()) < 1e-5
        assert float((want["logits"] - whole).abs().max()) < 1e-4
        assert [t.shape for t in got_leaves] == [t.shape for t in want_leaves]
        pairs = zip(got_leaves, want_leaves, strict=True)
        assert max(float((a - b).abs().max()) for a, b in pairs) < 1e-5
        # the new tokens went to the window, the prompt stayed as it was
        assert _counters(got["cache"].layers[0]) == (prompt, prompt, decoded + new)
        # and the program takes back the cache it returned
        again = {
            "inputs_embeds": torch.randn((batch, 1, width), generator=generator),
            "attention_mask": torch.ones((batch, prompt + decoded + new + 1), dtype=torch.int64),
        }
        with torch.no_grad(), cache_pytrees():
            next_got = program.module()(**again, cache=got["cache"])
            next_want = step.module(**again, cache=want["cache"])
        assert float((next_got["logits"] - next_want["logits"]).abs().max()) < 1e-5
