"""Every shipped YAML config validates against the commands it names."""

from pathlib import Path

import pytest
import yaml

from georaster_quant.cli.main import cli
from georaster_quant.config import load_config
from georaster_quant.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    raw = yaml.safe_load(path.read_text())
    sections = [k for k in raw if k in cli.commands] or ["train"]
    for name in sections:
        options = load_config(path, cli.commands[name])
        assert options, f"{path.name}: section {name} is empty"


def test_unknown_key_and_bad_type_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntrain:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="epochz"):
        load_config(bad, cli.commands["train"])
    bad.write_text("version: 1\nepochs: many\n")
    with pytest.raises(ConfigError, match="epochs"):
        load_config(bad, cli.commands["train"])
    bad.write_text("version: 7\n")
    with pytest.raises(ConfigError, match="version"):
        load_config(bad, cli.commands["train"])


@pytest.mark.parametrize(
    ("text", "key"),
    [("stride: 0", "stride"), ("bands: '1,,2,3'", "bands")],
    ids=["range", "callback"],
)
def test_option_checks_run_on_config_values_and_name_the_file(tmp_path, text, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"predict:\n  {text}\n")
    with pytest.raises(ConfigError, match=f"bad.yaml: option '{key}' for predict"):
        load_config(bad, cli.commands["predict"])


def test_keys_may_be_the_flag_names_and_values_take_yaml_forms(tmp_path):
    good = tmp_path / "job.yaml"
    good.write_text(
        "predict:\n  image: scene.tif\n  bands: [3, 2, 1, 4]\n  stride: 16\n"
        "evaluate:\n  weights: runs/best\n  json: eval.json\n  report: runs/report\n"
        "export:\n  format: onnx\n"
    )
    predict = load_config(good, cli.commands["predict"])
    assert predict == {"images": ["scene.tif"], "bands": "3,2,1,4", "stride": 16}
    evaluate = load_config(good, cli.commands["evaluate"])
    assert evaluate["weights"] == ["runs/best"]
    assert evaluate["json_path"] == "eval.json" and evaluate["report_dir"] == "runs/report"
    assert load_config(good, cli.commands["export"])["fmt"] == "onnx"
    for text, needle in [
        ("synth:\n  width: true\n", "a number"),
        ("predict:\n  image: a.tif\n  images: [b.tif]\n", "twice"),
    ]:
        good.write_text(text)
        command = cli.commands[text.split(":")[0]]
        with pytest.raises(ConfigError, match=needle):
            load_config(good, command)
