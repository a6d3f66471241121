"""SourceUser -> DesiredUser: attribute rules and sandboxed Jinja2 templates.

Decisions:
- A template sees every LDAP attribute by its lower-case name and by the spelling used in
  the config, first value as str, plus `guid` and `dn`.
- A variable the entry lacks is never silent. In `userName` and `emails.work` the rule
  yields nothing (then its default, if any) and the record is a MappingFailure naming the
  rule and the variable. Elsewhere the template renders it empty, as before, and the Mapper
  counts it: `warnings()` gives one line per rule and variable with the count, which the
  engine logs once a cycle and `check` prints. No count when the rule's own default
  replaced the empty result, and none for `{{ x | default(...) }}` or `{% if x is defined
  %}`: those say the attribute is optional (the undefined value is tested, never rendered).
- A sandbox refusal (`{{ ''.__class__ }}`, `{{ [].append(1) }}`) makes the record a
  MappingFailure naming the rule, whatever the attribute: it is a mistake in the config, and
  dropping the attribute silently would hide it. Other render errors count as empty and the
  rule's default applies, as PingFederate sends the default when an expression fails
  (reference/pingfederate-provisioning.md, Attribute Mapping); they are counted and warned
  about like missing variables, and in a required attribute the record fails.
- Values are cleaned before any rule sees them: control characters become spaces (tabs and
  newlines too: every SCIM attribute we map is one line), lone surrogates (undecodable
  bytes) become U+FFFD, so a value can always be encoded as JSON and UTF-8.
- A value is capped at MAX_VALUE_LENGTH characters. An optional attribute is truncated;
  userName and emails.work are refused instead, since a truncated identity could match
  someone else's account.
- Order per rule: value (source or template), parser, trim, case; then the default if empty.
  The default is used as written. Empty values are dropped.
- Templates have limits (TemplateLimits), as the sandbox only blocks escapes: CPU time per
  render, characters emitted per render, the size of a value an operation builds, and
  range(). Hitting one is a render error like any other (TemplateLimitError): the rule's
  default applies to an optional attribute, a required one makes the record a
  MappingFailure; both name the rule and the limit. Not a refusal: a limit can be met by
  data (an attribute value far longer than usual), not only by a mistaken template.
  A rule that runs out of time for TIME_OUTS_BEFORE_GIVING_UP entries is not rendered
  again by that Mapper: the remaining entries fail the same way without the cost.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, NoReturn

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateRuntimeError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from jinja2.visitor import NodeTransformer

from scimsync.config import MappingRule
from scimsync.errors import ConfigurationError, RecordError
from scimsync.model import DesiredGroup, DesiredUser, Kind, MappingFailure, SourceGroup, SourceUser

MAX_VALUE_LENGTH = 1024
REQUIRED = ("userName", "emails.work")
_BUILTINS = frozenset({"guid", "dn"})
# Cc (C0, DEL, C1) and lone surrogates (Cs), which cannot be encoded as UTF-8.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


NOTHING: frozenset[str] = frozenset()


class MappingConfigError(ConfigurationError):
    """A mapping rule that cannot work, phrased as one line naming `mapping.<attribute>`."""


def clean(value: str) -> str:
    """Make any string safe to push: no control characters, no lone surrogates."""
    return _SURROGATE.sub("\ufffd", _CONTROL.sub(" ", value))


def cn_from_dn(dn: str) -> str:
    """The value of the first `cn=` RDN of a DN (RFC 4514 escapes honoured), else ''."""
    for rdn in _split_unescaped(dn, ","):
        for ava in _split_unescaped(rdn, "+"):
            name, sep, value = ava.partition("=")
            if sep and name.strip().lower() == "cn":
                return _unescape_dn_value(value.strip())
    return ""


def username_from_email(value: str) -> str:
    """The local part of an address: 'jsmith@example.com' -> 'jsmith'."""
    return value.rpartition("@")[0] if "@" in value else value


def looks_like_email(value: str) -> bool:
    local, sep, domain = value.partition("@")
    return bool(sep and local and domain and "@" not in domain and not re.search(r"\s", value))


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape_dn_value(value: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    # \XX pairs are UTF-8 bytes (RFC 4514 section 2.4), so gather bytes, then decode.
    out = bytearray()
    for match in re.finditer(r"\\([0-9A-Fa-f]{2})|\\(.)|(.)", value, re.DOTALL):
        hex_pair, escaped, plain = match.groups()
        if hex_pair is not None:
            out.append(int(hex_pair, 16))
        else:
            out += (escaped if escaped is not None else plain).encode("utf-8", "surrogatepass")
    return out.decode("utf-8", "replace")


_PARSERS = {"cn_from_dn": cn_from_dn, "username_from_email": username_from_email}


@dataclass(slots=True)
class _Trace:
    """What the undefined values of one render stood for."""

    missing: list[str] = field(default_factory=list)  # variables the entry lacks, used
    refused: list[str] = field(default_factory=list)  # sandbox messages
    undefined: list[str] = field(default_factory=list)  # other undefined values used
    deadline: float = 0.0  # thread CPU time the render must end by; 0: none (compiling)
    emitted: int = 0  # characters the render has output so far, buffers included

    def __bool__(self) -> bool:
        return bool(self.missing or self.refused or self.undefined)


_TRACE: ContextVar[_Trace | None] = ContextVar("scimsync_template_trace", default=None)


class _TracingUndefined(jinja2.ChainableUndefined):
    """ChainableUndefined (renders as '') that tells the running render what it stood for.

    Only *using* it counts (rendering, iterating, arithmetic): `is defined` and `|default`
    test it without using it. An unsafe attribute counts as soon as it is looked up.
    """

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[TemplateRuntimeError] = UndefinedError,
    ) -> None:
        super().__init__(hint, obj, name, exc)
        trace = _TRACE.get()
        if trace is not None and exc is SecurityError:
            trace.refused.append(self._undefined_message)

    def _used(self) -> None:
        trace = _TRACE.get()
        if trace is None or self._undefined_exception is SecurityError:
            return
        if self._undefined_obj is missing and isinstance(self._undefined_name, str):
            trace.missing.append(self._undefined_name)
        else:  # `{{ mail.nope }}`: an attribute of a value, not of the entry
            trace.undefined.append(self._undefined_message)

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._used()
        super()._fail_with_undefined_error(*args, **kwargs)

    # Undefined binds these to its own _fail_with_undefined_error: bind them to ours.
    __add__ = __radd__ = __sub__ = __rsub__ = _fail_with_undefined_error
    __mul__ = __rmul__ = __div__ = __rdiv__ = _fail_with_undefined_error
    __truediv__ = __rtruediv__ = _fail_with_undefined_error
    __floordiv__ = __rfloordiv__ = _fail_with_undefined_error
    __mod__ = __rmod__ = _fail_with_undefined_error
    __pos__ = __neg__ = _fail_with_undefined_error
    __call__ = _fail_with_undefined_error
    __lt__ = __le__ = __gt__ = __ge__ = _fail_with_undefined_error
    __int__ = __float__ = __complex__ = _fail_with_undefined_error
    __pow__ = __rpow__ = _fail_with_undefined_error

    def __str__(self) -> str:
        self._used()
        return ""

    def __len__(self) -> int:
        self._used()
        return 0

    def __iter__(self) -> Iterator[Any]:
        self._used()
        return iter(())


@dataclass(frozen=True, slots=True)
class TemplateLimits:
    """What one render of one rule may use; far above what any real mapping needs."""

    cpu_seconds: float = 0.05  # thread CPU time, so a busy machine does not trip it
    output: int = 65_536  # characters emitted, `{% set %}` blocks and macros included
    value: int = 10_000  # characters (or items) an operation may build ...
    int_bits: int = 64  # ... and the bits of a number it may build
    range_items: int = 10_000  # what range() may produce (Jinja2's own cap: 100,000)


DEFAULT_LIMITS = TemplateLimits()
# Jinja2's default globals that no mapping needs; lipsum() is slow by design, and a
# namespace's attributes, set by `{% set ns.x = ... %}`, are out of reach of the size checks.
DROPPED_GLOBALS = ("lipsum", "cycler", "joiner", "namespace")


class TemplateLimitError(TemplateRuntimeError, RecordError):
    """A render went over one of its TemplateLimits: that user fails to map."""

    def __init__(self, message: str, *, time_out: bool = False) -> None:
        super().__init__(message)
        self.time_out = time_out


# A rule that runs out of time for this many entries is not rendered again by that Mapper
# (one cycle): the rest fail the same way at no cost, not 50 ms each.
TIME_OUTS_BEFORE_GIVING_UP = 10


_SIZE_CEILING = 10**8  # no size is counted further: anything near it is refused anyway


def _size(value: Any, stop: int = _SIZE_CEILING) -> int:
    """Characters and items a value holds, nested ones included, once per reference (as
    str() prints them: `[[a] * 100] * 100` is 10,000 copies of a); counted up to `stop`."""
    total, pending = 0, [value]
    while pending and total <= stop:
        item = pending.pop()
        if isinstance(item, (str, bytes, range)):
            total += len(item)
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item)
            pending.extend(item)
        elif isinstance(item, dict):
            total += len(item)
            pending.extend(item.keys())
            pending.extend(item.values())
    return total


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_JINJA_KWARGS = frozenset({"_loop_vars", "_block_vars"})  # what Jinja2 adds to calls
# `%` conversions: flags, then a width and a precision, either of which may be `*`.
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus TemplateLimits: every hook Jinja2 offers checks the CPU time used,
    and each operation that can make a value much bigger than its inputs is checked
    before it runs (`*`, `**`, `+`, `~`, `%`, padding, replace, join, format widths) or,
    where its size cannot be known in advance, after (any call or filter).
    Templates must be compiled with compile_limited, which adds the loop and output hooks.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, limits: TemplateLimits) -> None:
        # Not HTML: no autoescape. A missing attribute renders as '', and is traced.
        super().__init__(autoescape=False, undefined=_TracingUndefined)
        self.limits = limits
        for name in DROPPED_GLOBALS:
            del self.globals[name]
        self.globals["range"] = self.limited_range
        self.filters = {name: self._limited_filter(name, f) for name, f in self.filters.items()}

    # --- the hooks the compiled template calls (see _LimitHooks) -----------------------

    def tick(self) -> None:
        """Stop the render once its CPU time is up."""
        trace = _TRACE.get()
        if trace is not None and trace.deadline and time.thread_time() > trace.deadline:
            milliseconds = round(self.limits.cpu_seconds * 1000)
            raise TemplateLimitError(
                f"the template exceeded its time limit ({milliseconds} ms of CPU)", time_out=True
            )

    def limited_loop(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.tick()
            yield item

    def limited_output(self, value: Any) -> str:
        """What `{{ }}` and the text around it emit; str() as Jinja2 would, counted."""
        text = value if type(value) is str else str(value)
        trace = _TRACE.get()
        if trace is not None and trace.deadline:
            trace.emitted += len(text)
            if trace.emitted > self.limits.output:
                raise TemplateLimitError(
                    f"the template's output exceeded {self.limits.output} characters"
                )
        return text

    def limited_concat(self, *parts: Any) -> str:
        texts = [part if type(part) is str else str(part) for part in parts]
        self._check_size("'~'", sum(map(len, texts)), texts)
        return "".join(texts)

    def limited_literal(self, value: Any) -> Any:
        """A `[...]`, `(...)` or `{...}` in the template: its strings as they are, but no
        more than `value` characters or items besides (`[b, b, b]` of lists `b`)."""
        elements = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        allowed = self.limits.value + len(value)
        allowed += sum(len(element) for element in elements if isinstance(element, str))
        if _size(value, allowed) > allowed:
            raise TemplateLimitError(
                f"a literal would hold more than {allowed} characters or items: the limit "
                f"is {self.limits.value} besides its strings"
            )
        return value

    def limited_range(self, *args: int) -> range:
        numbers = range(*args)
        if len(numbers) > self.limits.range_items:
            raise TemplateLimitError(
                f"range() of {len(numbers)} items: the limit is {self.limits.range_items}"
            )
        return numbers

    # --- the sandbox's own hooks ------------------------------------------------------

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.tick()
        owner = getattr(obj, "__self__", None)
        if owner is self:  # one of the hooks above, which check what they build
            return super().call(context, obj, *args, **kwargs)
        name = getattr(obj, "__name__", "a call")
        if isinstance(owner, str):
            self._check_size(f"str.{name}()", _str_method_size(owner, name, args), [owner])
        inputs = [owner, *args, *(v for k, v in kwargs.items() if k not in _JINJA_KWARGS)]
        result = super().call(context, obj, *args, **kwargs)
        self._check_result(name, result, inputs)
        return result

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.tick()
        what = f"'{operator}'"
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, (str, list, tuple)) and _is_int(times):
                    self._check_size(what, _size(sequence) * times, [sequence])
            if _is_int(left) and _is_int(right):
                self._check_bits(what, left.bit_length() + right.bit_length() - 1, left, right)
        elif operator == "**" and _is_int(left) and _is_int(right) and abs(left) > 1:
            if right > 0:
                self._check_bits(what, (left.bit_length() - 1) * right + 1, left, right)
        elif operator == "+" and isinstance(left, (str, list, tuple)):
            self._check_size(what, _size(left) + _size(right), [left, right])
        elif operator == "%" and isinstance(left, str):
            self._check_percent(left, right)
        result = super().call_binop(context, operator, left, right)
        if _is_int(result):
            self._check_bits(what, result.bit_length(), left, right)
        elif operator == "%":
            self._check_result(what, result, (left, right))
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        formatter = super().wrap_str_format(value)
        if formatter is None:
            return None
        pattern: str = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            self._check_format_widths(pattern, [*args, *kwargs.values()])
            return formatter(*args, **kwargs)

        return checked

    # --- checks -----------------------------------------------------------------------

    def _limited_filter(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        predict = _FILTER_SIZES.get(name)
        # A pass_context (or eval_context, environment) filter gets that first.
        first = 0 if getattr(function, "jinja_pass_arg", None) is None else 1

        def limited(*args: Any, **kwargs: Any) -> Any:
            self.tick()
            if predict is not None:
                size = predict(self, *args[first:], **kwargs)
                self._check_size(f"|{name}", size, args[first:])
            result = function(*args, **kwargs)
            self._check_result(f"|{name}", result, args)
            return result

        limited.__dict__.update(getattr(function, "__dict__", {}))  # pass_context and the like
        limited.__name__ = getattr(function, "__name__", name)
        return limited

    def _check_size(self, what: str, size: int, inputs: Sequence[Any]) -> None:
        """Refuse to build more than `value` characters, unless no more than an input."""
        if size > self.limits.value and all(_size(i, size) < size for i in inputs):
            raise TemplateLimitError(
                f"{what} would build {size} characters or items: the limit is {self.limits.value}"
            )

    def _check_result(self, what: str, result: Any, inputs: Sequence[Any]) -> None:
        allowed = max([self.limits.value, *(_size(i) for i in inputs)])
        # Counted no further than needed: a result may hold one list many times over.
        if _size(result, allowed) > allowed:
            raise TemplateLimitError(
                f"{what} built more than {allowed} characters or items: "
                f"the limit is {self.limits.value}"
            )

    def _check_bits(self, what: str, bits: int, *inputs: Any) -> None:
        largest = max((n.bit_length() for n in inputs if isinstance(n, int)), default=0)
        if bits > self.limits.int_bits and bits > largest:
            raise TemplateLimitError(
                f"{what} would build a number of {bits} bits: the limit is {self.limits.int_bits}"
            )

    def _check_percent(self, pattern: str, arguments: Any) -> None:
        """`'%9999999s' % x` pads before anything could check the result: check the widths."""
        values = arguments if isinstance(arguments, tuple) else (arguments,)
        specs = [w for m in _PERCENT_SPEC.finditer(pattern) for w in m.groups() if w]
        widths = [int(w) for w in specs if w != "*"]
        if "*" in specs:  # the width is an argument
            widths += [v for v in values if _is_int(v)]
        self._check_widths("'%'", widths, pattern)

    def _check_format_widths(self, pattern: str, arguments: list[Any]) -> None:
        widths: list[int] = []
        for _, _, spec, _ in string.Formatter().parse(pattern):
            if spec:
                widths += [int(digits) for digits in re.findall(r"\d+", spec)]
                if "{" in spec:  # `{:>{width}}`: the width is an argument
                    widths += [v for v in arguments if _is_int(v)]
        self._check_widths("str.format()", widths, pattern)

    def _check_widths(self, what: str, widths: list[int], pattern: str) -> None:
        for width in widths:
            self._check_size(what, width, [pattern])


def _str_method_size(text: str, name: str, args: tuple[Any, ...]) -> int:
    """What a str method that can grow its string will build; 0 for the others."""
    if name in ("center", "ljust", "rjust", "zfill") and args and _is_int(args[0]):
        width: int = args[0]
        return max(len(text), width)
    if name == "expandtabs":
        tabsize = args[0] if args and _is_int(args[0]) else 8
        return len(text) + text.count("\t") * max(tabsize, 0)
    if name == "replace" and len(args) >= 2:
        return _replaced_size(text, args[0], args[1], args[2] if len(args) > 2 else -1)
    if name == "join" and args and isinstance(args[0], (list, tuple)):
        return _size(args[0]) + len(text) * max(len(args[0]) - 1, 0)
    return 0


def _replaced_size(text: Any, old: Any, new: Any, count: Any) -> int:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    found = text.count(old) if old else len(text) + 1
    if _is_int(count) and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


def _center_size(env: _LimitedEnvironment, value: Any, width: Any = 80) -> int:
    return max(len(str(value)), width) if _is_int(width) else 0


def _indent_size(env: _LimitedEnvironment, value: Any, width: Any = 4, *_: Any, **__: Any) -> int:
    lines = str(value).count("\n") + 1
    return len(str(value)) + lines * (width if _is_int(width) else len(str(width)))


def _replace_size(env: _LimitedEnvironment, s: Any, old: Any, new: Any, count: Any = None) -> int:
    return _replaced_size(str(s), old, new, count)


def _join_size(env: _LimitedEnvironment, value: Any, d: Any = "", *_: Any, **__: Any) -> int:
    if not isinstance(value, (list, tuple)):
        return 0  # a generator: only the result can be checked
    return _size(value) + len(str(d)) * max(len(value) - 1, 0)


def _slice_size(env: _LimitedEnvironment, value: Any, slices: Any = 1, *_: Any, **__: Any) -> int:
    return slices if _is_int(slices) else 0


def _format_size(env: _LimitedEnvironment, value: Any, *args: Any, **kwargs: Any) -> int:
    env._check_percent(str(value), args or tuple(kwargs.values()))
    return 0


_FILTER_SIZES: dict[str, Callable[..., int]] = {
    "center": _center_size,
    "indent": _indent_size,
    "replace": _replace_size,
    "join": _join_size,
    "slice": _slice_size,
    "format": _format_size,
}


class _LimitHooks(NodeTransformer):
    """Routes each loop, each piece of output and each `~` through the environment's hooks:
    Jinja2 compiles them to plain Python, which no sandbox method sees. (Jinja2's visitor
    dispatches on the node's class name, hence the method names.)"""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        node.iter = _hook("limited_loop", [node.iter], node)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        node.nodes = [_hook("limited_output", [child], child) for child in node.nodes]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return _hook("limited_concat", node.nodes, node)

    def visit_List(self, node: nodes.List | nodes.Dict) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return _hook("limited_literal", [node], node)

    visit_Dict = visit_List  # noqa: N815

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        if node.ctx != "load":  # `{% for key, value in ... %}`: names, not a value
            return node
        return _hook("limited_literal", [node], node)


def _hook(name: str, args: Sequence[nodes.Node], where: nodes.Node) -> nodes.Call:
    function = nodes.EnvironmentAttribute(name, lineno=where.lineno)
    return nodes.Call(function, list(args), [], None, None, lineno=where.lineno)


def _new_environment(limits: TemplateLimits = DEFAULT_LIMITS) -> _LimitedEnvironment:
    return _LimitedEnvironment(limits)


def compile_limited(env: _LimitedEnvironment, tree: nodes.Template) -> jinja2.Template:
    """Compile a parsed template with the loop, output and `~` hooks in place."""
    hooked = _LimitHooks().visit(tree)
    assert isinstance(hooked, nodes.Template)
    return env.from_string(hooked)


Problem = Literal["missing", "refused", "failed", "empty"]


@dataclass(slots=True)
class Finding:
    """One rule's template problem over the entries mapped so far, as one line."""

    attribute: str
    problem: Problem  # missing: a variable the entry lacks; empty: a required attribute
    detail: str  # the variable, or the first error message
    unmappable: bool  # the entries concerned are MappingFailures (each reported)
    consequence: str
    example: str  # the first entry's DN
    count: int = 0

    def __str__(self) -> str:
        entries = f"{self.count} {'entry' if self.count == 1 else 'entries'}"
        where = f"mapping.{self.attribute}:"
        if self.problem == "missing":
            lack = "lacks" if self.count == 1 else "lack"
            what = f"{entries} {lack} {self.detail!r} (e.g. {self.example})"
        elif self.problem == "refused":
            what = f"the sandbox refused the template for {entries} (e.g. {self.example}): "
            what += self.detail
        elif self.problem == "failed":
            what = f"the template failed for {entries} (e.g. {self.example}): {self.detail}"
        else:
            what = f"required but empty for {entries} (e.g. {self.example})"
        return f"{where} {what}; {self.consequence}"


class _Rendered(NamedTuple):  # a NamedTuple: one per rule per user, cheap to build
    value: str
    missing: tuple[str, ...] = ()  # variables the entry lacks, used by the template
    refused: str | None = None  # the sandbox's message
    failed: str | None = None  # an error, or an undefined value other than a variable
    default_used: bool = False


@dataclass(frozen=True, slots=True)
class CompiledRule:
    attribute: str
    rule: MappingRule
    template: jinja2.Template | None
    variables: frozenset[str]  # names a template reads, as spelled in the config
    # Jinja2 folds constant output while compiling: `{{ ''.__class__ }}` is refused then.
    refused: str | None = None


class Mapper:
    """Maps source records with rules compiled once per run (one per cycle)."""

    def __init__(
        self, rules: Mapping[str, CompiledRule], limits: TemplateLimits = DEFAULT_LIMITS
    ) -> None:
        self._rules = dict(rules)
        self._cpu_seconds = limits.cpu_seconds
        self._time_outs: dict[str, int] = {}
        self._given_up: dict[str, str] = {}  # rules not rendered again: the error to give
        self._create_only = frozenset(a for a, r in self._rules.items() if r.rule.create_only)
        self._variables = frozenset(v for r in self._rules.values() for v in r.variables)
        self._findings: dict[tuple[str, Problem, str], Finding] = {}
        self._trace = _Trace()  # one per Mapper, emptied after each render that used it

    def ldap_attributes(self) -> set[str]:
        """What the reader must fetch: rule sources and template variables (not guid, dn)."""
        names: dict[str, str] = {}
        for compiled in self._rules.values():
            wanted = set(compiled.variables)
            if compiled.rule.source is not None:
                wanted.add(compiled.rule.source)
            for name in sorted(wanted):
                if name.lower() not in _BUILTINS:
                    names.setdefault(name.lower(), name)
        return set(names.values())

    def findings(self) -> list[Finding]:
        """Every template problem met so far, one per rule and problem (and variable)."""
        return list(self._findings.values())

    def warnings(self) -> list[str]:
        """The problems no MappingFailure reports: one line per rule, with the count."""
        return [str(f) for f in self._findings.values() if not f.unmappable]

    def map_user(self, user: SourceUser) -> DesiredUser | MappingFailure:
        token = _TRACE.set(self._trace)
        try:
            return self._map_user(user)
        except Exception as exc:  # a record must never end the cycle
            return MappingFailure(Kind.USER, user.guid, clean(user.dn), f"mapping failed: {exc!r}")
        finally:
            _TRACE.reset(token)

    def map_group(self, group: SourceGroup) -> DesiredGroup:
        name = clean(group.name).strip()[:MAX_VALUE_LENGTH]
        return DesiredGroup(group.guid, name, frozenset(group.member_guids))

    def _map_user(self, user: SourceUser) -> DesiredUser | MappingFailure:
        context = self._context(user)
        dn = clean(user.dn)
        values: dict[str, str] = {}
        refusal: str | None = None
        rendered: dict[str, _Rendered] = {}
        for attribute, compiled in self._rules.items():
            result = self._value(compiled, context)
            rendered[attribute] = result
            value = result.value
            if result.refused is not None:
                self._note(attribute, "refused", "", result.refused, dn)
                refusal = refusal or (
                    f"mapping.{attribute}: the template was refused by the sandbox: "
                    f"{result.refused}"
                )
            elif attribute not in REQUIRED:
                self._note_optional(attribute, result, dn)
            if len(value) > MAX_VALUE_LENGTH and attribute not in REQUIRED:
                value = value[:MAX_VALUE_LENGTH]
            if value:
                values[attribute] = value
        name = values.get("userName") or dn
        # Every problem is counted (for `check`); the record reports the first.
        causes = [refusal] if refusal is not None else []
        for attribute in REQUIRED:
            cause = self._required_problem(attribute, values.get(attribute), rendered, dn)
            if cause:
                causes.append(cause)
        if causes:
            return MappingFailure(Kind.USER, user.guid, name, causes[0])
        return DesiredUser(
            source_id=user.guid,
            user_name=values["userName"],
            active=not user.disabled,
            values=values,
            # One shared empty set, not 100,000 of them (216 bytes each).
            create_only=(self._create_only & values.keys()) or NOTHING,
        )

    def _context(self, user: SourceUser) -> dict[str, str]:
        first = {name.lower(): clean(vals[0]) for name, vals in user.attributes.items() if vals}
        context = dict(first)
        for name in self._variables:
            if name.lower() in first:
                context[name] = first[name.lower()]
        context["guid"] = clean(user.guid)
        context["dn"] = clean(user.dn)
        return context

    def _value(self, compiled: CompiledRule, context: Mapping[str, str]) -> _Rendered:
        rule = compiled.rule
        value, refused, failed = "", None, None
        lacking: tuple[str, ...] = ()
        if compiled.template is not None:
            trace = self._trace
            limited = False
            trace.deadline = time.thread_time() + self._cpu_seconds
            trace.emitted = 0
            try:
                if compiled.attribute in self._given_up:
                    raise TemplateLimitError(self._given_up[compiled.attribute])
                value = clean(compiled.template.render(context))
            except SecurityError as exc:
                trace.refused.append(str(exc))
            except Exception as exc:  # jinja2 errors: PingFederate sends the default
                failed = f"{type(exc).__name__}: {exc}"
                limited = isinstance(exc, TemplateLimitError)
                if isinstance(exc, TemplateLimitError) and exc.time_out:
                    self._count_time_out(compiled.attribute, str(exc))
            finally:
                trace.deadline = 0.0
            refused = compiled.refused
            if trace:
                # A limit is the cause, whatever variables the render met on the way.
                lacking = () if limited else tuple(dict.fromkeys(trace.missing))
                refused = refused or (trace.refused[0] if trace.refused else None)
                if lacking:
                    failed = None  # `{{ sn + 1 }}` failed because the entry lacks `sn`
                    if compiled.attribute in REQUIRED:
                        value = ""  # a required rule yields nothing, not part of a name
                elif failed is None and trace.undefined:
                    failed = f"UndefinedError: {trace.undefined[0]}"
                trace.missing.clear()
                trace.refused.clear()
                trace.undefined.clear()
        elif rule.source is not None:
            value = context.get(rule.source.lower(), "")
        if value and rule.parser is not None:
            value = clean(_PARSERS[rule.parser](value))
        if rule.trim:
            value = value.strip()
        if rule.case == "lower":
            value = value.lower()
        elif rule.case == "upper":
            value = value.upper()
        default_used = False
        if not value and rule.default is not None:
            value, default_used = clean(rule.default), True
        return _Rendered(value, lacking, refused, failed, default_used)

    def _count_time_out(self, attribute: str, error: str) -> None:
        """A rule that keeps running out of time is broken: stop paying for it."""
        self._time_outs[attribute] = count = self._time_outs.get(attribute, 0) + 1
        if count >= TIME_OUTS_BEFORE_GIVING_UP:
            self._given_up[attribute] = (
                f"{error} for {count} entries: not rendered again until the next cycle"
            )

    def _note_optional(self, attribute: str, result: _Rendered, dn: str) -> None:
        if result.failed is not None:
            has_default = self._rules[attribute].rule.default is not None
            then = "the rule's default was used" if has_default else "the attribute was left empty"
            self._note(attribute, "failed", "", result.failed, dn, consequence=then)
        elif not result.default_used:  # a default that stood in says: optional
            for variable in result.missing:
                self._note(attribute, "missing", variable, variable, dn, "rendered empty")

    def _required_problem(
        self, attribute: str, value: str | None, rendered: Mapping[str, _Rendered], dn: str
    ) -> str | None:
        result = rendered.get(attribute)
        if result is not None and result.refused is not None:
            return None  # the refusal is the cause
        if not value:
            if result is not None and result.missing:
                for variable in result.missing:
                    self._note(attribute, "missing", variable, variable, dn)
                lacking = ", ".join(repr(v) for v in result.missing)
                return f"mapping.{attribute}: template uses {lacking}, which entry {dn} lacks"
            if result is not None and result.failed is not None:
                self._note(attribute, "failed", "", result.failed, dn)
                return f"mapping.{attribute}: required but empty (template failed: {result.failed})"
            self._note(attribute, "empty", "", "", dn)
            return f"mapping.{attribute}: required but empty"
        if len(value) > MAX_VALUE_LENGTH:
            return f"mapping.{attribute}: longer than {MAX_VALUE_LENGTH} characters"
        if attribute == "emails.work" and not looks_like_email(value):
            return f"mapping.{attribute}: {value[:80]!r} is not an email address"
        return None

    def _note(
        self,
        attribute: str,
        problem: Problem,
        key: str,
        detail: str,
        dn: str,
        consequence: str = "reported as unmappable",
    ) -> None:
        finding = self._findings.get((attribute, problem, key))
        if finding is None:
            unmappable = problem == "refused" or attribute in REQUIRED
            finding = Finding(attribute, problem, detail, unmappable, consequence, dn)
            self._findings[(attribute, problem, key)] = finding
        finding.count += 1


def compile_rules(
    rules: Mapping[str, MappingRule], limits: TemplateLimits = DEFAULT_LIMITS
) -> Mapper:
    """Compile every template once; a bad one is a MappingConfigError naming the attribute."""
    env = _new_environment(limits)
    compiled: dict[str, CompiledRule] = {}
    for attribute in REQUIRED:
        if attribute not in rules:
            raise MappingConfigError(f"mapping.{attribute}: required, but no rule maps it")
    for attribute, rule in rules.items():
        template, variables, refused = None, frozenset[str](), None
        if rule.template is not None:
            trace = _Trace()
            token = _TRACE.set(trace)
            try:
                tree = env.parse(rule.template)
                variables = frozenset(jinja2.meta.find_undeclared_variables(tree))
                template = compile_limited(env, tree)
            except jinja2.TemplateSyntaxError as exc:
                where = f" (line {exc.lineno})" if exc.lineno else ""
                raise MappingConfigError(
                    f"mapping.{attribute}: bad template: {exc.message}{where}"
                ) from None
            finally:
                _TRACE.reset(token)
            refused = trace.refused[0] if trace.refused else None
        compiled[attribute] = CompiledRule(attribute, rule, template, variables, refused)
    return Mapper(compiled, limits)
