"""Stage parameters: declared once, checked once.

Every stage's ``Params`` is a frozen dataclass deriving from :class:`StageParams`, each
field declared with :func:`param`: its default, a one-line help that gives the unit, and
the values allowed (a range, or a list of choices).  Constructing the dataclass converts
each value to the field's type (recipes and ``--set`` give YAML scalars: an int where a
float is wanted, a string where a number is) and checks it, and then runs
:meth:`StageParams.check` for rules that involve several fields.  The extract engine
builds every stage's parameters in the main process before any worker starts, so a bad
value is one line naming the parameter, the value and what is allowed, and never a
crashed worker.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, NoReturn

from vidaffect.errors import ParameterError


def param(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A stage parameter field.

    Parameters
    ----------
    default : Any
        The value when neither recipe nor command line sets one: the one place this
        default lives.
    help : str
        One line for ``vidaffect info --recipe`` and the README, with the unit.
    low, high : float or None
        Inclusive bounds.
    above : float or None
        Exclusive lower bound (the value must be greater).
    choices : tuple or None
        The only values allowed.
    """
    meta = {"help": help, "low": low, "high": high, "above": above, "choices": choices}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class StageParams:
    """Base of the stages' parameter dataclasses (see the module docstring)."""

    stage: ClassVar[str] = ""  # the stage name, so that messages say "face.detect_every"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = self._convert(f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
            self._check_field(f, value)
        self.check()

    def check(self) -> None:
        """Rules that involve several fields; raise with :meth:`fail`."""

    def fail(self, name: str, message: str) -> NoReturn:
        """Raise the one-line :class:`ParameterError` for parameter ``name``."""
        raise ParameterError(f"{self.stage}.{name} {message}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(name, default, help) of every parameter, in declaration order."""
        return [(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls)]

    def _convert(self, name: str, value: Any, kind: Any) -> Any:
        options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
        if value is None and type(None) in options:
            return None
        wanted = next(t for t in options if t is not type(None))
        try:
            if wanted is bool:
                if isinstance(value, bool):
                    return value
                if str(value).lower() in ("true", "yes", "1", "false", "no", "0"):
                    return str(value).lower() in ("true", "yes", "1")
                raise ValueError
            if wanted is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                return int(value)
            if wanted is float:
                if isinstance(value, bool):
                    raise ValueError
                return float(value)
            if wanted is str:
                if isinstance(value, (dict, list, tuple)):
                    raise ValueError
                return str(value)
        except (TypeError, ValueError):
            self.fail(name, f"must be {'a whole number' if wanted is int else 'a number' if wanted is float else wanted.__name__}; got {value!r}")
        return value

    def _check_field(self, f: dataclasses.Field, value: Any) -> None:
        meta = f.metadata
        if value is None:
            return
        if meta.get("choices") is not None and value not in meta["choices"]:
            self.fail(f.name, f"must be one of {', '.join(map(str, meta['choices']))}; got {value!r}")
        if meta.get("low") is not None and value < meta["low"]:
            self.fail(f.name, f"must be at least {meta['low']:g}; got {value!r}")
        if meta.get("high") is not None and value > meta["high"]:
            self.fail(f.name, f"must be at most {meta['high']:g}; got {value!r}")
        if meta.get("above") is not None and value <= meta["above"]:
            self.fail(f.name, f"must be greater than {meta['above']:g}; got {value!r}")
