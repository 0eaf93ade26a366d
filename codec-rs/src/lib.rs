//! Hot-path codec of the secure-tunnel relay. The logic lives in plain-Rust modules
//! (tested by `cargo test` without Python); this file only holds the PyO3 bindings.
pub mod aws;
pub mod close;
pub mod decoder;
pub mod end;
pub mod envelope;
pub mod frame;
pub mod json;

#[cfg(feature = "python")]
mod bindings {
    mod ends; // the ends' codec's classes: src/bindings/ends.rs
    use pyo3::exceptions::{PyMemoryError, PyTypeError, PyValueError};
    use pyo3::ffi;
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyString, PyTuple};
    use pyo3::{PyTraverseError, PyVisit};

    use crate::aws;
    use crate::decoder;
    use crate::close::Violation;
    use crate::envelope::{DEVICE, SOURCE};
    use crate::frame::{self, Out};

    extern "C" {
        // CPython's in-place resize of a uniquely referenced bytes object (not wrapped by pyo3-ffi).
        fn _PyBytes_Resize(obj: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> std::os::raw::c_int;
    }

    /// An output buffer that is a `bytes` object under construction: frames are written straight
    /// into it and it is shrunk in place at the end, so no copy is made to return it.
    struct BytesOut {
        obj: *mut ffi::PyObject,
        ptr: *mut u8,
        len: usize,
        cap: usize,
        failed: bool,
    }

    impl BytesOut {
        fn with_capacity(_py: Python<'_>, cap: usize) -> PyResult<Self> {
            let cap = cap.max(1);
            // SAFETY: the GIL is held (`_py`); a NULL source asks CPython for an uninitialised buffer.
            let obj = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), cap as ffi::Py_ssize_t) };
            if obj.is_null() {
                return Err(PyMemoryError::new_err("cannot allocate output buffer"));
            }
            // SAFETY: obj is a fresh bytes object.
            let ptr = unsafe { ffi::PyBytes_AsString(obj) } as *mut u8;
            Ok(BytesOut { obj, ptr, len: 0, cap, failed: false })
        }

        fn grow(&mut self, need: usize) -> bool {
            if self.failed {
                return false;
            }
            let new_cap = need.max(self.cap.saturating_mul(2));
            // SAFETY: the GIL is held while a Decoder method runs; obj is uniquely owned.
            let rc = unsafe { _PyBytes_Resize(&mut self.obj, new_cap as ffi::Py_ssize_t) };
            if rc != 0 || self.obj.is_null() {
                self.obj = std::ptr::null_mut();
                self.failed = true;
                return false;
            }
            self.ptr = unsafe { ffi::PyBytes_AsString(self.obj) } as *mut u8;
            self.cap = new_cap;
            true
        }

        fn finish<'py>(mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
            if self.failed {
                return Err(PyErr::take(py).unwrap_or_else(|| PyMemoryError::new_err("cannot grow output buffer")));
            }
            if self.len == 0 {
                return Ok(PyBytes::new(py, b""));
            }
            let mut obj = std::mem::replace(&mut self.obj, std::ptr::null_mut());
            if self.len != self.cap {
                // SAFETY: uniquely owned bytes object; shrinking.
                if unsafe { _PyBytes_Resize(&mut obj, self.len as ffi::Py_ssize_t) } != 0 {
                    return Err(PyErr::fetch(py));
                }
            }
            // SAFETY: obj is an owned, fully initialised bytes object of length len.
            Ok(unsafe { Bound::from_owned_ptr(py, obj).cast_into_unchecked() })
        }
    }

    impl Drop for BytesOut {
        fn drop(&mut self) {
            if !self.obj.is_null() {
                // SAFETY: only dropped while the GIL is held (inside a Python call).
                unsafe { ffi::Py_DECREF(self.obj) };
            }
        }
    }

    impl Out for BytesOut {
        #[inline]
        fn len(&self) -> usize {
            self.len
        }
        #[inline]
        fn truncate(&mut self, len: usize) {
            self.len = self.len.min(len);
        }
        #[inline]
        fn put(&mut self, bytes: &[u8]) {
            let need = self.len + bytes.len();
            if need > self.cap && !self.grow(need) {
                return;
            }
            // SAFETY: need <= cap, the regions do not overlap (input is another object).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(self.len), bytes.len()) };
            self.len = need;
        }
        #[inline]
        fn tail_mut(&mut self, from: usize) -> &mut [u8] {
            if self.failed || from >= self.len {
                return &mut [];
            }
            // SAFETY: [from, len) is initialised and inside the buffer.
            unsafe { std::slice::from_raw_parts_mut(self.ptr.add(from), self.len - from) }
        }
    }

    fn bytes_of<'py>(py: Python<'py>, parts: &[&[u8]]) -> PyResult<Bound<'py, PyBytes>> {
        let n = parts.iter().map(|p| p.len()).sum();
        let mut out = BytesOut::with_capacity(py, n)?;
        for p in parts {
            out.put(p);
        }
        out.finish(py)
    }

    fn index_arg(n: i128, name: &str) -> PyResult<usize> {
        if !(0..(1i128 << 63)).contains(&n) {
            return Err(PyValueError::new_err(format!("{name} must be >= 0")));
        }
        Ok(n as usize)
    }

    /// (to_peer, to_sender, close)
    type FeedResult<'py> = (Bound<'py, PyBytes>, Bound<'py, PyBytes>, Option<(u16, String)>);

    /// What `feed` returns when there is nothing to do.
    fn empty_feed(py: Python<'_>) -> FeedResult<'_> {
        let empty = PyBytes::new(py, b"");
        (empty.clone(), empty, None)
    }

    /// One `feed` of a decoder core: `to_peer` is written straight into a `bytes` of `bound`
    /// bytes (shrunk at the end), `to_sender` is copied into one.
    #[inline]
    fn run_feed<'py>(
        py: Python<'py>,
        bound: usize,
        feed: impl FnOnce(&mut BytesOut, &mut Vec<u8>) -> Option<Violation>,
    ) -> PyResult<FeedResult<'py>> {
        let mut to_peer = BytesOut::with_capacity(py, bound)?;
        let mut to_sender = Vec::new();
        let close = feed(&mut to_peer, &mut to_sender);
        let to_peer = to_peer.finish(py)?;
        let to_sender = if to_sender.is_empty() { PyBytes::new(py, b"") } else { PyBytes::new(py, &to_sender) };
        Ok((to_peer, to_sender, close.map(|v| (v.code, v.reason))))
    }

    /// The `side` argument of both decoders.
    fn side_arg(side: &Bound<'_, PyAny>) -> PyResult<u8> {
        match side.extract::<i64>() {
            Ok(s) if s == SOURCE as i64 || s == DEVICE as i64 => Ok(s as u8),
            _ => Err(PyValueError::new_err("side must be SOURCE (0) or DEVICE (1)")),
        }
    }

    /// The `#[pymethods]` of a decoder class: its own methods, then the members both classes
    /// share (`reset`, documented by the doc comment given first, and the `peer_connected`,
    /// `closed`, `messages` and `bytes` attributes of `inner`). One macro, because pyo3 allows
    /// one `#[pymethods]` block per class.
    macro_rules! decoder_class {
        (#[doc = $reset_doc:literal] impl $class:ident { $($own:tt)* }) => {
            #[pymethods]
            impl $class {
                $($own)*

                #[doc = $reset_doc]
                fn reset(&mut self) {
                    self.inner.reset();
                }

                #[getter]
                fn get_peer_connected(&self) -> bool {
                    self.inner.peer_connected
                }

                #[setter]
                fn set_peer_connected(&mut self, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
                    match value {
                        None => Err(PyTypeError::new_err("cannot delete peer_connected")),
                        Some(v) => {
                            let b =
                                v.extract::<bool>().map_err(|_| PyTypeError::new_err("peer_connected must be a bool"))?;
                            self.inner.peer_connected = b;
                            Ok(())
                        }
                    }
                }

                #[getter]
                fn closed(&self) -> bool {
                    self.inner.closed()
                }

                #[getter]
                fn messages(&self) -> u64 {
                    self.inner.messages()
                }

                #[getter]
                fn bytes(&self) -> u64 {
                    self.inner.bytes()
                }
            }
        };
    }

    /// One copy of each distinct `noted` set, shared by the decoders that use it: the relay gives
    /// every tunnel the same few sets, and thousands of idle tunnels must stay small.
    fn shared_noted(noted: Vec<Box<str>>) -> std::sync::Arc<[Box<str>]> {
        static SETS: std::sync::Mutex<Vec<std::sync::Arc<[Box<str>]>>> = std::sync::Mutex::new(Vec::new());
        let mut sets = SETS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(known) = sets.iter().find(|s| ***s == *noted) {
            return known.clone();
        }
        let set: std::sync::Arc<[Box<str>]> = noted.into();
        if sets.len() < 32 {
            sets.push(set.clone()); // a bounded cache: odd sets beyond it get their own copy
        }
        set
    }

    /// Per-connection decoder of client->server WebSocket frames (see relay.codec).
    #[pyclass(name = "Decoder", module = "relay._codec_rs")]
    struct Decoder {
        inner: decoder::Decoder,
        /// called with the payload of each forwarded message whose operation_type is noted
        on_note: Option<Py<PyAny>>,
    }

    /// An iterable of `str` that is not itself a `str` (`what` names the argument in the error).
    fn str_items(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<String>> {
        let err = || PyTypeError::new_err(format!("{what} must be an iterable of str"));
        if value.is_instance_of::<PyString>() {
            return Err(err());
        }
        let mut v = Vec::new();
        for item in value.try_iter().map_err(|_| err())? {
            v.push(item?.extract::<String>().map_err(|_| err())?);
        }
        Ok(v)
    }

    /// The `services` argument of both decoders (the tunnel's service types): an iterable of
    /// `str`; None gives the decoder's default. One check, so the two decoders cannot drift.
    fn services_arg(services: Option<&Bound<'_, PyAny>>, default: &[&str]) -> PyResult<Vec<String>> {
        match services {
            Some(s) if !s.is_none() => str_items(s, "services"),
            _ => Ok(default.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    decoder_class! {
        /// A new connection replaces the old one: drop partial state, keep request-id history.
        impl Decoder {
            #[new]
            #[pyo3(signature = (side, max_message_size = 10240, services = None, request_id_window = 1024, *, noted = None, on_note = None))]
            fn new(
                side: &Bound<'_, PyAny>,
                max_message_size: i128,
                services: Option<&Bound<'_, PyAny>>,
                request_id_window: i128,
                noted: Option<&Bound<'_, PyAny>>,
                on_note: Option<&Bound<'_, PyAny>>,
            ) -> PyResult<Self> {
                let side = side_arg(side)?;
                let max = index_arg(max_message_size, "max_message_size")?;
                let window = index_arg(request_id_window, "request_id_window")?;
                let services = services_arg(services, &["ssh"])?;
                let noted = match noted {
                    None => Vec::new(),
                    Some(n) => str_items(n, "noted")?,
                };
                let on_note = match on_note {
                    Some(cb) if !cb.is_none() => {
                        if !cb.is_callable() {
                            return Err(PyTypeError::new_err("on_note must be callable or None"));
                        }
                        Some(cb.clone().unbind())
                    }
                    _ => None,
                };
                let mut inner = decoder::Decoder::new(side, max, services, window);
                if on_note.is_some() {
                    let mut noted: Vec<Box<str>> = noted.into_iter().map(String::into_boxed_str).collect();
                    noted.sort_unstable();
                    noted.dedup();
                    inner.policy.noted = shared_noted(noted);
                }
                Ok(Decoder { inner, on_note })
            }

            fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
                if let Some(cb) = &self.on_note {
                    visit.call(cb)?;
                }
                Ok(())
            }

            fn __clear__(&mut self) {
                self.on_note = None;
            }

            /// The request ids this side's requests used, as remembered (the window), oldest first.
            fn request_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
                PyTuple::new(py, self.inner.policy.request_ids.iter().collect::<Vec<_>>())
            }

            /// From now on, while the peer is connected, drop the messages whose request_id is
            /// one of `ids`: they belong to a session that is over. Replaces the earlier ids.
            fn retire_request_ids(&mut self, ids: &Bound<'_, PyAny>) -> PyResult<()> {
                let ids = str_items(ids, "ids")?;
                self.inner.policy.retire(ids.iter().map(String::as_str));
                Ok(())
            }

            /// Feed one read; returns (to_peer, to_sender, close).
            fn feed<'py>(slf: &Bound<'py, Self>, data: &[u8]) -> PyResult<FeedResult<'py>> {
                let py = slf.py();
                let ((to_peer, to_sender, close), notes) = {
                    let mut this = slf.try_borrow_mut()?;
                    if this.inner.closed() || data.is_empty() {
                        return Ok(empty_feed(py));
                    }
                    let bound = decoder::to_peer_bound(&this.inner, data.len());
                    let out = run_feed(py, bound, |to_peer, to_sender| this.inner.feed(data, to_peer, to_sender))?;
                    let notes = if this.inner.notes.is_empty() {
                        None
                    } else {
                        let cb = this.on_note.as_ref().map(|cb| cb.clone_ref(py));
                        cb.map(|cb| (std::mem::take(&mut this.inner.notes), cb))
                    };
                    (out, notes)
                };
                // the callbacks run once the decoder is consistent and no longer borrowed
                if let Some((notes, cb)) = notes {
                    let cb = cb.bind(py);
                    for (start, len) in notes {
                        let payload = to_peer.as_bytes().get(start..start + len).unwrap_or_default();
                        if let Err(err) = cb.call1((PyBytes::new(py, payload),)) {
                            err.write_unraisable(py, Some(cb));
                        }
                    }
                }
                Ok((to_peer, to_sender, close))
            }
        }
    }

    /// Per-connection decoder of client->server frames of the AWS IoT Secure Tunneling protocol.
    #[pyclass(name = "AwsDecoder", module = "relay._codec_rs")]
    struct AwsDecoder {
        inner: aws::AwsDecoder,
        /// called with (type, service_id, stream_id, connection_id, answered) of each forwarded
        /// STREAM_START, STREAM_RESET, CONNECTION_START and CONNECTION_RESET (answered False),
        /// and of each STREAM_RESET the decoder answered while the peer is away (answered True)
        on_stream: Option<Py<PyAny>>,
    }

    decoder_class! {
        /// A new connection replaces the old one: drop partial state, keep the counters.
        impl AwsDecoder {
            #[new]
            #[pyo3(signature = (side, services = None, max_payload = 64512, *, on_stream = None))]
            fn new(
                side: &Bound<'_, PyAny>,
                services: Option<&Bound<'_, PyAny>>,
                max_payload: i128,
                on_stream: Option<&Bound<'_, PyAny>>,
            ) -> PyResult<Self> {
                let side = side_arg(side)?;
                let services = services_arg(services, &[])?;
                let max = index_arg(max_payload, "max_payload")?;
                let on_stream = match on_stream {
                    Some(cb) if !cb.is_none() => {
                        if !cb.is_callable() {
                            return Err(PyTypeError::new_err("on_stream must be callable or None"));
                        }
                        Some(cb.clone().unbind())
                    }
                    _ => None,
                };
                let mut inner = aws::AwsDecoder::new(side, services, max);
                inner.track_streams = on_stream.is_some();
                Ok(AwsDecoder { inner, on_stream })
            }

            fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
                if let Some(cb) = &self.on_stream {
                    visit.call(cb)?;
                }
                Ok(())
            }

            fn __clear__(&mut self) {
                self.on_stream = None;
                self.inner.track_streams = false;
            }

            /// The relay told this end that its stream `stream_id` of `service_id` is over: while
            /// the peer is away, its further messages of that stream are not answered again.
            fn reset_sent(&mut self, service_id: &str, stream_id: i32) {
                self.inner.reset_sent(service_id.as_bytes(), stream_id);
            }

            /// Feed one read; returns (to_peer, to_sender, close).
            fn feed<'py>(slf: &Bound<'py, Self>, data: &[u8]) -> PyResult<FeedResult<'py>> {
                let py = slf.py();
                let (out, events) = {
                    let mut this = slf.try_borrow_mut()?;
                    if this.inner.closed() || data.is_empty() {
                        return Ok(empty_feed(py));
                    }
                    let bound = this.inner.to_peer_bound(data.len());
                    let out = run_feed(py, bound, |to_peer, to_sender| this.inner.feed(data, to_peer, to_sender))?;
                    let events = if this.inner.streams.is_empty() {
                        None
                    } else {
                        let cb = this.on_stream.as_ref().map(|cb| cb.clone_ref(py));
                        cb.map(|cb| (std::mem::take(&mut this.inner.streams), cb))
                    };
                    (out, events)
                };
                // the callbacks run once the decoder is consistent and no longer borrowed
                if let Some((events, cb)) = events {
                    let cb = cb.bind(py);
                    for e in events {
                        if let Err(err) = cb.call1((e.typ, &*e.service_id, e.stream_id, e.connection_id, e.answered)) {
                            err.write_unraisable(py, Some(cb));
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// One unmasked FIN binary frame (server->client).
    #[pyfunction]
    fn encode_binary<'py>(py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let mut h = Vec::with_capacity(10);
        frame::write_header(&mut h, frame::OP_BINARY, payload.len());
        bytes_of(py, &[&h, payload])
    }

    /// One unmasked FIN text frame (server->client).
    #[pyfunction]
    fn encode_text<'py>(py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let mut h = Vec::with_capacity(10);
        frame::write_header(&mut h, frame::OP_TEXT, payload.len());
        bytes_of(py, &[&h, payload])
    }

    /// Unmasked close frame; the reason is truncated to 123 bytes on a UTF-8 boundary.
    #[pyfunction]
    #[pyo3(signature = (code, reason = ""))]
    fn encode_close<'py>(py: Python<'py>, code: &Bound<'py, PyAny>, reason: &str) -> PyResult<Bound<'py, PyBytes>> {
        let code: i64 = code.extract().map_err(|_| PyTypeError::new_err("code must be an int"))?;
        if !(1000..=4999).contains(&code) {
            return Err(PyValueError::new_err("close code must be in 1000..4999"));
        }
        Ok(PyBytes::new(py, &frame::encode_close(code as u16, reason)))
    }

    /// Unmasked ping frame (payload of at most 125 bytes).
    #[pyfunction]
    #[pyo3(signature = (payload = b"".as_slice()))]
    fn encode_ping<'py>(py: Python<'py>, payload: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        match frame::encode_ping(payload) {
            Some(f) => Ok(PyBytes::new(py, &f)),
            None => Err(PyValueError::new_err("ping payload exceeds 125 bytes")),
        }
    }

    #[pymodule]
    fn _codec_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("SOURCE", SOURCE)?;
        m.add("DEVICE", DEVICE)?;
        m.add("IMPLEMENTATION", "rust")?;
        m.add_class::<Decoder>()?;
        m.add_class::<AwsDecoder>()?;
        m.add_function(wrap_pyfunction!(encode_text, m)?)?;
        m.add_function(wrap_pyfunction!(encode_binary, m)?)?;
        m.add_function(wrap_pyfunction!(encode_close, m)?)?;
        m.add_function(wrap_pyfunction!(encode_ping, m)?)?;
        let all = PyTuple::new(
            m.py(),
            [
                "SOURCE",
                "DEVICE",
                "IMPLEMENTATION",
                "Decoder",
                "AwsDecoder",
                "encode_text",
                "encode_binary",
                "encode_close",
                "encode_ping",
            ],
        )?;
        let all = all.to_list();
        for name in ends::register(m)? {
            all.append(name)?;
        }
        m.add("__all__", all)?;
        Ok(())
    }
}
