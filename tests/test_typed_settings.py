"""covidlib.experiments.typed_settings: type checks, coercion and profile loading on a small
hand-made settings dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from covidlib.experiments.typed_settings import SettingsError, check_fields, from_profile


@dataclass(frozen=True, kw_only=True)
class _Demo:
    lr: float = 0.1
    epochs: int
    mode: Literal["a", "b"] = "a"
    shape: tuple[int, int] = (2, 3)
    folds: tuple[int, ...] = (0,)
    patience: int | None = None
    caps: dict[str, int | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "demo")


PROFILES = {"small": _Demo(epochs=2, caps={"train": 4, "test": None}),
            "large": _Demo(epochs=20, mode="b")}


def test_from_profile_applies_overrides_and_coerces():
    s = from_profile(PROFILES, "small", {"folds": [1, 2], "shape": [4, 5], "lr": 1}, "demo")
    assert s.folds == (1, 2) and s.shape == (4, 5)  # lists stored as tuples
    assert s.lr == 1 and isinstance(s.lr, int)  # an int is a float, kept as given
    assert s.epochs == 2 and s.caps == {"train": 4, "test": None}
    assert from_profile(PROFILES, "large", None, "demo").mode == "b"


def test_mappings_are_checked_and_never_shared():
    s = from_profile(PROFILES, "small", None, "demo")
    s.caps["train"] = 1  # a copy of the profile's dict
    assert PROFILES["small"].caps == {"train": 4, "test": None}
    given = {"x": [1], "y": object()}
    t = from_profile(PROFILES, "small", {"extra": given}, "demo")
    assert t.extra == given and t.extra is not given  # Any values pass as they are
    with pytest.raises(SettingsError, match=r"demo setting caps=\{'train': 'all'\}: expected "
                                            "a mapping of str to int or None"):
        from_profile(PROFILES, "small", {"caps": {"train": "all"}}, "demo")
    with pytest.raises(SettingsError, match=r"caps=\{1: 2\}"):
        from_profile(PROFILES, "small", {"caps": {1: 2}}, "demo")  # key not a str
    with pytest.raises(SettingsError, match="caps=\\[1\\]: expected a mapping"):
        from_profile(PROFILES, "small", {"caps": [1]}, "demo")


@pytest.mark.parametrize(("overrides", "msg"), [
    ({"epochs": 2.0}, "epochs=2.0: expected int"),
    ({"epochs": True}, "epochs=True: expected int"),
    ({"lr": "fast"}, "lr='fast': expected float"),
    ({"mode": "c"}, "mode='c': expected one of 'a', 'b'"),
    ({"shape": [1]}, r"shape=\[1\]: expected a sequence of 2 values \(int, int\)"),
    ({"folds": [0, "1"]}, r"folds=\[0, '1'\]: expected a sequence of int"),
    ({"patience": 1.5}, "patience=1.5: expected int or None"),
])
def test_bad_values_name_the_setting_and_the_type(overrides, msg):
    with pytest.raises(SettingsError, match="demo setting " + msg):
        from_profile(PROFILES, "small", overrides, "demo")


def test_unknown_profile_or_key_is_named():
    with pytest.raises(SettingsError, match="unknown profile 'huge'; choose one of "
                                            r"\['large', 'small'\]"):
        from_profile(PROFILES, "huge", None, "demo")
    with pytest.raises(SettingsError, match=r"unknown override key\(s\) \['epoch'\]"):
        from_profile(PROFILES, "small", {"epoch": 3}, "demo")
    assert issubclass(SettingsError, ValueError)
    assert dataclasses.is_dataclass(from_profile(PROFILES, "small", {}, "demo"))
