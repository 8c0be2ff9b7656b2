"""What runs in the sandbox's forked child around the solution (system python, standard library
only, 3.9+): the HumanEval-style tests against it, with its results handed over as copies of
built-in data and the runtime watched between calls (see `posttrain.sandbox` for the whole design).

The supervisor (harness.py) gets this file's text in its spec and loads it as a module before any
untrusted line runs, so the functions bound below are the genuine ones.
"""

# ruff: noqa: SIM105  (contextlib costs milliseconds of imports on every sandboxed run)

from __future__ import annotations

import _signal
import _thread
import builtins
import importlib  # noqa: F401  (renames _frozen_importlib's __name__ when imported: before the watch)
import os
import sys
import types
from _operator import is_ as _is
from abc import ABCMeta
from collections import Counter as _Counter
from collections import OrderedDict as _OrderedDict
from collections import defaultdict as _defaultdict
from collections import deque as _deque
from collections import namedtuple as _namedtuple
from itertools import chain as _chain
from itertools import compress as _compress
from itertools import repeat as _repeat

TYPE_CHECKING = False  # typing itself costs ~10 ms of imports per run
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import CodeType

    Watch = tuple[Callable[[], None], Callable[[], None], Callable[[], None], Callable[..., None]]

EVENTS_FD = 3
"""The child's end of the events pipe (`ok TOKEN`, `end TOKEN`, `error TYPE MESSAGE` lines)."""
# Bound before any untrusted code runs: the solution may replace the os / sys attributes.
_exit, _write, _gettrace, _getprofile = os._exit, os.write, sys.gettrace, sys.getprofile
_thread_count = _thread._count
# Exact types, compared by identity (a metaclass can make `type(x) in {int}` true for any class).
# Immutable, and this module's names are watched like a loaded module's: the solution can reach
# them (a function of this module handed to it by a test) but changes none unnoticed.
_ATOMS = frozenset(id(t) for t in (int, float, complex, str, bytes, bool, type(None), range))
_DICT_VIEWS = types.MappingProxyType({id(type(getattr(empty, v)())): v for v in ("keys", "values", "items")
                                     for empty in ({}, _OrderedDict())})  # fmt: skip
_DICT_KINDS = frozenset((id(dict), id(_Counter), id(_defaultdict), id(_OrderedDict)))
_MUTABLE = frozenset((id(list), id(set), id(bytearray), id(_deque), *_DICT_KINDS, *_DICT_VIEWS))
# defaultdict factories a copy keeps (any other would be the solution's code called by the tests).
_FACTORIES = frozenset(map(id, (int, float, complex, str, bytes, bool, list, dict, set, tuple, frozenset)))
_CONTAINERS = _MUTABLE | {id(tuple), id(frozenset)}
_ATOMS_OR_TUPLE = _ATOMS | {id(tuple)}
_CALLABLES = frozenset((id(type(len)), id(type(lambda: None))))
_GENERATOR = type(x for x in ())
_FUNCTION = type(lambda: None)
_CLASS_KINDS = (type, ABCMeta)  # metaclasses whose attribute reads run no one else's code
_IMMUTABLE_TYPE, _HEAP_TYPE = 1 << 8, 1 << 9
# Module attributes the standard library itself rebinds (time.strptime calls time.tzset()).
_VOLATILE = frozenset((("time", "tzname"), ("time", "timezone"), ("time", "altzone"), ("time", "daylight")))
_BUILTIN_EXCEPTIONS = frozenset(id(value) for value in builtins.__dict__.values()
                                if isinstance(value, type) and issubclass(value, BaseException))
_OWN_MODULES = ("__main__", "__solution__", "sys")  # not watched: the solution's own, and sys
_MISSING = object()
# Hooks that would run the solution's code in the middle of the test code (and a trace or
# monitoring callback can even move a frame's f_lineno, i.e. jump over asserts): gone for the tests.
_HOOK_SETTERS = ("settrace", "setprofile", "monitoring", "_settraceallthreads", "_setprofileallthreads",
                 "addaudithook")  # fmt: skip


def emit(line: str) -> None:
    try:
        _write(EVENTS_FD, line.encode("utf-8", "replace")[:4096] + b"\n")
    except OSError:
        pass


def report_exception(exc: BaseException, traceback_text: Callable[[BaseException], str] | None = None
                     ) -> None:  # fmt: skip
    """The `error` event, and the traceback on stderr (through fence.py's `traceback_text` once fenced)."""
    try:  # str() runs the solution's __str__, which may itself raise
        message = " ".join(str(exc).split())[:300]
    except BaseException:
        message = "(unprintable)"
    name = _type_name(type(exc))
    emit(f"error {name} {message}")
    try:
        if traceback_text is None:
            import traceback

            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        else:
            sys.stderr.flush()
            _write(2, f"{traceback_text(exc)}{name}: {message}\n".encode("utf-8", "replace"))
    except BaseException:  # a broken stderr must not hide the verdict
        pass


def _violation(message: str) -> None:
    """The solution tampered with the runtime or handed a test a non-data object: end the child
    (exit, not raise: no `except` in the test code can swallow it and go on to the end)."""
    emit(f"error SandboxViolation {message}")
    try:
        _write(2, f"SandboxViolation: {message}\n".encode("utf-8", "replace"))
    except BaseException:
        pass
    _exit(1)


def _refuse_hook(*args: object, **kwargs: object) -> None:
    if len(args) == 1 and args[0] is None and not kwargs:  # removing none: doctest.testmod() ends so
        return
    _violation("the solution tried to install a trace, profile, monitoring or audit hook")


def _signal_handlers() -> list:
    return [_signal.getsignal(number) for number in range(1, _signal.NSIG)]


def _type_name(kind: type) -> str:
    try:  # the descriptor of `type` itself: no metaclass code runs
        return str.__add__("", type.__dict__["__name__"].__get__(kind))
    except BaseException:
        return "unknown"


def _parts(item: object, kind: int) -> object:
    """The objects a container holds, iterable twice in the same order (a dict's keys and values
    alternate); lists, tuples and sets are their own parts (nothing runs between the two passes)."""
    if kind == id(_OrderedDict):  # its own order, which move_to_end may have made differ from dict's
        return list(_chain.from_iterable(_OrderedDict.items(item)))
    if kind in _DICT_KINDS:
        return list(_chain.from_iterable(dict.items(item)))
    if _DICT_VIEWS.get(kind) == "items":
        return list(_chain.from_iterable(item))
    if kind in _DICT_VIEWS or kind == id(_deque):
        return list(item)
    return () if kind == id(bytearray) else item


def _nested(parts: object) -> list:
    """The parts that need a walk of their own: neither atoms nor tuples of atoms (such a tuple can
    be shared as it is). Checked in C for the usual shapes: one atom type, or pairs of atoms."""
    first = type(next(iter(parts), 0))
    if id(first) in _ATOMS and all(map(_is, map(type, parts), _repeat(first))):
        return []
    kinds = set(map(id, map(type, parts)))
    if kinds <= _ATOMS:
        return []
    if kinds <= _ATOMS_OR_TUPLE:
        tuples = _compress(parts, map(_is, map(type, parts), _repeat(tuple)))
        if set(map(id, map(type, _chain.from_iterable(tuples)))) <= _ATOMS:
            return []
    return [part for part in parts if id(type(part)) not in _ATOMS]


def _walk(value: object) -> list | type:
    """(container, kind, parts, flat: no part needs a copy) for every container in `value`, each
    after the immutable ones it holds; or the first type that is not built-in data. Only built-in
    code and collections' own runs here (a namedtuple's entry holds its twin class as the kind).
    Mutable containers are listed on first sight and their contents walked later, so every cycle
    (which must pass through one) is broken by them."""
    order, seen, pending, twins = [], set(), [value], {}
    while pending:
        stack: list = [(pending.pop(), None)]
        while stack:
            item, entry = stack.pop()
            kind = id(type(item))
            if entry is not None:
                order.append(entry)
            elif kind in _ATOMS or id(item) in seen:
                continue
            elif kind not in _CONTAINERS:
                twin = _namedtuple_twin(type(item), twins)
                parts = list(tuple.__iter__(item)) if twin is not None else ()
                if twin is None or len(parts) != len(twin._fields):
                    return type(item)
                seen.add(id(item))
                stack.append((None, (item, twin, parts, False)))
                stack.extend((part, None) for part in _nested(parts))
            else:
                seen.add(id(item))
                parts = _parts(item, kind)
                nested = _nested(parts)
                entry = (item, kind, parts, not nested)
                if kind in _MUTABLE:
                    order.append(entry)
                    pending.extend(nested)
                else:
                    stack.append((None, entry))
                    stack.extend((part, None) for part in nested)
    return order


def _plain_copy(value: object, name: str) -> object:
    """A copy of built-in data made of new objects, so the solution keeps no handle on what the
    tests compare; anything else is a violation (an always-equal `__eq__` never reaches a test)."""
    order = _walk(value)
    if type(order) is not list:
        _violation(f"{name} returned a {_type_name(order)} object; only built-in data types are accepted")
    return _copies(order).get(id(value), value)


def _data_copy(value: object, otherwise: object) -> object:  # one walk: copied when data, else `otherwise`
    order = _walk(value)
    return _copies(order).get(id(value), value) if type(order) is list else otherwise


def _copies(order: list) -> dict:
    """id(container) -> its copy, for every container `_walk` listed (a flat immutable one is its own)."""
    # Originals stay alive throughout, so an atom's id is never a container's: get(id, atom) is the atom.
    copies, fills = {}, []
    for item, kind, parts, flat in order:
        if type(kind) is not int:  # a namedtuple, rebuilt as its twin: the solution's class stays behind
            copies[id(item)] = kind._make(map(copies.get, map(id, parts), parts))
        elif kind == id(bytearray):
            copies[id(item)] = bytearray(item)
        elif kind in _MUTABLE:
            view = _DICT_VIEWS.get(kind)
            shell = {} if view else _empty_like(item, kind)
            copies[id(item)] = getattr(shell, view)() if view else shell
            fills.append((kind, shell, parts, flat))
        elif flat:  # a tuple or frozenset of atoms: nothing in it can change
            copies[id(item)] = item
        else:
            copies[id(item)] = type(item)(map(copies.get, map(id, parts), parts))
    for kind, shell, raw, flat in fills:
        _fill(kind, shell, raw if flat else list(map(copies.get, map(id, raw), raw)))
    return copies


def _fill(kind: int, shell: object, parts: list) -> None:
    """Put `parts` (`_parts`' shape) into the empty container `shell` of kind `kind`."""
    if kind == id(list) or kind == id(_deque):
        shell.extend(parts)
    elif kind == id(set):
        shell.update(parts)
    elif _DICT_VIEWS.get(kind) == "keys":
        shell.update(dict.fromkeys(parts))
    elif _DICT_VIEWS.get(kind) == "values":
        shell.update(enumerate(parts))
    elif kind == id(_OrderedDict):  # its own order-keeping setitem
        _OrderedDict.update(shell, zip(parts[::2], parts[1::2]))
    else:  # dict's own: Counter.update would add the counts to the empty Counter's zeros
        dict.update(shell, zip(parts[::2], parts[1::2]))


def _arguments_in(values: list) -> tuple[list, list]:
    """Each argument that is data as a copy (the solution never holds the tests' own objects, which a
    later `__del__` could change), any other as given; and what `_arguments_out` needs."""
    given, records = [], []
    for value in values:
        order = _walk(value)
        if type(order) is list:
            copies = _copies(order)
            given.append(copies.get(id(value), value))
            records.append((given[-1], order, copies))
        else:
            given.append(value)
    return given, records


def _arguments_out(records: list, name: str) -> None:
    """After the call, each of the tests' containers gets its copy's contents (copies map back to the
    tests' containers, anything new is copied): in-place sorting works."""
    for top, order, copies in records:
        if type(_walk(top)) is not list:
            _violation(f"{name} put a non-data object into its arguments")
        back = {id(copies[id(item)]): item for item, *_ in order}
        for item, kind, _, _ in order:
            copy = copies[id(item)]
            if copy is item or kind not in _MUTABLE or kind in _DICT_VIEWS:
                continue
            if kind == id(bytearray):
                item[:] = copy
                continue
            parts = [back[id(part)] if id(part) in back else _plain_copy(part, name)
                     for part in _parts(copy, kind)]
            type(item).clear(item)
            _fill(kind, item, parts)


def _empty_like(item: object, kind: int) -> object:
    """An empty container of `item`'s type: a deque's maxlen kept, a defaultdict's built-in factory."""
    if kind == id(_deque):
        return _deque(maxlen=_deque.maxlen.__get__(item))
    if kind == id(_defaultdict):
        factory = _defaultdict.default_factory.__get__(item)
        return _defaultdict(factory if id(factory) in _FACTORIES else None)
    return type(item)()


def _namedtuple_twin(kind: type, twins: dict) -> type | None:
    """A namedtuple class of our own with `kind`'s name and fields when `kind` is a direct tuple
    subclass with `_fields` (read through `type`'s descriptors: none of its code runs); else None."""
    if id(kind) in twins:
        return twins[id(kind)]
    twins[id(kind)] = None
    if type(kind) is not type:  # a metaclass could run code on any attribute read
        return None
    bases = type.__dict__["__bases__"].__get__(kind)
    attributes = type.__dict__["__dict__"].__get__(kind)
    if len(bases) != 1 or bases[0] is not tuple or not all(type(key) is str for key in attributes):
        return None
    fields = attributes.get("_fields")
    if type(fields) is not tuple or not all(type(field) is str for field in fields):
        return None
    try:
        twins[id(kind)] = _namedtuple(_type_name(kind), fields, module="__solution__")
    except (ValueError, TypeError):  # names namedtuple itself would refuse
        pass
    return twins[id(kind)]


def _internals(namespace: dict, module_name: object, functions: bool = True) -> list:
    """What a module's classes (their attributes) and, with `functions`, its functions (code and
    defaults: `f.__code__ = ...` leaves `module.f` the same; an audited write) do beyond its names."""
    found = []
    for value in list(namespace.values()):
        kind = type(value)  # compared by identity, not id(): each id() call is an audited event
        ours = kind is _CLASS_KINDS[0] or kind is _CLASS_KINDS[1]
        if ours and value.__dict__.get("__module__") is module_name:
            found += [value, *value.__dict__.values()]
            if functions:
                found += [part for item in value.__dict__.values() for part in _function_parts(item)]
        elif functions:
            found += _function_parts(value)
    return found


def _both_internals(namespace: dict, module_name: object) -> tuple[list, list]:
    return _internals(namespace, module_name, False), _internals(namespace, module_name)


def _changed(namespace: dict, names: dict, internals: tuple[list, list], module_name: object,
             full: bool) -> bool:  # fmt: skip
    """Whether a name is bound elsewhere now, or one of its classes (and, `full`, functions) changed."""
    if any(namespace.get(k, _MISSING) is not v for k, v in names.items()):
        return True
    now, before = _internals(names, module_name, full), internals[1] if full else internals[0]
    return len(now) != len(before) or not all(map(_is, now, before))


def _function_parts(value: object) -> list:
    inner = value.__func__ if type(value) in (classmethod, staticmethod) else value
    return [inner.__code__, inner.__defaults__, inner.__kwdefaults__] if type(inner) is _FUNCTION else []


def _watch(writes: Callable[[], int] | None = None) -> Watch:
    """(before_call, check, reset_imports, protect): builtins, loaded modules, this module's names
    and the import system, checked after the solution and every call; around each call the tests'
    namespaces (`protect`) must not change, and modules it imported leave sys.modules. Closures, not
    a class (object.__subclasses__() would lead to this module's globals). `writes` (fence.py):
    writes to a function's code or defaults so far; those parts are compared only after one."""
    before = dict(builtins.__dict__)
    handlers = _signal_handlers()
    imports = (list(sys.path), list(sys.meta_path), list(sys.path_hooks))
    own = globals()
    own_names, own_internals = dict(own), _both_internals(own, own.get("__name__"))
    modules: dict = {}
    protected: list = []
    calls: list = []  # per call in progress: (sys.modules' names, the protected namespaces' snapshots)

    def note_new_modules() -> None:
        for name, module in list(sys.modules.items()):
            if name not in modules and name not in _OWN_MODULES:
                names = {key: value for key, value in getattr(module, "__dict__", {}).items()
                         if (name, key) not in _VOLATILE}
                modules[name] = (module, names, _both_internals(names, names.get("__name__")))

    def protect(*namespaces: dict) -> None:
        protected.extend(namespaces)

    def before_call() -> None:
        note_new_modules()
        snapshots = [(space, dict(space), _both_internals(space, "__tests__")) for space in protected]
        calls.append((set(sys.modules), snapshots))

    def after_call() -> None:
        names, snapshots = calls.pop()
        for name in [name for name in sys.modules if name not in names]:
            del sys.modules[name]
        sys.path_importer_cache = {}
        if any(_changed(space, *snapshot, "__tests__", True) for space, *snapshot in snapshots):
            _violation("the solution modified the tests' names or builtins")

    def reset_imports() -> None:
        """The solution's sys.path, finders and cached finders are gone: the tests import genuine modules."""
        path, meta_path, path_hooks = imports
        sys.path, sys.meta_path, sys.path_hooks = list(path), list(meta_path), list(path_hooks)
        sys.path_importer_cache = {}

    seen_writes = [writes() if writes else 0]

    def check() -> None:
        if _gettrace() is not None or _getprofile() is not None:
            _violation("the solution installed a trace or profile hook")
        if _thread_count() > 0:
            _violation("the solution left a thread running")
        if any(now is not then for now, then in zip(_signal_handlers(), handlers)):
            _violation("the solution installed a signal handler")  # it would run amid the test code
        # Identity of every name that existed before; new names can't change what tests call.
        current = builtins.__dict__
        if any(current.get(k, _MISSING) is not v for k, v in before.items()):
            _violation("the solution modified builtins")
        full = writes is None or writes() != seen_writes[0]
        if _changed(own, own_names, own_internals, own.get("__name__"), full):
            _violation("the solution modified the sandbox's guard")
        for name, (module, snapshot, internals) in modules.items():
            namespace = getattr(module, "__dict__", {})
            if sys.modules.get(name) is not module or _changed(namespace, snapshot, internals,
                                                               snapshot.get("__name__"), full):
                _violation(f"the solution modified module {name!r}")
        path, meta_path, path_hooks = imports
        for now, then in ((sys.path, path), (sys.meta_path, meta_path), (sys.path_hooks, path_hooks)):
            if type(now) is not list or len(now) != len(then) or not all(map(_is, now, then)):
                _violation("the solution changed how modules are imported")
        if calls:
            after_call()
        if writes is not None:
            seen_writes[0] = writes()

    note_new_modules()
    return before_call, check, reset_imports, protect


def _is_builtin_iterator(kind: type) -> bool:
    """A built-in iterator type (generator, map, zip, list_iterator...): next() is all it offers."""
    if type(kind) is not type:  # a metaclass could run code on the attribute reads below
        return False
    flags = kind.__flags__
    return bool(flags & _IMMUTABLE_TYPE or not flags & _HEAP_TYPE) and hasattr(kind, "__next__")


def _export(value: object, name: str, watch: Watch) -> object:
    """What a test receives: a copy of data, an iterator's items guarded one by one, a callable guarded."""
    kind = type(value)
    if id(kind) in _CALLABLES:
        return _guard(value, name, watch)
    if _is_builtin_iterator(kind):
        return _guarded_items(value, name, watch)
    return _plain_copy(value, name)


def _guarded_items(iterator: object, name: str, watch: Watch) -> object:
    """A generator over the solution's iterator (`list(countdown(3))`, `next(gen)`, `send` work)."""
    send = iterator.send if type(iterator) is _GENERATOR else None
    before_call, check, *_ = watch
    try:
        sent = None
        while True:
            before_call()
            failure = None
            try:
                item = next(iterator) if sent is None or send is None else send(sent)
            except StopIteration as stop:
                return _plain_copy(stop.value, name)
            except BaseException as error:
                failure = error
            finally:
                check()
            if failure is not None:
                raise _exception_copy(failure)
            sent = yield _export(item, name, watch)
    finally:
        # Closing runs the solution's `finally` blocks and frees its objects: under the guard too.
        before_call()
        try:
            if send is not None:
                iterator.close()
            del iterator, send
        finally:
            check()


def _guard(function: Callable, name: str, watch: Watch, instances_of: type | None = None) -> Callable:
    """`function` called under the watch, its result exported; with `instances_of`, a result of
    exactly that class is handed over as it is (its methods are the tests' to call, unguarded)."""
    before_call, check, *_ = watch

    def guarded(*args: object, **kwargs: object) -> object:
        before_call()
        given, records = _arguments_in([*args, *kwargs.values()])
        failure = None
        try:
            result = function(*given[:len(args)], **dict(zip(kwargs, given[len(args):])))
        except BaseException as error:  # a test may catch it and go on: checked like a return
            failure = error
        finally:
            check()
            _arguments_out(records, name)
        if failure is not None:
            raise _exception_copy(failure)
        if instances_of is not None and type(result) is instances_of:
            return result
        return _export(result, name, watch)

    guarded.__name__ = guarded.__qualname__ = name
    return guarded


def _exception_copy(error: BaseException) -> BaseException:
    """What a test catches of the solution's exception: a new one of the nearest built-in class, its
    arguments copied when data (the solution's own `__str__` or `args` would answer), traceback kept."""
    kinds = type.__dict__["__mro__"].__get__(type(error))
    args = BaseException.__dict__["args"].__get__(error)
    args = _data_copy(args, (_type_name(type(error)),))
    for kind in kinds:
        if id(kind) in _BUILTIN_EXCEPTIONS:
            try:
                copy = kind(*args)
            except BaseException:  # a constructor of its own (UnicodeDecodeError): the next class up
                continue
            return copy.with_traceback(BaseException.__dict__["__traceback__"].__get__(error))
    return Exception(*args)


def _tests_namespace(namespace: dict, pristine: dict, watch: Watch, entry: str | None) -> dict:
    """The tests' view of the solution's names: every callable guarded (a class's calls, bar the
    entry point's, may return its own instances: `Solution().method`), fresh modules, copied data,
    and the genuine builtins even where it defined the same names; nothing else of it."""
    test_ns = {"__builtins__": pristine, "__name__": "__tests__"}
    for name, value in namespace.items():
        ours = name in ("__builtins__", "__name__") or (name in pristine and name != entry)
        if type(name) is not str or ours:
            continue
        if issubclass(type(value), type(sys)):  # `import math` in the prompt: a fresh one
            test_ns[name] = _fresh_import(value)
        elif name == entry or (callable(value) and not isinstance(value, type)):
            test_ns[name] = _guard(value, name, watch)
        elif isinstance(value, type):
            test_ns[name] = _guard(value, name, watch, instances_of=value)
        elif (copy := _data_copy(value, _MISSING)) is not _MISSING:
            test_ns[name] = copy
    return test_ns


def _fresh_main(name: str) -> dict:
    """The solution's module, as `__main__` (not the harness) and under its name (dataclasses, pickle)."""
    module = type(sys)(name)
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = sys.modules[name] = module
    return module.__dict__


def _fresh_import(module: object) -> object:
    """The genuine module a solution's module object stands for (imported anew), or None."""
    name = type(sys).__dict__["__dict__"].__get__(module).get("__name__")
    if type(name) is not str:
        return None
    try:
        return __import__(name, fromlist=["__name__"])
    except Exception:  # a module the solution built itself: the tests get nothing under that name
        return None


def child_tests(code: CodeType, spec: dict, writes: Callable[[], int] | None = None) -> None:
    """Run the solution, then the instrumented tests against it (HumanEval). The run ends with `end
    TOKEN` only if the test code ran to its end: an assert correctly not reached costs nothing."""
    ok_sent = set()

    def ok(token: str) -> None:
        if token not in ok_sent:
            ok_sent.add(token)
            emit("ok " + token)

    for setter in _HOOK_SETTERS:
        if hasattr(sys, setter):
            setattr(sys, setter, _refuse_hook)
    watch = _watch(writes)
    _, check, reset_imports, protect = watch
    pristine = dict(builtins.__dict__)
    namespace = _fresh_main("__solution__")
    known_modules = set(sys.modules)
    exec(code, namespace)
    # Modules the solution imported are dropped so the tests import fresh, unpatched copies.
    for name in [n for n in sys.modules if n not in known_modules]:
        del sys.modules[name]
    reset_imports()
    check()
    tests = compile(spec["tests"], "<tests>", "exec", dont_inherit=True, optimize=0)
    test_ns = _tests_namespace(namespace, pristine, watch, spec["entry_point"])
    test_ns[spec["ok_name"]] = ok
    protect(test_ns, pristine)
    exec(tests, test_ns)
    entry = spec["entry_point"]
    if entry:
        if entry not in namespace:
            raise NameError(f"the solution does not define {entry!r}")
        test_ns["check"](test_ns.get(entry))
    check()
    emit("end " + spec["end_token"])


def child_main(code: CodeType) -> None:
    sys.argv = ["solution.py"]
    namespace = _fresh_main("__main__")
    namespace["__file__"] = "solution.py"
    exec(code, namespace)
