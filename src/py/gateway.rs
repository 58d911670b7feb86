//! The mock gateway for Python: a validated config, and the running server that `holysheep.testing`
//! starts and stops. Serving happens on the gateway's own threads, which never touch Python; calls that
//! wait for them (start, stop) release the GIL.

use std::collections::HashSet;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::core::clock::{ns_to_secs, secs_to_ns};
use crate::core::{Error, Result};
use crate::gateway::{
    Fault, Faults, Gateway, GatewayConfig, Latency, Limits, StartError, Unit, peak_admitted,
};

/// A gateway configuration, checked when made: a bad field raises ConfigError naming it.
#[pyclass(name = "MockGatewayConfig", module = "holysheep._holysheep", frozen)]
pub struct MockGatewayConfig {
    inner: GatewayConfig,
}

/// A count from Python: a negative one is refused naming its field (zero is refused by the core's checks).
fn count(field: &str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::config(field, format!("must be at least 1, got {value}")))
}

fn optional_count(field: &str, value: Option<i64>) -> Result<Option<u64>> {
    value.map(|value| count(field, value)).transpose()
}

fn seconds(field: &str, value: f64) -> Result<u64> {
    secs_to_ns(value)
        .ok_or_else(|| Error::config(field, format!("must be a finite number of seconds >= 0, got {value}")))
}

#[pymethods]
impl MockGatewayConfig {
    #[new]
    #[pyo3(signature = (
        *, rpm=None, rph=None, rpd=None, tpm=None, tph=None, tpd=None, concurrency=None, credit_tokens=None,
        window_s=60.0, api_keys=None, latency_s=0.0, latency_max_s=None, seed=0, embedding_dim=1536,
        completion_tokens=16, log=true, server_error=0.0, bad_gateway=0.0, unavailable=0.0, timeout=0.0,
        reset=0.0, malformed=0.0, outage_s=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        rpm: Option<i64>,
        rph: Option<i64>,
        rpd: Option<i64>,
        tpm: Option<i64>,
        tph: Option<i64>,
        tpd: Option<i64>,
        concurrency: Option<i64>,
        credit_tokens: Option<i64>,
        window_s: f64,
        api_keys: Option<Vec<String>>,
        latency_s: f64,
        latency_max_s: Option<f64>,
        seed: i64,
        embedding_dim: i64,
        completion_tokens: i64,
        log: bool,
        server_error: f64,
        bad_gateway: f64,
        unavailable: f64,
        timeout: f64,
        reset: f64,
        malformed: f64,
        outage_s: Option<(f64, f64)>,
    ) -> PyResult<Self> {
        let limits = Limits {
            rpm: optional_count("rpm", rpm)?,
            rph: optional_count("rph", rph)?,
            rpd: optional_count("rpd", rpd)?,
            tpm: optional_count("tpm", tpm)?,
            tph: optional_count("tph", tph)?,
            tpd: optional_count("tpd", tpd)?,
            concurrency: optional_count("concurrency", concurrency)?,
            credit_tokens: optional_count("credit_tokens", credit_tokens)?,
        };
        let latency = match (seconds("latency", latency_s)?, latency_max_s) {
            (0, None) => Latency::None,
            (ns, None) => Latency::Fixed { ns },
            (min_ns, Some(max_s)) => Latency::Uniform { min_ns, max_ns: seconds("latency", max_s)? },
        };
        let outage_ns = match outage_s {
            Some((start, end)) => Some((seconds("faults.outage", start)?, seconds("faults.outage", end)?)),
            None => None,
        };
        let inner = GatewayConfig {
            limits,
            window_ns: seconds("window_s", window_s)?,
            api_keys: api_keys
                .map(|keys| keys.into_iter().map(|key| key.trim().to_owned()).collect::<HashSet<_>>()),
            latency,
            faults: Faults { server_error, bad_gateway, unavailable, timeout, reset, malformed, outage_ns },
            // Any Python int in i64 range is a seed; negative ones wrap to distinct u64 seeds.
            seed: seed as u64,
            embedding_dim: usize::try_from(count("embedding_dim", embedding_dim)?).unwrap_or(usize::MAX),
            completion_tokens: count("completion_tokens", completion_tokens)?,
            log,
        };
        inner.validate()?;
        Ok(Self { inner })
    }

    /// The length of a "minute", in seconds.
    #[getter]
    fn window_s(&self) -> f64 {
        ns_to_secs(self.inner.window_ns)
    }
}

/// A gateway serving on 127.0.0.1 from its own threads until stopped (or dropped).
#[pyclass(name = "MockGatewayServer", module = "holysheep._holysheep", frozen)]
pub struct MockGatewayServer {
    inner: Gateway,
}

#[pymethods]
impl MockGatewayServer {
    #[new]
    #[pyo3(signature = (config, port=0))]
    fn new(py: Python<'_>, config: &MockGatewayConfig, port: i64) -> PyResult<Self> {
        let port = u16::try_from(port)
            .map_err(|_| Error::config("port", format!("must be between 0 and 65535, got {port}")))?;
        let config = config.inner.clone();
        match py.detach(|| Gateway::start(config, port)) {
            Ok(inner) => Ok(Self { inner }),
            Err(StartError::Config(err)) => Err(err.into()),
            Err(StartError::Io(err)) => {
                Err(PyOSError::new_err(format!("MockGateway cannot listen on 127.0.0.1:{port}: {err}")))
            }
        }
    }

    #[getter]
    fn port(&self) -> u16 {
        self.inner.local_addr().port()
    }

    #[getter]
    fn running(&self) -> bool {
        self.inner.is_running()
    }

    /// Stops serving and frees the port; safe to call again.
    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.inner.stop());
    }

    /// Every request that reached an endpoint so far, in arrival order, as tuples
    /// `(at_s, key, endpoint, tokens, status, admitted, fault)`.
    fn admission_log<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        self.inner
            .admission_log()
            .iter()
            .map(|record| {
                (
                    ns_to_secs(record.at_ns),
                    &*record.key,
                    record.endpoint.path(),
                    record.tokens,
                    record.status,
                    record.admitted,
                    record.fault.map(Fault::name),
                )
                    .into_pyobject(py)
            })
            .collect()
    }

    /// The most admitted requests (or tokens) in any interval of `window_s`, for one key or all.
    #[pyo3(signature = (window_s, unit="requests", key=None))]
    fn peak_admitted(&self, window_s: f64, unit: &str, key: Option<&str>) -> PyResult<u64> {
        let window_ns = seconds("window_s", window_s)?;
        let unit = match unit {
            "requests" => Unit::Requests,
            "tokens" => Unit::Tokens,
            other => {
                return Err(
                    Error::config("unit", format!("must be 'requests' or 'tokens', got '{other}'")).into()
                );
            }
        };
        Ok(peak_admitted(&self.inner.admission_log(), window_ns, unit, key))
    }
}
