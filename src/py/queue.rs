//! The line waiters stand in: the core's priority-then-arrival order, holding Python waiter objects.

use crate::core::spin::SpinLock as Mutex;
use pyo3::prelude::*;

use crate::core::queue::{Ticket, WaitQueue};

/// A waiter's place in a `_WaitQueue`.
#[pyclass(name = "_Ticket", module = "holysheep._holysheep", frozen)]
pub struct PyTicket {
    inner: Ticket,
}

/// Waiters served by priority, then in arrival order.
#[pyclass(name = "_WaitQueue", module = "holysheep._holysheep", frozen)]
#[derive(Default)]
pub struct PyWaitQueue {
    inner: Mutex<WaitQueue<Py<PyAny>>>,
}

#[pymethods]
impl PyWaitQueue {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn push(&self, priority: i64, waiter: Py<PyAny>) -> PyTicket {
        PyTicket { inner: self.inner.lock().push(priority, waiter) }
    }

    /// The waiter served next, or None.
    fn front(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.lock().front().map(|(_, waiter)| waiter.clone_ref(py))
    }

    fn is_front(&self, ticket: &PyTicket) -> bool {
        self.inner.lock().front().is_some_and(|(front, _)| front == ticket.inner)
    }

    fn pop_front(&self) -> Option<Py<PyAny>> {
        self.inner.lock().pop_front().map(|(_, waiter)| waiter)
    }

    /// Takes a waiter out; None when it was served already.
    fn remove(&self, ticket: &PyTicket) -> Option<Py<PyAny>> {
        self.inner.lock().remove(ticket.inner)
    }

    fn __len__(&self) -> usize {
        self.inner.lock().len()
    }
}
