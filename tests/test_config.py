"""Config: presets, TOML, overrides, unknown keys, JSON round trip, task sections."""

import json

import attrs
import pytest

from piti_core.config import (config_from_json, config_to_json, load_config, parse_override, resolve_config,
                              save_config)
from piti_core.errors import ConfigError


@attrs.frozen
class FooOptions:
    shots: int = 10
    name: str = "x"


def test_presets_differ_and_glide_is_official():
    glide, tiny = resolve_config(preset="glide"), resolve_config(preset="tiny")
    assert glide.model.model_channels == 192 and glide.model.channel_mult == (1, 2, 3, 4)
    assert glide.upsampler.image_size == 256 and glide.upsampler.super_res == 64
    assert glide.encoder.cond_size == 256 and glide.encoder.width == 512
    assert tiny.model.image_size < glide.model.image_size and tiny.preset == "tiny"


def test_overrides_convert_types():
    cfg = resolve_config(preset="tiny", overrides=[
        "train.lr=1e-3", "model.dropout=0.25", "model.checkpointing=true", "model.channel_mult=1,2",
        "sample.steps=ddim25", "data.root=/some/where", "train.batch_size=3", "model.use_scale_shift_norm=no",
    ])
    assert cfg.train.lr == 1e-3 and cfg.model.dropout == 0.25 and cfg.model.checkpointing is True
    assert cfg.model.channel_mult == (1, 2) and cfg.sample.steps == "ddim25"
    assert cfg.data.root == "/some/where" and cfg.train.batch_size == 3
    assert cfg.model.use_scale_shift_norm is False


@pytest.mark.parametrize("override, match", [
    ("model.nope=1", "unknown config key 'model.nope'; valid keys: .*model.dropout"),
    ("bogus.x=1", "unknown config key 'bogus'"),
    ("train.batch_size=abc", "bad value for 'train.batch_size'"),
    ("train.batch_size=1.5", "bad value for 'train.batch_size'"),
    ("model.dropout=2.0", "'model.dropout': must be in"),
    ("model.checkpointing=maybe", "expected true/false"),
    ("diffusion.schedule=quadratic", "bad value for 'diffusion.schedule': must be in"),
    ("train.lr=-1", "bad value for 'train.lr': must be > 0"),
    ("encoder.width=33", "bad value in \\[encoder\\]: width 33 is not divisible"),
    ("novalue", "must look like section.key=value"),
    ("model=3", "must be a section"),
])
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(preset="tiny", overrides=[override])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'; valid presets: glide, tiny"):
        resolve_config(preset="huge")


def test_toml_file_then_overrides(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('preset = "tiny"\ntask = "sketch"\n[train]\nlr = 5e-4\nbatch_size = 2\n[foo]\nshots = 3\n')
    cfg = resolve_config(files=[f], overrides=["train.batch_size=6"], extra_sections={"foo": FooOptions})
    assert cfg.preset == "tiny" and cfg.task == "sketch"
    assert cfg.train.lr == 5e-4 and cfg.train.batch_size == 6
    assert cfg.task_options("foo") == FooOptions(shots=3)


def test_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(files=[tmp_path / "missing.toml"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(files=[bad])


def test_task_section_overrides_and_unknown_keys():
    cfg = resolve_config(preset="tiny", overrides=["foo.shots=5"], extra_sections={"foo": FooOptions})
    assert cfg.task_options("foo").shots == 5
    with pytest.raises(ConfigError, match="unknown config key 'tasks.foo.shot'; valid keys: tasks.foo.name, tasks.foo.shots"):
        resolve_config(overrides=["foo.shot=5"], extra_sections={"foo": FooOptions})
    with pytest.raises(ConfigError, match="unknown config key 'foo'"):
        resolve_config(overrides=["foo.shots=5"])


def test_json_round_trip(tmp_path):
    cfg = resolve_config(preset="tiny", overrides=["train.lr=1e-3", "foo.shots=7", "model.channel_mult=1,2,4"],
                         extra_sections={"foo": FooOptions})
    text = config_to_json(cfg)
    again = config_from_json(text, extra_sections={"foo": FooOptions})
    assert again == cfg
    save_config(cfg, tmp_path / "run" / "config.json")
    assert load_config(tmp_path / "run" / "config.json", {"foo": FooOptions}) == cfg
    assert not list((tmp_path / "run").glob("*.tmp"))  # atomic write leaves no temp file


def test_json_with_section_of_missing_plugin():
    """The options of the config's own task need its plugin; another task's options are not needed."""
    own = resolve_config(overrides=["foo.shots=7", "task=foo"], extra_sections={"foo": FooOptions})
    with pytest.raises(ConfigError, match="section 'tasks.foo' but no installed task declares it"):
        config_from_json(config_to_json(own))
    other = resolve_config(overrides=["foo.shots=7", "task=sketch"], extra_sections={"foo": FooOptions})
    assert config_from_json(config_to_json(other)).tasks == {}
    legacy = json.loads(config_to_json(other))
    legacy["foo"] = legacy.pop("tasks")["foo"]  # today's form: a top-level task section
    with pytest.raises(ConfigError, match="section 'foo' but no installed task declares it"):
        config_from_json(json.dumps(legacy))


def test_parse_override_strings_and_lists():
    assert parse_override("data.root=/a b/c") == (["data", "root"], "/a b/c")
    assert parse_override("model.channel_mult=[1,2]") == (["model", "channel_mult"], [1, 2])
    assert parse_override('sample.steps="250"') == (["sample", "steps"], "250")
    cfg = resolve_config(overrides=["sample.steps=250"])
    assert cfg.sample.steps == "250"


def test_saved_config_missing_a_newer_key_keeps_the_old_behaviour():
    """A run written before a key existed gets the class default, not the preset's new value."""
    import json

    from piti_core.config import config_from_json, config_to_json

    data = json.loads(config_to_json(resolve_config("tiny")))
    assert data["encoder"]["hint_channels"] > 0  # the tiny preset turns the hint on
    del data["encoder"]["hint_channels"]
    del data["fewshot"]
    cfg = config_from_json(json.dumps(data))
    assert cfg.encoder.hint_channels == 0 and cfg.fewshot.shots == 0
    assert cfg.model.image_size == 32  # keys the file holds are kept


@pytest.mark.parametrize("override", [
    "train.lr=inf", "train.lr=nan", "train.lr=-inf", "train.grad_clip=1e999", "train.stage_minutes=inf",
    "train.weight_decay=inf", "sample.guidance_scale=inf", "fewshot.rotate=nan", "foo.ratio=inf",
    "model.channel_mult=[1, 1e999]", "train.batch_size=inf", "train.batch_size=[inf]", "train.seed=1e300",
])
def test_non_finite_numbers_are_refused(override):
    """inf and NaN are refused in every section, a task's included, as one ConfigError naming the key."""
    key = override.split("=")[0]
    key = f"tasks.{key}" if key.startswith("foo.") else key  # a task's options are named in their namespace
    with pytest.raises(ConfigError, match=f"bad value for '{key}'"):
        resolve_config(preset="tiny", overrides=[override], extra_sections={"foo": RatioOptions})


@attrs.frozen
class RatioOptions:
    ratio: float = 0.5  # no validator: the config layer alone keeps it finite


def test_non_finite_numbers_in_files_name_the_file(tmp_path):
    toml = tmp_path / "inf.toml"
    toml.write_text("[train]\nlr = inf\n")
    with pytest.raises(ConfigError, match=f"'train.lr' in {toml}: inf is not a finite number"):
        resolve_config(files=[toml])
    run = tmp_path / "run"
    save_config(resolve_config(preset="tiny"), run / "config.json")
    text = (run / "config.json").read_text().replace('"grad_clip": 1.0', '"grad_clip": Infinity')
    (run / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=f"^{run / 'config.json'}: bad value for 'train.grad_clip'"):
        load_config(run / "config.json")


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b"\xff\xfe{}"], ids=["syntax", "list", "not-utf8"])
def test_invalid_config_json_names_its_file(tmp_path, data):
    path = tmp_path / "config.json"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_config_file_that_is_a_folder_or_not_utf8(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        resolve_config(files=[tmp_path])
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[data]\nroot = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"config file {latin} is not UTF-8"):
        resolve_config(files=[latin])


# ---------------------------------------------------------------------------------- the tasks namespace
def test_task_options_live_under_tasks_in_every_layer(tmp_path):
    """[tasks.foo] in TOML, --set tasks.foo.key=v and "tasks": {"foo": ...} in config.json."""
    f = tmp_path / "run.toml"
    f.write_text('[tasks.foo]\nshots = 3\nname = "file"\n')
    cfg = resolve_config(preset="tiny", files=[f], overrides=["tasks.foo.shots=4"], extra_sections={"foo": FooOptions})
    assert cfg.task_options("foo") == FooOptions(shots=4, name="file")
    data = json.loads(config_to_json(cfg))
    assert data["tasks"] == {"foo": {"shots": 4, "name": "file"}} and "foo" not in data
    assert config_from_json(config_to_json(cfg), {"foo": FooOptions}) == cfg


def test_todays_top_level_task_sections_are_still_read(tmp_path):
    """[foo] in TOML, --set foo.key=v and config.json files with a top-level "foo" section keep working,
    each layer in its order whichever form it uses."""
    f = tmp_path / "old.toml"
    f.write_text('[foo]\nshots = 3\nname = "file"\n')
    cfg = resolve_config(preset="tiny", files=[f], overrides=["tasks.foo.name=set", "foo.shots=9"],
                         extra_sections={"foo": FooOptions})
    assert cfg.task_options("foo") == FooOptions(shots=9, name="set")
    old = json.loads(config_to_json(cfg))
    old["foo"] = old.pop("tasks")["foo"]
    assert config_from_json(json.dumps(old), {"foo": FooOptions}) == cfg


def test_one_task_in_both_forms_in_one_file_is_refused(tmp_path):
    f = tmp_path / "both.toml"
    f.write_text('[foo]\nshots = 3\n[tasks.foo]\nshots = 4\n')
    with pytest.raises(ConfigError, match=r"both in \[foo\] and \[tasks.foo\] in .*both.toml"):
        resolve_config(files=[f], extra_sections={"foo": FooOptions})


@pytest.mark.parametrize("override, match", [
    ("tasks.bar.shots=1", "unknown config key 'tasks.bar'; valid keys: tasks.foo"),
    ("tasks.foo.nope=1", "unknown config key 'tasks.foo.nope'"),
    ("tasks.foo=3", "'tasks.foo' must be a section"),
    ("tasks=3", "'tasks' must be a table of task sections"),
    ("tasks.foo.shots=abc", "bad value for 'tasks.foo.shots'"),
    ("bogus.x=1", "unknown config key 'bogus'; valid keys: .*tasks.foo"),
])
def test_bad_task_namespace_keys(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(overrides=[override], extra_sections={"foo": FooOptions})


def test_task_without_options_refuses_a_section():
    with pytest.raises(ConfigError, match=r"task 'foo' takes no options, but \[tasks.foo\] was given"):
        resolve_config(overrides=["tasks.foo.x=1"], extra_sections={"foo": None})
    with pytest.raises(ConfigError, match="takes no options"):
        resolve_config(overrides=["foo.x=1"], extra_sections={"foo": None})
