"""One default per config key: every key is declared once in `fer_flax.config.defaults`, each choice key
beside its valid values (from which `CHOICES` is derived), a run's config.json that lacks keys is
completed from those defaults when it is loaded, and no code elsewhere reads a config key with a
fallback."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from ml_collections import ConfigDict, FieldReference

from fer_flax import models
from fer_flax.config import choices as choices_module
from fer_flax.config import defaults
from fer_flax.config.defaults import CHOICES, KEYS, choice, get_base_config
from fer_flax.config.schema import validate
from fer_flax.data.labels import LABEL_MODES
from fer_flax.run import workdir as workdir_lib
from tests.helpers import REPO

PACKAGE = REPO / "fer_flax"


def _lookup(config, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def _leaves(config: ConfigDict, prefix: str = ""):
    """(dotted key, stored field) of every value, placeholders as their FieldReference."""
    for key, value in config.items(preserve_field_references=True):
        if isinstance(value, ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# ------------------------------------------------------------------------------------ declarations


def test_every_key_has_a_default_and_every_choice_default_is_a_choice():
    config = get_base_config()
    fields = dict(_leaves(config))
    assert set(fields) == set(KEYS) and len(KEYS) > 80
    for key, field in fields.items():
        # A value, or "unset": a typed placeholder, so that the key stays overridable.
        assert not isinstance(field, defaults.Choice), key
        if isinstance(field, FieldReference):
            assert field.get() is None and field.get_type() is not None, key
    for key, values in CHOICES.items():
        assert _lookup(config, key) in values, key


def _declared_choices() -> dict[str, str]:
    """{dotted key: the source of its values} of every `c.<key> = choice(default, VALUES)` in defaults.py."""
    found = {}
    for node in ast.walk(ast.parse(Path(defaults.__file__).read_text())):
        call = node.value if isinstance(node, ast.Assign) else None
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "choice":
            target = ast.unparse(node.targets[0])
            assert target.startswith("c."), target
            found[target.removeprefix("c.")] = ast.unparse(call.args[1])
    return found


def test_choices_are_derived_from_the_declarations():
    declared = _declared_choices()
    assert set(declared) == set(CHOICES)
    for key, source in declared.items():
        assert CHOICES[key] == eval(source, vars(defaults)), key  # the tuple named at the declaration
    # Declared at the key from the packages below config, which define them.
    assert declared["model_name"] == "models.FAMILIES" and CHOICES["model_name"] == models.FAMILIES
    assert declared["data.label_mode"] == "LABEL_MODES" and CHOICES["data.label_mode"] == LABEL_MODES
    assert not hasattr(choices_module, "CHOICES")  # the tuples' module lists no keys a second time


def test_a_choice_default_outside_its_values_is_a_mistake():
    with pytest.raises(ValueError, match="'adam' is not one of its choices"):
        choice("adam", ("sgd", "adamw"))


def test_get_base_config_returns_a_fresh_config():
    config = get_base_config()
    config.optim.name, config.data.path = "adamw", "x.csv"
    assert get_base_config().optim.name == "sgd" and get_base_config().data.path is None


def test_the_package_never_imports_the_repositorys_configs():
    """An installed fer_flax has no configs/ folder: it must restore any run from its own defaults."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "configs" or n.startswith("configs.") for n in names), path


# ----------------------------------------------------------------------- an older run's config.json


def _older_config_json(workdir: Path, **changes) -> dict:
    """A config.json as a version without the `distill` and `mix` sections and a few keys wrote it."""
    old = json.loads(json.dumps(get_base_config().to_dict()))  # tuples as lists, as in a file
    del old["distill"], old["mix"], old["steps_per_call"], old["data"]["pipeline"]
    del old["optim"]["freeze"], old["ema"]["select"], old["wandb"]["group"]
    old.update(changes)
    workdir_lib.write_json(str(workdir / workdir_lib.CONFIG_FILE), {"config": old, "derived": {}})
    return old


def test_an_older_config_json_loads_completed_with_the_defaults(tmp_path):
    _older_config_json(tmp_path, seed=7)
    config = workdir_lib.load_run_config(str(tmp_path))
    expected = get_base_config()
    expected.seed = 7  # the run's own values are kept
    assert config.to_dict() == expected.to_dict()
    assert config.distill.teachers == () and config.mix.prob == 1.0 and config.optim.freeze is None
    validate(config)
    # Every reader of the run's config sees it completed (as JSON stores it).
    info = workdir_lib.read_run_info(str(tmp_path))
    assert info["config"]["distill"]["teachers"] == [] and info["config"]["data"]["pipeline"] == "grain"


def test_keys_a_config_json_has_that_are_not_declared_are_kept(tmp_path):
    model = {"variant": "small", "dropout": 0.25}  # a family option: model's keys are not all declared
    _older_config_json(tmp_path, model=model, retired_key=3)
    info = workdir_lib.read_run_info(str(tmp_path))
    assert info["config"]["model"] == model and info["config"]["retired_key"] == 3


def test_a_key_an_older_config_json_lacks_is_no_change_while_it_keeps_its_default(tmp_path):
    """The run written before a key existed ran with its default: resuming it with the default changes
    nothing, while another value is a change from the default (or refused, for a key defining a run)."""
    _older_config_json(tmp_path)
    assert workdir_lib.config_changes(str(tmp_path), get_base_config()) == {}
    config = get_base_config()
    config.mix.prob, config.steps_per_call, config.ema.select = 0.5, 4, "ema"
    assert workdir_lib.config_changes(str(tmp_path), config) == {
        "ema.select": ("best", "ema"),
        "mix.prob": (1.0, 0.5),
        "steps_per_call": (1, 4),
    }
    for key, value in (("data.pipeline", "device"), ("distill.teachers", ("teacher_run",))):
        config = get_base_config()
        config.update_from_flattened_dict({key: value})
        with pytest.raises(workdir_lib.IncompatibleWorkdirError, match=f"{key}: .* in the workdir"):
            workdir_lib.config_changes(str(tmp_path), config)


def test_a_run_with_model_options_keeps_them_apart_from_the_defaults(tmp_path):
    _older_config_json(tmp_path, model={"variant": "small", "dropout": 0.25})
    config = get_base_config()
    with pytest.raises(workdir_lib.IncompatibleWorkdirError, match=r"model.dropout: 0.25 in the workdir"):
        workdir_lib.config_changes(str(tmp_path), config)  # the option is not filled in or dropped
    config.model.dropout = 0.25
    assert workdir_lib.config_changes(str(tmp_path), config) == {}


# ------------------------------------------------------------------------------- no fallbacks left

# `.get("<name>")` calls outside fer_flax/config/ whose name happens to be a config key's but whose
# receiver is another dict: (module, receiver) -> what the receiver is.
NOT_CONFIGS = {
    ("research/leaderboard.py", "report"): "an evaluation report read from <run>/eval/",
    ("research/leaderboard.py", "test"): "the test report of a run",
    ("research/sweep/study.py", "study.user_attrs"): "the Optuna study's attributes",
    ("research/sweep/summary.py", "study.user_attrs"): "the Optuna study's attributes",
    ("training/device_input.py", "saved"): "the device stream's position saved in a checkpoint",
    ("training/distill.py", "record or {}"): "the teachers' record of config.json's derived values",
}


def _config_names() -> set[str]:
    """Every key and section name of the config, alone and dotted ("pipeline", "data.pipeline")."""
    names = set()
    for key in KEYS:
        parts = key.split(".")
        names.update(parts)
        names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return names


def _config_gets(source: str) -> list[tuple[str, str, int]]:
    """(receiver, name, line) of every `<receiver>.get("<name>", ...)` in `source` whose name is a config
    key or section name."""
    names, found = _config_names(), []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and first.value in names:
                found.append((ast.unparse(node.func.value), first.value, node.lineno))
    return found


def test_the_check_finds_config_keys_read_with_a_fallback():
    source = """
def f(config, row):
    return config.data.get("pipeline", "grain"), config.get("mix"), row.get("x"), row.get(1)
"""
    assert _config_gets(source) == [("config.data", "pipeline", 3), ("config", "mix", 3)]


def test_no_module_reads_a_config_key_with_a_fallback():
    modules = {path.relative_to(PACKAGE).as_posix(): path for path in sorted(PACKAGE.rglob("*.py"))}
    calls = [
        (module, *call)
        for module, path in modules.items()
        if not module.startswith("config/")
        for call in _config_gets(path.read_text())
    ]
    fallbacks = [f"fer_flax/{m}:{n} {r}.get({k!r})" for m, r, k, n in calls if (m, r) not in NOT_CONFIGS]
    message = "config keys read with .get (every config is complete: index it instead):\n"
    assert not fallbacks, message + "\n".join(fallbacks)
    # Every exception is still there: a stale one would hide a new fallback in its module.
    assert {(m, r) for m, r, _, _ in calls} >= set(NOT_CONFIGS)
