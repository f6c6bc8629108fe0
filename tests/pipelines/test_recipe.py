import os

import pytest

from pipelines.recipe import RecipeError, load_recipe, parse_recipe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MINIMAL = {"name": "t", "inputs": {"visual_cot_dir": "x"}, "sources": {"gqa": {"cap": 3}}}


@pytest.mark.parametrize("name", ["demo.yaml", "paper-610k.yaml"])
def test_shipped_recipes_load(name):
    r = load_recipe(os.path.join(REPO, "recipes", name))
    assert r.grid_size == 8 and r.sources


def test_paper_recipe_matches_table_1():
    r = load_recipe(os.path.join(REPO, "recipes", "paper-610k.yaml"))
    # Table 1 rows; the "TextVQA" row is filled by the text-rich sources (see the recipe's comment).
    available = {"textvqa": 18524, "textcap": 32152, "infographicsvqa": 15055, "sroie": 2486, "dude": 11735}
    text_row = sum(r.sources[s].resolve(n) for s, n in available.items())
    assert text_row == 73000
    caps = {s: r.sources[s].cap for s in ("flickr30k", "docvqa", "vsr", "gqa", "openimages", "cub", "v7w")}
    assert caps == {"flickr30k": 136000, "docvqa": 33000, "vsr": 3000, "gqa": 88000,
                    "openimages": 43000, "cub": 4000, "v7w": 30000}
    assert 73000 + sum(caps.values()) == 410000
    assert r.llava.cap == 200000


def test_relative_paths_resolve_against_recipe_folder():
    r = load_recipe(os.path.join(REPO, "recipes", "demo.yaml"))
    assert r.inputs.image_root == os.path.join(REPO, "pipelines", "demo_corpus", "images")


@pytest.mark.parametrize("patch, message", [
    ({"name": "a b"}, "recipe.name"),
    ({"sources": {"nope": {}}}, "recipe.sources.nope: unknown source"),
    ({"sources": {"gqa": {"cap": -3}}}, "recipe.sources.gqa.cap: must be an integer >= 1"),
    ({"sources": {"gqa": {"cap": 3, "fraction": 0.5}}}, "recipe.sources.gqa: set cap or fraction"),
    ({"sources": {"gqa": {"fraction": 1.5}}}, "recipe.sources.gqa.fraction"),
    ({"sources": {"gqa": {"limit": 3}}}, "recipe.sources.gqa: unknown field(s) ['limit']"),
    ({"multi_box": "median"}, "recipe.multi_box: must be one of"),
    ({"image_check": "none"}, "recipe.image_check"),
    ({"shards": {"max_samples": 0}}, "recipe.shards.max_samples"),
    ({"template": {"trailing_period": "yes"}}, "recipe.template.trailing_period"),
    ({"llava": {"count": 5}}, "recipe.llava.count: use 'cap'"),
    ({"colour": "red"}, "recipe: unknown field(s) ['colour']"),
    ({"inputs": {"visual_cot_dir": "a", "visual_cot_llava_json": "b"}}, "not both"),
    ({"reject_limits": {"max_fraction": 1.5}}, "recipe.reject_limits.max_fraction: must be a number between 0 and 1"),
    ({"reject_limits": {"max_fraction": 0.2, "warn_fraction": 0.3}}, "warn_fraction 0.3 is above max_fraction 0.2"),
    ({"reject_limits": {"max": 0.2}}, "recipe.reject_limits: unknown field(s) ['max']"),
], ids=lambda v: str(v)[:40])
def test_errors_name_the_field(patch, message):
    data = {**MINIMAL, **patch}
    with pytest.raises(RecipeError) as e:
        parse_recipe(data)
    assert message in str(e.value)


def test_missing_required_field():
    with pytest.raises(RecipeError, match=r"recipe\.sources: required field is missing"):
        parse_recipe({"name": "t", "inputs": {}})


def test_cap_above_source_takes_all_and_fraction_rounds():
    r = parse_recipe({**MINIMAL, "sources": {"gqa": {"cap": 10}, "vsr": {"fraction": 0.5}}})
    assert r.sources["gqa"].resolve(4) == 4
    assert r.sources["vsr"].resolve(7) == 4  # round(3.5) -> 4 (banker's rounding gives 4)


def test_fingerprint_changes_with_recipe():
    a = parse_recipe(MINIMAL)
    b = parse_recipe({**MINIMAL, "seed": 1})
    assert a.fingerprint() != b.fingerprint() and a.fingerprint() == parse_recipe(MINIMAL).fingerprint()


def test_visual7w_metadata_file_is_found_under_either_name(tmp_path):
    """Visual-CoT ships Visual7W as visual7w_cot_train.jsonl (records tagged v7w); older copies
    use v7w_cot_train.jsonl. The recipe's source is v7w either way; a missing file names both."""
    from pipelines.build import list_inputs

    r = parse_recipe({"name": "t", "inputs": {"visual_cot_dir": str(tmp_path)}, "sources": {"v7w": {}}})
    with pytest.raises(FileNotFoundError, match="visual7w_cot_train.jsonl.*v7w_cot_train.jsonl"):
        list_inputs(r)
    (tmp_path / "v7w_cot_train.jsonl").write_text("")
    assert list_inputs(r) == [("cot_jsonl", "v7w", str(tmp_path / "v7w_cot_train.jsonl"))]
    (tmp_path / "visual7w_cot_train.jsonl").write_text("")  # the real name wins
    assert list_inputs(r) == [("cot_jsonl", "v7w", str(tmp_path / "visual7w_cot_train.jsonl"))]


def test_command_line_overrides_are_validated_with_the_recipe(tmp_path):
    from pipelines.recipe import apply_overrides

    base = {"name": "t", "inputs": {"visual_cot_llava_json": "v.json", "image_root": "img"},
            "sources": {"gqa": {}}}
    # One Visual-CoT input replaces the other (they are alternatives), relative to the cwd.
    d = apply_overrides(base, {"visual_cot_dir": "meta", "llava_json": None})
    assert d["inputs"] == {"visual_cot_dir": os.path.abspath("meta"), "image_root": "img"}
    assert base["inputs"]["visual_cot_llava_json"] == "v.json"  # the input mapping is not mutated
    assert parse_recipe(d).inputs.visual_cot_llava_json is None
    both = apply_overrides(base, {"visual_cot_dir": "gs://b/meta", "visual_cot_llava_json": "gs://b/v.json"})
    with pytest.raises(RecipeError, match="not both"):
        parse_recipe(both)
    with pytest.raises(RecipeError, match="recipe.shards.max_samples"):
        parse_recipe(apply_overrides(base, shard_max_samples=0))
    path = tmp_path / "r.yaml"
    path.write_text("name: t\ninputs: {visual_cot_dir: meta}\nsources: {gqa: {}}\n")
    r = load_recipe(str(path), inputs={"image_root": "gs://b/images"}, shard_max_samples=7)
    assert (r.inputs.image_root, r.shard_max_samples) == ("gs://b/images", 7)
    assert r.inputs.visual_cot_dir == str(tmp_path / "meta")  # the recipe's own paths stay recipe-relative


def test_shard_max_samples_flag_must_be_positive(capsys):
    from pipelines.main import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--shard-max-samples", "0"])
    assert "--shard-max-samples: must be at least 1, got 0" in capsys.readouterr().err



def test_multi_box_regions_and_max_regions():
    r = parse_recipe({**MINIMAL, "multi_box": "regions", "max_regions": 2})
    assert (r.multi_box, r.max_regions) == ("regions", 2) and r.to_dict()["max_regions"] == 2
    assert parse_recipe({**MINIMAL, "multi_box": "regions"}).max_regions == 4
    assert r.fingerprint() != parse_recipe({**MINIMAL, "multi_box": "regions", "max_regions": 3}).fingerprint()
    union = parse_recipe(MINIMAL)
    assert "max_regions" not in union.to_dict()  # other policies: the fingerprint does not move
    with pytest.raises(RecipeError, match="recipe.max_regions: only read by multi_box: regions"):
        parse_recipe({**MINIMAL, "max_regions": 2})
    with pytest.raises(RecipeError, match="recipe.max_regions: must be an integer >= 1"):
        parse_recipe({**MINIMAL, "multi_box": "regions", "max_regions": 0})


def test_boxes_to_region_regions_policy_keeps_far_apart_boxes_apart():
    from pipelines.sources import boxes_to_region

    # 80 x 80 image, 10 px blocks: boxes at the top-left and the bottom-right corners
    far = [[0, 0, 15, 15], [65, 65, 80, 80]]
    info = boxes_to_region(far, 80, 80, "regions", 8, max_regions=4)
    assert info["regions"] == [[0, 0, 1, 1], [6, 6, 7, 7]] and info["region"] == [0, 0, 7, 7]
    assert boxes_to_region(far, 80, 80, "union", 8)["region"] == info["region"] and \
        "regions" not in boxes_to_region(far, 80, 80, "union", 8)
    touching = [[0, 0, 15, 15], [20, 0, 35, 15]]  # blocks 0-1 and 2-3 share an edge: one region
    assert boxes_to_region(touching, 80, 80, "regions", 8)["regions"] == [[0, 0, 3, 1]]
    assert boxes_to_region(far, 80, 80, "regions", 8, max_regions=1)["regions"] == [[0, 0, 7, 7]]
