"""Borrowed struct views: how the engine state crosses numba function boundaries for free.

A `StructView` is a plain pointer to a struct payload whose fields read like attributes (`cs.status`,
`ps.i`), with no reference counting at all. Measured on the core (see docs/fast_engine.md): a typed
namedtuple of ~40 arrays costs ~170 ns per first-class call to marshal; a StructRef costs one pointer,
but numba increfs and decrefs its meminfo and every array field it reads with atomic instructions,
which took ~90% of the run. Here the payload lives in a StructRef owned by a Python object
(`StructProxy`), the arrays in it have no meminfo (`borrowed`), and jitted code only ever sees the
raw pointer: field reads compile to plain loads.

The price: jitted code must not keep a view after its Python proxy is gone. Engines hold the proxies
for the whole run, and views are never returned to Python.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from numba import njit, types
from numba.core import cgutils, imputils
from numba.core.datamodel import models
from numba.core.extending import (
    NativeValue,
    infer_getattr,
    intrinsic,
    lower_getattr_generic,
    register_model,
    typeof_impl,
    unbox,
)
from numba.core.typing.templates import AttributeTemplate
from numba.experimental import structref
from numba.experimental.jitclass.base import imp_dtor
from numba.np.arrayobj import populate_array


class StructView(types.Type):
    """Numba type of a borrowed pointer to a struct payload with the given (name, type) fields."""

    def __init__(self, typename: str, fields: tuple[tuple[str, Any], ...]) -> None:
        self.typename = typename
        self._fields = tuple(fields)
        self.field_dict = dict(self._fields)
        # The layout's digest is part of the name: types named after this one (a StructRef holding it, a
        # FunctionType taking it) change with the fields too, so numba's cache never mixes layouts.
        digest = hashlib.sha1(str(self._fields).encode()).hexdigest()[:10]
        super().__init__(name=f"{typename}_{digest}")

    @property
    def key(self) -> Any:
        return self.name  # a string: cheap to hash on every call from Python

    def get_data_type(self) -> types.StructRefPayload:
        return types.StructRefPayload(typename=self.typename, fields=self._fields)


register_model(StructView)(models.OpaqueModel)


@infer_getattr
class _ViewAttributes(AttributeTemplate):
    key = StructView

    def generic_resolve(self, typ: StructView, attr: str) -> Any:
        return typ.field_dict.get(attr)


@lower_getattr_generic(StructView)
def _view_getattr(context: Any, builder: Any, typ: StructView, val: Any, attr: str) -> Any:
    payload = typ.get_data_type()
    ptr = builder.bitcast(val, context.data_model_manager[payload].get_value_type().as_pointer())
    data = cgutils.create_struct_proxy(payload)(context, builder, ref=ptr)
    return imputils.impl_ret_borrowed(context, builder, typ.field_dict[attr], getattr(data, attr))


class StructProxy:
    """Python side of a view: owns the payload (`_owner`) and the arrays in it (`_arrays`)."""

    _VIEW: StructView

    _owner: Any
    _addr: int


@typeof_impl.register(StructProxy)
def _typeof_proxy(val: StructProxy, c: Any) -> StructView:
    return type(val)._VIEW


@unbox(StructView)
def _unbox_view(typ: StructView, obj: Any, c: Any) -> NativeValue:
    addr = c.pyapi.object_getattr_string(obj, "_addr")
    ptr = c.pyapi.long_as_voidptr(addr)
    c.pyapi.decref(addr)
    return NativeValue(ptr)


# ---- owners: a StructRef holds the payload memory; its constructor is jitted per struct ------------

@structref.register
class StructOwnerType(types.StructRef):
    pass


class StructOwner(structref.StructRefProxy):
    pass


structref.define_boxing(StructOwnerType, StructOwner)


@intrinsic
def _payload_addr(typingctx: Any, owner: Any) -> Any:
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = structref._Utils(context, builder, sig.args[0]).get_data_pointer(args[0])
        return builder.ptrtoint(ptr, context.get_value_type(types.uintp))

    return types.uintp(owner), codegen


@njit(cache=True)
def payload_addr(owner):
    return _payload_addr(owner)


@intrinsic
def borrowed(typingctx: Any, arr: Any) -> Any:
    """The same array without its owner (null meminfo): reading it costs no reference counting. Whoever
    built the struct keeps the numpy array alive."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        src = context.make_array(sig.args[0])(context, builder, value=args[0])
        dst = context.make_array(sig.return_type)(context, builder)
        populate_array(dst, data=src.data, shape=src.shape, strides=src.strides, itemsize=src.itemsize,
                       meminfo=None, parent=None)
        return dst._getvalue()

    return arr(arr), codegen


@intrinsic
def _build(typingctx: Any, owner_ref: Any, values: Any) -> Any:
    """A new owner of `owner_ref`'s struct type holding `values` (a tuple in field order). Array fields are
    stored borrowed (null meminfo, see `borrowed`); other fields (first-class functions, views) as they are."""
    owner_ty = owner_ref.instance_type

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        payload_ty = owner_ty.get_data_type()
        alloc_type = context.data_model_manager[payload_ty].get_value_type()
        size = context.get_constant(types.uintp, context.get_abi_sizeof(alloc_type))
        meminfo = context.nrt.meminfo_alloc_dtor(builder, size, imp_dtor(context, builder.module, owner_ty))
        ptr = builder.bitcast(context.nrt.meminfo_data(builder, meminfo), alloc_type.as_pointer())
        builder.store(cgutils.get_null_value(alloc_type), ptr)
        payload = cgutils.create_struct_proxy(payload_ty)(context, builder, ref=ptr)
        for idx, (name, field_ty) in enumerate(owner_ty.field_dict.items()):
            value = builder.extract_value(args[1], idx)
            value_ty = sig.args[1][idx]
            if isinstance(field_ty, types.Array):
                src = context.make_array(value_ty)(context, builder, value=value)
                dst = context.make_array(field_ty)(context, builder)
                populate_array(dst, data=src.data, shape=src.shape, strides=src.strides, itemsize=src.itemsize,
                               meminfo=None, parent=None)
                value = dst._getvalue()
            else:
                value = context.cast(builder, value, value_ty, field_ty)
            setattr(payload, name, value)
        inst = context.make_helper(builder, owner_ty)
        inst.meminfo = meminfo
        return inst._getvalue()

    return owner_ty(owner_ref, values), codegen


def _construct(owner_ref: Any, values: Any) -> Any:
    return _build(owner_ref, values)


def constructor(owner: StructOwnerType) -> Any:
    """The cached jitted constructor of one struct type, generated from its fields: `ctor(owner, values)`.
    Every struct shares `_construct`; each compiles once for its own explicit signature (so Python
    functions pass as first-class functions) and numba's cache keeps one entry per struct layout."""
    fields = tuple(owner.field_dict.values())
    return njit(owner(types.TypeRef(owner), types.Tuple(fields)), cache=True)(_construct)


def as_field(value: Any, ty: Any, name: str) -> np.ndarray:
    """The array a field holds: its exact dtype, C order and writable (copied only when needed)."""
    dtype = np.dtype(str(ty.dtype))
    arr = np.asarray(value)
    if arr.ndim != ty.ndim:
        raise ValueError(f"field {name!r}: expected {ty.ndim} dimensions, got {arr.ndim}")
    if arr.dtype != dtype or not arr.flags.c_contiguous or not arr.flags.writeable:
        arr = np.array(arr, dtype=dtype, order="C")
    return arr


class ArrayStruct(StructProxy):
    """A struct of numpy arrays: `Cls(*arrays)` or `Cls(name=array, ...)`; attributes return the very
    arrays the jitted code works on (shared memory, no copies)."""

    _FIELDS: tuple[tuple[str, Any], ...] = ()
    _OWNER: StructOwnerType
    _arrays: tuple[np.ndarray, ...]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        names = [n for n, _t in cls._FIELDS]
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} takes {len(names)} fields, got {len(args)}")
        values = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names or key in values:
                raise TypeError(f"{cls.__name__}: unexpected or repeated field {key!r}")
            values[key] = value
        missing = [n for n in names if n not in values]
        if missing:
            raise TypeError(f"{cls.__name__}: missing fields {missing}")
        obj = object.__new__(cls)
        obj._arrays = tuple(as_field(values[n], t, n) for n, t in cls._FIELDS)
        obj._owner = cls._new(cls._OWNER, obj._arrays)
        obj._addr = int(payload_addr(obj._owner))
        return obj

    @staticmethod
    def _new(owner: StructOwnerType, arrays: tuple[np.ndarray, ...]) -> Any:  # the struct's `constructor`
        raise NotImplementedError

    def _asdict(self) -> dict[str, np.ndarray]:
        return dict(zip((n for n, _t in self._FIELDS), self._arrays))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(n for n, _t in self._FIELDS)})"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_FIELDS" in cls.__dict__:
            cls._VIEW = StructView(cls.__name__, cls._FIELDS)
            cls._OWNER = StructOwnerType(list(cls._FIELDS))
            cls._new = staticmethod(constructor(cls._OWNER))
        for idx, (name, _ty) in enumerate(cls._FIELDS):
            setattr(cls, name, property(lambda self, idx=idx: self._arrays[idx]))
