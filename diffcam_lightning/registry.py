"""One registry type for every name -> entry table in the package.

CAM methods, backprop targets, metrics, alarm rules, score families, SHAM patterns, model
sources, grid writers and batch-coupled module types are all a :class:`Registry`: a
read-only mapping (``name in REG``, ``REG[name]``, ``list(REG)``) whose entries are added
only through :meth:`Registry.register`, which refuses a name that is already taken unless
``replace=True`` says the override is meant (as timm's ``register_model`` warns on one). An
unknown name is a :class:`UnknownNameError` listing the valid ones; it is both a
``KeyError`` (so ``Mapping.get`` works) and a ``ValueError`` (what the callers have always
raised for a bad choice).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
F = TypeVar("F", bound=Callable[..., object])


class UnknownNameError(KeyError, ValueError):
    """A name that is not in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the whole sentence
        return str(self.args[0]) if self.args else ""


def _describe(key: object) -> str:
    return key.__name__ if isinstance(key, type) else str(key)


class Registry(Mapping[K, V], Generic[K, V]):
    """Entries of one kind under names, added only through :meth:`register`.

    Iteration is registration order. The mapping is read-only: there is no ``reg[name] =``,
    so a plug-in cannot silently replace a built-in.

    Args:
        kind: what an entry is, for messages ("CAM method", "alarm rule").
        normalise: maps a name to its stored key (``str.lower`` for case-insensitive
            method names); ``None`` stores names as given.

    Raises:
        UnknownNameError: on lookup of a name that is not registered (lists the valid ones).
        ValueError: from :meth:`register`, for a name already taken (unless ``replace=True``).

    Example:
        >>> from diffcam_lightning.registry import Registry
        >>> colours = Registry("colour", normalise=str.lower)
        >>> colours.register("Red", (255, 0, 0))
        (255, 0, 0)
        >>> colours["RED"], "blue" in colours, list(colours)
        ((255, 0, 0), False, ['red'])
        >>> colours["blue"]
        Traceback (most recent call last):
        ...
        diffcam_lightning.registry.UnknownNameError: Unknown colour 'blue'; valid: red.
        >>> colours.register("red", (250, 0, 0))
        Traceback (most recent call last):
        ...
        ValueError: colour 'red' is already registered; pass replace=True to override it.
    """

    def __init__(self, kind: str, normalise: Callable[[K], K] | None = None) -> None:
        self.kind = kind
        self._normalise = normalise
        self._entries: dict[K, V] = {}

    def key(self, name: K) -> K:
        """The stored form of ``name``."""
        return self._normalise(name) if self._normalise is not None else name

    def register(self, name: K, entry: V, *, replace: bool = False) -> V:
        """Add ``entry`` under ``name`` and return it; a taken name is refused unless ``replace``."""
        key = self.key(name)
        if key in self._entries and not replace:
            raise ValueError(
                f"{self.kind} {_describe(name)!r} is already registered; pass replace=True to override it."
            )
        self._entries[key] = entry
        return entry

    def decorator(self, name: K, *, replace: bool = False) -> Callable[[F], F]:
        """``@REG.decorator(name)``: registers the decorated function itself."""

        def decorate(fn: F) -> F:
            self.register(name, fn, replace=replace)  # type: ignore[arg-type]  # V is the function type
            return fn

        return decorate

    def unregister(self, name: K) -> V:
        """Remove and return the entry under ``name`` (a plug-in's clean-up, a test's teardown)."""
        self[name]  # an unknown name is an UnknownNameError, as on lookup
        return self._entries.pop(self.key(name))

    def __getitem__(self, name: K) -> V:
        if name in self:
            return self._entries[self.key(name)]
        # raised outside any except block: no KeyError(name) as its context, which the CLI's
        # short errors (errors.find_user_error: the innermost cause) would print instead
        valid = ", ".join(_describe(k) for k in self._entries) or "none registered"
        raise UnknownNameError(f"Unknown {self.kind} {_describe(name)!r}; valid: {valid}.")

    def __contains__(self, name: object) -> bool:
        try:
            return self.key(name) in self._entries  # type: ignore[arg-type]
        except (TypeError, AttributeError):
            return False

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[K, ...]:
        """The registered keys, in iteration order (registration order unless a subclass sorts)."""
        return tuple(self)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(_describe(k) for k in self)})"
