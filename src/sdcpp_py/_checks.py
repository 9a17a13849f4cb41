"""Argument checks, one policy for every entry point: a wrong type raises TypeError, a bad value
ValueError, and every message names the argument as the caller wrote it."""

from __future__ import annotations

import math
import re
import secrets
from typing import Iterable, Optional

import numpy as np

from . import _core
from ._enums import CoreEnum
from ._images import fs_path, regular_file

try:  # Python 3.11+; sre_parse is the same module before, and deprecated from 3.11 on
    from re import _constants as _sre_constants
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_constants as _sre_constants
    import sre_parse as _sre_parse

# The core's float fields are 32-bit: a larger double would arrive as inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)
INT32_MAX = 2**31 - 1
MAX_SEED = 2**63 - 1
MAX_SIDE = 16384


def check_int(argument: str, value: object, low: int, high: int) -> int:
    """An int in [low, high]: TypeError for another type (bool included), ValueError out of range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argument} must be an int, not {type(value).__name__}")
    if not low <= int(value) <= high:
        raise ValueError(f"{argument}={value} is out of range [{low}, {high}]")
    return int(value)


def check_float(argument: str, value: object, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite number in [low, high]: TypeError for another type, ValueError for inf, nan, a value beyond a
    32-bit float or out of range. The core reads inf as "none given" in some fields and gives an all-white
    image for it in others, so a caller never passes it: where the package means "auto" it sets inf itself."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{argument} must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond a double
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{argument}={value} is not a finite number")
    if abs(number) > FLOAT32_MAX:
        raise ValueError(f"{argument}={value} is not finite as the core's 32-bit float (largest {FLOAT32_MAX:g})")
    if not low <= number <= high:
        raise ValueError(f"{argument}={value} is out of range [{low}, {high}]")
    return number


def check_bool(argument: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{argument} must be a bool, not {type(value).__name__}")
    return bool(value)


def check_prompt(argument: str, text: object) -> None:
    """Refuse prompt text the core would misread: it takes C strings (a NUL would end the prompt early),
    UTF-8 (a lone surrogate has none) and a bounded length (its parser recurses per byte; the native layer
    checks the same limit)."""
    if not isinstance(text, str):
        raise TypeError(f"{argument} must be a str, not {type(text).__name__}")
    index = text.find("\0")
    if index >= 0:
        raise ValueError(f"{argument} contains a NUL character (at index {index}), which would end it early")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise ValueError(f"{argument} is not valid text: a lone surrogate {text[error.start]!r} at index "
                         f"{error.start} has no UTF-8 encoding") from None
    limit = _core.max_prompt_bytes()
    if size > limit:
        raise ValueError(f"{argument} is {size} bytes of UTF-8; the limit is {limit}")


def check_sequence(argument: str, values: object) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{argument} must be a sequence of numbers, not {type(values).__name__}")
    return list(values)


def resolve_seed(seed: object, batch_count: int) -> int:
    """The seed of a call; image i of a batch uses seed + i, which the core computes in an int64_t."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    seed = int(seed)
    largest = MAX_SEED - (batch_count - 1)
    if seed == -1:
        return secrets.randbelow(largest + 1)
    seed = check_int("seed", seed, 0, MAX_SEED)
    if seed > largest:
        raise ValueError(f"seed={seed} with batch_count={batch_count}: image i uses seed + i, which must stay at "
                         f"most 2**63-1, so the largest seed for this batch is {largest}")
    return seed


def model_file(argument: str, value: object) -> str:
    """A model file path (str, bytes or os.PathLike) as a str, refused unless it is a regular file: nothing
    the package opens may be a FIFO or a device, which would block the process or never end. Pass it to the
    native layer as ``native_path(path)`` (bytes), so a file name that is not UTF-8 loads too."""
    return regular_file(argument, fs_path(argument, value), "file")


def check_enum(argument: str, value: object, enum: type, auto: Optional[int] = None) -> int:
    """The core's int for an enum member, its name or value; None gives ``auto`` (the core's "choose")."""
    if value is None and auto is not None:
        return auto
    assert issubclass(enum, CoreEnum)
    return int(enum.coerce(value, argument))


def check_callable(argument: str, value: object, call: str) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{argument} must be callable as {call}")


# -- tensor_type_rules -----------------------------------------------------------------------------
MAX_TENSOR_TYPE_RULES = 4096  # characters; real rule lists are a few dozen
_REPEATS = tuple(getattr(_sre_constants, name) for name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
                 if hasattr(_sre_constants, name))


def check_tensor_type_rules(argument: str, rules: object) -> str:
    """Refuse what the core would skip or fail on in a ``pattern=type,...`` list (model.cpp
    parse_tensor_type_rules): an item without '=' or with an unknown type (skipped with a warning), and a
    pattern its std::regex refuses (thrown where nothing catches it: on a loader thread, an abort)."""
    if not isinstance(rules, str):
        raise TypeError(f"{argument} must be a str like 'attn=q8_0,mlp=q4_0', not {type(rules).__name__}")
    if len(rules) > MAX_TENSOR_TYPE_RULES:
        raise ValueError(f"{argument} is {len(rules)} characters; the limit is {MAX_TENSOR_TYPE_RULES}")
    if "\0" in rules:
        raise ValueError(f"{argument} contains a NUL character, which would end it early")
    try:
        rules.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{argument} is not valid UTF-8 text (a lone surrogate at index {error.start})") from None
    for item in rules.split(","):  # as the core splits it; it skips empty items, so do we
        if not item:
            continue
        pattern, equals, type_name = item.partition("=")
        if not equals:
            raise ValueError(f"{argument}: {item!r} is not pattern=type (the core would skip it; ',' separates "
                             "rules, so no pattern can hold one)")
        if type_name not in _core.TENSOR_RULE_TYPES:
            raise ValueError(f"{argument}: {item!r} names the unknown type {type_name!r} (the core would skip it); "
                             f"valid types: {', '.join(_core.TENSOR_RULE_TYPES)}")
        error = _core.regex_error(pattern)
        if error is not None:
            raise ValueError(f"{argument}: {pattern!r} is not a regular expression the core can compile: {error}")
        problem = _backtracking_problem(pattern)
        if problem:
            raise ValueError(f"{argument}: {pattern!r}: {problem}")
    return rules


def _backtracking_problem(pattern: str) -> Optional[str]:
    """Why ``pattern`` could take exponential time in the core's backtracking std::regex, or None.

    The core matches every rule against every tensor name; a repeated group that can match the same text in
    more than one way, like ``(a+)+`` or ``(a|aa)*``, makes a failing match try exponentially many splits, so
    one rule could hang a load. Such groups are refused: a repeat (more than once) whose body holds a
    variable repeat or an alternation. Python's own parser reads the pattern: ECMAScript and Python syntax
    agree on groups, quantifiers and alternation, except that Python reads a ']' right after '[' or '[^' as a
    literal where ECMAScript ends the class, and that Python refuses stacked quantifiers ('a**', 'a+{2}'),
    which std::regex accepts as a repeat of a repeat. For those, and whatever else Python cannot parse, a
    plain textual check refuses any quantified group or stacked quantifier, to be safe.
    """
    bare = re.sub(r"\\.", "x", pattern)  # escapes are single characters here
    parsed = None
    if not re.search(r"\[\^?\]", bare):
        try:
            parsed = _sre_parse.parse(pattern)
        except (_sre_constants.error, RecursionError, OverflowError):
            pass
    if parsed is not None:
        return _nested_repeat(parsed, inside=False)
    quantifier = r"(?:[*+?]|\{\d*,?\d*\})"
    if re.search(r"\)[*+{]", bare) or re.search(quantifier + r"\??[*+{]", bare):
        return ("a quantified group or a quantified quantifier, in a pattern Python's regex parser cannot read "
                "as the core does, so it cannot be shown free of exponential backtracking; rewrite it without "
                "repeating a group or a repeat")
    return None


def _nested_repeat(items, inside: bool) -> Optional[str]:
    why = ("a repeated group holding a quantifier or an alternation can backtrack exponentially on a tensor "
           "name; rewrite it without nesting (e.g. '(a+)+' as 'a+')")
    for op, av in items:
        children: list = []
        repeating = inside
        if op in _REPEATS:
            low, high, body = av
            if inside and low != high:
                return why
            repeating = inside or high > 1
            if repeating and not inside and _has_branch(body):
                return why
            children = [body]
        elif op == _sre_constants.BRANCH:
            if inside:
                return why
            children = av[1]
        elif op == _sre_constants.SUBPATTERN:
            children = [av[-1]]
        elif op in (_sre_constants.ASSERT, _sre_constants.ASSERT_NOT):
            children = [av[1]]
        elif op == _sre_constants.GROUPREF_EXISTS:
            children = [branch for branch in av[1:] if branch is not None]
        elif op == getattr(_sre_constants, "ATOMIC_GROUP", None):
            children = [av]
        for child in children:
            problem = _nested_repeat(child, repeating)
            if problem:
                return problem
    return None


def _has_branch(items) -> bool:
    for op, av in items:
        if op == _sre_constants.BRANCH:
            return True
        if op in _REPEATS and _has_branch(av[2]):
            return True
        if op == _sre_constants.SUBPATTERN and _has_branch(av[-1]):
            return True
    return False
