"""The Registry: options come from builder signatures, errors name the fix."""

from typing import Annotated

import pytest
from pydantic import Field

from segtune.registry import Registry, RegistryError


@pytest.fixture
def things():
    reg = Registry("thing")

    @reg.register("alpha")
    def alpha(context, /, *, size: Annotated[int, Field(ge=1)] = 3, label: str = "a"):
        """Alpha things."""
        return (context, size, label)

    @reg.register("beta")
    def beta(context, /):
        return context

    return reg


def test_validate_fills_defaults_and_coerces(things):
    # defaults come from the signature; "5" is coerced to the annotated int
    assert things.validate("alpha", {"size": "5"}) == {"size": 5, "label": "a"}


def test_build_passes_context_positionally(things):
    assert things.build("alpha", {"label": "z"}, "ctx") == ("ctx", 3, "z")


def test_unknown_name_suggests_closest(things):
    with pytest.raises(RegistryError, match=r"unknown thing 'alpah' \(did you mean 'alpha'\?\); choose one of: alpha, beta"):
        things.entry("alpah")


def test_unknown_option_lists_valid_ones(things):
    with pytest.raises(RegistryError, match=r"thing 'alpha' has no option 'sise' \(did you mean 'size'\?\); it takes: size, label"):
        things.validate("alpha", {"sise": 2})


def test_option_on_component_without_options(things):
    with pytest.raises(RegistryError, match="it takes no options"):
        things.validate("beta", {"size": 2})


def test_out_of_range_value_names_rule(things):
    with pytest.raises(RegistryError, match=r"size=0: Input should be greater than or equal to 1"):
        things.validate("alpha", {"size": 0})


def test_duplicate_registration_is_refused(things):
    with pytest.raises(TypeError, match="registered twice"):
        things.register("alpha")(lambda: None)


def test_summary_and_defaults(things):
    assert things.entry("alpha").summary == "Alpha things."
    assert things.defaults("alpha") == {"size": 3, "label": "a"}
    assert things.names() == ["alpha", "beta"]
