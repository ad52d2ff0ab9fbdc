import textwrap

import pytest

from ablate.errors import AblateError
from ablate.spec import (
    DEFAULT_SEARCH_SPACE_DIR,
    expand_cells,
    load_search_space,
    load_study,
    parse_study,
)
from ablate.tracking.schema import Tag, cell_tags

GOOD = {
    "name": "smoke",
    "data": {"synthetic": {"scale": 0.05, "seed": 0}, "tasks": ["prom/prom_core_tata"]},
    "axes": {
        "architecture": ["convnova", "transformer"],
        "pretraining": ["none"],
        "tokenizer": ["char", "bpe"],
    },
    "budget": {"trials_per_cell": 4, "max_epochs": 2, "concurrent_trials": 2},
    "seed": 0,
    "tracking": {"uri": "sqlite:///mlruns.db"},
}


def _with(path, value):
    import copy

    data = copy.deepcopy(GOOD)
    node = data
    *parents, last = path
    for key in parents:
        node = node[key]
    node[last] = value
    return data


def test_issue_example_spec_parses_and_expands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "smoke.yaml"
    path.write_text(textwrap.dedent("""
        name: smoke
        data: {gue_dir: GUE, tasks: [prom/prom_core_tata]}
        axes: {architecture: [convnova, transformer], pretraining: [none], tokenizer: [char, bpe]}
        budget: {trials_per_cell: 4, max_epochs: 2, concurrent_trials: 2}
        seed: 0
        tracking: {uri: sqlite:///mlruns.db}
    """))
    spec = load_study(path)
    assert spec.path(spec.data.gue_dir) == tmp_path / "GUE"  # relative to the current dir
    cells = expand_cells(spec)
    assert len(cells) == 4
    assert cells[0].name == "convnova|none|char|prom/prom_core_tata"
    assert cell_tags(cells[0])[Tag.TASK] == "prom/prom_core_tata"
    # The tokenizer axis is parsed once, when the spec is read, and the typed values are kept.
    choices = spec.tokenizer_choices()
    assert choices is spec.tokenizer_choices()
    assert [(c.kind, c.value) for c in choices.values()] == [("char", "char"), ("bpe", "bpe")]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (_with(["budget", "trial_per_cell"], 3), "budget.trial_per_cell"),
        (_with(["axes", "architecture"], ["resnet"]), "axes.architecture"),
        (_with(["axes", "tokenizer"], ["char", "words"]), "axes.tokenizer"),
        (_with(["axes", "pretraining"], ["mlm:big"]), "axes.pretraining"),
        (_with(["data", "tasks"], ["tf/9"]), "data.tasks"),
        (_with(["budget", "trials_per_cell"], 0), "budget.trials_per_cell"),
        (_with(["name"], "bad name!"), "name"),
        ({k: v for k, v in GOOD.items() if k != "budget"}, "budget"),
    ],
)
def test_bad_specs_name_the_key(data, needle):
    with pytest.raises(AblateError) as info:
        parse_study(data, source="study.yaml")
    assert needle in str(info.value)
    assert "study.yaml" in str(info.value)


def test_unknown_architecture_lists_allowed_values():
    with pytest.raises(AblateError, match="convnova"):
        parse_study(_with(["axes", "architecture"], ["resnet"]))


def test_data_needs_exactly_one_source():
    data = _with(["data", "gue_dir"], "/tmp/gue")
    with pytest.raises(AblateError, match="exactly one"):
        parse_study(data)


def test_env_vars_expand_and_missing_ones_fail(tmp_path, monkeypatch):
    spec = parse_study(_with(["data"], {"gue_dir": "${GUE_TEST_DIR}", "tasks": ["tf/0"]}))
    monkeypatch.setenv("GUE_TEST_DIR", str(tmp_path))
    assert spec.path(spec.data.gue_dir) == tmp_path
    monkeypatch.delenv("GUE_TEST_DIR")
    with pytest.raises(AblateError, match="GUE_TEST_DIR"):
        spec.path(spec.data.gue_dir)


def test_yaml_errors_are_ablate_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(AblateError, match="bad.yaml"):
        load_study(bad)
    with pytest.raises(AblateError, match="not found"):
        load_study(tmp_path / "missing.yaml")


def test_checked_in_search_spaces_load():
    for arch in ("convnova", "transformer"):
        space = load_search_space(DEFAULT_SEARCH_SPACE_DIR, arch)
        assert space.architecture == arch
        assert {"learning_rate", "batch_size"} <= set(space.params)


def test_bad_search_space_is_reported(tmp_path):
    (tmp_path / "convnova.yaml").write_text(
        "architecture: convnova\npreset: tiny\nparams:\n  lr: {type: float, low: 1, high: 2}\n"
    )
    with pytest.raises(AblateError, match="lr"):
        load_search_space(tmp_path, "convnova")
    with pytest.raises(AblateError, match="not found"):
        load_search_space(tmp_path, "transformer")


def test_checked_in_studies_parse(monkeypatch, tmp_path):
    from ablate.spec import DEFAULT_SEARCH_SPACE_DIR as root

    model = tmp_path / "DNABERT-2-117M"
    model.mkdir()
    (model / "tokenizer.json").write_text("{}")
    for var, value in {"ABLATE_GUE_DIR": tmp_path, "DNABERT2_DIR": model,
                       "GENOME_FASTA": tmp_path / "hg38.fa.gz"}.items():
        monkeypatch.setenv(var, str(value))
    paths = sorted((root / "studies").glob("*.yaml"))
    assert {"demo.yaml", "gue_short.yaml", "gue_gpu.yaml"} <= {p.name for p in paths}
    for path in paths:
        spec = load_study(path)
        cells = expand_cells(spec)
        assert cells, path
        for cell in cells:  # every pretrained cell has its own from-scratch twin
            if cell.pretraining != "none" and "none" in spec.axes.pretraining:
                assert any(c.pretraining == "none" and c.architecture == cell.architecture
                           and c.tokenizer == cell.tokenizer for c in cells), cell.name
