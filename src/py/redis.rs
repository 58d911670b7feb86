//! `RedisBackend`: a Redis server that holds limits shared by a fleet, its connection settings and its
//! failure policy. A `HolySheepRateLimiter` given one as ``backend=`` decides there (see `shared.rs`).

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::core::Error;
use crate::py::args;
use crate::backend::redis::shared::OnError;
use crate::backend::redis::tcp_connection::{LONGEST_SPIN, SPIN};
use crate::backend::redis::{Backend, BackendError, Timeouts, runtime};

/// A decision's failure as a Python exception: a refusal (never, a budget) or Redis failing.
pub(crate) fn refusal(err: Result<Error, BackendError>) -> PyErr {
    match err {
        Ok(err) => err.into(),
        Err(err) => err.into(),
    }
}

/// A positive number of seconds, as a duration.
fn duration(field: &str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    Ok(Duration::from_secs_f64(args::positive(field, value)?))
}

/// A Redis server that holds shared limits; pass it as ``backend=`` with a ``key=``.
///
///     backend = RedisBackend("redis://127.0.0.1:6379/0")
///     lim = HolySheepRateLimiter(rpm=600, max_concurrency=50, backend=backend, key="team-a")
///
/// url: ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS;
/// ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]`` for a primary
/// found through Sentinel); the password never appears in messages or repr. prefix: starts every key;
/// each limit's keys share one hash tag, ``{prefix:key}``, so they sit in one Redis Cluster slot.
/// on_error: when Redis cannot be reached or does not answer in time, ``"fail_closed"`` raises
/// `BackendUnavailable`; ``"fail_open"`` admits; ``"local"`` decides in this process at its share of
/// every limit (see the README); each logs the outage and the recovery once. connect_timeout,
/// command_timeout: seconds to wait for a connection and for each answer. spin_wait: seconds a
/// blocking call waits for its answer awake (yielding the CPU) before it sleeps, while answers
/// typically come that fast; 0 sleeps at once. lease_ttl: seconds a
/// concurrency slot outlives its process. tls_ca_cert: a PEM file of the certificates to trust for
/// ``rediss://``. cluster: ``url`` is one node of a Redis Cluster.
#[pyclass(name = "RedisBackend", module = "holysheep._holysheep", frozen)]
pub struct PyRedisBackend {
    pub(crate) inner: Arc<Backend>,
    pub(crate) on_error: OnError,
    pub(crate) lease_ttl: Duration,
}

#[pymethods]
impl PyRedisBackend {
    #[new]
    #[pyo3(
        signature = (url, *, prefix = None, on_error = None, connect_timeout = None, command_timeout = None, spin_wait = None, lease_ttl = None, tls_ca_cert = None, cluster = None),
        text_signature = "(url, *, prefix='holysheep', on_error='fail_closed', connect_timeout=2.0, command_timeout=1.0, spin_wait=0.0001, lease_ttl=15.0, tls_ca_cert=None, cluster=False)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: &Bound<'_, PyAny>,
        prefix: Option<&Bound<'_, PyAny>>,
        on_error: Option<&Bound<'_, PyAny>>,
        connect_timeout: Option<&Bound<'_, PyAny>>,
        command_timeout: Option<&Bound<'_, PyAny>>,
        spin_wait: Option<&Bound<'_, PyAny>>,
        lease_ttl: Option<&Bound<'_, PyAny>>,
        tls_ca_cert: Option<&Bound<'_, PyAny>>,
        cluster: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let url = args::text("url", url)?;
        let prefix = args::optional(prefix, |v| args::text("prefix", v))?.unwrap_or_else(|| "holysheep".into());
        let on_error = args::optional(on_error, |v| {
            args::choice("on_error", v, |name| {
                OnError::named(name).ok_or_else(|| Error::config("on_error", format!("must be one of {}, got {name:?}", quoted(&OnError::NAMES))))
            })
        })?
        .unwrap_or(OnError::FailClosed);
        let timeouts = Timeouts {
            connect: args::optional(connect_timeout, |v| duration("connect_timeout", v))?.unwrap_or(Duration::from_secs(2)),
            command: args::optional(command_timeout, |v| duration("command_timeout", v))?.unwrap_or(Duration::from_secs(1)),
            spin: args::optional(spin_wait, |v| Ok(Duration::from_nanos(args::seconds("spin_wait", v)?)))?.unwrap_or(SPIN),
        };
        if timeouts.spin > LONGEST_SPIN {
            return Err(Error::config("spin_wait", format!("must be at most {} seconds, got {}", LONGEST_SPIN.as_secs_f64(), timeouts.spin.as_secs_f64())).into());
        }
        let lease_ttl = args::optional(lease_ttl, |v| duration("lease_ttl", v))?.unwrap_or(Duration::from_secs(15));
        if lease_ttl < Duration::from_millis(1) {
            return Err(Error::config("lease_ttl", format!("must be at least 0.001 seconds, got {}", lease_ttl.as_secs_f64())).into());
        }
        let ca = args::optional(tls_ca_cert, |path| {
            let path: std::path::PathBuf = path.extract().or_else(|_| args::refuse("tls_ca_cert", "a path to a PEM file", path))?;
            std::fs::read(&path).map_err(|err| Error::config("tls_ca_cert", format!("cannot read {}: {err}", path.display())).into())
        })?;
        let cluster = args::optional(cluster, |v| args::flag("cluster", v))?.unwrap_or(false);
        let backend = py.detach(|| Backend::new(&url, &prefix, timeouts, ca, cluster))?;
        Ok(Self { inner: backend, on_error, lease_ttl })
    }

    /// The server's URL, its password shown as ``***``.
    #[getter]
    fn url(&self) -> &str {
        self.inner.url()
    }

    /// What every key of this backend starts with.
    #[getter]
    fn prefix(&self) -> &str {
        self.inner.prefix()
    }

    #[getter]
    fn on_error(&self) -> &'static str {
        self.on_error.name()
    }

    #[getter]
    fn connect_timeout(&self) -> f64 {
        self.inner.timeouts().connect.as_secs_f64()
    }

    #[getter]
    fn command_timeout(&self) -> f64 {
        self.inner.timeouts().command.as_secs_f64()
    }

    #[getter]
    fn spin_wait(&self) -> f64 {
        self.inner.timeouts().spin.as_secs_f64()
    }

    #[getter]
    fn lease_ttl(&self) -> f64 {
        self.lease_ttl.as_secs_f64()
    }

    fn __repr__(&self) -> String {
        format!("RedisBackend('{}', prefix='{}', on_error='{}')", self.inner.url(), self.inner.prefix(), self.on_error.name())
    }
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|name| format!("'{name}'")).collect::<Vec<_>>().join(", ")
}

/// Stops the Redis runtime; registered with ``atexit`` by ``holysheep``.
#[pyfunction]
pub fn _shutdown_redis_runtime(py: Python<'_>) {
    // Without the GIL: a runtime task finishing now may need it to complete an asyncio future.
    py.detach(runtime::shutdown);
}
