"""crop.train.common's typed config loader: wrong scalar types raise naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from crop.train.common import ConfigError, from_dict, load_config


@dataclass
class Inner:
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip: float | None = None


@dataclass
class Outer:
    name: str = "x"
    steps: int = 1
    flag: bool = False
    extra: dict = field(default_factory=dict)
    optim: Inner = field(default_factory=Inner)


@pytest.mark.parametrize("data,where", [
    ({"optim": {"lr": "fast"}}, r"config\.optim\.lr: expected float, got 'fast'"),
    ({"optim": {"lr": True}}, r"config\.optim\.lr: expected float, got True"),
    ({"optim": {"lr": "nan"}}, r"config\.optim\.lr: expected float"),
    ({"optim": {"betas": [0.9, "high"]}}, r"config\.optim\.betas\[1\]: expected float"),
    ({"optim": {"clip": "off"}}, r"config\.optim\.clip: 'off' is not"),
    ({"steps": "3"}, r"config\.steps: expected int, got '3'"),
    ({"steps": 2.5}, r"config\.steps: expected int"),
    ({"flag": "yes please"}, r"config\.flag: expected bool"),
    ({"extra": [1, 2]}, r"config\.extra: expected a mapping"),
    ({"optim": {"learning_rate": 1.0}}, r"unknown field\(s\) \['learning_rate'\]"),
])
def test_wrong_types_raise_naming_the_field(data, where):
    with pytest.raises(ConfigError, match=where):
        from_dict(Outer, data)


def test_numbers_and_yaml_exponent_strings_become_floats(tmp_path):
    cfg = from_dict(Outer, {"optim": {"lr": 3, "betas": [1, "0.5"], "clip": None}, "extra": {"a": 1}})
    assert cfg.optim.lr == 3.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == [1.0, 0.5] and cfg.optim.clip is None and cfg.extra == {"a": 1}
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  clip: 2\n")  # YAML 1.1 reads 1e-3 (no dot) as a string
    loaded = load_config(Outer, path)
    assert loaded.optim.lr == 1e-3 and loaded.optim.clip == 2.0
    with pytest.raises(ConfigError, match=r"c\.yaml\.optim\.lr: expected float, got 'fast'"):
        load_config(Outer, path, ["optim.lr=fast"])
