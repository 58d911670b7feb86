//! A method CPython enters directly, without pyo3's wrapper, for the one call whose cost is the product:
//! a free `try_acquire()` should cost about what a no-op Python method call does. pyo3's wrapper of a
//! method with an optional argument spends about 5 ns finding that none was passed, and checks the
//! type of `self` again after CPython's method descriptor has; a `METH_FASTCALL | METH_KEYWORDS`
//! function sees at once that there are no arguments.
//!
//! [`Method::put_on`] puts such a function on a pyclass once, when the module is made, as the method
//! descriptor pyo3 would have made (CPython checks `self`'s type before calling it), and
//! [`Method::inherit`] puts it on each subclass, for which alone CPython specializes calls to it. The
//! function decides a call without arguments itself ([`decided`]: no Python object touched but the
//! `bool` it returns, a panic caught), and hands every other call to [`Call::run`]: the interpreter
//! attached as pyo3 counts it, the arguments parsed by [`Call::one_optional`] into the forms and
//! `TypeError`s pyo3 gives, errors and panics raised as pyo3 raises them.

use std::any::Any;
use std::ffi::CStr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::pyclass::boolean_struct::True;
use pyo3::PyClass;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString, PyTuple, PyType};

/// How CPython calls a `METH_FASTCALL | METH_KEYWORDS` method.
pub(crate) type Entry = ffi::PyCFunctionFastWithKeywords;

/// One method's definition, as CPython reads it from every descriptor made of it.
pub(crate) struct Method(ffi::PyMethodDef);

// SAFETY: written once, as a constant; CPython only reads it.
unsafe impl Sync for Method {}

impl Method {
    /// `entry` as the method `name`; `doc` starts with its text signature as CPython reads one
    /// (`"name(self, ...)\n--\n\n"`), which `inspect.signature` and stubtest see.
    pub(crate) const fn new(name: &'static CStr, doc: &'static CStr, entry: Entry) -> Self {
        Self(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: entry },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: doc.as_ptr(),
        })
    }

    fn name(&self) -> &'static str {
        // SAFETY: `new` took it from a `&'static CStr`.
        let name = unsafe { CStr::from_ptr(self.0.ml_name) };
        name.to_str().expect("a method's name is ASCII")
    }

    /// Makes this the method of `class`: a descriptor of its own, which CPython checks `self` against
    /// (an instance of `class` or of a subclass) before calling the entry.
    pub(crate) fn put_on(&'static self, class: &Bound<'_, PyType>) -> PyResult<()> {
        let definition = ptr::from_ref(&self.0).cast_mut();
        // SAFETY: the class is a live type object; CPython only reads the definition, which lives for
        // the process. A null result is an error CPython has raised.
        let descriptor = unsafe { Bound::from_owned_ptr_or_err(class.py(), ffi::PyDescr_NewMethod(class.as_type_ptr(), definition))? };
        class.setattr(self.name(), descriptor)
    }

    /// For a new `subclass` of `base` (from `base.__init_subclass__`): puts this method on it as a
    /// descriptor of its own too, if it inherits the method unchanged (one that a class on its way
    /// defines otherwise is left alone). CPython 3.11+ specializes a call to a method descriptor only
    /// for an object of the descriptor's own class; on an inherited one each call takes the generic
    /// way, measured 5 ns slower (`TokenBucket.try_acquire`).
    pub(crate) fn inherit(&'static self, subclass: &Bound<'_, PyType>, base: &Bound<'_, PyType>) -> PyResult<()> {
        // A method descriptor of this name on the base's line is one made here: pyo3 makes none of it.
        let inherited = subclass.getattr(self.name())?;
        let ours = inherited.get_type().is(base.getattr(self.name())?.get_type())
            && inherited.getattr("__name__")?.eq(self.name())?
            && inherited.getattr("__objclass__")?.cast_into::<PyType>().is_ok_and(|class| class.is_subclass(base).unwrap_or(false));
        if ours { self.put_on(subclass) } else { Ok(()) }
    }
}

/// The object a method was called on.
///
/// # Safety
/// `slf` is the `self` CPython passed to an [`Entry`] that [`Method::put_on`] put on `T`: its descriptor has
/// checked that it is a `T` (or a subclass), the interpreter is attached, and the caller holds a
/// reference to it for the call, which the returned reference must not outlive.
pub(crate) unsafe fn receiver<'a, T: PyClass<Frozen = True> + Sync>(slf: *mut ffi::PyObject) -> &'a T {
    // SAFETY: as the caller promises; a frozen pyclass's value lives, unmoved, as long as its object.
    unsafe {
        let object = pyo3::Borrowed::from_ptr(Python::assume_attached(), slf).cast_unchecked::<T>();
        &*(object.get() as *const T)
    }
}

/// What an [`Entry`] returns for a call decided on its free path by `decide`: `True` or `False`, or
/// null with the error (a panic as `PanicException`) raised. The decision comes back in a register:
/// its error, rare, is kept aside, so no large `Result` is moved through memory (which measured
/// slower); nothing else here touches a Python object.
#[inline(always)]
pub(crate) fn decided(decide: impl FnOnce() -> Result<bool, crate::core::Error>) -> *mut ffi::PyObject {
    let mut refused = None;
    let decision = catch_unwind(AssertUnwindSafe(|| {
        decide().map_err(|err| refused = Some(err)).ok()
    }));
    match decision {
        Ok(Some(admitted)) => {
            // SAFETY: CPython attached the thread to call the entry; the two bools are immortal
            // singletons that only need their reference counted.
            let py = unsafe { Python::assume_attached() };
            PyBool::new(py, admitted).to_owned().into_ptr()
        }
        Ok(None) => raise(refused.expect("a refusal was kept").into()),
        Err(payload) => raise(panic_error(payload)),
    }
}

/// A panic as pyo3 raises it: `PanicException` with the panic's message.
fn panic_error(payload: Box<dyn Any + Send>) -> PyErr {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("panic from Rust code");
    PanicException::new_err(message.to_string())
}

/// Raises `err` from an [`Entry`]: what it returns then.
#[cold]
fn raise(err: PyErr) -> *mut ffi::PyObject {
    Python::attach(|py| err.restore(py));
    ptr::null_mut()
}

/// The arguments of one call, as CPython passed them to an [`Entry`].
pub(crate) struct Call {
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
}

impl Call {
    /// # Safety
    /// The three are what CPython passed to an [`Entry`], used only during that call.
    pub(crate) unsafe fn new(args: *const *mut ffi::PyObject, nargs: ffi::Py_ssize_t, kwnames: *mut ffi::PyObject) -> Self {
        Self { args, nargs, kwnames }
    }

    /// Whether no argument was passed.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.nargs == 0 && self.kwnames.is_null()
    }

    /// Runs the method's `body` with the interpreter attached as pyo3 counts it, and returns what
    /// CPython expects of an [`Entry`]: a new reference, or null with the error raised.
    /// Out of line, so that the free path's frame stays small.
    #[inline(never)]
    pub(crate) fn run(self, body: impl for<'py> FnOnce(Python<'py>, Self) -> PyResult<Bound<'py, PyAny>>) -> *mut ffi::PyObject {
        Python::attach(|py| {
            let result = catch_unwind(AssertUnwindSafe(|| body(py, self)));
            match result.unwrap_or_else(|payload| Err(panic_error(payload))) {
                Ok(result) => result.into_ptr(),
                Err(err) => {
                    err.restore(py);
                    ptr::null_mut()
                }
            }
        })
    }

    /// The value of the one optional parameter `name` of `method` (as pyo3 names it in errors:
    /// `Class.method`), passed by position or by name; `None` when left out. Any other argument is
    /// refused with the `TypeError` pyo3 would raise.
    pub(crate) fn one_optional<'py>(&self, py: Python<'py>, method: &str, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        // SAFETY: CPython passes `nargs` positional arguments then one value per keyword name, all
        // borrowed for the call.
        let values = |count: usize| unsafe { std::slice::from_raw_parts(self.args, count) };
        let positional = self.nargs as usize;
        if positional > 1 {
            return Err(PyTypeError::new_err(format!("{method}() takes from 0 to 1 positional arguments but {positional} were given")));
        }
        // SAFETY: each is a live object for the call.
        let bound = |object: *mut ffi::PyObject| unsafe { Bound::from_borrowed_ptr(py, object) };
        let mut value = (positional == 1).then(|| bound(values(1)[0]));
        if self.kwnames.is_null() {
            return Ok(value);
        }
        // SAFETY: CPython passes the keyword names as a tuple of str, borrowed for the call.
        let names = unsafe { Bound::from_borrowed_ptr(py, self.kwnames).cast_into_unchecked::<PyTuple>() };
        let keyword_values = &values(positional + names.len())[positional..];
        for (keyword, &object) in names.iter().zip(keyword_values) {
            let keyword = keyword.cast_into::<PyString>()?;
            if keyword.to_cow()? != name {
                return Err(PyTypeError::new_err(format!("{method}() got an unexpected keyword argument '{keyword}'")));
            }
            if value.is_some() {
                return Err(PyTypeError::new_err(format!("{method}() got multiple values for argument '{name}'")));
            }
            value = Some(bound(object));
        }
        Ok(value)
    }
}
