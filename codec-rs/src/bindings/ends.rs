//! PyO3 bindings of the ends' codec (`end.rs`): the classes `EndCodec` (Huawei envelope protocol,
//! the `tcp` service's data) and `AwsEndCodec` (AWS V1-V3). Registered by lib.rs's module (`mod bindings`, whose child this file is).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::close::MAX_CLOSE_REASON;
use crate::end::{self, Masks, Output, MASK_POOL};
use crate::frame::{close_payload, MAX_CONTROL_PAYLOAD, OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT};

/// The mask pool's refill: `urandom(MASK_POOL)`, which must give that many bytes. The first
/// error is kept in `err` (the caller raises it).
fn refill<'a>(py: Python<'a>, urandom: &'a Py<PyAny>, err: &'a mut Option<PyErr>) -> impl FnMut(&mut Vec<u8>) -> bool + 'a {
    move |pool: &mut Vec<u8>| {
        if err.is_some() {
            return false;
        }
        let got = urandom.bind(py).call1((MASK_POOL,)).and_then(|b| {
            let b = b.cast_into::<PyBytes>().map_err(|_| PyTypeError::new_err("urandom must return bytes"))?;
            if b.as_bytes().len() != MASK_POOL {
                return Err(PyValueError::new_err(format!("urandom must return {MASK_POOL} bytes")));
            }
            pool.extend_from_slice(b.as_bytes());
            Ok(())
        });
        match got {
            Ok(()) => true,
            Err(e) => {
                *err = Some(e);
                false
            }
        }
    }
}

fn urandom_arg(py: Python<'_>, urandom: Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
    match urandom {
        Some(f) if !f.is_none() => {
            if !f.is_callable() {
                return Err(PyTypeError::new_err("urandom must be callable or None"));
            }
            Ok(f.clone().unbind())
        }
        _ => Ok(py.import("os")?.getattr("urandom")?.unbind()),
    }
}

/// bytes or str (UTF-8) as bytes.
fn message_arg<'a>(message: &'a Bound<'_, PyAny>) -> PyResult<std::borrow::Cow<'a, [u8]>> {
    if let Ok(b) = message.cast::<PyBytes>() {
        return Ok(std::borrow::Cow::Owned(b.as_bytes().to_vec()));
    }
    if let Ok(s) = message.cast::<PyString>() {
        return Ok(std::borrow::Cow::Owned(s.to_str()?.as_bytes().to_vec()));
    }
    Err(PyTypeError::new_err("message must be bytes or str"))
}

fn size_arg(n: i128, name: &str, min: i128) -> PyResult<usize> {
    if !(min..(1i128 << 63)).contains(&n) {
        return Err(PyValueError::new_err(format!("{name} must be >= {min}")));
    }
    Ok(n as usize)
}

/// The members both classes share: mask keys and the control frames.
struct Client {
    masks: Masks,
    urandom: Py<PyAny>,
    /// frames are built here, then copied into the returned bytes: kept between calls, so a
    /// large write does not fault in fresh pages each time
    scratch: Vec<u8>,
}

/// Largest scratch buffer kept between calls.
const SCRATCH_KEPT: usize = 1 << 20;

impl Client {
    /// Run `write` with a refill that calls `urandom`; the bytes it wrote, or the refill's error.
    fn frames<'py>(
        &mut self,
        py: Python<'py>,
        write: impl FnOnce(&mut Vec<u8>, &mut dyn FnMut(&mut Vec<u8>) -> bool, &mut Masks),
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut err = None;
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        {
            let mut fill = refill(py, &self.urandom, &mut err);
            write(&mut out, &mut fill, &mut self.masks);
        }
        let result = match err {
            Some(e) => Err(e),
            None => Ok(PyBytes::new(py, &out)),
        };
        if out.capacity() <= SCRATCH_KEPT {
            self.scratch = out;
        }
        result
    }

    fn frame<'py>(&mut self, py: Python<'py>, op: u8, payload: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        self.frames(py, |out, fill, masks| {
            let mask = masks.next(fill);
            end::put_client_frame(out, op, payload, mask);
        })
    }

    fn ping<'py>(&mut self, py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(PyValueError::new_err("ping payload exceeds 125 bytes"));
        }
        self.frame(py, OP_PING, payload)
    }

    fn close<'py>(&mut self, py: Python<'py>, code: &Bound<'py, PyAny>, reason: &str) -> PyResult<Bound<'py, PyBytes>> {
        let code: i64 = code.extract().map_err(|_| PyTypeError::new_err("code must be an int"))?;
        if !(1000..=4999).contains(&code) {
            return Err(PyValueError::new_err("close code must be in 1000..4999"));
        }
        debug_assert!(close_payload(code as u16, reason).len() <= 2 + MAX_CLOSE_REASON);
        self.frame(py, OP_CLOSE, &close_payload(code as u16, reason))
    }

    /// One feed's result as Python objects: (items, to_send, close).
    fn result<'py, K>(
        &mut self,
        py: Python<'py>,
        out: Output<K>,
        err: Option<PyErr>,
        item: impl Fn(Python<'py>, &K, Bound<'py, PyBytes>) -> PyResult<Bound<'py, PyTuple>>,
        message: impl Fn(Python<'py>, Bound<'py, PyBytes>) -> PyResult<Bound<'py, PyTuple>>,
    ) -> PyResult<FeedResult<'py>> {
        if let Some(e) = err {
            return Err(e);
        }
        let items = PyList::empty(py);
        for it in &out.items {
            let b = PyBytes::new(py, &out.bytes[it.start..it.end]);
            items.append(match &it.key {
                Some(k) => item(py, k, b)?,
                None => message(py, b)?,
            })?;
        }
        let to_send = PyBytes::new(py, &out.to_send);
        Ok((items, to_send, out.close.map(|c| (c.code, c.reason, c.by_server))))
    }
}

type FeedResult<'py> = (Bound<'py, PyList>, Bound<'py, PyBytes>, Option<(u16, String, bool)>);

/// The Huawei-protocol end's codec: `forward_data` out, the relay's messages in.
#[pyclass(name = "EndCodec", module = "relay._codec_rs")]
struct EndCodec {
    client: Client,
    decoder: end::EndDecoder,
    chunk: usize,
}

#[pymethods]
impl EndCodec {
    #[new]
    #[pyo3(signature = (chunk = 7000, max_message_size = 1048576, *, urandom = None))]
    fn new(py: Python<'_>, chunk: i128, max_message_size: i128, urandom: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let chunk = size_arg(chunk, "chunk", 1)?;
        let max = size_arg(max_message_size, "max_message_size", 0)?;
        Ok(EndCodec {
            client: Client { masks: Masks::default(), urandom: urandom_arg(py, urandom)?, scratch: Vec::new() },
            decoder: end::EndDecoder::new(max, chunk),
            chunk,
        })
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.client.urandom)
    }

    /// `raw` as forward_data messages of connection `conn_id`, masked text frames.
    fn data<'py>(&mut self, py: Python<'py>, conn_id: &str, raw: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let prefix = end::forward_data_prefix(conn_id);
        let chunk = self.chunk;
        self.client.frames(py, |out, fill, masks| end::put_forward_data(out, &prefix, raw, chunk, fill, masks))
    }

    /// One masked text frame (an envelope built elsewhere: open, ack, close, ssh).
    fn text<'py>(&mut self, py: Python<'py>, message: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let m = message_arg(message)?;
        self.client.frame(py, OP_TEXT, &m)
    }

    #[pyo3(signature = (payload = b"".as_slice()))]
    fn ping<'py>(&mut self, py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        self.client.ping(py, payload)
    }

    #[pyo3(signature = (code, reason = ""))]
    fn close<'py>(&mut self, py: Python<'py>, code: &Bound<'py, PyAny>, reason: &str) -> PyResult<Bound<'py, PyBytes>> {
        self.client.close(py, code, reason)
    }

    /// One read of the WebSocket: (items, to_send, close).
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<FeedResult<'py>> {
        let mut err = None;
        let out = {
            let mut fill = refill(py, &self.client.urandom, &mut err);
            self.decoder.feed(data, &mut fill, &mut self.client.masks)
        };
        self.client.result(
            py,
            out,
            err,
            |py, k: &String, b| PyTuple::new(py, [PyString::new(py, k).into_any(), b.into_any()]),
            |py, b| PyTuple::new(py, [py.None().into_bound(py), b.into_any()]),
        )
    }

    fn reset(&mut self) {
        self.decoder.reset();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.decoder.closed()
    }

    #[getter]
    fn messages(&self) -> u64 {
        self.decoder.messages()
    }
}

/// The AWS-protocol end's codec: DATA messages out, the relay's tunnel messages in.
#[pyclass(name = "AwsEndCodec", module = "relay._codec_rs")]
struct AwsEndCodec {
    client: Client,
    decoder: end::AwsEndDecoder,
    max_payload: usize,
}

#[pymethods]
impl AwsEndCodec {
    #[new]
    #[pyo3(signature = (max_payload = 64512, *, urandom = None))]
    fn new(py: Python<'_>, max_payload: i128, urandom: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let max = size_arg(max_payload, "max_payload", 1)?;
        Ok(AwsEndCodec {
            client: Client { masks: Masks::default(), urandom: urandom_arg(py, urandom)?, scratch: Vec::new() },
            decoder: end::AwsEndDecoder::new(max),
            max_payload: max,
        })
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.client.urandom)
    }

    /// `raw` as DATA messages of (service_id, stream_id, connection_id), masked binary frames.
    fn data<'py>(
        &mut self,
        py: Python<'py>,
        service_id: &str,
        stream_id: i128,
        connection_id: i128,
        raw: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        if !(i128::from(i32::MIN)..=i128::from(i32::MAX)).contains(&stream_id) {
            return Err(PyValueError::new_err("stream_id must fit in an int32"));
        }
        if !(0..=i128::from(u32::MAX)).contains(&connection_id) {
            return Err(PyValueError::new_err("connection_id must fit in a uint32"));
        }
        if service_id.len() > 0xFFFF - 32 {
            return Err(PyValueError::new_err("service_id is too long for a tunnel message"));
        }
        let max = self.max_payload;
        self.client.frames(py, |out, fill, masks| {
            end::put_aws_data(out, service_id.as_bytes(), stream_id as i32, connection_id as u32, raw, max, fill, masks)
        })
    }

    /// One masked binary frame (tunnel messages built elsewhere: starts, resets).
    fn binary<'py>(&mut self, py: Python<'py>, message: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        self.client.frame(py, OP_BINARY, message)
    }

    #[pyo3(signature = (payload = b"".as_slice()))]
    fn ping<'py>(&mut self, py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        self.client.ping(py, payload)
    }

    #[pyo3(signature = (code, reason = ""))]
    fn close<'py>(&mut self, py: Python<'py>, code: &Bound<'py, PyAny>, reason: &str) -> PyResult<Bound<'py, PyBytes>> {
        self.client.close(py, code, reason)
    }

    /// One read of the WebSocket: (items, to_send, close).
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<FeedResult<'py>> {
        let mut err = None;
        let out = {
            let mut fill = refill(py, &self.client.urandom, &mut err);
            self.decoder.feed(data, &mut fill, &mut self.client.masks)
        };
        self.client.result(
            py,
            out,
            err,
            |py, k: &end::AwsKey, b| {
                let sid = PyString::new(py, &String::from_utf8_lossy(&k.0));
                PyTuple::new(py, [sid.into_any(), k.1.into_pyobject(py)?.into_any(), k.2.into_pyobject(py)?.into_any(), b.into_any()])
            },
            |py, b| {
                let zero = 0i32.into_pyobject(py)?.into_any();
                PyTuple::new(py, [py.None().into_bound(py), zero.clone(), zero, b.into_any()])
            },
        )
    }

    fn reset(&mut self) {
        self.decoder.reset();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.decoder.closed()
    }

    #[getter]
    fn messages(&self) -> u64 {
        self.decoder.messages()
    }
}

/// Add the ends' classes to the module; their names, for `__all__`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<[&'static str; 2]> {
    m.add_class::<EndCodec>()?;
    m.add_class::<AwsEndCodec>()?;
    Ok(["EndCodec", "AwsEndCodec"])
}
